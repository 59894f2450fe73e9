"""Throughput of `fade detect --ray` against a local run, with 1, 2... scoring workers: prints numbers, asserts nothing.

    python benchmarks/bench_ray.py                                  # golden tiny model, 64 images, 1 and 2 workers
    python benchmarks/bench_ray.py --images 200 --workers 1,2,4 --scales 240,448
    python benchmarks/bench_ray.py --no-files                       # rows only: no maps, heatmaps or thumbnails
    python benchmarks/bench_ray.py --address auto --workers 8,16 --gpus-per-worker 1 --device auto   # a real cluster

The images are copies of the golden queries (288 x 384 PNG) in a temporary folder. Each Ray run goes through
`run_detection_on_ray` as `fade detect --ray` does (the driver's engine prepared once, its tensors put in the
object store, actors loading the model, rows streamed back in file order), with maps and heatmaps written
into a temporary folder unless --no-files. Printed per run: the wall time from the call to the last row
(actor start-up included), the time to the first row, and images/s over the rows that arrived after the
first burst of rows (steady state; rows come back a block at a time). The local rate (`run_detection` in this process, one torch thread per worker) is printed first.
On a machine with few cores the workers share them with the driver, Ray's own processes and each other:
read the numbers with the core count printed in the header.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
GOLDEN = REPO / "tests" / "fixtures" / "golden"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--workers", default="1,2", help="comma-separated pool sizes")
    parser.add_argument("--scales", default="240,320")
    parser.add_argument("--cls-size", type=int, default=240)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--address", default="local", help="local (a new local cluster), auto or HOST:PORT")
    parser.add_argument("--no-files", action="store_true", help="write no maps, heatmaps or thumbnails")
    return parser.parse_args()


def image_files(folder: Path, count: int) -> list:
    from fade_cli.io.images import discover_images

    queries = sorted((GOLDEN / "images" / "queries").glob("*.png"))
    folder.mkdir(parents=True)
    for index in range(count):
        shutil.copy(queries[index % len(queries)], folder / f"img{index:04d}.png")
    return discover_images(folder)


def timed(run, files: list) -> tuple[float, float, float]:
    """(seconds to the last row, seconds to the first row, images/s after the first rows arrived).

    Rows of a Ray run arrive a block at a time: the steady rate counts the rows that arrived after the
    first burst, over the time from that burst to the last row (start-up and the first block left out).
    """
    times: list[float] = []
    start = time.perf_counter()
    run(lambda row: times.append(time.perf_counter()))
    assert len(times) == len(files), f"{len(times)} rows for {len(files)} images"
    later = [moment for moment in times if moment > times[0] + 1e-3]
    steady = len(later) / (times[-1] - times[0]) if later else float("nan")
    return times[-1] - start, times[0] - start, steady


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from fade_cli.config import EngineConfig, parse_sizes
    from fade_cli.runs.ray.cluster import RaySettings, ray_session
    from fade_cli.runs.ray.ray_detect import run_detection_on_ray
    from fade_cli.engine import FadeEngine
    from fade_cli.io.outputs import ImageWriter
    from fade_cli.runs.runner import load_references, run_detection

    torch.set_num_threads(1)
    config = EngineConfig(model_config=str(GOLDEN / "model" / "fade-golden.json"),
                          weights=str(GOLDEN / "model" / "fade-golden-seed0.pt"), device=args.device,
                          seg_sizes=parse_sizes(args.scales), cls_size=args.cls_size, class_name="widget")
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        files = image_files(work / "images", args.images)
        engine = FadeEngine.from_config(config)
        load_references(engine, image_files(work / "refs", 2))

        class Files(ImageWriter):  # maps and heatmaps, no results tables
            def add(self, row) -> None:
                pass

        def writer(name: str):
            return None if args.no_files else Files(work / name)

        print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
              f"{args.images} images 288x384, scales {args.scales}, cls {args.cls_size}, "
              f"{'no files' if args.no_files else 'maps + heatmaps written'}")
        total, first, steady = timed(lambda on_row: run_detection(engine, files, writer("local"), on_row=on_row),
                                     files)
        print(f"local (1 torch thread)   total {total:6.1f} s  first row {first:5.1f} s  {steady:6.2f} images/s")
        with ray_session(args.address):
            import ray

            print(f"# Ray {ray.__version__}, cluster {ray.cluster_resources().get('CPU', 0):g} CPUs, "
                  f"{ray.cluster_resources().get('GPU', 0):g} GPUs")
            for workers in (int(part) for part in args.workers.split(",")):
                settings = RaySettings(args.address, workers, args.gpus_per_worker)
                shutil.rmtree(work / "ray", ignore_errors=True)
                total, first, steady = timed(
                    lambda on_row: run_detection_on_ray(engine, files, settings, writer("ray"), on_row=on_row), files)
                print(f"ray, {workers} worker(s)       total {total:6.1f} s  first row {first:5.1f} s  "
                      f"{steady:6.2f} images/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
