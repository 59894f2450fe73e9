"""The model cache: where weights live, which are there, downloading into it, staying offline.

fade gives open_clip one cache folder: ``--cache-dir``, else ``$FADE_CACHE_DIR``, else the
Hugging Face hub cache (``$HF_HUB_CACHE``, by default ``$HF_HOME/hub``). open_clip fetches
every published tag from the Hugging Face hub into that folder
(``models--<org>--<repo>/snapshots/<revision>/<file>``), so copying the folder copies the models.

Listing reads the folder only; it never asks the network. Offline mode is Hugging Face's
``HF_HUB_OFFLINE=1``, which fade sets for ``--offline`` before the hub library is imported.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from fade_cli.errors import InputError, ModelError

CACHE_ENV = "FADE_CACHE_DIR"
OFFLINE_ENV = "HF_HUB_OFFLINE"
URL_CACHE_FALLBACK = "~/.cache/clip"


def go_offline() -> None:
    """Forbid network access for Hugging Face downloads, in this process and its children."""
    os.environ[OFFLINE_ENV] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # already imported (a library caller, or tests): it read the variable at import
        constants.HF_HUB_OFFLINE = True


def is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def default_cache_dir() -> Optional[str]:
    """FADE_CACHE_DIR when set; otherwise None, which lets open_clip use the Hugging Face cache."""
    return os.environ.get(CACHE_ENV) or None


def describe_cache_dir(cache_dir: Optional[str]) -> str:
    if cache_dir:
        return cache_dir
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
        return "~/.cache/huggingface/hub"


def cache_dir(explicit: Optional[str] = None) -> Optional[str]:
    """The folder fade passes to open_clip; None means the Hugging Face hub cache."""
    return explicit or default_cache_dir()


def cache_location(explicit: Optional[str] = None) -> str:
    """The cache folder as a path people can copy."""
    return describe_cache_dir(cache_dir(explicit))


def check_architecture(model: str) -> None:
    """Raise unless open_clip knows the architecture (built in, or added with --model-config)."""
    import open_clip

    if model not in open_clip.list_models():
        raise InputError(f"unknown model architecture {model!r}; see `fade models list`, or give --model-config FILE.json")


def check_pretrained_tag(model: str, tag: str) -> None:
    """Raise unless ``tag`` is one of the architecture's published pretrained tags."""
    import open_clip

    known = open_clip.list_pretrained_tags_by_model(model)
    if tag not in known:
        raise InputError(f"unknown pretrained tag {tag!r} for {model} (known: {', '.join(known) or 'none'})")


@dataclass(frozen=True)
class CachedModel:
    """A published (architecture, pretrained tag) pair and its state in the cache."""

    model: str
    pretrained: str
    fade_compatible: bool
    path: Optional[str]
    size_bytes: Optional[int]

    @property
    def cached(self) -> bool:
        return self.path is not None


def is_fade_compatible(model: str) -> bool:
    """GEM needs open_clip's own VisionTransformer: no timm tower, no ResNet."""
    import open_clip

    vision = (open_clip.get_model_config(model) or {}).get("vision_cfg", {})
    return not vision.get("timm_model_name") and isinstance(vision.get("layers"), int) and "patch_size" in vision


def list_cached_models(explicit_cache: Optional[str] = None, include_incompatible: bool = False) -> list[CachedModel]:
    """Every published pair open_clip knows, with its cached file and size when present."""
    import open_clip

    folder = cache_dir(explicit_cache)
    compatible = {name: is_fade_compatible(name) for name in open_clip.list_models()}
    entries = []
    for model, tag in open_clip.list_pretrained():
        ok = compatible.get(model, False)
        if not ok and not include_incompatible:
            continue
        path = cached_weights(model, tag, folder)
        size = os.path.getsize(path) if path else None
        entries.append(CachedModel(model, tag, ok, path, size))
    return entries


def cached_weights(model: str, tag: str, folder: Optional[str]) -> Optional[str]:
    """The cached weights file of a published pair, looked up on disk only (no network)."""
    import open_clip

    config = open_clip.get_pretrained_cfg(model, tag)
    if config.get("hf_hub"):
        return _cached_hub_file(config["hf_hub"], folder)
    if config.get("url"):
        path = Path(folder or os.path.expanduser(URL_CACHE_FALLBACK)) / os.path.basename(config["url"])
        return str(path) if path.is_file() else None
    return None


def _cached_hub_file(hf_hub: str, folder: Optional[str]) -> Optional[str]:
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo_id, filename = os.path.split(hf_hub)
    filename = filename or HF_WEIGHTS_NAME
    # open_clip prefers a safetensors twin of the file when the repository has one.
    candidates = [filename]
    if filename == HF_WEIGHTS_NAME:
        candidates.insert(0, HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        candidates.insert(0, filename[:-4] + ".safetensors")
    for candidate in candidates:
        found = try_to_load_from_cache(repo_id, candidate, cache_dir=folder)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def download(model: str, tag: str, explicit_cache: Optional[str] = None) -> str:
    """Fetch a published pair into the cache with open_clip's own downloader; returns the file."""
    import open_clip

    check_architecture(model)
    check_pretrained_tag(model, tag)
    folder = cache_dir(explicit_cache)
    if is_offline():
        cached = cached_weights(model, tag, folder)
        if cached:
            return cached
        raise ModelError(
            f"cannot download {model} ({tag}): offline mode is on ({OFFLINE_ENV} is set) and it is not in the "
            f"cache at {cache_location(explicit_cache)}; download it on a machine with internet access and copy "
            "the cache folder here"
        )
    try:
        target = open_clip.download_pretrained(open_clip.get_pretrained_cfg(model, tag), cache_dir=folder)
    except (OSError, RuntimeError) as exc:  # FileNotFoundError from the hub, URLError, checksum failures
        raise ModelError(f"cannot download {model} ({tag}) into {cache_location(explicit_cache)}: {exc}") from exc
    if not target:
        raise ModelError(f"open_clip has no download source for {model} ({tag})")
    return str(target)
