"""Speed and memory of the FADE engine: prints numbers, asserts nothing.

    python benchmarks/bench_engine.py --arch tiny                      # golden tiny model, CPU
    python benchmarks/bench_engine.py --arch published --images 3      # ViT-B-16-plus-240, random weights
    python benchmarks/bench_engine.py --arch published --device cuda --batch-sizes 1,8,32 --precisions tf32,bf16
    python benchmarks/bench_engine.py --arch published --images 2 --precisions fp32,auto --threads 2   # CPU station

The published architecture runs with random weights here (weights cannot be
downloaded in every environment); speed does not depend on the weights' values.
End-to-end time includes JPEG decoding and resizing (in background threads, as
`fade detect` does), the forward passes at every size, the memory bank search,
fusion, and copying maps back to the host; with --write, also saving maps and
heatmaps (in writer threads, as `fade detect` does). The decoding rate alone is
printed too: end to end can never beat it. On a CPU the flags that decide
``--precision auto`` are printed first; each precision after fp32 also prints how
far its scores and maps are from fp32's on the same images. Times are of one run
after a warm-up run: on a shared machine, repeat and take the smallest.
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "fixtures" / "golden" / "model"
EXAMPLES = REPO / "examples" / "cookie" / "cookie"


def build_loaded_model(arch: str, device: torch.device):
    import open_clip

    from fade_cli.backbone.model import LoadedModel, register_model_config

    if arch == "tiny":
        name = register_model_config(str(GOLDEN / "fade-golden.json"))
        model = open_clip.create_model(name, pretrained=str(GOLDEN / "fade-golden-seed0.pt"))
    else:
        name = "ViT-B-16-plus-240"
        torch.manual_seed(0)
        model = open_clip.create_model(name, pretrained=None)
    model = model.to(device).eval()
    return LoadedModel(model, open_clip.get_tokenizer(name), device, {"model": name, "benchmark": arch})


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def query_files(count: int):
    from fade_cli.io.images import discover_images

    files = discover_images(EXAMPLES / "test")
    return list(itertools.islice(itertools.cycle(files), count))


def time_text(loaded, config) -> float:
    from fade_cli.engine.detector import FadeEngine

    start = time.perf_counter()
    FadeEngine.from_config(config, loaded=loaded)
    return time.perf_counter() - start


class KeepDetections:
    """A result sink that keeps each image's detection in memory (for the drift from fp32), writing nothing."""

    writer_threads = 1

    def __init__(self):
        self.detections = {}

    def write_image(self, relative, image, detection):
        self.detections[relative] = detection
        return None, None

    def write_mask(self, relative, mask_hw):
        return ""

    def add(self, row):
        pass


def time_run(engine, files, device, write: bool = False, keep: KeepDetections = None) -> float:
    """Seconds for run_detection over ``files``; with ``write``, maps and heatmaps are saved as `fade detect` does."""
    import tempfile

    from fade_cli.io.outputs import RunOutput
    from fade_cli.runs.runner import run_detection

    with tempfile.TemporaryDirectory() as out:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        output = RunOutput(Path(out)) if write else keep
        run_detection(engine, files, output)
        if write:
            output.finish()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start


def decoding_rate(engine, files) -> float:
    """Images/s that the runner's background decoding (decode + resize to every size) delivers alone."""
    from fade_cli.runs.runner import decoded_batches

    start = time.perf_counter()
    for _ in decoded_batches(engine, files):
        pass
    return len(files) / (time.perf_counter() - start)


def drift_from(reference: dict, detections: dict) -> str:
    """Largest differences of scores and maps from the reference run's, over the images both scored."""
    import numpy as np

    common = sorted(set(reference) & set(detections))
    score = max(abs(reference[k].score - detections[k].score) for k in common)
    maps = max(float(np.abs(reference[k].anomaly_map - detections[k].anomaly_map).max()) for k in common)
    return f"max |score - fp32| {score:.1e}, max |map - fp32| {maps:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["tiny", "published"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=4, help="queries per measurement")
    parser.add_argument("--batch-sizes", default="1")
    parser.add_argument("--precisions", default="fp32", help="comma-separated: fp32, auto, tf32, bf16, fp16")
    parser.add_argument("--threads", type=int, help="torch threads [default: torch's choice]")
    parser.add_argument("--scales", default="240,448,896")
    parser.add_argument("--shots", type=int, default=1, help="references (0: zero-shot)")
    parser.add_argument("--write", action="store_true", help="also time runs that save maps and heatmaps")
    parser.add_argument("--compile", action="store_true", help="also time each setting with --compile")
    args = parser.parse_args()

    from fade_cli.config import EngineConfig, parse_sizes
    from fade_cli.engine.detector import FadeEngine
    from fade_cli.runs.runner import DECODE_THREADS, load_references

    from fade_cli.engine.precision import cpu_features

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    loaded = build_loaded_model(args.arch, device)
    base = EngineConfig(device=args.device, seg_sizes=parse_sizes(args.scales), class_name="cookie")

    with torch.no_grad():
        import tempfile

        with tempfile.TemporaryDirectory() as cache:
            cold = time_text(loaded, base.replace(cache_dir=cache))
            warm = time_text(loaded, base.replace(cache_dir=cache))
    print(json.dumps({"machine": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
                      "arch": args.arch, "scales": args.scales, "shots": args.shots}))
    if device.type == "cpu":
        print(f"CPU flags: {cpu_features().describe()}")
    print(f"text encoding: {cold:.2f} s first run, {warm:.3f} s cached")
    largest_batch = max(map(int, args.batch_sizes.split(",")))
    decoder = FadeEngine.from_config(base.replace(batch_size=largest_batch), loaded=loaded)
    rate = decoding_rate(decoder, query_files(max(args.images, 2 * largest_batch)))
    print(f"decoding alone ({DECODE_THREADS} threads, batch {largest_batch}): {rate:.1f} images/s")

    references = query_files(args.shots) if args.shots else []
    compile_modes = [False, True] if args.compile else [False]
    settings = itertools.product(compile_modes, args.precisions.split(","), map(int, args.batch_sizes.split(",")))
    fp32_detections = {}
    for compiled, precision, batch_size in settings:
        config = base.replace(precision=precision, batch_size=batch_size, compile=compiled)
        engine = FadeEngine.from_config(config, loaded=loaded)
        if precision == "auto":
            print(engine.precision.describe())
        if references:
            load_references(engine, references)  # in batches, as `fade detect --refs` does
        time_run(engine, query_files(batch_size), device)  # warm-up (and compilation)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        count = max(args.images, batch_size)
        count -= count % batch_size  # whole batches: a compiled engine would recompile for a short last one
        keep = KeepDetections()
        seconds = time_run(engine, query_files(count), device, keep=keep)
        label = f"{precision}{'+compile' if compiled else ''}"
        drift = ""
        if engine.precision.precision == "fp32" and not fp32_detections:
            fp32_detections = keep.detections
        elif fp32_detections:
            drift = "  " + drift_from(fp32_detections, keep.detections)
        print(f"{label:13s} batch {batch_size:3d}: {count / seconds:8.2f} images/s  {seconds / count:8.3f} s/image  "
              f"peak memory {peak_memory_mb(device):8.0f} MB{drift}", flush=True)
        if args.write:
            seconds = time_run(engine, query_files(count), device, write=True)
            print(f"{'':13s} with maps and heatmaps written: {count / seconds:8.2f} images/s", flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
