"""Start-up of `fade detect` (one image, a bank) and `fade serve` (to /readyz): prints phases, asserts nothing.

    python benchmarks/bench_startup.py                                  # tiny golden model and the published one
    python benchmarks/bench_startup.py --arch published --runs 5 --format pt
    python benchmarks/bench_startup.py --arch tiny --commands detect

Each run is a fresh process (``python -m fade_cli``) with the fade cache in a temporary
folder, so the first run of each command finds no memo of the weights' hash and later
runs do; the weights file itself stays in the page cache after the first read (start-up
with cached weights, as on a station). The published architecture (ViT-B-16-plus-240 at
--scales 240,448) runs with random weights saved once to a temporary file: weights cannot
be downloaded here, and start-up does not depend on their values.

Printed per run, in seconds (the last three since the process was started, fork included):
  torch        importing torch
  open_clip    importing open_clip (torch excluded: with torchvision and transformers where they come in)
  bank         reading and checking the bank file
  hash         SHA-256 of the weights file (0 when the hash memo answers)
  build        building the model's modules (random initialisation included where it runs)
  weights      reading the weights into the model
  other        the rest before the first forward pass: interpreter, fade's imports, options, checks
  forward@     when the first forward pass starts
  -weights     the same less the weights' read time: the figure the start-up target is about
  forward      the first forward pass itself (allocations and kernel choice included)
  ready        serve: when /readyz answered 200; detect: when the process exited
The timeline of the last run follows (when each phase started and ended), and
`python -X importtime` cumulative times of the heavy packages in one more detect run.
"""
from __future__ import annotations

import argparse
import atexit
import importlib.abc
import importlib.machinery
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "fixtures" / "golden"
TINY = ["--model-config", str(GOLDEN / "model" / "fade-golden.json"), "--weights",
        str(GOLDEN / "model" / "fade-golden-seed0.pt")]
PROMPTS = ["--cls-prompts", str(GOLDEN / "prompts" / "cls.json"), "--seg-prompts", str(GOLDEN / "prompts" / "seg.json")]
PUBLISHED = "ViT-B-16-plus-240"
SIZES = {"tiny": ["--scales", "240,320", "--cls-size", "240"], "published": ["--scales", "240,448", "--cls-size", "240"]}
PHASES_ENV, START_ENV = "FADE_BENCH_PHASES", "FADE_BENCH_T0"

# (module, attribute, phase): functions timed in the child, old and new names alike (missing ones are skipped).
WATCHED = [
    ("fade_cli.backbone.model", "file_sha256", "hash"),  # before the hash memo
    ("fade_cli.backbone.file_hash", "weights_sha256", "hash"),
    ("fade_cli.bank.bank", "load_bank", "bank"),
    ("open_clip.factory", "create_model", "build"),
    ("open_clip.factory", "load_checkpoint", "weights"),
    ("fade_cli.backbone.model", "_visual_state_dict", "weights"),
    ("fade_cli.backbone.model", "_read_state_dict", "weights"),
    ("fade_cli.backbone.model", "_assign_weights", "weights"),
    ("fade_cli.engine.detector", "FadeEngine.detect_prepared", "forward"),
]
TIMED_IMPORTS = ["torch", "open_clip", "transformers", "torchvision", "fastapi", "uvicorn"]
IMPORT_ROWS = ["fade_cli.cli", "torch", "open_clip", "transformers", "torchvision", "torch._dynamo", "timm",
               "fastapi", "uvicorn", "fade_cli.backbone.model"]


# --- the child: fade's CLI with timers around the phases ---------------------------------------------
class _Phases:
    def __init__(self, started: float):
        self.started = started
        self.spans: dict[str, list[tuple[float, float]]] = {}

    def timed(self, phase: str, function):
        def wrapper(*args, **kwargs):
            began = time.time()
            try:
                return function(*args, **kwargs)
            finally:
                self.spans.setdefault(phase, []).append((began - self.started, time.time() - self.started))
        wrapper.__wrapped__ = function
        return wrapper

    def write(self, path: str) -> None:
        Path(path).write_text(json.dumps(self.spans))


class _WrapOnImport(importlib.abc.MetaPathFinder):
    """Wraps the watched functions right after their module runs, before anyone imports them by name."""

    def __init__(self, phases: _Phases):
        self.phases = phases
        self.modules = {module for module, _, _ in WATCHED} | set(TIMED_IMPORTS)

    def find_spec(self, name, path, target=None):
        if name not in self.modules:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module):
            if name in TIMED_IMPORTS:
                self.phases.timed(f"import {name}", run_module)(module)
                return
            run_module(module)
            for watched, attribute, phase in WATCHED:
                if watched == name:
                    self._wrap(module, attribute, phase)

        spec.loader.exec_module = exec_module
        return spec

    def _wrap(self, module, attribute: str, phase: str) -> None:
        owner_name, _, function_name = attribute.rpartition(".")
        owner = getattr(module, owner_name) if owner_name else module
        if hasattr(owner, function_name):
            setattr(owner, function_name, self.phases.timed(phase, getattr(owner, function_name)))


def run_child(fade_args: list[str]) -> None:
    phases = _Phases(float(os.environ[START_ENV]))
    sys.meta_path.insert(0, _WrapOnImport(phases))
    atexit.register(phases.write, os.environ[PHASES_ENV])
    sys.argv = ["fade", *fade_args]
    from fade_cli.cli import main

    main()


# --- the parent: models, banks, runs, tables ---------------------------------------------------------
def published_weights(workdir: Path, suffix: str) -> list[str]:
    import open_clip
    import torch

    weights = workdir / f"published-random.{suffix}"
    torch.manual_seed(0)
    state = open_clip.create_model(PUBLISHED, pretrained=None).state_dict()
    if suffix == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    else:
        torch.save(state, weights)
    return ["--model", PUBLISHED, "--weights", str(weights)]


def fade(args: list[str], env: dict) -> None:
    subprocess.run([sys.executable, "-m", "fade_cli", *args], check=True, capture_output=True, text=True, env=env)


def child_command(fade_args: list[str], importtime: bool = False) -> list[str]:
    flags = ["-X", "importtime"] if importtime else []
    return [sys.executable, *flags, str(Path(__file__).resolve()), "--child", *fade_args]


def timed_detect(fade_args: list[str], env: dict, workdir: Path) -> dict:
    phases_file = workdir / "phases.json"
    env = {**env, PHASES_ENV: str(phases_file), START_ENV: repr(time.time())}
    started = time.time()
    done = subprocess.run(child_command(fade_args), capture_output=True, text=True, env=env)
    if done.returncode not in (0, 1, 4):  # 1 and 4: verdicts (NG, not inspected), not failures
        raise SystemExit(f"fade detect exited with {done.returncode}: {done.stderr[-2000:]}")
    return {"spans": json.loads(phases_file.read_text()), "ready": time.time() - started}


def timed_serve(fade_args: list[str], env: dict, workdir: Path) -> dict:
    phases_file = workdir / "phases.json"
    env = {**env, PHASES_ENV: str(phases_file), START_ENV: repr(time.time())}
    started = time.time()
    proc = subprocess.Popen(child_command(fade_args), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env)
    try:
        url = re.search(r"http://127\.0\.0\.1:\d+", proc.stderr.readline()).group(0)
        ready = _wait_ready(url, proc, started)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    return {"spans": json.loads(phases_file.read_text()), "ready": ready}


def _wait_ready(url: str, proc: subprocess.Popen, started: float) -> float:
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                if response.status == 200:
                    return time.time() - started
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"fade serve exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.01)


def row(spans: dict, ready: float) -> dict[str, float]:
    def total(phase: str) -> float:
        return sum(end - begin for begin, end in spans.get(phase, []))

    forward = spans.get("forward", [(float("nan"), float("nan"))])[0]
    # open_clip's create_model loads the weights itself on the old path: its build time is the rest.
    nested_weights = sum(end - begin for begin, end in spans.get("weights", [])
                         if any(b <= begin and end <= e for b, e in spans.get("build", [])))
    values = {"torch": total("import torch"), "open_clip": total("import open_clip"), "bank": total("bank"),
              "hash": total("hash"), "build": total("build") - nested_weights, "weights": total("weights")}
    return {**values, "other": forward[0] - sum(values.values()), "forward@": forward[0],
            "-weights": forward[0] - values["weights"], "forward": forward[1] - forward[0], "ready": ready}


def import_times(fade_args: list[str], env: dict, workdir: Path) -> dict[str, float]:
    """Cumulative import seconds of the heavy packages in one run (the first time each is imported)."""
    env = {**env, PHASES_ENV: str(workdir / "phases-importtime.json"), START_ENV: repr(time.time())}
    if fade_args[0] == "serve":
        return {}  # a server runs until stopped: its imports are those of detect plus the serve stack
    done = subprocess.run(child_command(fade_args, importtime=True), capture_output=True, text=True, env=env)
    found = {}
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)$", line)
        if match and match.group(2) in IMPORT_ROWS and match.group(2) not in found:
            found[match.group(2)] = int(match.group(1)) / 1e6
    return found


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        run_child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="tiny,published", help="tiny, published, or both")
    parser.add_argument("--commands", default="detect,serve")
    parser.add_argument("--runs", type=int, default=3, help="Runs per command (the first one finds no hash memo).")
    parser.add_argument("--format", choices=["safetensors", "pt"], default="safetensors",
                        help="File format of the published architecture's random weights.")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the runs [default: torch's]")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    query = sorted((GOLDEN / "images" / "queries").glob("*.png"))[0]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the start; python {platform.python_version()}; threads "
          f"{args.threads or 'default'}")
    for arch in args.arch.split(","):
        with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
            workdir = Path(tmp)
            env["FADE_CACHE_DIR"] = str(workdir / "cache")
            model = TINY if arch == "tiny" else published_weights(workdir, args.format)
            engine_args = [*model, "--device", "cpu", *SIZES[arch]]
            bank = workdir / "widget.fadebank"
            fade(["bank", "build", str(GOLDEN / "images" / "refs2"), "--class", "widget", "-q", "--out", str(bank),
                  *engine_args, *PROMPTS], env)
            commands = {
                "detect": ["detect", str(query), "--bank", str(bank), "--out", str(workdir / "run"), "--overwrite",
                           "--no-report", "-q", "--format", "jsonl"],
                "serve": ["serve", "--bank", str(bank), "--port", "0"],
            }
            for command in args.commands.split(","):
                report(arch, command, commands[command], args.runs, env, workdir)
            print(f"  (load average {os.getloadavg()[0]:.1f} at the end)")


def report(arch: str, command: str, fade_args: list[str], runs: int, env: dict, workdir: Path) -> None:
    measure = timed_serve if command == "serve" else timed_detect
    measured = [measure(fade_args, env, workdir) for _ in range(runs)]
    rows = [row(**one) for one in measured]
    print(f"\n{arch} model, fade {command}: seconds since process start")
    names = list(rows[0])
    print("  run " + " ".join(f"{name:>9}" for name in names))
    for index, values in enumerate(rows, 1):
        print(f"  {index:>3} " + " ".join(f"{values[name]:>9.2f}" for name in names))
    if runs > 2:
        print("  med " + " ".join(f"{statistics.median(r[name] for r in rows[1:]):>9.2f}" for name in names)
              + "   (median of runs 2 and later)")
    print("  timeline of the last run (start-end, s): " + ", ".join(
        f"{phase} {spans[0][0]:.2f}-{spans[-1][1]:.2f}" + (f" ({len(spans)}x)" if len(spans) > 1 else "")
        for phase, spans in sorted(measured[-1]["spans"].items(), key=lambda item: item[1][0][0])))
    imports = import_times(fade_args, env, workdir)
    if imports:
        print("  import (cumulative s, -X importtime): " + ", ".join(f"{k} {v:.2f}" for k, v in imports.items()))


if __name__ == "__main__":
    main()
