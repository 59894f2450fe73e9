"""Latency and throughput of `fade serve` on loopback: prints numbers, asserts nothing.

    python benchmarks/bench_serve.py                                   # golden tiny model, CPU
    python benchmarks/bench_serve.py --requests 400 --concurrency 1,4,16,32
    python benchmarks/bench_serve.py --arch published --scales 240,448 --requests 24 --concurrency 1,4
    python benchmarks/bench_serve.py --arch published --scales 240,448 --precision auto --threads 1
    python benchmarks/bench_serve.py --device cuda --arch published --scales 240,448 --concurrency 1,16,32

For each --max-batch setting (1 and 8; the server's default is 1 on a CPU, 8 on a GPU) it
starts a real `fade serve` process on a free loopback port with a bank built from the golden
references, waits for /readyz, and then, at each concurrency C, a bounded load generator (async httpx,
C clients, a fixed number of requests in all, then it stops) posts the golden query
images. Printed: requests per second, p50/p95/p99 latency, the mean batch size the
server reports, and the server's start-up time (process start to ready, warm-up
included). The offline rate (the same bank scoring the same images in-process, as
`fade detect` does) is printed for comparison. The published architecture runs with
random weights (saved once to a temporary file): speed does not depend on their values.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "fixtures" / "golden"
TINY = ["--model-config", str(GOLDEN / "model" / "fade-golden.json"), "--weights",
        str(GOLDEN / "model" / "fade-golden-seed0.pt")]
PROMPTS = ["--cls-prompts", str(GOLDEN / "prompts" / "cls.json"), "--seg-prompts", str(GOLDEN / "prompts" / "seg.json")]


def fade(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fade_cli", *args], check=True, capture_output=True, text=True,
                          **kwargs)


def model_args(arch: str, workdir: Path) -> list[str]:
    if arch == "tiny":
        return TINY
    import open_clip
    import torch

    weights = workdir / "published-random.pt"
    torch.manual_seed(0)
    torch.save(open_clip.create_model("ViT-B-16-plus-240", pretrained=None).state_dict(), weights)
    return ["--model", "ViT-B-16-plus-240", "--weights", str(weights)]


def build_bank(workdir: Path, engine_args: list[str]) -> Path:
    bank = workdir / "widget.fadebank"
    fade("bank", "build", str(GOLDEN / "images" / "refs2"), "--class", "widget", "-q", "--out", str(bank), *engine_args)
    return bank


class Server:
    """A `fade serve` process; its URL and start-up time."""

    def __init__(self, bank: Path, engine_args: list[str], max_batch: int, max_wait_ms: float):
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fade_cli", "serve", "--bank", str(bank), "--port", "0", "--max-batch",
             str(max_batch), "--max-wait-ms", str(max_wait_ms), "--max-queue", "1024", "--timeout", "3600",
             *engine_args],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.url = re.search(r"http://127\.0\.0\.1:\d+", self.proc.stderr.readline()).group(0)
        while "Ready" not in self.proc.stderr.readline():
            if self.proc.poll() is not None:
                raise SystemExit(f"fade serve exited with {self.proc.returncode}")
        self.startup_s = time.monotonic() - started

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


async def load(url: str, bodies: list[bytes], requests: int, concurrency: int) -> tuple[float, list[float], list[int]]:
    """``requests`` posts by ``concurrency`` clients; (wall seconds, latencies, batch sizes)."""
    latencies: list[float] = []
    batches: list[int] = []
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(http: httpx.AsyncClient) -> None:
        for index in counter:
            began = time.perf_counter()
            response = await http.post(f"{url}/v1/detect", content=bodies[index % len(bodies)])
            latencies.append(time.perf_counter() - began)
            response.raise_for_status()
            batches.append(response.json()["timings"]["batch_size"])

    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        began = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return time.perf_counter() - began, latencies, batches


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def offline_rate(bank_path: Path, engine_args: list[str], device: str, precision: str, images: list[Path],
                 count: int) -> float:
    """Images per second of the bank scoring ``count`` images in-process, as `fade detect` does (its batch size)."""
    from rich.console import Console

    from fade_cli.bank.bank import load_bank
    from fade_cli.cli.engine_setup import engines_for_banks
    from fade_cli.io.images import ImageFile
    from fade_cli.runs.runner import run_detection

    flags = dict(zip(engine_args[::2], engine_args[1::2]))
    bank = load_bank(bank_path)
    config = bank.config.replace(weights=flags["--weights"], model_config=flags.get("--model-config"), device=device,
                                 precision=precision)
    [engine] = engines_for_banks([(bank, config, str(bank_path))], Console(stderr=True), quiet=True)
    files = [ImageFile(images[i % len(images)], f"{i}.png") for i in range(count)]
    run_detection(engine, files[:4])  # first passes allocate and pick kernels: not measured
    began = time.perf_counter()
    run_detection(engine, files)
    return count / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=["tiny", "published"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scales", default="240,320")
    parser.add_argument("--cls-size", default="240")
    parser.add_argument("--requests", type=int, default=96, help="Requests per concurrency level.")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--max-batches", default="1,8", help="Server --max-batch settings to compare.")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--precision", default="fp32", help="--precision of the bank, the server and the offline run.")
    parser.add_argument("--threads", type=int,
                        help="torch threads, for the server (OMP_NUM_THREADS) and the offline run alike "
                             "[default: torch's]; 1 gives steadier numbers on a loaded machine.")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONPATH", str(REPO))
    if args.threads:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    images = sorted((GOLDEN / "images" / "queries").glob("*.png"))
    bodies = [path.read_bytes() for path in images]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        workdir = Path(tmp)
        engine_args = [*model_args(args.arch, workdir), "--device", args.device, "--scales", args.scales,
                       "--cls-size", args.cls_size, "--precision", args.precision]
        bank = build_bank(workdir, [*engine_args, *PROMPTS])
        print(f"fade serve, {args.arch} model at {args.scales} (cls {args.cls_size}) on {args.device}, "
              f"--precision {args.precision}; "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (load {os.getloadavg()[0]:.1f}), "
              f"torch threads {args.threads or 'default'}; "
              f"{args.requests} requests per row, images {image_size(images[0])}")
        offline = offline_rate(bank, engine_args, args.device, args.precision, images, args.requests)
        print(f"offline (`fade detect`, in-process, default batch size): {offline:.2f} images/s")
        print(f"{'max-batch':>9} {'conc.':>5} {'req/s':>7} {'vs offline':>10} {'p50 ms':>8} {'p95 ms':>8} "
              f"{'p99 ms':>8} {'mean batch':>10}")
        for max_batch in (int(b) for b in args.max_batches.split(",")):
            server = Server(bank, engine_args, max_batch, args.max_wait_ms)
            try:
                asyncio.run(load(server.url, bodies, 4, 1))  # connections and first requests, not measured
                for concurrency in (int(c) for c in args.concurrency.split(",")):
                    wall, latencies, batches = asyncio.run(load(server.url, bodies, args.requests, concurrency))
                    rate = len(latencies) / wall
                    print(f"{max_batch:>9} {concurrency:>5} {rate:>7.2f} {rate / offline:>9.0%} "
                          f"{percentile(latencies, 50) * 1000:>8.1f} {percentile(latencies, 95) * 1000:>8.1f} "
                          f"{percentile(latencies, 99) * 1000:>8.1f} {statistics.mean(batches):>10.2f}")
            finally:
                server.stop()
            print(f"          (start-up with --max-batch {max_batch}: {server.startup_s:.1f} s to ready, warm-up included)")


def image_size(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as image:
        return f"{image.width}x{image.height}"


if __name__ == "__main__":
    main()
