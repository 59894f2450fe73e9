"""An engine ready to score, less the model's weights: captured from an engine, rebuilt on a loaded model."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import GOLDEN, QUERIES

REFS = sorted((GOLDEN / "images" / "refs2").glob("*.png"))


@pytest.fixture(scope="module")
def few_shot_in_region(tmp_path_factory):
    """The tiny model's few-shot engine, its references cut to an ROI (so its bank keeps patch counts)."""
    from fade_cli.config import EngineConfig
    from fade_cli.engine import FadeEngine
    from fade_cli.io.images import ImageFile
    from fade_cli.io.roi import region_plan
    from fade_cli.runs.runner import load_references
    from conftest import MODEL_CONFIG, WEIGHTS

    roi = tmp_path_factory.mktemp("roi") / "roi.json"
    roi.write_text(json.dumps({"units": "relative", "include": [{"rect": [0.1, 0.2, 0.8, 0.9]}]}))
    config = EngineConfig(model_config=str(MODEL_CONFIG), weights=str(WEIGHTS), device="cpu", class_name="widget",
                          seg_sizes=(240,), cls_size=240)
    engine = FadeEngine.from_config(config)
    engine.regions = region_plan(roi)
    load_references(engine, [ImageFile(Path(path), Path(path).name) for path in REFS])
    return engine


def _scores(engine):
    from fade_cli.io.images import load_image
    from fade_cli.runs.runner import score_images

    paths = sorted(QUERIES.glob("*.png"))[:2]
    return score_images(engine, [(path.name, str(path), load_image(path)) for path in paths])


def test_a_rebuilt_engine_scores_like_the_one_captured(few_shot_in_region):
    from fade_cli.engine.prepared import PreparedEngine

    engine = few_shot_in_region
    prepared = PreparedEngine.of(engine)
    again = prepared.engine(engine.loaded)
    assert again is not engine and again.regions == engine.regions
    assert again.reference_count == engine.reference_count == len(REFS)
    assert again.bank.counts_by_size == engine.bank.counts_by_size
    assert all(torch_equal(again.bank.patches_by_size[size], patches)
               for size, patches in engine.bank.patches_by_size.items())
    for rebuilt, original in zip(_scores(again), _scores(engine)):
        assert (rebuilt.score, rebuilt.vision_score) == (original.score, original.vision_score)
        assert np.array_equal(rebuilt.anomaly_map, original.anomaly_map)
    # The rebuilt engine's bank grows on its own: the prepared parts are not shared with it.
    again.bank.add(240, again.bank.patches_by_size[240][None, :3])
    assert prepared.counts_by_size[240] == engine.bank.counts_by_size[240]


def test_another_model_is_refused_with_the_callers_error(few_shot_in_region):
    from fade_cli.core.errors import InputError, ModelError
    from fade_cli.engine.prepared import PreparedEngine

    prepared = PreparedEngine.of(few_shot_in_region)
    other = replace(prepared, identity=dict(prepared.identity, weights_sha256="f" * 64))
    with pytest.raises(ModelError, match="prepared with the model"):
        other.engine(few_shot_in_region.loaded)

    def refuse(expected, loaded):
        return InputError(f"expected {expected['weights_sha256'][:4]}, got {loaded['weights_sha256'][:4]}")

    with pytest.raises(InputError, match="expected ffff, got "):
        other.engine(few_shot_in_region.loaded, refuse)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a.cpu(), b.cpu()))
