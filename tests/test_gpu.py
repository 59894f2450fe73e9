"""On a CUDA device: the engine's stages run without waiting on the host.

Skipped where there is no GPU (CI has none); `benchmarks/gpu_check.sh` runs it
on a lent GPU together with the golden cases on CUDA.
"""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from conftest import GOLDEN, QUERIES, WEIGHTS, MODEL_CONFIG
from fade_cli.engine import detector

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(params=["zero_shot", "one_shot"])
def cuda_engine(request):
    from fade_cli.config import EngineConfig

    config = EngineConfig(model_config=str(MODEL_CONFIG), weights=str(WEIGHTS), device="cuda", class_name="widget",
                          batch_size=4)
    engine = detector.FadeEngine.from_config(config)
    if request.param == "one_shot":
        engine.add_references([Image.open(p) for p in sorted((GOLDEN / "images" / "refs1").glob("*.png"))])
    return engine


def test_no_host_synchronisation_before_the_results_are_copied_back(cuda_engine, monkeypatch):
    queries = [Image.open(p) for p in sorted(QUERIES.glob("*.png"))]
    pixels = cuda_engine.prepare(queries)
    cuda_engine.detect_prepared(pixels)  # warm-up: per-device constants and kernels are made once
    real_assemble = detector._assemble

    def assemble_with_checks_off(*args):
        torch.cuda.set_sync_debug_mode("default")  # copying the results to the host is the one sync meant
        return real_assemble(*args)

    monkeypatch.setattr(detector, "_assemble", assemble_with_checks_off)
    torch.cuda.set_sync_debug_mode("error")
    try:
        results = cuda_engine.detect_prepared(pixels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(results) == len(queries)


def test_default_batch_size_on_a_gpu_is_eight(cuda_engine):
    engine = detector.FadeEngine(cuda_engine.loaded, cuda_engine.config.replace(batch_size=None),
                                 cuda_engine.cls_classifier_2d, cuda_engine.seg_classifier_2d)
    assert engine.batch_size == detector.GPU_BATCH_SIZE == 8


def test_prepared_batches_are_pinned_for_asynchronous_copies(cuda_engine):
    pixels = cuda_engine.prepare([Image.open(p) for p in sorted(QUERIES.glob("*.png"))])
    assert all(tensor.is_pinned() and tensor.dtype == torch.uint8 for tensor in pixels.values())
