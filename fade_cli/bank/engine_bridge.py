"""Between a running engine and a saved bank: which tensors go in, how an engine comes back out."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import numpy as np
import torch

from fade_cli.bank.bank import PATCH_DTYPES, ReferenceBank, model_identity, storable_config
from fade_cli.bank.calibration import Calibration, Thresholds
from fade_cli.bank.compat import check_embedding_dim, check_loaded_model
from fade_cli.config import EngineConfig
from fade_cli.engine.detector import FadeEngine
from fade_cli.engine.memory_bank import MemoryBank
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
    return ReferenceBank(
        config=storable_config(engine.config),
        identity=model_identity(engine.config, engine.loaded.identity),
        cls_prompts=cls_prompts,
        seg_prompts=seg_prompts,
        cls_classifier_2d=_to_numpy(engine.cls_classifier_2d),
        seg_classifier_2d=_to_numpy(engine.seg_classifier_2d),
        patches_by_size={size: _to_numpy(p) for size, p in sorted(engine.bank.patches_by_size.items())},
        references=[{"path": f.relative, "sha256": file_sha256(str(f.path))} for f in reference_files],
        patch_dtype=patch_dtype,
        thresholds=thresholds,
        calibration=calibration,
        precision=engine.precision.precision,
        regions=None if engine.regions is None else replace(engine.regions, folder=None),
        patch_counts=None if engine.regions is None else {size: list(counts) for size, counts
                                                          in sorted(engine.bank.counts_by_size.items())},
    )


def engine_from_bank(bank: ReferenceBank, loaded: LoadedModel, config: EngineConfig, source: str) -> FadeEngine:
    """An engine that scores exactly like the one the bank was built from, on ``loaded``'s device.

    ``config`` is the bank's config with this machine's runtime fields (see
    ``fade_cli.bank.bank.RUNTIME_DEFAULTS``) and the local model file paths.
    """
    check_loaded_model(bank, model_identity(config, loaded.identity), source)
    check_embedding_dim(bank, int(loaded.model.visual.output_dim), source)
    device = loaded.device
    memory = MemoryBank({size: torch.from_numpy(p).to(device) for size, p in bank.patches_by_size.items()},
                        bank.patch_counts)
    engine = FadeEngine.from_saved(
        loaded,
        config,
        torch.from_numpy(bank.cls_classifier_2d),
        torch.from_numpy(bank.seg_classifier_2d),
        memory,
        bank.reference_count,
    )
    engine.regions = bank.regions
    return engine
