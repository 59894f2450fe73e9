"""Is this bank usable with this model and these settings? Messages say what differs.

A bank's embeddings only mean something for the exact model that made them, so the
model is checked twice: the files the user points at before anything is loaded
(cheap, clear message), and the identity of the model actually loaded afterwards
(catches a weights file replaced in place).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from fade_cli.bank.bank import ReferenceBank
from fade_cli.bank.calibration import Thresholds
from fade_cli.core.errors import InputError
from fade_cli.core.naming import named

SHORT_HASH = 12


class BankMismatchError(InputError):
    """The bank was built with another model or other settings than the run asks for."""


def describe_identity(identity: dict[str, Any]) -> str:
    """``ViT-B-16-plus-240 (pretrained laion400m_e31)`` or ``name (weights sha256 1a2b...)``."""
    parts = []
    if identity.get("pretrained"):
        parts.append(f"pretrained {identity['pretrained']}")
    if identity.get("weights_sha256"):
        parts.append(f"weights sha256 {identity['weights_sha256'][:SHORT_HASH]}...")
    if identity.get("model_config_sha256"):
        parts.append(f"config sha256 {identity['model_config_sha256'][:SHORT_HASH]}...")
    return f"{identity.get('model')} ({', '.join(parts)})" if parts else str(identity.get("model"))


def model_file_contradictions(
    bank: ReferenceBank,
    model: Optional[str] = None,
    pretrained: Optional[str] = None,
    weights: Optional[str] = None,
    model_config: Optional[str] = None,
    cache_dir: Optional[str] = None,
) -> list[str]:
    """What the model options the user gave (None = not given) contradict in the bank's model identity.

    ``cache_dir`` holds the memo of weights files' hashes (see :mod:`fade_cli.backbone.file_hash`).
    """
    from fade_cli.backbone.file_hash import file_sha256, weights_sha256

    identity, problems = bank.identity, []
    if model_config is not None:
        if Path(model_config).stem != identity.get("model"):
            problems.append(f"{named('model_config')} {model_config} is architecture {Path(model_config).stem!r}")
        elif file_sha256(model_config) != identity.get("model_config_sha256"):
            problems.append(f"{named('model_config')} {model_config} differs from the architecture file the bank was built with")
    if model is not None and model_config is None and model != identity.get("model"):
        problems.append(f"{named('model')} {model}")
    if pretrained is not None and pretrained != identity.get("pretrained"):
        problems.append(f"{named('pretrained')} {pretrained}")
    if weights is not None:
        digest = weights_sha256(weights, cache_dir)
        if digest != identity.get("weights_sha256"):
            problems.append(f"{named('weights')} {weights} (sha256 {digest[:SHORT_HASH]}...)")
    return problems


def model_files_for_bank(
    bank: ReferenceBank, weights: Optional[str], model_config: Optional[str]
) -> tuple[Optional[str], Optional[str]]:
    """The weights and architecture files to load: those given, else those the bank was built with."""
    identity = bank.identity
    if weights is None and identity.get("weights_sha256"):
        weights = _recorded_file(bank.config.weights, "weights file", identity["weights_sha256"], named("weights"))
    if model_config is None and identity.get("model_config_sha256"):
        model_config = _recorded_file(
            bank.config.model_config, "architecture file", identity["model_config_sha256"], named("model_config")
        )
    return weights, model_config


def _recorded_file(path: Optional[str], what: str, digest: str, option: str) -> str:
    if path and os.path.isfile(path):
        return path
    raise InputError(
        f"the bank was built with the {what} {path} (sha256 {digest[:SHORT_HASH]}...), which is not on this "
        f"machine; copy it here and pass {option} FILE"
    )


def other_model_error(source: str) -> Callable[[dict[str, Any], dict[str, Any]], BankMismatchError]:
    """Why the bank ``source`` refuses to run with another model than the one that built it:
    (bank's identity, loaded identity) -> the error."""
    def error(bank_identity: dict[str, Any], loaded_identity: dict[str, Any]) -> BankMismatchError:
        return BankMismatchError(
            f"{source} was built with the model {describe_identity(bank_identity)}, but this run loaded "
            f"{describe_identity(loaded_identity)}; use the bank's model or rebuild the bank with `fade bank build`"
        )
    return error


def check_embedding_dim(bank: ReferenceBank, model_dim: int, source: str) -> None:
    if model_dim != bank.embedding_dim:
        raise BankMismatchError(
            f"{source} holds {bank.embedding_dim}-dimensional embeddings, the model makes {model_dim}-dimensional ones"
        )


def setting_differences(saved: Any, requested: Any, fields: Iterable[str]) -> dict[str, tuple[Any, Any]]:
    """{field: (bank value, requested value)} for the named fields that differ (configs or presets)."""
    differences = {}
    for name in fields:
        bank_value, asked = getattr(saved, name), getattr(requested, name)
        if bank_value != asked:
            differences[name] = (bank_value, asked)
    return differences


def precision_warning(bank: ReferenceBank, thresholds: Thresholds, run_precision: str, source: str) -> Optional[str]:
    """A warning when the bank's calibrated thresholds are used in another precision than they were computed in.

    Scores move by about 1e-3 between fp32 and bf16 (docs/performance.md): enough to turn
    a verdict near the threshold. A threshold given on the command line is the user's own.
    """
    calibrated = [name for name, origin in (("image", thresholds.image_source), ("pixel", thresholds.pixel_source))
                  if origin == "calibrated"]
    if not calibrated or run_precision == bank.precision:
        return None
    return (
        f"the {' and '.join(calibrated)} threshold(s) of {source} were calibrated in {bank.precision}, but this run "
        f"computes in {run_precision}: scores differ slightly, so verdicts near a threshold may change. Run with "
        f"--precision {bank.precision}, or rebuild the bank in this run's precision (`fade bank build --precision "
        f"{run_precision}`; `--precision auto` on the station's own CPU)"
    )
