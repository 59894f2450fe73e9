"""The model cache: where weights live, which are there, downloading into it, staying offline.

fade gives open_clip one cache folder: ``--cache-dir``, else ``$FADE_CACHE_DIR``, else the
Hugging Face hub cache (``$HF_HUB_CACHE``, by default ``$HF_HOME/hub``). open_clip fetches
every published tag from the Hugging Face hub into that folder
(``models--<org>--<repo>/snapshots/<revision>/<file>``), so copying the folder copies the models.

Listing reads the folder only; it never asks the network. Offline mode is Hugging Face's
``HF_HUB_OFFLINE=1``, which fade sets for ``--offline`` before the hub library is imported.

Fetching (:func:`fetch_weights`) uses weights already in the cache without asking the network.
Otherwise it asks the hub once, without retries, for the file's size (so that a machine without
internet access fails in seconds, not after the hub's minute of retries), says in one line what
it downloads, and lets ``huggingface_hub.hf_hub_download`` write the file: the hub downloads into
a temporary ``.incomplete`` file and moves it into the cache only once it is complete.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from fade_cli.core.errors import InputError, ModelError
from fade_cli.backbone.open_clip_import import open_clip_module

CACHE_ENV = "FADE_CACHE_DIR"
OFFLINE_ENV = "HF_HUB_OFFLINE"
# How Hugging Face's libraries read a yes/no environment variable (case-insensitive).
TRUE_ENV_VALUES = ("1", "true", "yes", "on")
ETAG_TIMEOUT_ENV = "HF_HUB_ETAG_TIMEOUT"
URL_CACHE_FALLBACK = "~/.cache/clip"
# How long fade waits for the hub's first answer unless HF_HUB_ETAG_TIMEOUT says otherwise: the hub
# answers in well under a second; its own default (10 s, then a minute of retries) reads as a hang.
PROBE_TIMEOUT_S = 5.0

_log = logging.getLogger(__name__)


def go_offline() -> None:
    """Forbid network access for Hugging Face downloads, in this process and its children."""
    os.environ[OFFLINE_ENV] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # already imported (a library caller, or tests): it read the variable at import
        constants.HF_HUB_OFFLINE = True


def is_offline() -> bool:
    """Whether downloads are forbidden: by --offline, or by HF_HUB_OFFLINE set before or after the hub was imported.

    The hub reads the variable once, at import; a caller that sets it later (an embedding program,
    a station's wrapper script) is still obeyed, and the hub is told too.
    """
    from huggingface_hub import constants

    if offline_by_environment(OFFLINE_ENV):
        go_offline()
    return bool(constants.is_offline_mode())


def offline_by_environment(*names: str) -> bool:
    """Whether one of the environment variables ``names`` says offline, read as Hugging Face's libraries read it."""
    return any(os.environ.get(name, "").strip().lower() in TRUE_ENV_VALUES for name in names)


def default_cache_dir() -> Optional[str]:
    """FADE_CACHE_DIR when set; otherwise None, which lets open_clip use the Hugging Face cache."""
    return os.environ.get(CACHE_ENV) or None


def fade_data_dir(explicit: Optional[str] = None) -> str:
    """Where fade keeps its own cached files (prompt embeddings, file hashes): --cache-dir, else
    $FADE_CACHE_DIR, else ~/.cache/fade."""
    return explicit or default_cache_dir() or os.path.join(Path.home(), ".cache", "fade")


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
    open_clip = open_clip_module()

    if model not in open_clip.list_models():
        raise InputError(f"unknown model architecture {model!r}; see `fade models list`, or give --model-config FILE.json")


def check_pretrained_tag(model: str, tag: str) -> None:
    """Raise unless ``tag`` is one of the architecture's published pretrained tags."""
    open_clip = open_clip_module()

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
    open_clip = open_clip_module()

    vision = (open_clip.get_model_config(model) or {}).get("vision_cfg", {})
    return not vision.get("timm_model_name") and isinstance(vision.get("layers"), int) and "patch_size" in vision


def list_cached_models(explicit_cache: Optional[str] = None, include_incompatible: bool = False) -> list[CachedModel]:
    """Every published pair open_clip knows, with its cached file and size when present."""
    open_clip = open_clip_module()

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
    open_clip = open_clip_module()

    config = open_clip.get_pretrained_cfg(model, tag)
    if config.get("hf_hub"):
        return _cached_hub_file(config["hf_hub"], folder)
    if config.get("url"):
        path = Path(folder or os.path.expanduser(URL_CACHE_FALLBACK)) / os.path.basename(config["url"])
        return str(path) if path.is_file() else None
    return None


def _hub_candidates(hf_hub: str) -> tuple[str, list[str]]:
    """The repository of an open_clip ``hf_hub`` entry and its files, in the order open_clip tries them."""
    open_clip_module()
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo_id, filename = os.path.split(hf_hub)
    filename = filename or HF_WEIGHTS_NAME
    # open_clip prefers a safetensors twin of the file when the repository has one. Its own list
    # (open_clip.pretrained._get_safe_alternatives) is private, and its public download function tries the
    # candidates over the network and swallows every error; fade needs the list to look in the cache without
    # the network and to probe sizes with a timeout. tests/test_model_download.py checks the two agree.
    candidates = [filename]
    if filename == HF_WEIGHTS_NAME:
        candidates.insert(0, HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        candidates.insert(0, filename[:-4] + ".safetensors")
    return repo_id, candidates


def _cached_hub_file(hf_hub: str, folder: Optional[str]) -> Optional[str]:
    from huggingface_hub import try_to_load_from_cache

    repo_id, candidates = _hub_candidates(hf_hub)
    for candidate in candidates:
        found = try_to_load_from_cache(repo_id, candidate, cache_dir=folder)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def unavailable_message(model: str, tag: str, explicit_cache: Optional[str], reason: str) -> str:
    """The paragraph for weights that are neither cached nor downloadable: why, and the three ways out."""
    return (
        f"Cannot load the weights of {model} (pretrained '{tag}'): they are not in the cache at "
        f"{cache_location(explicit_cache)} and could not be downloaded ({reason}). Either run once on a "
        f"machine with internet access (`fade models download {model} --pretrained {tag}`) and copy that "
        f"cache folder here (or point {CACHE_ENV} at it), or pass a local checkpoint with --weights FILE."
    )


@dataclass(frozen=True)
class HubFile:
    """A weights file on the Hugging Face hub, as its first answer describes it."""

    repo_id: str
    filename: str
    url: str
    size_bytes: Optional[int]


def fetch_weights(
    model: str,
    tag: str,
    explicit_cache: Optional[str] = None,
    announce: Optional[Callable[[str], None]] = None,
    progress: Optional[bool] = None,
) -> str:
    """The weights file of a published pair: from the cache, else downloaded into it.

    ``announce`` receives the one line said before a download (default: a warning on the
    ``fade_cli.backbone.cache`` logger); ``progress`` False hides the hub's progress bar, None
    leaves it to the hub (shown on a terminal). Raises :class:`ModelError` with the
    :func:`unavailable_message` paragraph when the weights cannot be had.
    """
    open_clip = open_clip_module()

    folder = cache_dir(explicit_cache)
    cached = cached_weights(model, tag, folder)
    if cached:
        return cached
    hf_hub = open_clip.get_pretrained_cfg(model, tag).get("hf_hub")
    if not hf_hub:
        raise ModelError(f"open_clip has no Hugging Face hub source for {model} ({tag})")
    if is_offline():
        reason = f"offline mode is on: --offline or {OFFLINE_ENV}=1"
        raise ModelError(unavailable_message(model, tag, explicit_cache, reason))
    remote = _find_on_hub(model, tag, hf_hub, explicit_cache)
    (announce or _log.warning)(download_line(model, tag, remote, explicit_cache))
    return _download(model, tag, remote, explicit_cache, progress)


def download_line(model: str, tag: str, remote: HubFile, explicit_cache: Optional[str]) -> str:
    """The one line said before a download: what, how big, from where, into which folder."""
    size = "size unknown" if remote.size_bytes is None else f"{remote.size_bytes / 1e6:,.0f} MB"
    where = cache_location(explicit_cache)
    return f"Downloading the weights of {model} ({tag}), {size}, from {remote.url} into {where}"


def probe_timeout() -> float:
    """Seconds to wait for the hub's first answer: HF_HUB_ETAG_TIMEOUT when set, else PROBE_TIMEOUT_S."""
    from huggingface_hub import constants

    return float(constants.HF_HUB_ETAG_TIMEOUT) if os.environ.get(ETAG_TIMEOUT_ENV) else PROBE_TIMEOUT_S


def _find_on_hub(model: str, tag: str, hf_hub: str, explicit_cache: Optional[str]) -> HubFile:
    """Ask the hub once per candidate file, never retrying: the first network error ends it."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import RemoteEntryNotFoundError
    from huggingface_hub.utils import httpx as hub_http

    from fade_cli import __version__

    repo_id, candidates = _hub_candidates(hf_hub)
    timeout = probe_timeout()
    for filename in candidates:
        url = hf_hub_url(repo_id, filename)
        try:
            metadata = get_hf_file_metadata(url, timeout=timeout, library_name="fade", library_version=__version__)
        except RemoteEntryNotFoundError:
            continue
        except hub_http.TimeoutException as exc:
            reason = f"no answer from {_endpoint()} within {timeout:g} s: {_first_line(exc)}"
            raise ModelError(unavailable_message(model, tag, explicit_cache, reason)) from exc
        except hub_http.TransportError as exc:  # connection refused, no route, name not resolved, proxy
            reason = f"{_endpoint()} cannot be reached: {_first_line(exc)}"
            raise ModelError(unavailable_message(model, tag, explicit_cache, reason)) from exc
        except (OSError, hub_http.HTTPError) as exc:  # an HTTP error: 5xx, or 401 for a private or missing repository
            reason = f"{_endpoint()} answered: {_first_line(exc)}"
            raise ModelError(unavailable_message(model, tag, explicit_cache, reason)) from exc
        if metadata.commit_hash is None or metadata.etag is None:  # a captive portal or a proxy's own page
            reason = f"{_endpoint()} answered, but not as a Hugging Face hub does (no X-Repo-Commit or ETag header)"
            raise ModelError(unavailable_message(model, tag, explicit_cache, reason))
        return HubFile(repo_id, filename, url, metadata.size)
    reason = f"{_endpoint()} has none of {', '.join(candidates)} in {repo_id}"
    raise ModelError(unavailable_message(model, tag, explicit_cache, reason))


def _download(model: str, tag: str, remote: HubFile, explicit_cache: Optional[str], progress: Optional[bool]) -> str:
    """The hub writes the file (its ``.incomplete`` file, moved into place once complete)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import httpx as hub_http

    from fade_cli import __version__

    try:
        with _progress_bars(progress):
            return hf_hub_download(remote.repo_id, remote.filename, cache_dir=cache_dir(explicit_cache),
                                   library_name="fade", library_version=__version__)
    except (OSError, hub_http.HTTPError) as exc:  # lost connection, short file, disk full
        reason = f"the download from {remote.url} failed: {_first_line(exc)}"
        raise ModelError(unavailable_message(model, tag, explicit_cache, reason)) from exc


@contextlib.contextmanager
def _progress_bars(shown: Optional[bool]) -> Iterator[None]:
    if shown is False:
        from huggingface_hub.utils import disable_progress_bars

        with disable_progress_bars():
            yield
    else:
        yield


def _endpoint() -> str:
    from huggingface_hub import constants

    return f"the hub at {constants.ENDPOINT}"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def download(model: str, tag: str, explicit_cache: Optional[str] = None,
             announce: Optional[Callable[[str], None]] = None, progress: Optional[bool] = None) -> str:
    """Fetch a published pair into the cache (see :func:`fetch_weights`); returns the file."""
    check_architecture(model)
    check_pretrained_tag(model, tag)
    return fetch_weights(model, tag, explicit_cache, announce, progress)
