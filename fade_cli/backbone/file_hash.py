"""SHA-256 of files: once per version of a file in a process, and, for weights files, once per
version on this machine (a memo in fade's cache folder).

A bank records the hash of the weights it was built with, and every run that uses the bank
checks it: reading 800 MB to hash them would cost a station about a second of each start-up.
The memo keys on what changes when a file does (device, inode, size, modification and change
times in nanoseconds), so a replaced, rewritten or touched file is hashed anew. Memo entries
are untrusted input like any file: one that does not parse, has a field of the wrong type or
describes another file is ignored (and replaced). No torch here.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from fade_cli.core import strict_json
from fade_cli.core.errors import InputError
from fade_cli.io.atomic import OutputError, atomic_write
from fade_cli.io.files import read_text_file
from fade_cli.backbone.cache import fade_data_dir
from fade_cli.core.validation import Fields

if TYPE_CHECKING:
    from fade_cli.config import EngineConfig

MEMO_SUBDIR = "file-hashes"
MEMO_FORMAT = "fade-file-sha256"
MEMO_LIMIT_BYTES = 64 * 1024
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# The stat fields that key a file's version; all are integers the OS gives.
VERSION_FIELDS = ("device", "inode", "size", "mtime_ns", "ctime_ns")
_MAX_STAT_VALUE = 1 << 126


def file_sha256(path: str) -> str:
    """The file's SHA-256, read once per version of the file in this process.

    A run checks a weights file against a bank and then loads it: the second
    call must not read 800 MB again. The key holds the inode and the
    nanosecond mtime as well as the size, so a replaced or rewritten file is read anew.
    """
    stat = os.stat(path)
    return _sha256_of_version(os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of_version(path: str, inode: int, size: int, mtime_ns: int) -> str:
    return read_sha256(path)


def read_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of the file's bytes, read now in 1 MiB chunks (memory stays flat for 800 MB weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(path: str, cache_dir: Optional[str] = None) -> str:
    """The SHA-256 of a weights file, from the on-disk memo when it describes this version of the file.

    ``cache_dir`` is --cache-dir (else $FADE_CACHE_DIR, else ~/.cache/fade). The memo is
    best effort: a read-only or full cache folder only means the file is hashed again next time.
    """
    real = os.path.realpath(path)
    version = _version_of(os.stat(real))
    memo = _memo_path(cache_dir, real)
    remembered = _read_memo(memo, real, version)
    if remembered is not None:
        return remembered
    digest = file_sha256(real)
    if _version_of(os.stat(real)) == version:  # not changed while it was read
        _write_memo(memo, real, version, digest)
    return digest


def _version_of(stat: os.stat_result) -> dict[str, int]:
    return {"device": stat.st_dev, "inode": stat.st_ino, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "ctime_ns": stat.st_ctime_ns}


def _memo_path(cache_dir: Optional[str], real_path: str) -> Path:
    name = hashlib.sha256(os.fsencode(real_path)).hexdigest()
    return Path(fade_data_dir(cache_dir)) / MEMO_SUBDIR / f"{name}.json"


def _read_memo(memo: Path, real_path: str, version: dict[str, int]) -> Optional[str]:
    """The remembered hash, or None when there is no memo, it is damaged, or it describes another version."""
    try:
        data = strict_json.loads(read_text_file(memo, "file hash memo", limit=MEMO_LIMIT_BYTES), str(memo))
        fields = Fields(data, str(memo))
        fields.unknown(("format", "path", "sha256", *VERSION_FIELDS))
        if fields.text("format") != MEMO_FORMAT or fields.text("path") != real_path:
            return None
        recorded = {name: fields.integer(name, 0, _MAX_STAT_VALUE) for name in VERSION_FIELDS}
        digest = fields.text("sha256")
    except (InputError, OSError):
        return None
    if recorded != version or not SHA256_HEX.fullmatch(digest):
        return None
    return digest


def _write_memo(memo: Path, real_path: str, version: dict[str, int], digest: str) -> None:
    content = strict_json.dumps({"format": MEMO_FORMAT, "path": real_path, **version, "sha256": digest}).encode()
    with contextlib.suppress(OutputError, OSError):
        atomic_write(memo, lambda handle: handle.write(content))


def model_identity(config: "EngineConfig", loaded_identity: dict) -> dict:
    """The loaded model's identity, plus the hash of a custom architecture file when one was used: what a bank
    records and what an engine rebuilt from saved parts checks (fade_cli.engine.prepared)."""
    identity = dict(loaded_identity)
    if config.model_config:
        identity["model_config_sha256"] = file_sha256(config.model_config)
    return identity
