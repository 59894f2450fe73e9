"""Where the time of a whole detection run goes: torch.profiler over one end-to-end run. Prints, asserts nothing.

    python benchmarks/profile_run.py --precision auto --threads 2            # published architecture, 240,448,896
    python benchmarks/profile_run.py --precision fp32 --scales 240,448 --rows 25

The run is the one `benchmarks/bench_engine.py` times (decoding to verdict, batch 1,
1-shot, random weights of ViT-B-16-plus-240), after a warm-up run. Printed: the
operators with the most self CPU time, then that time grouped into attention, matrix
products (linear layers, the patch embedding's convolution, the bank search),
normalisation, element-wise work and the rest, as shares of the profiled total.
"""
from __future__ import annotations

import argparse
import collections

import torch
from torch.profiler import ProfilerActivity, profile

from bench_engine import build_loaded_model, query_files, time_run

GROUPS = {
    "attention (scaled_dot_product_attention)": ("attention", "flash", "sdpa"),
    "matrix products (linear, conv, bank search)": ("addmm", "matmul", "mm", "bmm", "linear", "conv", "mkldnn"),
    "layer norm / normalise": ("layer_norm", "norm", "rsqrt"),
    "casts and copies": ("copy_", "to", "_to_copy", "contiguous", "clone"),
}


def group_of(name: str) -> str:
    lowered = name.lower()
    for group, needles in GROUPS.items():
        if any(needle in lowered for needle in needles):
            return group
    return "other (element-wise, resizing, top-k, ...)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--scales", default="240,448,896")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=15, help="operators to list")
    args = parser.parse_args()

    from fade_cli.config import EngineConfig, parse_sizes
    from fade_cli.engine.detector import FadeEngine
    from fade_cli.runs.runner import load_references

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    loaded = build_loaded_model("published", device)
    config = EngineConfig(device="cpu", seg_sizes=parse_sizes(args.scales), class_name="cookie", precision=args.precision)
    with torch.no_grad():
        engine = FadeEngine.from_config(config, loaded=loaded)
        print(engine.precision.describe())
        load_references(engine, query_files(1))
        time_run(engine, query_files(1), device)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            seconds = time_run(engine, query_files(1), device)
    events = prof.key_averages()
    print(f"one image end to end: {seconds:.2f} s (under the profiler)")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    totals: dict[str, float] = collections.Counter()
    for event in events:
        totals[group_of(event.key)] += event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    for group, micros in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"{group:48s} {micros / 1e6:7.2f} CPU s  {100 * micros / whole:5.1f} %")


if __name__ == "__main__":
    main()
