"""How far reduced-precision maps and scores are from fp32 on the golden cases (prints, asserts nothing).

    python benchmarks/precision_drift.py --device cpu --precisions bf16
    python benchmarks/precision_drift.py --device cuda --precisions bf16,fp16
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "golden"
CASES = {"zero_shot": None, "one_shot": "refs1", "two_shot": "refs2"}


def run_case(config, loaded, refs):
    from fade_cli.engine.detector import FadeEngine
    from fade_cli.prompting.prompt_set import load_prompt_set

    engine = FadeEngine.from_config(config, load_prompt_set(GOLDEN / "prompts" / "cls.json"),
                                    load_prompt_set(GOLDEN / "prompts" / "seg.json"), loaded=loaded)
    if refs:
        engine.add_references([Image.open(p) for p in sorted((GOLDEN / "images" / refs).glob("*.png"))])
    return engine.detect([Image.open(p) for p in sorted((GOLDEN / "images" / "queries").glob("*.png"))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="bf16")
    args = parser.parse_args()

    from fade_cli.config import EngineConfig
    from fade_cli.backbone.model import load_model

    config = EngineConfig(model_config=str(GOLDEN / "model" / "fade-golden.json"),
                          weights=str(GOLDEN / "model" / "fade-golden-seed0.pt"), device=args.device,
                          class_name="widget")
    loaded = load_model(config)
    for case, refs in CASES.items():
        reference = run_case(config, loaded, refs)
        for precision in args.precisions.split(","):
            results = run_case(config.replace(precision=precision), loaded, refs)
            score = max(abs(a.score - b.score) for a, b in zip(results, reference))
            maps = max(float(np.abs(a.anomaly_map - b.anomaly_map).max()) for a, b in zip(results, reference))
            print(f"{case:10s} {precision}: max |score - fp32| {score:.2e}   max |map - fp32| {maps:.2e}")


if __name__ == "__main__":
    main()
