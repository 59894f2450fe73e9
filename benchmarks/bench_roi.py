"""Inspection regions on the shipped cookie set: time per image and vision-only pixel AUROC inside the ROI.

    python benchmarks/bench_roi.py                       # golden tiny model, CPU
    python benchmarks/bench_roi.py --repeats 5 --scales 240,448

Three runs over the same references (cookie/train/good) and test images (cookie/test): without an ROI,
with the hand-drawn ROI examples/cookie/roi.json cropped (the default), and with it but --no-crop (masked
only). Time per image is the engine end to end (decoding, cropping, resizing, forward passes, bank search,
maps back to the frame), the smallest of ``--repeats`` passes after a warm-up. The pixel AUROC is of the
vision map alone, over the ROI's pixels of every test image, against the ground-truth masks (good images:
no defect pixel), so the three runs are compared on the same pixels. The tiny model's numbers are for a
relative comparison only. Prints numbers, asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
COOKIE = REPO / "examples" / "cookie" / "cookie"
ROI = REPO / "examples" / "cookie" / "roi.json"
GOLDEN = REPO / "tests" / "fixtures" / "golden" / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scales", default="240,448")
    args = parser.parse_args()

    import fade_cli
    from fade_cli.evaluation.metrics import auroc
    from fade_cli.io.heatmap import upsample_map
    from fade_cli.io.images import load_image
    from fade_cli.io.roi import load_roi
    from fade_cli.runs.runner import score_images

    settings = dict(model_config=str(GOLDEN / "fade-golden.json"), weights=str(GOLDEN / "fade-golden-seed0.pt"),
                    device="cpu", class_name="cookie", scales=tuple(int(s) for s in args.scales.split(",")))
    tests = sorted((COOKIE / "test").glob("*/*.jpg"))
    frames = [(str(path.relative_to(COOKIE)), str(path), load_image(path)) for path in tests]
    truths = [_truth(path, image) for path, (_, _, image) in zip(tests, frames)]
    roi = load_roi(ROI)
    inside = [roi.mask_at(image.width, image.height) for _, _, image in frames]
    print(f"cookie: {len(frames)} test images ({frames[0][2].width}x{frames[0][2].height}), "
          f"3 references, ROI {ROI.name} covering {np.mean([m.mean() for m in inside]):.0%} of each frame, "
          f"scales {args.scales}, tiny golden model on the CPU")
    print(f"{'run':<22}{'ms / image':>12}{'vision pixel AUROC in ROI':>28}")
    for label, extra in (("no ROI", {}), ("ROI, crop", {"roi": str(ROI)}), ("ROI, --no-crop", {"roi": str(ROI), "crop": False})):
        detector = fade_cli.Detector.from_references(str(COOKIE / "train" / "good"), **settings, **extra)
        engine = detector.engine
        score_images(engine, frames[:1])  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            detections = [score_images(engine, [frame])[0] for frame in frames]
            best = min(best, time.perf_counter() - started)
        scores, labels = [], []
        for (_, _, image), detection, truth, mask in zip(frames, detections, truths, inside):
            vision = upsample_map(detection.vision_map, image.height, image.width)
            scores.append(vision[mask])
            labels.append(truth[mask])
        value = auroc(np.concatenate(labels), np.concatenate(scores))
        print(f"{label:<22}{1000 * best / len(frames):>12.1f}{value:>28.4f}")


def _truth(path: Path, image) -> np.ndarray:
    mask = COOKIE / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
    if not mask.is_file():
        return np.zeros((image.height, image.width), dtype=bool)
    from PIL import Image

    return np.asarray(Image.open(mask).convert("L").resize((image.width, image.height))) >= 128


if __name__ == "__main__":
    main()
