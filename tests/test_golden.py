"""The engine reproduces the reference implementation's outputs (tests/fixtures/golden/README.md)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import CLS_PROMPTS, GOLDEN, QUERIES, SEG_PROMPTS
from fade_cli.engine import FadeEngine
from fade_cli.prompting.prompt_set import load_prompt_set

SCORE_TOL = 1e-4
MAP_TOL = 1e-3
CASES = {"zero_shot": None, "one_shot": "refs1", "two_shot": "refs2"}


@pytest.fixture(scope="module")
def golden_model():
    from fade_cli.config import EngineConfig
    from fade_cli.backbone.model import load_model
    from conftest import GOLDEN_DEVICE, MODEL_CONFIG, WEIGHTS

    config = EngineConfig(model_config=str(MODEL_CONFIG), weights=str(WEIGHTS), device=GOLDEN_DEVICE,
                          class_name="widget")
    return config, load_model(config)


def _engine(golden_model, refs):
    config, loaded = golden_model
    engine = FadeEngine.from_config(config, load_prompt_set(CLS_PROMPTS), load_prompt_set(SEG_PROMPTS), loaded=loaded)
    if refs:
        engine.add_references([Image.open(p) for p in sorted((GOLDEN / "images" / refs).glob("*.png"))])
    return engine


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.slow
def test_engine_reproduces_reference(golden_model, case):
    expected = np.load(GOLDEN / "expected" / f"{case}.npz")
    engine = _engine(golden_model, CASES[case])
    # All four queries in one batch: also checks that batching does not mix images.
    results = engine.detect([Image.open(QUERIES / name) for name in expected["files"]])

    def close(name, values, tol):
        np.testing.assert_allclose(np.asarray(values, dtype=np.float64), expected[name], atol=tol, rtol=0, err_msg=name)

    close("cls_score", [r.score for r in results], SCORE_TOL)
    close("cls_language", [r.language_score for r in results], SCORE_TOL)
    close("cls_vision", [r.vision_score for r in results], SCORE_TOL)
    close("lang_map", [r.language_map for r in results], MAP_TOL)
    close("vision_map", [r.vision_map for r in results], MAP_TOL)
    close("fused_map", [r.fused_map for r in results], MAP_TOL)
    maps = torch.from_numpy(np.stack([r.anomaly_map for r in results]))[:, None]
    fused_eval = F.interpolate(maps, size=(448, 448), mode="bilinear", align_corners=False)[:, 0].numpy()
    close("fused_eval", fused_eval, MAP_TOL)


@pytest.mark.slow
def test_batch_of_one_equals_batch_of_four(golden_model):
    engine = _engine(golden_model, "refs1")
    images = [Image.open(p) for p in sorted(QUERIES.glob("*.png"))]
    together = engine.detect(images)
    alone = [engine.detect([image])[0] for image in images[:2]]
    for a, b in zip(alone, together):
        assert abs(a.score - b.score) < 1e-5
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-5)
        if engine.device.type == "cpu":  # `fade serve` promises answers bit-equal to `fade detect` on the CPU
            assert (a.score, a.language_score, a.vision_score) == (b.score, b.language_score, b.vision_score)
            assert np.array_equal(a.anomaly_map, b.anomaly_map)


# Measured on the golden cases (benchmarks/precision_drift.py): bf16 moves scores by about 3e-3 and maps
# by about 1e-2; these bounds leave room for other devices, not for a broken path.
REDUCED_PRECISION_TOL = {"tf32": (1e-2, 2e-2), "bf16": (2e-2, 5e-2)}


@pytest.mark.parametrize("precision", sorted(REDUCED_PRECISION_TOL))
@pytest.mark.slow
def test_reduced_precision_stays_near_fp32(golden_model, precision):
    config, loaded = golden_model
    prompts = load_prompt_set(CLS_PROMPTS), load_prompt_set(SEG_PROMPTS)
    references = [Image.open(p) for p in sorted((GOLDEN / "images" / "refs1").glob("*.png"))]
    queries = [Image.open(p) for p in sorted(QUERIES.glob("*.png"))]
    results = {}
    for name in ("fp32", precision):
        engine = FadeEngine.from_config(config.replace(precision=name), *prompts, loaded=loaded)
        engine.add_references(references)
        results[name] = engine.detect(queries)
    score_tol, map_tol = REDUCED_PRECISION_TOL[precision]
    for exact, reduced in zip(results["fp32"], results[precision]):
        assert abs(exact.score - reduced.score) < score_tol
        np.testing.assert_allclose(reduced.anomaly_map, exact.anomaly_map, atol=map_tol, rtol=0)
    if precision == "tf32" and torch.device(config.device).type == "cpu":
        assert [r.score for r in results["tf32"]] == [r.score for r in results["fp32"]]  # TF32 exists on GPUs only


def test_tf32_is_allowed_while_encoding_and_restored_after(golden_model, monkeypatch):
    config, loaded = golden_model
    engine = FadeEngine.from_config(config.replace(precision="tf32"), load_prompt_set(CLS_PROMPTS),
                                    load_prompt_set(SEG_PROMPTS), loaded=loaded)
    seen = []
    real_forward = engine.encoder.forward

    def recording_forward(pixels):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return real_forward(pixels)

    monkeypatch.setattr(engine.encoder, "forward", recording_forward)
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        engine.detect([Image.open(sorted(QUERIES.glob("*.png"))[0])])
        after = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    assert seen and set(seen) == {(True, True)}
    assert after == (False, False)
