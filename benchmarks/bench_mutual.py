"""Time and peak memory of the scoring pass of mutual scoring (`--mutual`) against the number of images.

    python benchmarks/bench_mutual.py --images 50,200 --scales 240,448
    python benchmarks/bench_mutual.py --images 50,200 --scales 240,448,896 --sample 2
    python benchmarks/bench_mutual.py --images 50,200 --scales 240,448,896 --device cuda

The scoring pass costs the same whatever the features hold, so it runs here on random unit
features of the published architecture's shape (ViT-B-16-plus-240: patch 16, dimension 640),
stored in float16 as `fade detect --mutual` keeps them. The first pass (encoding) is the
forward pass that benchmarks/bench_engine.py measures. Each configuration runs in a fresh
process so that its peak memory is its own.

With ``--sample K`` only the patches of K images are scored against the whole group (the
cost of one image is the same for every image of a group): seconds per image are measured,
the full pass is that times N. Without it the whole pass is timed. Wall-clock and process CPU
seconds are both printed: on a machine shared with other work, CPU seconds are the cost.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch

PATCH, DIM = 16, 640


def features(count: int, sizes: list[int], device: torch.device) -> dict[int, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    out = {}
    for size in sizes:
        grid = size // PATCH
        raw = torch.randn(count, grid * grid, DIM, generator=generator)
        out[size] = torch.nn.functional.normalize(raw, dim=-1).to(torch.float16).to(device)
    return out


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def score_sample(patches_npd: torch.Tensor, grid: int, settings, sample: int) -> None:
    """Score ``sample`` images' patches against the group, as the scoring pass does (window averaging included)."""
    from fade_cli.engine.memory_bank import QUERY_CHUNK
    from fade_cli.engine.mutual import images_counted, nearest_similarity_per_image, neighbourhood_average

    count, patches, _ = patches_npd.shape
    counted = images_counted(count - 1, settings.fraction)
    for degree in settings.degrees:
        averaged = neighbourhood_average(patches_npd, grid, degree)
        rows = averaged[:sample].reshape(-1, averaged.shape[-1])
        for first in range(0, rows.shape[0], QUERY_CHUNK):
            sims = nearest_similarity_per_image(rows[first : first + QUERY_CHUNK], averaged)
            sims.topk(counted + 1, dim=1)


def one(count: int, sizes: list[int], device_name: str, sample: int) -> dict:
    from fade_cli.config import MutualSettings
    from fade_cli.engine.mutual import mutual_vision_grid

    device = torch.device(device_name)
    settings = MutualSettings()
    stored = features(count, sizes, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else current_mb()
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for size in sizes:
            if sample:
                score_sample(stored[size], size // PATCH, settings, sample)
            else:
                mutual_vision_grid(stored[size], size // PATCH, settings)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    scored = sample or count
    per_image, cpu_per_image = (time.perf_counter() - wall) / scored, (time.process_time() - cpu) / scored
    stored_mb = sum(t.numel() * t.element_size() for t in stored.values()) / 2**20
    return {"images": count, "scales": sizes, "seconds_per_image": per_image, "pass_seconds": per_image * count,
            "cpu_seconds_per_image": cpu_per_image,
            "sampled": sample or None, "stored_features_mb": stored_mb, "peak_mb": peak_mb(device),
            "scoring_extra_mb": peak_mb(device) - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="50,200")
    parser.add_argument("--scales", default="240,448")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sample", type=int, default=0, help="score only K images' patches and extrapolate")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.scales.split(",")]
    if args.one is not None:
        print(json.dumps(one(args.one, sizes, args.device, args.sample)))
        return
    print(json.dumps({"machine": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "device": args.device, "dim": DIM, "degrees": [1, 3, 5], "fraction": 0.3}))
    for count in map(int, args.images.split(",")):
        command = [sys.executable, __file__, "--one", str(count), "--scales", args.scales, "--device", args.device,
                   "--sample", str(args.sample)]
        result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        how = f"sampled on {result['sampled']} image(s)" if result["sampled"] else "whole pass timed"
        print(f"N={count:4d} scales {args.scales:12s}: {result['seconds_per_image']:9.3f} s/image "
              f"({result['cpu_seconds_per_image']:.1f} CPU s), pass "
              f"{result['pass_seconds']:9.1f} s ({how}); stored features {result['stored_features_mb']:8.1f} MB, "
              f"scoring adds {result['scoring_extra_mb']:8.1f} MB (peak {result['peak_mb']:.0f} MB)", flush=True)


if __name__ == "__main__":
    main()
