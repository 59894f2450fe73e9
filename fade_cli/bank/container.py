"""The bank file container: a safetensors file with a checksum, written the same way every time.

Layout (the safetensors format, so any safetensors reader can open a bank)::

    8 bytes   N, little-endian unsigned 64-bit: length of the header
    N bytes   JSON header, padded with spaces to a multiple of 8 bytes:
                {"__metadata__": {"fade": "<JSON text>", "fade_sha256": "<hex>"},
                 "<tensor name>": {"dtype": "F32", "shape": [M, D], "data_offsets": [begin, end]}, ...}
    the rest  the tensors' bytes: little-endian, C order, in tensor-name order, no gaps

fade writes the header itself (keys sorted, no spaces, no time stamps), so the same content
gives the same bytes. ``fade_sha256`` is the SHA-256 of the fade metadata text, the tensor
index (re-serialised the same canonical way) and the tensor bytes: a truncated or edited file
is rejected. The checksum catches damage, not a forger (who could recompute it); what makes a
hostile file harmless is that reading parses JSON and copies raw float arrays of an allowed
dtype, and never unpickles anything.
"""
from __future__ import annotations

import hashlib
import struct
from typing import Any, Optional

import numpy as np

from fade_cli.core import strict_json
from fade_cli.core.errors import InputError

HEADER_LENGTH_BYTES = 8
HEADER_ALIGNMENT = 8
MAX_HEADER_BYTES = 64 << 20
METADATA_KEY = "__metadata__"
# safetensors dtype codes fade writes and accepts.
DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2")}


class BankFileError(InputError):
    """A bank file that cannot be used: not a bank, truncated, modified, or from an unknown version."""


def canonical_json(value: Any) -> str:
    """The one JSON spelling fade writes: sorted keys, no spaces, no NaN."""
    return strict_json.dumps(value, sort_keys=True, separators=(",", ":"))


def _dtype_code(dtype: np.dtype) -> str:
    for code, allowed in DTYPES.items():
        if np.dtype(dtype).newbyteorder("<") == allowed:
            return code
    raise ValueError(f"bank tensors must be float32 or float16, not {dtype}")


def _checksum(metadata_text: str, index: dict[str, Any], data: bytes) -> str:
    digest = hashlib.sha256()
    digest.update(metadata_text.encode("utf-8"))
    digest.update(b"\0")
    digest.update(canonical_json(index).encode("utf-8"))
    digest.update(b"\0")
    digest.update(data)
    return digest.hexdigest()


def encode_container(metadata: dict[str, Any], tensors: dict[str, np.ndarray]) -> bytes:
    """Serialise ``metadata`` (JSON-able) and named float arrays into the bytes of one file."""
    index: dict[str, Any] = {}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        code = _dtype_code(array.dtype)
        raw = np.ascontiguousarray(array, dtype=DTYPES[code]).tobytes()
        index[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    data = b"".join(chunks)
    metadata_text = canonical_json(metadata)
    header = {METADATA_KEY: {"fade": metadata_text, "fade_sha256": _checksum(metadata_text, index, data)}, **index}
    header_bytes = canonical_json(header).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % HEADER_ALIGNMENT)
    return struct.pack("<Q", len(header_bytes)) + header_bytes + data


def decode_container(raw: bytes, source: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Check and parse the bytes of a bank file: (metadata, {name: array}).

    Raises :class:`BankFileError` with a message that says what is wrong.
    """
    header, data = _split(raw, source)
    metadata_block = header.pop(METADATA_KEY, None)
    if not isinstance(metadata_block, dict) or not isinstance(metadata_block.get("fade"), str):
        raise BankFileError(f"{source} is not a fade bank file (a safetensors file without fade's metadata)")
    expected_length = _data_length(header)
    if expected_length is not None and len(data) < expected_length:
        raise BankFileError(
            f"{source} is truncated: {expected_length} bytes of embeddings expected, {len(data)} found; "
            "copy the file again or rebuild it with `fade bank build`"
        )
    if metadata_block.get("fade_sha256") != _checksum(metadata_block["fade"], header, data):
        raise BankFileError(
            f"{source} failed its checksum: the file was modified or damaged after it was written; "
            "copy it again or rebuild it with `fade bank build`"
        )
    metadata = _parse(metadata_block["fade"], source, "JSON (the bank's metadata)")
    if not isinstance(metadata, dict):
        raise BankFileError(f"{source}: the bank's metadata is not a JSON object")
    return metadata, {name: _tensor(name, entry, data, source) for name, entry in header.items()}


def _split(raw: bytes, source: str) -> tuple[dict[str, Any], bytes]:
    """The parsed JSON header and the data bytes behind it."""
    not_a_bank = f"{source} is not a fade bank file"
    if len(raw) < HEADER_LENGTH_BYTES:
        raise BankFileError(f"{not_a_bank} (only {len(raw)} bytes)")
    (header_length,) = struct.unpack("<Q", raw[:HEADER_LENGTH_BYTES])
    if header_length > MAX_HEADER_BYTES:
        raise BankFileError(f"{not_a_bank} (it does not start with a safetensors header)")
    end = HEADER_LENGTH_BYTES + header_length
    if end > len(raw):
        raise BankFileError(f"{source} is truncated (its header alone needs {end} bytes, the file has {len(raw)})")
    header = _parse(raw[HEADER_LENGTH_BYTES:end], source, "JSON (the safetensors header)")
    if not isinstance(header, dict):
        raise BankFileError(f"{not_a_bank} (its header is not a JSON object)")
    return header, raw[end:]


def _parse(text, source: str, what: str) -> Any:
    try:
        return strict_json.loads(text, source, what)
    except InputError as exc:
        raise BankFileError(f"{exc}; {source} is not a usable fade bank file") from exc


def _data_length(index: dict[str, Any]) -> Optional[int]:
    """The byte length the index promises, or None when the index is not even well-formed."""
    ends = []
    for entry in index.values():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
            return None
        ends.append(offsets[1])
    return max(ends, default=0)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor(name: str, entry: Any, data: bytes, source: str) -> np.ndarray:
    """One tensor as a float array that owns its memory, after checking its index entry."""
    bad = f"{source}: tensor {name!r} has a malformed index entry"
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str) or entry["dtype"] not in DTYPES:
        raise BankFileError(f"{bad} (dtype must be one of {', '.join(DTYPES)})")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and len(shape) <= 8 and all(_is_count(s) and s <= len(data) for s in shape)):
        raise BankFileError(f"{bad} (shape must be a list of up to 8 counts, none larger than the data)")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
            and offsets[0] <= offsets[1] <= len(data)):
        raise BankFileError(f"{bad} (data_offsets)")
    dtype = DTYPES[entry["dtype"]]
    count = 1
    for extent in shape:  # Python integers: a hostile shape cannot overflow into a small product
        count *= extent
    if count * dtype.itemsize != offsets[1] - offsets[0]:
        raise BankFileError(f"{bad} (its shape does not match its byte length)")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offsets[0]).reshape(shape).copy()
