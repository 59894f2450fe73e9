"""Engine parts checked against direct, unoptimised formulas (independent of the golden files)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fade_cli.engine import text as text_module
from fade_cli.engine.gem import GemVisionEncoder, _unit_and_scaled, resample_positional_embedding
from fade_cli.engine.memory_bank import MemoryBank, top_k_similarity


def _tiny_vit(ls_init_value=None, layers=4, width=64, heads=2):
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(image_size=64, patch_size=16, width=width, layers=layers, heads=heads, mlp_ratio=2.0,
                             ls_init_value=ls_init_value, output_dim=24).eval()


def _naive_gem_reference(visual, pixels, depth, iters):
    """GEM written with explicit attention matrices, straight from FADE_SPEC section 2."""
    x = visual.conv1(pixels).flatten(2).transpose(1, 2)
    grid = int(x.shape[1] ** 0.5)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
    x = visual.ln_pre(x + resample_positional_embedding(visual.positional_embedding, grid))
    blocks = list(visual.transformer.resblocks)
    first_gem = len(blocks) - (depth - 1)
    g = None
    for i, block in enumerate(blocks):
        if i == first_gem:
            g = x
        h = block.ln_1(x)
        attn = block.attn
        b, n, w = h.shape
        heads, hd = attn.num_heads, w // attn.num_heads
        q, k, v = [t.view(b, n, heads, hd).transpose(1, 2) for t in F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)]
        if g is not None:
            t = (h.norm(dim=-1).mean(dim=1) * hd ** -0.5).view(b, 1, 1, 1)
            outs = []
            for z in (q, k, v):
                for _ in range(iters):
                    z = F.normalize(z, dim=-1)
                    z = torch.softmax(t * z @ z.transpose(-1, -2), dim=-1) @ z
                z = F.normalize(z, dim=-1)
                outs.append(torch.softmax(t * z @ z.transpose(-1, -2), dim=-1) @ v)
            o = (sum(outs) / 3).transpose(1, 2).reshape(b, n, w)
            g = g + block.ls_1(attn.out_proj(o))
        a = torch.softmax(q @ k.transpose(-1, -2) * hd ** -0.5, dim=-1) @ v
        x = x + block.ls_1(attn.out_proj(a.transpose(1, 2).reshape(b, n, w)))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    project = lambda t: F.normalize(visual.ln_post(t) @ visual.proj, dim=-1)
    return project(x), project(g)


@pytest.mark.parametrize("ls_init_value, depth, iters, size", [(None, 3, 1, 64), (0.5, 4, 2, 96), (None, 2, 0, 48)])
def test_gem_encoder_matches_explicit_attention(ls_init_value, depth, iters, size):
    visual = _tiny_vit(ls_init_value)
    pixels = torch.randn(2, 3, size, size)
    features = GemVisionEncoder(visual, depth=depth, iters=iters)(pixels)
    with torch.no_grad():
        clip_tokens, gem_tokens = _naive_gem_reference(visual, pixels, depth, iters)
    torch.testing.assert_close(features.clip_cls_bd, clip_tokens[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(features.clip_patches_bnd, clip_tokens[:, 1:], atol=1e-5, rtol=0)
    torch.testing.assert_close(features.gem_patches_bnd, gem_tokens[:, 1:], atol=1e-5, rtol=0)
    assert features.grid == size // 16


def test_gem_normalisation_is_f_normalize_in_fp32():
    z = torch.randn(6, 2, 50, 16) * 3
    unit, scaled = _unit_and_scaled(z, 2.5)
    torch.testing.assert_close(unit, F.normalize(z, dim=-1), rtol=0, atol=1e-7)
    torch.testing.assert_close(scaled, F.normalize(z, dim=-1) * 2.5, rtol=0, atol=1e-6)


def test_gem_normalisation_stays_in_bf16_under_autocast():
    # Under autocast F.normalize returns float32: GEM's large tensors would double in size.
    z = (torch.randn(6, 2, 50, 16) * 3).bfloat16()
    inv_temp = torch.rand(6, 1, 1, 1) + 1.0  # float32, as the engine keeps it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        unit, scaled = _unit_and_scaled(z, inv_temp)
    assert unit.dtype == scaled.dtype == torch.bfloat16
    exact = F.normalize(z.float(), dim=-1)
    # Two roundings at most: each row's scale to bf16 (fast same-dtype arithmetic), then each element.
    torch.testing.assert_close(unit.float(), exact, rtol=2**-7, atol=1e-6)
    torch.testing.assert_close(scaled.float(), exact * inv_temp, rtol=2**-7, atol=1e-6)


def test_positional_embedding_keeps_class_position_and_size():
    pos = torch.randn(1 + 4 * 4, 8)
    resized = resample_positional_embedding(pos, 7)
    assert resized.shape == (1 + 49, 8)
    assert torch.equal(resized[0], pos[0])
    assert resample_positional_embedding(pos, 4) is pos


@pytest.mark.parametrize("search_dtype", [torch.float32, torch.bfloat16])
def test_top_k_similarity_chunks_agree_with_full_matrix(monkeypatch, search_dtype):
    torch.manual_seed(1)
    queries = F.normalize(torch.randn(50, 16), dim=-1)
    bank = F.normalize(torch.randn(300, 16), dim=-1)
    full = (queries @ bank.T).topk(3, dim=1).values
    monkeypatch.setattr("fade_cli.engine.memory_bank.QUERY_CHUNK", 7)
    monkeypatch.setattr("fade_cli.engine.memory_bank.BANK_CHUNK", 64)
    low = None if search_dtype == torch.float32 else bank.to(search_dtype)
    found = top_k_similarity(queries, bank, 3, low)
    # In bf16 too: float32 similarities of the neighbours, not the bf16 products' rounded values.
    assert found.dtype == torch.float32
    torch.testing.assert_close(found, full, atol=1e-6, rtol=0)


def test_memory_bank_casts_its_patches_once_per_precision_and_again_after_an_add():
    torch.manual_seed(3)
    bank = MemoryBank({64: F.normalize(torch.randn(40, 8), dim=-1)})
    queries = F.normalize(torch.randn(1, 6, 8), dim=-1)
    exact = bank.patch_distances(64, queries, use_query=False)
    low = bank.patch_distances(64, queries, use_query=False, search_dtype=torch.bfloat16)
    torch.testing.assert_close(low, exact, atol=1e-6, rtol=0)
    cast = bank._low_precision[(64, torch.bfloat16)]
    bank.patch_distances(64, queries, use_query=False, search_dtype=torch.bfloat16)
    assert bank._low_precision[(64, torch.bfloat16)] is cast
    bank.add(64, queries)  # the query's own patches join the bank: distance 0
    assert bank.patch_distances(64, queries, use_query=False, search_dtype=torch.bfloat16).abs().max() < 1e-6


def test_memory_bank_uses_second_neighbour_with_query_patches():
    patches = F.normalize(torch.randn(1, 5, 4), dim=-1)
    bank = MemoryBank()
    # Only the query itself: the 1st neighbour of each patch is itself, so the 2nd must be used.
    distances = bank.patch_distances(64, patches, use_query=True)
    sims = patches[0] @ patches[0].T
    expected = 0.5 * (1 - sims.topk(2, dim=1).values[:, 1])
    torch.testing.assert_close(distances[0], expected)
    # References only: an identical reference patch gives distance 0.
    bank.add(64, patches)
    assert bank.patch_distances(64, patches, use_query=False).abs().max() < 1e-6


def test_trimmed_text_encoding_equals_open_clip(tiny_config):
    from fade_cli.backbone.model import load_model

    loaded = load_model(tiny_config)
    tokens = loaded.tokenizer(["a photo of a cracked widget.", "x", "a long sentence " * 10])
    with torch.no_grad():
        full = loaded.model.encode_text(tokens)
        trimmed = text_module._encode_trimmed(loaded.model, tokens)
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=0)


def test_text_embeddings_are_cached_on_disk(tiny_config, tmp_path, monkeypatch):
    from fade_cli.engine.detector import encode_prompt_sets
    from fade_cli.backbone.model import load_model
    from fade_cli.prompting.prompt_set import PromptSet

    config = tiny_config.replace(cache_dir=str(tmp_path))
    loaded = load_model(config)
    prompts = PromptSet(normal=("a good {classname}",), abnormal=("a broken {classname}",))
    first = encode_prompt_sets(loaded, config, prompts, prompts)
    assert len(list((tmp_path / "text-embeddings").glob("*.npy"))) == 2

    def text_tower_must_not_run(*args, **kwargs):
        raise AssertionError("text tower ran although the embeddings are cached")

    monkeypatch.setattr("fade_cli.engine.detector.text_classifier", text_tower_must_not_run)
    second = encode_prompt_sets(loaded, config, prompts, prompts)
    torch.testing.assert_close(second[0], first[0])
    with pytest.raises(AssertionError, match="text tower ran"):
        encode_prompt_sets(loaded, config, PromptSet(normal=("new",), abnormal=("sentences",)), prompts)


def test_cached_prompts_load_only_the_vision_tower(tiny_config, tmp_path, caplog):
    from PIL import Image

    from conftest import QUERIES
    from fade_cli.engine.detector import FadeEngine

    config = tiny_config.replace(cache_dir=str(tmp_path), seg_sizes=(240,))
    image = Image.open(sorted(QUERIES.glob("*.png"))[0])
    first = FadeEngine.from_config(config)
    assert first.loaded.has_text_tower
    caplog.clear()
    second = FadeEngine.from_config(config)
    assert not second.loaded.has_text_tower
    assert "No pretrained weights" not in caplog.text  # open_clip's warning; the weights are loaded after it
    assert all(p.is_meta for p in second.loaded.model.transformer.parameters())
    [a], [b] = first.detect([image]), second.detect([image])
    assert a.score == b.score
    assert (a.anomaly_map == b.anomaly_map).all()


@pytest.mark.parametrize("image_score", ["language", "vision", "mean"])
def test_image_score_modes(tiny_config, image_score):
    from PIL import Image

    from conftest import GOLDEN, QUERIES
    from fade_cli.engine.detector import FadeEngine

    config = tiny_config.replace(seg_sizes=(240,), image_score=image_score)
    engine = FadeEngine.from_config(config)
    engine.add_references([Image.open(sorted((GOLDEN / "images" / "refs1").glob("*.png"))[0])])
    [result] = engine.detect([Image.open(sorted(QUERIES.glob("*.png"))[0])])
    expected = {"language": result.language_score, "vision": result.vision_score,
                "mean": (result.language_score + result.vision_score) / 2}[image_score]
    assert result.score == pytest.approx(min(max(expected, 0.0), 1.0), abs=1e-6)
    assert result.vision_score == pytest.approx(float(result.vision_map.max()), abs=1e-6)


def test_other_architecture_patch_14_with_sizes_not_divisible(tmp_path):
    """A ViT with 14-pixel patches at 240 px (17 x 17 patches, 2 px unused) and 448 px (32 x 32)."""
    import json

    import open_clip
    from PIL import Image

    from conftest import QUERIES
    from fade_cli.config import EngineConfig
    from fade_cli.engine.detector import FadeEngine

    config_path = tmp_path / "tiny-vit-14.json"
    config_path.write_text(json.dumps({
        "embed_dim": 16,
        "vision_cfg": {"image_size": 224, "layers": 3, "width": 32, "head_width": 16, "patch_size": 14},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
    }))
    open_clip.add_model_config(config_path)
    torch.manual_seed(0)
    weights = tmp_path / "tiny-vit-14.pt"
    torch.save(open_clip.create_model("tiny-vit-14").state_dict(), weights)

    config = EngineConfig(model_config=str(config_path), weights=str(weights), device="cpu", cls_size=240,
                          seg_sizes=(240, 448), gem_depth=3, cache_dir=str(tmp_path / "cache"))
    engine = FadeEngine.from_config(config)
    engine.add_references([Image.open(sorted(QUERIES.glob("*.png"))[2])])
    [result] = engine.detect([Image.open(sorted(QUERIES.glob("*.png"))[0])])
    assert result.anomaly_map.shape == (32, 32)
    assert 0.0 <= result.score <= 1.0
    assert engine.bank.patches_by_size[240].shape == (17 * 17, 16)


@pytest.mark.slow
def test_compiled_engine_gives_the_same_results(tiny_config):
    """--compile (torch.compile of the vision tower) changes speed, not results (about a minute on a CPU)."""
    from PIL import Image

    from conftest import QUERIES
    from fade_cli.engine.detector import FadeEngine

    image = Image.open(sorted(QUERIES.glob("*.png"))[0])
    config = tiny_config.replace(seg_sizes=(240,))
    [eager] = FadeEngine.from_config(config).detect([image])
    [compiled] = FadeEngine.from_config(config.replace(compile=True)).detect([image])
    assert compiled.score == pytest.approx(eager.score, abs=1e-5)
    np.testing.assert_allclose(compiled.anomaly_map, eager.anomaly_map, atol=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("batch", [1, 2])  # tensors' strides differ for a batch of one
def test_vision_tower_compiles_as_one_graph(tiny_config, precision, batch):
    """A graph break would make --compile fall back to eager for the whole forward, silently."""
    from fade_cli.engine.detector import FadeEngine

    engine = FadeEngine.from_config(tiny_config.replace(precision=precision))
    pixels = torch.randn(batch, 3, 64, 64)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(engine.encoder)(pixels)
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_batch_size_defaults_to_one_on_a_cpu_and_follows_the_config(tiny_config):
    from fade_cli.engine.detector import FadeEngine

    engine = FadeEngine.from_config(tiny_config)
    assert tiny_config.batch_size is None and engine.batch_size == 1
    chosen = FadeEngine(engine.loaded, tiny_config.replace(batch_size=5), engine.cls_classifier_2d,
                        engine.seg_classifier_2d)
    assert chosen.batch_size == 5


def test_file_hash_is_read_once_per_version_of_the_file(tmp_path, monkeypatch):
    import builtins
    import hashlib
    import os

    from fade_cli.backbone import file_hash

    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"a" * 1000)
    real_path = os.path.realpath(weights)
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))

    first = file_hash.file_sha256(str(weights))
    assert file_hash.file_sha256(str(weights)) == first == hashlib.sha256(b"a" * 1000).hexdigest()
    assert opened.count(real_path) == 1

    weights.write_bytes(b"b" * 1000)  # same size, rewritten in place
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # a later mtime even on coarse clocks
    assert file_hash.file_sha256(str(weights)) == hashlib.sha256(b"b" * 1000).hexdigest()
    assert opened.count(real_path) == 2
