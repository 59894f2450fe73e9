"""A saved reference bank: everything `fade detect` needs besides the model weights.

What a bank file holds (format ``fade-bank`` version 1, or 2 with an inspection region; see ``container.py`` for
the bytes):

metadata (JSON)
    ``format``, ``version``, ``fade_version``; ``model``: the model identity (architecture,
    pretrained tag or weights SHA-256, custom config SHA-256); ``config``: the full engine
    config (the fields that only say how a machine runs it, device, batch size and cache
    folder, are stored at their defaults); ``prompts``: the classification and segmentation
    prompt sets as given (``{classname}`` unfilled); ``references``: the reference files
    (relative path and SHA-256) in bank order; ``patch_dtype``; ``thresholds``: image and
    pixel threshold and where they came from; ``calibration``: the leave-one-out statistic;
    ``precision``: what the patches and thresholds were computed in (fp32, bf16...: the
    precision ``--precision auto`` resolved to on the building machine; banks without it
    were computed in their config's precision).
    Version 2 only: ``region``: the inspection region (fade_cli.io.roi: the ROI file's content in
    base64 with its name and SHA-256, or ``per_image``; the margin; cropping); ``patch_counts``:
    each reference's patch count per size (patches outside the ROI are not stored).
tensors
    ``patches.<size>`` (M, D) reference patch embeddings per segmentation size, the
    feature the few-shot preset uses, float32 (or float16 when built with ``--dtype
    float16``: half the size, scores differ in the 3rd-4th decimal); ``text.cls`` and
    ``text.seg`` (2, D) float32: the encoded prompt ensembles [normal, abnormal].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from fade_cli import __version__
from fade_cli.bank.calibration import Calibration, Thresholds
from fade_cli.bank.container import BankFileError, decode_container, encode_container
from fade_cli.config import PRECISIONS, EngineConfig
from fade_cli.core.errors import InputError
from fade_cli.io.files import read_file_bytes
from fade_cli.io.roi import RegionPlan, plan_from_dict, plan_to_dict
from fade_cli.backbone.file_hash import model_identity  # noqa: F401 (where banks have always taken it from)
from fade_cli.prompting.prompt_set import PromptSet, prompt_set_from_dict
from fade_cli.settings import RUNTIME_FIELDS, SETTINGS, config_from_dict
from fade_cli.core.validation import Fields

FORMAT_NAME = "fade-bank"
FORMAT_VERSION = 2  # the newest version this fade reads
# Banks without an inspection region are written as version 1 (what every fade reads); a bank with one is version 2,
# so that an older fade refuses it instead of scoring whole frames.
PLAIN_FORMAT_VERSION = 1
PATCH_DTYPES = {"float32": np.float32, "float16": np.float16}
# How a machine runs the engine, not what it computes: never taken from a bank.
# A bank of thousands of references at several sizes is gigabytes; a file beyond this is not one.
MAX_BANK_BYTES = 1 << 36
RUNTIME_DEFAULTS = {s.field: s.default for s in SETTINGS if s.field in RUNTIME_FIELDS}


@dataclass
class ReferenceBank:
    """The content of a bank file (see the module docstring); arrays are float32 numpy."""

    config: EngineConfig
    identity: dict[str, Any]
    cls_prompts: PromptSet
    seg_prompts: PromptSet
    cls_classifier_2d: np.ndarray
    seg_classifier_2d: np.ndarray
    patches_by_size: dict[int, np.ndarray]
    references: list[dict[str, str]]
    patch_dtype: str = "float32"
    thresholds: Thresholds = field(default_factory=Thresholds)
    calibration: Optional[Calibration] = None
    precision: str = "fp32"  # computed in (resolved, never "auto")
    # Where frames are inspected (fade_cli.io.roi), and then each reference's patch count per size (an ROI keeps
    # some patches only). Banks without a region are written as before (format version 1).
    regions: Optional[RegionPlan] = None
    patch_counts: Optional[dict[int, list[int]]] = None

    @property
    def reference_count(self) -> int:
        return len(self.references)

    @property
    def embedding_dim(self) -> int:
        return int(self.cls_classifier_2d.shape[1])

    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": PLAIN_FORMAT_VERSION,
            "fade_version": __version__,
            "model": self.identity,
            "config": self.config.to_dict(),
            "prompts": {"cls": self.cls_prompts.to_json_dict(), "seg": self.seg_prompts.to_json_dict()},
            "references": self.references,
            "patch_dtype": self.patch_dtype,
            "thresholds": asdict(self.thresholds),
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "precision": self.precision,
            **self._region_metadata(),
        }

    def _region_metadata(self) -> dict[str, Any]:
        if self.regions is None:
            return {}
        counts = {str(size): list(counts) for size, counts in sorted((self.patch_counts or {}).items())}
        return {"version": FORMAT_VERSION, "region": plan_to_dict(self.regions), "patch_counts": counts}

    def tensors(self) -> dict[str, np.ndarray]:
        dtype = PATCH_DTYPES[self.patch_dtype]
        tensors = {f"patches.{size}": p.astype(dtype, copy=False) for size, p in self.patches_by_size.items()}
        tensors["text.cls"] = self.cls_classifier_2d.astype(np.float32, copy=False)
        tensors["text.seg"] = self.seg_classifier_2d.astype(np.float32, copy=False)
        return tensors

    def to_bytes(self) -> bytes:
        """The file content; the same bank always gives the same bytes."""
        return encode_container(self.metadata(), self.tensors())


def storable_config(config: EngineConfig) -> EngineConfig:
    """The config as a bank stores it: machine-specific runtime fields at their defaults."""
    return config.replace(**RUNTIME_DEFAULTS)


def save_bank(bank: ReferenceBank, path: Path) -> int:
    """Write the bank atomically (a temporary file renamed into place); returns its size in bytes."""
    from fade_cli.io.atomic import atomic_write

    content = bank.to_bytes()
    atomic_write(path, lambda handle: handle.write(content))
    return len(content)


def load_bank(path: Union[str, Path]) -> ReferenceBank:
    """Read and check a bank file; any problem is a :class:`BankFileError` (exit code 2)."""
    source = str(path)
    try:
        raw = read_file_bytes(path, "bank file", limit=MAX_BANK_BYTES)
    except InputError as exc:
        raise BankFileError(str(exc)) from exc
    metadata, tensors = decode_container(raw, source)
    _check_format(metadata, source)
    try:
        return _bank_from_parts(metadata, tensors, source)
    except BankFileError:
        raise
    except InputError as exc:
        raise BankFileError(f"{exc} (malformed bank content; rebuild the bank)") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise BankFileError(f"{source}: malformed bank content ({exc})") from exc


def _check_format(metadata: dict[str, Any], source: str) -> None:
    if metadata.get("format") != FORMAT_NAME:
        raise BankFileError(f"{source} is not a fade bank file (format {metadata.get('format')!r})")
    version = metadata.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BankFileError(
            f"{source} uses bank format version {version}, newer than this fade ({__version__}) reads "
            f"(version {FORMAT_VERSION}); upgrade fade or rebuild the bank"
        )


def _bank_from_parts(metadata: dict[str, Any], tensors: dict[str, np.ndarray], source: str) -> ReferenceBank:
    fields = Fields(metadata, source)
    config = config_from_dict(metadata.get("config"), source)
    patches = {_patch_size(name, source): array for name, array in tensors.items() if name.startswith("patches.")}
    if sorted(patches) != sorted(set(config.seg_sizes)):
        raise ValueError(f"patch sizes {sorted(patches)} do not match the config's sizes {list(config.seg_sizes)}")
    prompts = fields.object("prompts")
    calibration = metadata.get("calibration")
    bank = ReferenceBank(
        config=config,
        identity=_identity(fields.object("model")),
        cls_prompts=prompt_set_from_dict(prompts.data.get("cls"), f"{source} (cls prompts)"),
        seg_prompts=prompt_set_from_dict(prompts.data.get("seg"), f"{source} (seg prompts)"),
        cls_classifier_2d=_text_tensor(tensors, "text.cls", source),
        seg_classifier_2d=_text_tensor(tensors, "text.seg", source),
        patches_by_size={size: array.astype(np.float32, copy=False) for size, array in patches.items()},
        references=_references(fields),
        patch_dtype=fields.text("patch_dtype", choices=PATCH_DTYPES),
        thresholds=Thresholds.from_dict(metadata.get("thresholds"), source),
        calibration=Calibration.from_dict(calibration, source) if calibration else None,
        precision=fields.text("precision", default=config.precision, choices=PRECISIONS),
        regions=plan_from_dict(metadata["region"], source) if metadata.get("region") is not None else None,
        patch_counts=_patch_counts(fields, sorted(patches)) if metadata.get("region") is not None else None,
    )
    _check_shapes(bank)
    _check_finite_tensors(bank, source)
    return bank


def _patch_size(name: str, source: str) -> int:
    size = name.split(".", 1)[1]
    if not size.isdecimal() or len(size) > 6:
        raise BankFileError(f"{source}: tensor {name!r} is not named patches.<image size>")
    return int(size)


def _identity(model: Fields) -> dict[str, str]:
    """The model identity: a few names and hashes, all strings."""
    return {name: model.text(name, optional=True) for name in model.data}


def _references(fields: Fields) -> list[dict[str, str]]:
    references = []
    for number, entry in enumerate(fields.items("references")):
        reference = Fields(entry, fields.source, f"references[{number}]")
        references.append({"path": reference.text("path"), "sha256": reference.text("sha256")})
    return references


def _patch_counts(fields: Fields, sizes: list[int]) -> dict[int, list[int]]:
    counts = fields.object("patch_counts")
    counts.unknown(str(size) for size in sizes)
    found = {}
    for size in sizes:
        entries = counts.items(str(size))
        found[size] = [counts.check_integer(str(size), count, 0, 1 << 20) for count in entries]
    return found


def _text_tensor(tensors: dict[str, np.ndarray], name: str, source: str) -> np.ndarray:
    if name not in tensors:
        raise BankFileError(f"{source}: the tensor {name} is missing")
    return tensors[name].astype(np.float32, copy=False)


def _check_finite_tensors(bank: ReferenceBank, source: str) -> None:
    """NaN embeddings would give NaN scores that compare as neither above nor below a threshold."""
    named = {"text.cls": bank.cls_classifier_2d, "text.seg": bank.seg_classifier_2d,
             **{f"patches.{size}": array for size, array in bank.patches_by_size.items()}}
    for name, array in named.items():
        if not np.isfinite(array).all():
            raise BankFileError(f"{source}: the tensor {name} holds NaN or infinite values; rebuild the bank")


def _check_shapes(bank: ReferenceBank) -> None:
    dim = bank.embedding_dim
    if bank.patch_dtype not in PATCH_DTYPES:
        raise ValueError(f"unknown patch dtype {bank.patch_dtype!r}")
    if bank.cls_classifier_2d.shape != (2, dim) or bank.seg_classifier_2d.shape != (2, dim):
        raise ValueError("text classifiers must both be (2, D)")
    if bank.reference_count < 1:
        raise ValueError("a bank needs at least one reference")
    for size, patches in bank.patches_by_size.items():
        if bank.patch_counts is not None:
            counts = bank.patch_counts[size]
            if patches.ndim != 2 or patches.shape[1] != dim or len(counts) != bank.reference_count \
                    or sum(counts) != patches.shape[0]:
                raise ValueError(f"patches at size {size} have shape {patches.shape}, not the references' "
                                 f"patch counts x {dim}")
            continue
        if patches.ndim != 2 or patches.shape[1] != dim or patches.shape[0] % bank.reference_count:
            raise ValueError(f"patches at size {size} have shape {patches.shape}, not (references x N, {dim})")
