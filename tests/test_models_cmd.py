"""`fade models list/download/path`, `--offline`, and bad model configs (no network, no real weights)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import MODEL_CONFIG, QUERIES, WEIGHTS, run_cli as run

DEFAULT_REPO = "models--timm--vit_base_patch16_plus_clip_240.laion400m_e31"


def fake_hub_download(cache, repo_folder=DEFAULT_REPO, filename="open_clip_pytorch_model.bin", size=1234):
    """What a finished Hugging Face download leaves in a cache folder (a snapshot and refs/main)."""
    snapshot = cache / repo_folder / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / filename).write_bytes(b"\0" * size)
    (cache / repo_folder / "refs").mkdir()
    (cache / repo_folder / "refs" / "main").write_text("0123abcd")
    return snapshot / filename


def test_path_is_the_fade_cache_dir_or_the_option():
    assert run(["models", "path"]).output.strip() == os.environ["FADE_CACHE_DIR"]
    assert run(["models", "path", "--cache-dir", "/srv/models"]).output.strip() == "/srv/models"


def test_path_falls_back_to_hf_home(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("FADE_CACHE_DIR", "HF_HUB_CACHE")}
    env["HF_HOME"] = str(tmp_path / "hf")
    out = subprocess.run([sys.executable, "-m", "fade_cli", "models", "path"], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == str(tmp_path / "hf" / "hub")


def test_list_reports_cached_weights_and_sizes_without_network(tmp_path):
    fake_hub_download(tmp_path, size=4321)
    result = run(["models", "list", "--cache-dir", tmp_path, "--format", "jsonl"])
    assert result.exit_code == 0
    rows = {(r["model"], r["pretrained"]): r for r in map(json.loads, result.output.splitlines())}
    default = rows[("ViT-B-16-plus-240", "laion400m_e31")]
    assert default["cached"] and default["size_bytes"] == 4321 and default["path"].endswith(".bin")
    assert not rows[("ViT-B-32", "openai")]["cached"]
    assert all(r["fade_compatible"] for r in rows.values())  # ResNets and timm towers only with --all
    cached = run(["models", "list", "--cache-dir", tmp_path, "--cached", "--format", "jsonl"])
    assert {json.loads(line)["model"] for line in cached.output.splitlines()} == {"ViT-B-16-plus-240"}
    table = run(["models", "list", "--cache-dir", tmp_path, "--cached"])
    assert "laion400m_e31 (default)" in table.output and "yes" in table.output


def test_list_all_marks_what_fade_cannot_run():
    rows = [json.loads(line) for line in run(["models", "list", "--all", "--format", "jsonl"]).output.splitlines()]
    resnet = [r for r in rows if r["model"] == "RN50"]
    assert resnet and not resnet[0]["fade_compatible"]


def test_download_offline_says_how_to_prepare_a_station(monkeypatch):
    from huggingface_hub import constants

    # HF_HUB_OFFLINE=1 (conftest) set after the hub was imported without it: fade still obeys it.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    result = run(["models", "download", "ViT-B-16-plus-240", "--pretrained", "laion400m_e31"])
    assert result.exit_code == 3
    assert "offline mode is on" in result.output and "copy that cache folder here" in result.output


def test_download_offline_with_the_weights_cached_just_points_at_them(tmp_path):
    weights = fake_hub_download(tmp_path)
    result = run(["models", "download", "ViT-B-16-plus-240", "--pretrained", "laion400m_e31", "--cache-dir", tmp_path])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(weights)


@pytest.mark.parametrize("model, tag, message", [
    ("ViT-B-16-plus-240", "nope", "unknown pretrained tag 'nope'"),
    ("ViT-Q-99", "openai", "unknown model architecture 'ViT-Q-99'"),
])
def test_download_refuses_unknown_names(model, tag, message):
    result = run(["models", "download", model, "--pretrained", tag])
    assert result.exit_code == 2 and message in result.output


def test_offline_flag_forbids_the_network_before_any_download(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    result = run(["detect", QUERIES / "good_a.png", "--offline", "--device", "cpu", "--cache-dir", tmp_path,
                  "--scales", "240"])
    assert result.exit_code == 3
    assert "not in the cache" in result.output and "fade models download" in result.output
    assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE is True


def _config_variant(tmp_path, name, edit):
    data = json.loads(MODEL_CONFIG.read_text())
    edit(data)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("case, code, message", [
    ("not_json", 2, "is not valid JSON"),
    ("missing_keys", 2, "lacks vision_cfg"),
    ("resnet", 2, "must describe a ViT"),
    ("wrong_width", 3, "cannot load weights"),
])
def test_bad_model_config_is_refused_with_a_message(tmp_path, case, code, message):
    if case == "not_json":
        config = tmp_path / "broken.json"
        config.write_text('{"embed_dim": 32, "vision_cfg": ')
    elif case == "missing_keys":
        config = _config_variant(tmp_path, "half", lambda d: d.pop("vision_cfg"))
    elif case == "resnet":
        config = _config_variant(tmp_path, "resnetish", lambda d: d["vision_cfg"].pop("patch_size"))
    else:
        config = _config_variant(tmp_path, "wider", lambda d: d["vision_cfg"].update(width=96))
    result = run(["detect", QUERIES / "good_a.png", "--model-config", config, "--weights", WEIGHTS,
                  "--device", "cpu", "--scales", "240"])
    assert result.exit_code == code
    assert message in result.output and "Traceback" not in result.output
