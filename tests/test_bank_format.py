"""The bank file: round trip, deterministic bytes, safe and strict loading (no model needed)."""
from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest

from fade_cli.bank.bank import FORMAT_VERSION, ReferenceBank, load_bank, save_bank
from fade_cli.bank.calibration import Calibration, Thresholds, choose_thresholds
from fade_cli.bank.container import BankFileError, decode_container, encode_container
from fade_cli.config import EngineConfig
from fade_cli.prompting.prompt_set import PromptSet

DIM = 8


def synthetic_bank(patch_dtype: str = "float32", seed: int = 0) -> ReferenceBank:
    """A bank with random embeddings: the format does not care where the numbers came from."""
    rng = np.random.default_rng(seed)
    calibration = Calibration(margin=1.1, files=("a.png", "b.png"), image_scores=(0.2, 0.3), pixel_maxima=(0.4, 0.5))
    return ReferenceBank(
        config=EngineConfig(model="ViT-B-16", pretrained="openai", class_name="screw", seg_sizes=(32, 48)),
        identity={"model": "ViT-B-16", "pretrained": "openai"},
        cls_prompts=PromptSet(normal=("a {classname}",), abnormal=("a broken {classname}",)),
        seg_prompts=PromptSet(normal=("flawless",), abnormal=("scratched", "dented")),
        cls_classifier_2d=rng.standard_normal((2, DIM)).astype(np.float32),
        seg_classifier_2d=rng.standard_normal((2, DIM)).astype(np.float32),
        patches_by_size={32: rng.standard_normal((8, DIM)).astype(np.float32),
                         48: rng.standard_normal((18, DIM)).astype(np.float32)},
        references=[{"path": "a.png", "sha256": "0" * 64}, {"path": "b.png", "sha256": "1" * 64}],
        patch_dtype=patch_dtype,
        thresholds=choose_thresholds(calibration, Thresholds(pixel=0.45)),
        calibration=calibration,
    )


@pytest.fixture
def bank_file(tmp_path):
    path = tmp_path / "screw.fadebank"
    save_bank(synthetic_bank(), path)
    return path


def test_round_trip_keeps_everything(bank_file):
    original, loaded = synthetic_bank(), load_bank(bank_file)
    assert loaded.config == original.config
    assert loaded.identity == original.identity
    assert (loaded.cls_prompts, loaded.seg_prompts) == (original.cls_prompts, original.seg_prompts)
    assert loaded.references == original.references
    assert loaded.thresholds == original.thresholds
    assert loaded.thresholds.image_source == "calibrated" and loaded.thresholds.pixel_source == "given"
    assert loaded.calibration == original.calibration
    np.testing.assert_array_equal(loaded.cls_classifier_2d, original.cls_classifier_2d)
    for size, patches in original.patches_by_size.items():
        np.testing.assert_array_equal(loaded.patches_by_size[size], patches)


def test_float16_storage_halves_the_patches_and_stays_close(tmp_path):
    half, full = tmp_path / "half.fadebank", tmp_path / "full.fadebank"
    save_bank(synthetic_bank("float16"), half)
    save_bank(synthetic_bank("float32"), full)
    loaded = load_bank(half)
    assert loaded.patch_dtype == "float16"
    assert loaded.patches_by_size[32].dtype == np.float32  # widened again for the engine
    np.testing.assert_allclose(loaded.patches_by_size[48], synthetic_bank().patches_by_size[48], atol=2e-3)
    assert half.stat().st_size < full.stat().st_size


def test_same_content_gives_same_bytes():
    assert synthetic_bank().to_bytes() == synthetic_bank().to_bytes()
    assert synthetic_bank(seed=1).to_bytes() != synthetic_bank().to_bytes()


def test_any_safetensors_reader_opens_a_bank(bank_file):
    from safetensors.numpy import load_file

    tensors = load_file(str(bank_file))
    assert sorted(tensors) == ["patches.32", "patches.48", "text.cls", "text.seg"]
    np.testing.assert_array_equal(tensors["patches.48"], synthetic_bank().patches_by_size[48])


@pytest.mark.parametrize("keep", [0, 5, 100, -1])
def test_truncated_file_is_rejected(bank_file, keep):
    raw = bank_file.read_bytes()
    bank_file.write_bytes(raw[:keep])
    with pytest.raises(BankFileError, match="truncated|not a fade bank"):
        load_bank(bank_file)


def test_flipped_bit_in_the_embeddings_is_rejected(bank_file):
    raw = bytearray(bank_file.read_bytes())
    raw[-7] ^= 0x01
    bank_file.write_bytes(bytes(raw))
    with pytest.raises(BankFileError, match="checksum"):
        load_bank(bank_file)


def test_edited_threshold_in_the_header_is_rejected(bank_file):
    raw = bank_file.read_bytes()
    # A value of the same length, so only the checksum can notice.
    metadata, _ = decode_container(raw, "bank")
    old = json.dumps(metadata["thresholds"]["pixel"])
    edited = raw.replace(old.encode(), old.replace("4", "9").encode(), 1)
    assert edited != raw and len(edited) == len(raw)
    bank_file.write_bytes(edited)
    with pytest.raises(BankFileError, match="modified or damaged"):
        load_bank(bank_file)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + bytes(64), b"hello world, this is text"])
def test_other_files_are_not_banks(tmp_path, content):
    path = tmp_path / "x.fadebank"
    path.write_bytes(content)
    with pytest.raises(BankFileError, match="not a fade bank"):
        load_bank(path)


def test_plain_safetensors_file_is_not_a_bank(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"w": np.zeros((2, 2), np.float32)}, str(path))
    with pytest.raises(BankFileError, match="without fade's metadata"):
        load_bank(path)


class _Trap:
    def __reduce__(self):
        return (open, ("pwned.txt", "w"))


def test_a_pickle_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.fadebank"
    path.write_bytes(pickle.dumps({"bank": _Trap()}))
    with pytest.raises(BankFileError):
        load_bank(path)
    assert not (tmp_path / "pwned.txt").exists()


def test_newer_format_version_is_refused_with_advice(tmp_path):
    metadata = synthetic_bank().metadata()
    metadata["version"] = FORMAT_VERSION + 1
    path = tmp_path / "future.fadebank"
    path.write_bytes(encode_container(metadata, synthetic_bank().tensors()))
    with pytest.raises(BankFileError, match="upgrade fade"):
        load_bank(path)


def _resigned(raw: bytes, edit) -> bytes:
    """Edit a bank's tensor index and recompute its checksum, as a forger could."""
    from fade_cli.bank.container import _checksum, canonical_json

    (length,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8 : 8 + length]), raw[8 + length :]
    metadata_block = header.pop("__metadata__")
    edit(header)
    metadata_block["fade_sha256"] = _checksum(metadata_block["fade"], header, data)
    header_bytes = canonical_json({"__metadata__": metadata_block, **header}).encode()
    return struct.pack("<Q", len(header_bytes)) + header_bytes + data


def forged_bank(path, edit_metadata_text=lambda text: text, edit_index=lambda index: None):
    """A bank whose metadata text is edited as raw JSON (NaN included) or whose tensor index is edited, with
    the checksum recomputed: what a forger, or a non-Python writer, could produce."""
    from fade_cli.bank.container import _checksum, canonical_json

    bank = synthetic_bank()
    tensors = bank.tensors()
    text = edit_metadata_text(canonical_json(bank.metadata()))
    index, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        raw = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        index[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    data = b"".join(chunks)
    edit_index(index)
    header = {"__metadata__": {"fade": text, "fade_sha256": _checksum(text, index, data)}, **index}
    header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    path.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes + data)
    return path


@pytest.mark.parametrize("damage", ["unknown_setting", "missing_size", "bad_shape", "object_dtype", "overlap"])
def test_consistent_checksum_but_malformed_content_is_refused(tmp_path, damage):
    """A file crafted with a valid checksum still has to make sense, and still loads no objects."""
    bank = synthetic_bank()
    metadata, tensors = bank.metadata(), bank.tensors()
    if damage == "unknown_setting":
        metadata["config"]["turbo"] = True
    elif damage == "missing_size":
        del tensors["patches.48"]
    elif damage == "bad_shape":
        tensors["patches.48"] = tensors["patches.48"][:, :3]
    raw = encode_container(metadata, tensors)
    if damage == "object_dtype":
        raw = _resigned(raw, lambda index: index["text.cls"].update(dtype="O"))
    elif damage == "overlap":
        raw = _resigned(raw, lambda index: index["text.cls"].update(shape=[2, DIM * 100]))
    path = tmp_path / "crafted.fadebank"
    path.write_bytes(raw)
    with pytest.raises(BankFileError, match="malformed"):
        load_bank(path)


def test_dtypes_other_than_float_cannot_be_written():
    with pytest.raises(ValueError, match="float32 or float16"):
        encode_container({}, {"x": np.zeros(3, dtype=np.int64)})
