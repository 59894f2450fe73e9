"""On-disk cache of encoded prompt ensembles.

Encoding ~600 prompts through the text tower of ViT-B-16-plus-240 costs tens of
seconds on a CPU, and the result only depends on the model, the sentences and
the wrapper template. The cache keys on exactly those (plus the versions that
could change the numbers) and stores the (2, D) classifier as a small .npy file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from fade_cli import __version__
from fade_cli.io.atomic import OutputError, atomic_write
from fade_cli.model_cache import default_cache_dir

CACHE_SUBDIR = "text-embeddings"


def text_cache_dir(cache_dir: Optional[str]) -> Path:
    """``<cache>/text-embeddings`` with cache = --cache-dir, $FADE_CACHE_DIR or ~/.cache/fade."""
    root = cache_dir or default_cache_dir() or os.path.join(Path.home(), ".cache", "fade")
    return Path(root) / CACHE_SUBDIR


def classifier_key(identity: dict[str, Any], template: str, normal: tuple[str, ...], abnormal: tuple[str, ...]) -> str:
    import open_clip

    payload = {
        "identity": identity,
        "template": template,
        "normal": list(normal),
        "abnormal": list(abnormal),
        "fade": __version__,
        "open_clip": open_clip.__version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def load_cached(directory: Path, key: str) -> Optional[torch.Tensor]:
    path = directory / f"{key}.npy"
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if array.ndim != 2 or array.shape[0] != 2:
        return None
    return torch.from_numpy(array)


def store(directory: Path, key: str, classifier_2d: torch.Tensor) -> None:
    """Best effort: a read-only or full cache folder only costs the next run the encoding time."""
    array = classifier_2d.detach().cpu().float().numpy()
    with contextlib.suppress(OutputError, OSError):
        atomic_write(directory / f"{key}.npy", lambda handle: np.save(handle, array, allow_pickle=False))
