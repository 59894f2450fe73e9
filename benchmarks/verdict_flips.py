"""Do OK/NG verdicts change between fp32 and another precision at a calibrated threshold? Prints, asserts nothing.

    python benchmarks/verdict_flips.py examples/cookie/cookie --precisions bf16
    python benchmarks/verdict_flips.py /work/shared/data/cookie/cookie --shots 4 --precisions bf16

CLASS_DIR is a class folder in the MVTec layout (``train/good``, ``test/<defect>``).
The first ``--shots`` good training images are the references; the image threshold is
calibrated from them by leave-one-out, as ``fade bank build`` does, once in fp32 and
once in each other precision. Printed per precision: the largest score difference
from fp32, the verdicts that differ when each precision uses the threshold
calibrated in that precision (``bank build --precision auto`` on the station), and
when it uses fp32's threshold (a bank calibrated in another precision: the case
``fade detect --bank`` warns about), and how far the nearest score lies from the
threshold. Without model weights here, the golden tiny model is used (random weights:
the scores mean nothing, their sensitivity to the precision does); ``--weights`` and
``--model`` run another.
"""
from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "fixtures" / "golden" / "model"


def score_class(config, loaded, references, queries, margin):
    """(image threshold calibrated by leave-one-out, {query: score}) in the config's precision."""
    from fade_cli.bank.leave_one_out import leave_one_out
    from fade_cli.engine.detector import FadeEngine
    from fade_cli.runs.runner import load_references, run_detection

    engine = FadeEngine.from_config(config, loaded=loaded)
    load_references(engine, references)
    threshold = leave_one_out(engine, references, margin).image_threshold
    scores = {}
    run_detection(engine, queries, on_row=lambda row: scores.__setitem__(row.path, row.score))
    return threshold, scores


def verdicts(scores: dict, threshold: float) -> dict:
    return {path: score >= threshold for path, score in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("class_dir", type=Path)
    parser.add_argument("--precisions", default="bf16")
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--margin", type=float, default=1.1)
    parser.add_argument("--scales", default="240,448,896")
    parser.add_argument("--model-config", default=str(GOLDEN / "fade-golden.json"))
    parser.add_argument("--weights", default=str(GOLDEN / "fade-golden-seed0.pt"))
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()

    import torch

    from fade_cli.config import EngineConfig, parse_sizes
    from fade_cli.backbone.model import load_model
    from fade_cli.io.images import discover_images

    if args.threads:
        torch.set_num_threads(args.threads)
    config = EngineConfig(model_config=args.model_config, weights=args.weights, device="cpu",
                          class_name=args.class_dir.name, seg_sizes=parse_sizes(args.scales))
    loaded = load_model(config)
    references = discover_images(args.class_dir / "train" / "good")[: args.shots]
    queries = discover_images(args.class_dir / "test")
    print(f"{args.class_dir}: {len(references)} references, {len(queries)} test images, scales {args.scales}, "
          f"margin {args.margin}, {torch.get_num_threads()} threads")
    exact_threshold, exact = score_class(config, loaded, references, queries, args.margin)
    exact_verdicts = verdicts(exact, exact_threshold)
    print(f"fp32: threshold {exact_threshold:.4f}, {sum(exact_verdicts.values())} NG of {len(exact)}")
    for precision in args.precisions.split(","):
        threshold, scores = score_class(config.replace(precision=precision), loaded, references, queries, args.margin)
        own = verdicts(scores, threshold)
        foreign = verdicts(scores, exact_threshold)
        drift = max(abs(scores[p] - exact[p]) for p in exact)
        nearest = min(abs(s - threshold) for s in scores.values())
        print(f"{precision}: threshold {threshold:.4f} (fp32's {exact_threshold:.4f}), max |score - fp32| {drift:.1e}; "
              f"verdicts differing from fp32's: {sum(own[p] != exact_verdicts[p] for p in exact)} with its own "
              f"threshold, {sum(foreign[p] != exact_verdicts[p] for p in exact)} with fp32's; nearest score "
              f"{nearest:.1e} from its threshold")


if __name__ == "__main__":
    main()
