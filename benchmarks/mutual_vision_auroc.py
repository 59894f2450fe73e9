"""Pixel AUROC of the vision map alone: FADE's own-patch zero-shot against mutual scoring. Prints numbers.

    python benchmarks/mutual_vision_auroc.py /work/shared/data/cookie /work/shared/data/battery_weld
    python benchmarks/mutual_vision_auroc.py ROOT --arch published --scales 240,448

Pretrained weights cannot be downloaded everywhere: ``tiny`` is the golden test model and
``published`` the published architecture (ViT-B-16-plus-240) with random weights. Random
weights keep local pixel structure, so the two vision branches can be compared with each
other on the same model; the figures are a relative comparison, never the accuracy of the
real model. The vision map is taken alone (fusion weight 1, multiplier 1, so no value is
clipped), each mode with its own default patch features, and also mutual on the own-patch
features (gem) so that the feature choice and the scoring can be told apart.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench_engine import build_loaded_model

MODES = {
    "own patches (zero-shot, gem)": dict(mutual=False, feature=None),
    "mutual (clip)": dict(mutual=True, feature=None),
    "mutual on gem": dict(mutual=True, feature="gem"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=Path, help="datasets in the MVTec-AD layout")
    parser.add_argument("--arch", choices=["tiny", "published"], default="tiny")
    parser.add_argument("--scales", default="240,448")
    parser.add_argument("--eval-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from fade_cli.config import EngineConfig, MutualSettings, parse_sizes
    from fade_cli.evaluation.datasets import load_dataset
    from fade_cli.evaluation.evaluate import Evaluator
    from fade_cli.evaluation.plan import EvalSettings, plan_runs

    loaded = build_loaded_model(args.arch, torch.device(args.device))
    base = EngineConfig(device=args.device, seg_sizes=parse_sizes(args.scales), vision_weight=1.0,
                        vision_multiplier=1.0, image_score="vision")
    print(json.dumps({"arch": args.arch, "scales": args.scales, "eval_size": args.eval_size,
                      "torch_threads": torch.get_num_threads()}))
    for root in args.roots:
        dataset = load_dataset(root, "mvtec", None, "_mask")
        for label, mode in MODES.items():
            settings = EvalSettings(eval_size=args.eval_size, mutual=MutualSettings() if mode["mutual"] else None)
            evaluator = Evaluator(base.replace(vision_feature=mode["feature"]), settings=settings, loaded=loaded)
            for run in plan_runs(dataset, settings):
                start = time.perf_counter()
                metrics = evaluator.evaluate(run).metrics
                print(f"{root.name}/{run.split.name:10s} {label:30s} pixel AUROC {100 * metrics['pixel_auroc']:5.1f}  "
                      f"image AUROC {100 * metrics['image_auroc']:5.1f}  ({len(run.split.test)} images, "
                      f"{time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
