"""On-disk cache of encoded prompt ensembles.

Encoding ~600 prompts through the text tower of ViT-B-16-plus-240 costs tens of
seconds on a CPU, and the result only depends on the model, the sentences and
the wrapper template. The cache keys on exactly those (plus the versions that
could change the numbers) and stores the (2, D) classifier as a small .npy file.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from fade_cli.core import strict_json
from fade_cli import __version__
from fade_cli.core.errors import FadeWarning, InputError
from fade_cli.io.atomic import OutputError, atomic_write
from fade_cli.io.files import read_file_bytes
from fade_cli.backbone.cache import fade_data_dir
from fade_cli.backbone.open_clip_import import open_clip_module

CACHE_SUBDIR = "text-embeddings"
# An entry is a (2, D) float array: kilobytes. A larger file is not an entry and is never read into memory.
ENTRY_LIMIT = 16 << 20


def text_cache_dir(cache_dir: Optional[str]) -> Path:
    """``<cache>/text-embeddings`` with cache = --cache-dir, $FADE_CACHE_DIR or ~/.cache/fade."""
    return Path(fade_data_dir(cache_dir)) / CACHE_SUBDIR


def classifier_key(identity: dict[str, Any], template: str, normal: tuple[str, ...], abnormal: tuple[str, ...]) -> str:
    open_clip = open_clip_module()

    payload = {
        "identity": identity,
        "template": template,
        "normal": list(normal),
        "abnormal": list(abnormal),
        "fade": __version__,
        "open_clip": open_clip.__version__,
    }
    return hashlib.sha256(strict_json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def load_cached(directory: Path, key: str, dim: Optional[int] = None) -> Optional[torch.Tensor]:
    """The cached (2, D) classifier, or None when there is none.

    The cache is untrusted input like any file: an entry that is not a finite float
    (2, ``dim``) array (damaged, truncated, written by something else), or not a regular
    file at all (a FIFO would block the run), is discarded with a warning naming it,
    and the caller encodes the prompts again.
    """
    path = directory / f"{key}.npy"
    if not path.exists():
        return None
    try:
        array = np.load(io.BytesIO(read_file_bytes(path, "text-embedding cache entry", ENTRY_LIMIT)),
                        allow_pickle=False)
        problem = _entry_problem(array, dim)
    except InputError as exc:
        problem = str(exc)
    except (OSError, ValueError, EOFError) as exc:
        problem = f"not a readable .npy array ({exc})"
    if problem is not None:
        warnings.warn(f"discarded the damaged text-embedding cache entry {path}: {problem}; the prompts are "
                      "encoded again", FadeWarning, stacklevel=2)
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _entry_problem(array: np.ndarray, dim: Optional[int]) -> Optional[str]:
    expected = f"(2, {dim})" if dim else "(2, D)"
    if array.dtype.kind != "f" or array.ndim != 2 or array.shape[0] != 2 or (dim and array.shape[1] != dim):
        return f"a {array.dtype} array of shape {tuple(array.shape)}, not float {expected}"
    if not np.isfinite(array).all():
        return "it holds NaN or infinite values"
    return None


def store(directory: Path, key: str, classifier_2d: torch.Tensor) -> None:
    """Best effort: a read-only or full cache folder only costs the next run the encoding time."""
    array = classifier_2d.detach().cpu().float().numpy()
    with contextlib.suppress(OutputError, OSError):
        atomic_write(directory / f"{key}.npy", lambda handle: np.save(handle, array, allow_pickle=False))
