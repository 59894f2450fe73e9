"""Start-up: the model built without random initialisation, open_clip imported without transformers,
a weights file hashed only when its identity is asked for (and then remembered on disk), and the
commands' help without torch. Times are in benchmarks/bench_startup.py; these tests check behaviour."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import MODEL_CONFIG, WEIGHTS
from fade_cli.config import EngineConfig
from fade_cli.core.errors import ModelError


def tiny_config(tmp_path, weights=WEIGHTS) -> EngineConfig:
    return EngineConfig(model_config=str(MODEL_CONFIG), weights=str(weights), device="cpu",
                        cache_dir=str(tmp_path / "cache"))


def reference_model():
    """The golden model as open_clip itself builds and loads it (random initialisation, then the weights)."""
    import open_clip

    from fade_cli.backbone.model import register_model_config

    name = register_model_config(str(MODEL_CONFIG))
    return open_clip.create_model(name, pretrained=str(WEIGHTS)).eval()


def golden_state() -> dict[str, torch.Tensor]:
    return torch.load(WEIGHTS, map_location="cpu", weights_only=True)


# --- building the model ---------------------------------------------------------------------------
@pytest.mark.parametrize("text_tower", [True, False])
def test_the_model_is_built_without_drawing_random_numbers(tmp_path, monkeypatch, text_tower):
    """Random initialisation of a ViT-B costs seconds and is thrown away: no init function runs on a real tensor."""
    from fade_cli.backbone.model import load_model

    initialised = []
    for name in ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "xavier_uniform_", "constant_"):
        real = getattr(torch.nn.init, name)

        def spy(tensor, *args, _real=real, _name=name, **kwargs):
            if not tensor.is_meta:
                initialised.append(_name)
            return _real(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.nn.init, name, spy)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    loaded = load_model(tiny_config(tmp_path), text_tower=text_tower)
    assert initialised == []
    assert torch.equal(torch.random.get_rng_state(), before)  # not one random number drawn
    assert loaded.has_text_tower is text_tower


def test_the_full_model_equals_open_clips_own_loading_bit_for_bit(tmp_path):
    """Every parameter and buffer, the text tower's causal mask (not in checkpoints) included."""
    from fade_cli.backbone.model import load_model

    ours = load_model(tiny_config(tmp_path)).model
    theirs = reference_model()
    ours_tensors = {**dict(ours.named_parameters()), **dict(ours.named_buffers())}
    theirs_tensors = {**dict(theirs.named_parameters()), **dict(theirs.named_buffers())}
    assert ours_tensors.keys() == theirs_tensors.keys() and "attn_mask" in ours_tensors
    for name, tensor in theirs_tensors.items():
        assert ours_tensors[name].dtype == tensor.dtype and torch.equal(ours_tensors[name], tensor), name
    tokens = torch.randint(0, 400, (2, 77))
    with torch.no_grad():
        assert torch.equal(ours.encode_text(tokens), theirs.encode_text(tokens))


def test_the_vision_only_model_leaves_the_text_tower_unread(tmp_path):
    from fade_cli.backbone.model import load_model

    model = load_model(tiny_config(tmp_path), text_tower=False).model
    assert all(not p.is_meta for p in model.visual.parameters())
    assert model.token_embedding.weight.is_meta and model.text_projection.is_meta


@pytest.mark.parametrize("form", ["safetensors", "legacy-pickle", "nested-state-dict", "module-prefix", "fp16"])
@pytest.mark.parametrize("text_tower", [True, False])
def test_checkpoints_in_every_form_open_clip_reads_load_the_same_weights(tmp_path, form, text_tower):
    """Formats and key spellings open_clip's load_checkpoint accepts; fp16 weights become the model's float32."""
    from fade_cli.backbone.model import load_model

    state = golden_state()
    path = tmp_path / f"weights-{form}.pt"
    if form == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif form == "legacy-pickle":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    elif form == "nested-state-dict":
        torch.save({"state_dict": state, "epoch": 3}, path)
    elif form == "module-prefix":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        torch.save(state, path)
    model = load_model(tiny_config(tmp_path, path), text_tower=text_tower).model
    expected = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    loaded = model.state_dict()
    for name, tensor in expected.items():
        if text_tower or name.startswith("visual."):
            assert loaded[name].dtype == torch.float32 or not tensor.is_floating_point(), name
            assert torch.equal(loaded[name], tensor), name


@pytest.mark.parametrize("text_tower", [True, False])
def test_weights_of_another_model_are_refused_with_the_model_error(tmp_path, text_tower):
    from fade_cli.backbone.model import load_model

    state = golden_state()
    state["visual.proj"] = torch.zeros(3, 3)
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    with pytest.raises(ModelError, match="cannot load weights .*wrong.pt into fade-golden: .*visual|proj"):
        load_model(tiny_config(tmp_path, path), text_tower=text_tower)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_weights_file_rewritten_in_place_changes_nothing_in_a_loaded_model(tmp_path, suffix):
    """`cp new.pt weights.pt` while a server runs truncates the file it loaded: memory-mapped weights
    would crash the process (SIGBUS) or change under it; a subprocess, so that a crash fails the test."""
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pt":
        path.write_bytes(WEIGHTS.read_bytes())
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in golden_state().items()}, str(path))
    code = (
        "import torch\n"
        "from fade_cli.config import EngineConfig\n"
        "from fade_cli.backbone.model import load_model\n"
        f"config = EngineConfig(model_config={str(MODEL_CONFIG)!r}, weights={str(path)!r}, device='cpu',"
        f" cache_dir={str(tmp_path / 'cache')!r})\n"
        "for text_tower in (True, False):\n"
        "    model = load_model(config, text_tower=text_tower).model\n"
        "    before = {k: v.clone() for k, v in model.visual.state_dict().items()}\n"
        f"    open({str(path)!r}, 'wb').close()\n"
        "    assert all(torch.equal(before[k], v) for k, v in model.visual.state_dict().items())\n"
        f"    open({str(path)!r}, 'wb').write(open({str(tmp_path / 'keep')!r}, 'rb').read())\n"
    )
    (tmp_path / "keep").write_bytes(path.read_bytes())
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("extra", [{"epoch": 3}, {"visual.proj": 5}])
def test_a_checkpoint_with_values_that_are_not_weights_is_refused_with_the_model_error(tmp_path, extra):
    from fade_cli.backbone.model import load_model

    path = tmp_path / "odd.pt"
    torch.save({**golden_state(), **extra}, path)
    with pytest.raises(ModelError, match="cannot load weights .*odd.pt into fade-golden: "):
        load_model(tiny_config(tmp_path, path))


def test_a_checkpoint_without_vision_weights_is_refused_with_the_model_error(tmp_path):
    from fade_cli.backbone.model import load_model

    path = tmp_path / "text-only.pt"
    torch.save({k: v for k, v in golden_state().items() if not k.startswith("visual.")}, path)
    with pytest.raises(ModelError, match="cannot load weights .*text-only.pt into fade-golden: .*no visual"):
        load_model(tiny_config(tmp_path, path), text_tower=False)


def test_bank_runs_read_only_the_vision_tower(tmp_path):
    """A bank holds the prompt embeddings: its runs never read the text tower's weights."""
    from rich.console import Console

    from conftest import GOLDEN
    from fade_cli.bank.engine_bridge import bank_from_engine
    from fade_cli.cli.engine_setup import engines_for_banks
    from fade_cli.engine.detector import FadeEngine
    from fade_cli.io.images import ImageFile
    from fade_cli.prompting.prompt_set import default_prompt_sets
    from fade_cli.runs.runner import load_references

    config = tiny_config(tmp_path).replace(seg_sizes=(240,), cls_size=240)
    engine = FadeEngine.from_config(config)
    refs = [ImageFile(p, p.name) for p in sorted((GOLDEN / "images" / "refs1").glob("*.png"))]
    load_references(engine, refs)
    bank = bank_from_engine(engine, *default_prompt_sets(), refs)
    [served] = engines_for_banks([(bank, config, "widget.fadebank")], Console(stderr=True), quiet=True)
    assert not served.loaded.has_text_tower and served.loaded.model.token_embedding.weight.is_meta


# --- hashing the weights --------------------------------------------------------------------------
@pytest.fixture
def counted_hashing(monkeypatch):
    """The weights files actually read to hash them."""
    from fade_cli.backbone import file_hash

    read = []
    real = file_hash._sha256_of_version.__wrapped__

    def counting(path, *version):
        read.append(path)
        return real(path, *version)

    monkeypatch.setattr(file_hash, "_sha256_of_version", counting)
    return read


def test_resolving_the_model_does_not_hash_the_weights(tmp_path, counted_hashing):
    from fade_cli.backbone.model import resolve_model_source

    source = resolve_model_source(tiny_config(tmp_path))
    assert counted_hashing == []
    assert len(source.identity["weights_sha256"]) == 64 and len(counted_hashing) == 1
    assert source.identity["weights_sha256"] and len(counted_hashing) == 1  # once per source


def test_the_hash_memo_answers_later_runs_and_forgets_a_changed_file(tmp_path, counted_hashing):
    import hashlib

    from fade_cli.backbone.file_hash import weights_sha256

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"a" * 4096)
    cache = str(tmp_path / "cache")
    assert weights_sha256(str(weights), cache) == hashlib.sha256(b"a" * 4096).hexdigest()
    assert weights_sha256(str(weights), cache) == hashlib.sha256(b"a" * 4096).hexdigest()
    assert len(counted_hashing) == 1  # the second answer came from the memo (the in-process cache is bypassed here)
    [memo] = (tmp_path / "cache" / "file-hashes").iterdir()
    assert json.loads(memo.read_text())["path"] == os.path.realpath(weights)

    stat = weights.stat()
    weights.write_bytes(b"b" * 4096)  # same size, rewritten in place, mtime set back: the change time differs
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights_sha256(str(weights), cache) == hashlib.sha256(b"b" * 4096).hexdigest()
    assert len(counted_hashing) == 2
    assert weights_sha256(str(weights), cache) == hashlib.sha256(b"b" * 4096).hexdigest()
    assert len(counted_hashing) == 2


@pytest.mark.parametrize("damage", [
    "not json", "[]", '{"format": "fade-file-sha256"}', "lie", "bad-digest", "extra-field", "huge"])
def test_a_damaged_or_lying_memo_is_ignored_and_replaced(tmp_path, counted_hashing, damage):
    import hashlib

    from fade_cli.backbone.file_hash import weights_sha256

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"a" * 100)
    cache = str(tmp_path / "cache")
    truth = weights_sha256(str(weights), cache)
    [memo] = (tmp_path / "cache" / "file-hashes").iterdir()
    entry = json.loads(memo.read_text())
    if damage == "lie":
        entry["size"] = 5
        text = json.dumps({**entry, "sha256": "0" * 64})
    elif damage == "bad-digest":
        text = json.dumps({**entry, "sha256": "../../etc"})
    elif damage == "extra-field":
        text = json.dumps({**entry, "sha256": "0" * 64, "trusted": True})
    elif damage == "huge":
        text = json.dumps({**entry, "sha256": "0" * 64, "path": "x" * 100_000})
    else:
        text = damage
    memo.write_text(text)
    assert weights_sha256(str(weights), cache) == truth == hashlib.sha256(b"a" * 100).hexdigest()
    assert len(counted_hashing) == 2
    assert json.loads(memo.read_text())["sha256"] == truth  # replaced by a good one


def test_an_unwritable_cache_folder_only_costs_the_memo(tmp_path, counted_hashing):
    import hashlib

    from fade_cli.backbone.file_hash import weights_sha256

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"a" * 100)
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    assert weights_sha256(str(weights), str(blocker)) == hashlib.sha256(b"a" * 100).hexdigest()


def test_a_bank_run_hashes_the_weights_once_and_the_next_run_not_at_all(tmp_path, counted_hashing):
    """The bank's identity check needs the hash: the first run reads the file, the memo answers the next."""
    from fade_cli.backbone.model import resolve_model_source

    config = tiny_config(tmp_path)
    first = resolve_model_source(config).identity
    second = resolve_model_source(config).identity
    assert first == second and counted_hashing == [os.path.realpath(WEIGHTS)]


# --- imports --------------------------------------------------------------------------------------
def imported_after(code: str) -> set[str]:
    """The top-level modules a fresh interpreter has imported after running ``code``."""
    script = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("args", [["--help"], ["detect", "--help"], ["serve", "--help"], ["bank", "build", "--help"],
                                  ["eval", "--help"], ["watch", "--help"], ["models", "--help"], ["report", "--help"]])
def test_help_imports_neither_torch_nor_open_clip(args):
    modules = imported_after(
        f"import sys\nsys.argv = ['fade', *{args!r}]\nfrom fade_cli.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass")
    assert "torch" not in modules and "open_clip" not in modules and "transformers" not in modules


@pytest.mark.slow
def test_open_clip_is_imported_without_transformers_and_timm_which_stay_importable():
    modules = imported_after(
        "from fade_cli.backbone.open_clip_import import open_clip_module\nopen_clip = open_clip_module()\n"
        "assert open_clip.hf_model.transformers is None and open_clip.timm_model.timm is None\n"
        "import sys; assert 'transformers' not in sys.modules and 'timm' not in sys.modules\n")
    assert "open_clip" in modules and "transformers" not in modules and "timm" not in modules
    imported_after("from fade_cli.backbone.open_clip_import import open_clip_module\nopen_clip_module()\n"
                   "import transformers, timm\nassert transformers.AutoConfig and timm.create_model")


@pytest.mark.parametrize("architecture, library, adapter, name", [
    ("roberta-ViT-B-32", "transformers", "hf_model", "HFTextEncoder"),
    ("ViT-B-16-SigLIP", "timm", "timm_model", "TimmModel"),
])
def test_a_tower_of_an_optional_library_gets_it_back_in_open_clip(architecture, library, adapter, name):
    """open_clip's adapter module runs again, and the class open_clip's model module holds sees the library."""
    imported_after(
        "from fade_cli.backbone.open_clip_import import backends_needed, enable_backends_for, open_clip_module\n"
        "open_clip = open_clip_module()\n"
        f"config = open_clip.get_model_config({architecture!r})\n"
        f"assert backends_needed(config) == [{library!r}]\n"
        "assert backends_needed(open_clip.get_model_config('ViT-B-16-plus-240')) == []\n"
        "enable_backends_for(config)\n"
        f"import {library}, open_clip.model\n"
        f"assert open_clip.{adapter}.{library} is {library}\n"
        f"assert open_clip.model.{name}.__init__.__globals__[{library!r}] is {library}\n")


@pytest.mark.slow
def test_a_bank_run_imports_neither_transformers_nor_timm(tmp_path):
    """`fade detect --bank` end to end, in its own process."""
    from conftest import FAST_ARGS, GOLDEN, QUERIES

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    bank = tmp_path / "w.fadebank"
    subprocess.run([sys.executable, "-m", "fade_cli", "bank", "build", str(GOLDEN / "images" / "refs1"), "--class",
                    "widget", "-q", "--out", str(bank), *FAST_ARGS], check=True, env=env, capture_output=True)
    query = sorted(QUERIES.glob("*.png"))[0]
    modules = imported_after(
        f"import sys\nsys.argv = ['fade', 'detect', {str(query)!r}, '--bank', {str(bank)!r}, '-q', '--no-report',"
        f" '--out', {str(tmp_path / 'run')!r}]\nfrom fade_cli.cli import main\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code in (0, 1), exc.code")
    assert "open_clip" in modules and "transformers" not in modules and "timm" not in modules
