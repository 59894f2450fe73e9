"""Between a running engine and a saved bank: which tensors go in, how an engine comes back out."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import numpy as np
import torch

from fade_cli.bank.bank import PATCH_DTYPES, ReferenceBank, storable_config
from fade_cli.bank.calibration import Calibration, Thresholds
from fade_cli.bank.compat import check_embedding_dim, other_model_error
from fade_cli.config import EngineConfig
from fade_cli.engine.detector import FadeEngine
from fade_cli.engine.prepared import PreparedEngine
from fade_cli.backbone.file_hash import file_sha256
from fade_cli.backbone.model import LoadedModel
from fade_cli.core.errors import InputError
from fade_cli.io.images import ImageFile
from fade_cli.prompting.prompt_set import PromptSet


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).numpy()


def bank_from_engine(
    engine: FadeEngine,
    cls_prompts: PromptSet,
    seg_prompts: PromptSet,
    reference_files: list[ImageFile],
    patch_dtype: str = "float32",
    thresholds: Thresholds = Thresholds(),
    calibration: Optional[Calibration] = None,
) -> ReferenceBank:
    """Capture a few-shot engine (references added, in ``reference_files`` order) as a bank."""
    if patch_dtype not in PATCH_DTYPES:
        raise InputError(f"bank dtype must be one of {', '.join(PATCH_DTYPES)}, not {patch_dtype!r}")
    if engine.reference_count != len(reference_files) or not reference_files:
        raise ValueError("the engine's references and the reference files do not match")
    prepared = PreparedEngine.of(engine)
    regions = prepared.regions
    return ReferenceBank(
        config=storable_config(prepared.config),
        identity=prepared.identity,
        cls_prompts=cls_prompts,
        seg_prompts=seg_prompts,
        cls_classifier_2d=_to_numpy(prepared.cls_classifier_2d),
        seg_classifier_2d=_to_numpy(prepared.seg_classifier_2d),
        patches_by_size={size: _to_numpy(p) for size, p in sorted(prepared.patches_by_size.items())},
        references=[{"path": f.relative, "sha256": file_sha256(str(f.path))} for f in reference_files],
        patch_dtype=patch_dtype,
        thresholds=thresholds,
        calibration=calibration,
        precision=engine.precision.precision,
        # Format 1 has no region: its references' patch counts all alike, none are stored.
        regions=None if regions is None else replace(regions, folder=None),
        patch_counts=None if regions is None else dict(sorted(prepared.counts_by_size.items())),
    )


def prepared_from_bank(bank: ReferenceBank, config: EngineConfig) -> PreparedEngine:
    """The engine a bank holds, to run with ``config`` (the bank's config with this machine's runtime fields, see
    ``fade_cli.bank.bank.RUNTIME_DEFAULTS``, and the local model file paths)."""
    return PreparedEngine(
        config=config,
        identity=bank.identity,
        cls_classifier_2d=torch.from_numpy(bank.cls_classifier_2d),
        seg_classifier_2d=torch.from_numpy(bank.seg_classifier_2d),
        patches_by_size={size: torch.from_numpy(p) for size, p in bank.patches_by_size.items()},
        reference_count=bank.reference_count,
        counts_by_size=bank.patch_counts,
        regions=bank.regions,
    )


def engine_from_bank(bank: ReferenceBank, loaded: LoadedModel, config: EngineConfig, source: str) -> FadeEngine:
    """An engine that scores exactly like the one the bank was built from, on ``loaded``'s device.

    ``config`` is the bank's config with this machine's runtime fields (see
    ``fade_cli.bank.bank.RUNTIME_DEFAULTS``) and the local model file paths.
    """
    engine = prepared_from_bank(bank, config).engine(loaded, other_model_error(source))
    # The model is the bank's: dimensions that differ come from the bank file itself.
    check_embedding_dim(bank, int(loaded.model.visual.output_dim), source)
    return engine
