"""`fade detect --ray` and `fade eval --ray` on a local Ray cluster of 2 CPUs, shared by the module's tests.

Each run is a `fade` process that connects to that cluster (as a driver on a real cluster would) and is
compared with a local run of the same images: rows, maps, heatmaps, masks, thumbnails and metrics equal.
The cluster also declares one logical GPU (none is there: torch scores on the CPU), so that a run with
--ray-gpus-per-worker takes the GPU pipeline, decoding in CPU tasks apart from the scoring worker.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import FAST_ARGS, QUERIES, WEIGHTS
from fade_cli.cli import cli

pytestmark = pytest.mark.slow  # a local Ray cluster per module, workers killed and replaced

REPO = Path(__file__).resolve().parent.parent
COOKIE = REPO / "examples" / "cookie"
REFS = COOKIE / "cookie" / "train" / "good"
# The few-shot run every test scores: its rows and files are compared with a local run's.
RUN_ARGS = ["--refs", str(REFS), "--threshold", "0.5", "--pixel-threshold", "0.5", *FAST_ARGS]


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    """A local cluster of 2 CPUs and a logical GPU; its workers get an isolated cache and one thread each."""
    import ray

    cache = tmp_path_factory.mktemp("ray-cache")
    isolated = {"FADE_CACHE_DIR": str(cache), "HF_HOME": str(cache / "hf"), "HF_HUB_OFFLINE": "1",
                "OMP_NUM_THREADS": "1"}
    saved = {name: os.environ.get(name) for name in isolated}
    os.environ.update(isolated)
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for name, value in saved.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)


def fade_process(*args: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "fade_cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def fade(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = fade_process(*args)
    stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _how_it_ran(run_json: bytes) -> dict:
    """run.json without what differs between any two runs: the command line and the start time."""
    return {key: value for key, value in json.loads(run_json).items() if key not in ("command", "started")}


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def images(tmp_path) -> Path:
    """The golden queries, two photos of another size in a sub-folder, and a file that is no image."""
    folder = tmp_path / "images"
    shutil.copytree(QUERIES, folder)
    (folder / "sub").mkdir()
    for photo in sorted((COOKIE / "cookie" / "test" / "cracked").glob("*.jpg"))[:2]:
        shutil.copy(photo, folder / "sub" / photo.name)
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


@pytest.fixture
def many_images(tmp_path) -> Path:
    """40 images (copies of the golden queries): a run long enough to be stopped in the middle."""
    folder = tmp_path / "many"
    folder.mkdir()
    queries = sorted(QUERIES.glob("*.png"))
    for index in range(40):
        shutil.copy(queries[index % len(queries)], folder / f"img{index:02d}.png")
    return folder


def local_scores() -> dict[str, float]:
    """Each golden query's score in a local run of RUN_ARGS."""
    result = CliRunner().invoke(cli, ["detect", str(QUERIES), *RUN_ARGS, "--format", "jsonl"],
                                catch_exceptions=False)
    return {row["path"]: row["score"] for row in map(json.loads, result.stdout.splitlines())}


def wait_for_rows(out: Path, count: int, proc: subprocess.Popen, timeout: float = 300) -> int:
    """Wait until the run in ``out`` has recorded ``count`` rows; returns how many it had."""
    deadline = time.monotonic() + timeout
    partial = out / "results.partial.jsonl"
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        rows = len(partial.read_text().splitlines()) if partial.is_file() else 0
        if rows >= count:
            return rows
        time.sleep(0.05)
    raise AssertionError(f"no {count} rows in {out} after {timeout} s")


def scoring_worker_pids() -> list[int]:
    """The processes of the Ray actors that score images (Ray names them after the actor class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if entry.name.isdigit() and b"ScoringWorker" in command and b"pytest" not in command:
            pids.append(int(entry.name))
    return pids


def test_detect_on_ray_writes_what_a_local_run_writes(ray_address, images, tmp_path):
    local = fade("detect", str(images), *RUN_ARGS, "--out", str(tmp_path / "local"), "--format", "jsonl")
    ray_run = fade("detect", str(images), *RUN_ARGS, "--out", str(tmp_path / "ray"), "--format", "jsonl",
                   "--ray", ray_address, "--ray-workers", "2")
    assert local.returncode == ray_run.returncode == 1, ray_run.stderr  # an image is NG
    assert ray_run.stdout == local.stdout  # rows in file order, bit-equal scores, nothing of Ray's on stdout
    rows = [json.loads(line) for line in ray_run.stdout.splitlines()]
    assert [row["path"] for row in rows] == ["broken.png", "cracked_a.png", "cracked_b.png", "good_a.png",
                                             "good_b.png", "sub/001.jpg", "sub/002.jpg"]
    assert rows[0]["error"] and "not a readable image" in rows[0]["error"]  # an error row, once, not retried
    assert any(row["mask_path"] for row in rows)
    written_locally, written_on_ray = files_under(tmp_path / "local"), files_under(tmp_path / "ray")
    assert written_locally.keys() == written_on_ray.keys()
    differ = [name for name in written_locally if written_locally[name] != written_on_ray[name]
              and name not in (".fade-output", "report.html", "run.json", ".fade-written")]
    # (the lock's holder, the page's title, the order in which files were written: Ray's workers do not record)
    assert differ == []
    assert _how_it_ran(written_locally["run.json"]) == _how_it_ran(written_on_ray["run.json"])
    assert {"report.html", "results.csv", "maps/sub/001.jpg.npy", "heatmaps/good_a.png.png"} <= written_on_ray.keys()
    assert "Starting execution" not in ray_run.stderr and "Traceback" not in ray_run.stderr


def test_a_worker_killed_mid_run_is_replaced_and_every_image_comes_once(ray_address, many_images, tmp_path):
    """On the GPU pipeline (decoding tasks, one worker on the logical GPU, scoring on the CPU)."""
    expected = local_scores()
    out = tmp_path / "run"
    gpu_args = [*RUN_ARGS, "--device", "auto", "--ray-gpus-per-worker", "1"]  # the last --device counts
    proc = fade_process("detect", str(many_images), *gpu_args, "--out", str(out), "--no-report", "--format", "jsonl",
                        "--ray", ray_address)
    before = wait_for_rows(out, 1, proc)
    victims = scoring_worker_pids()
    assert len(victims) == 1
    os.kill(victims[0], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1, stderr
    assert before < 40  # the worker died with images still to score
    rows = rows_of(out / "results.jsonl")
    assert [row["path"] for row in rows] == sorted(path.name for path in many_images.iterdir())
    queries = sorted(expected)
    assert [row["score"] for row in rows] == [expected[queries[index % len(queries)]] for index in range(40)]
    assert len(stdout.splitlines()) == 40


def test_sigterm_keeps_the_finished_rows_and_resume_completes_the_run(ray_address, many_images, tmp_path):
    out = tmp_path / "run"
    proc = fade_process("detect", str(many_images), *RUN_ARGS, "--out", str(out), "--no-report",
                        "--ray", ray_address, "--ray-workers", "2")
    wait_for_rows(out, 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr
    assert "Stopped by SIGTERM" in stderr
    kept = rows_of(out / "results.jsonl")
    assert 2 <= len(kept) < 40 and all(row["score"] is not None for row in kept)
    assert [row["path"] for row in kept] == sorted(row["path"] for row in kept)
    again = fade("detect", str(many_images), *RUN_ARGS, "--out", str(out), "--no-report", "--resume", "--ray",
                 ray_address)
    assert again.returncode == 1, again.stderr
    assert f"Resuming: {len(kept)} of 40" in again.stderr
    rows = rows_of(out / "results.jsonl")
    assert [row["path"] for row in rows] == sorted(path.name for path in many_images.iterdir())
    assert rows[: len(kept)] == kept or {row["path"] for row in kept} <= {row["path"] for row in rows}
    assert all(row["score"] is not None for row in rows)


def test_eval_on_ray_gives_the_metrics_of_a_local_run(ray_address, tmp_path):
    args = ["eval", str(COOKIE), "--shots", "1", "--seeds", "0,1", "--save-maps", *FAST_ARGS]
    local = fade(*args, "--out", str(tmp_path / "local"))
    ray_run = fade(*args, "--out", str(tmp_path / "ray"), "--ray", ray_address, "--ray-workers", "2")
    assert local.returncode == ray_run.returncode == 0, ray_run.stderr
    assert ray_run.stdout == local.stdout
    written_locally, written_on_ray = files_under(tmp_path / "local"), files_under(tmp_path / "ray")
    assert written_locally.keys() == written_on_ray.keys()
    for name in ("metrics.json", "metrics.csv", "scores.csv", "curves.json", "maps/seed1/cookie/test/good/001.jpg.npy"):
        assert written_on_ray[name] == written_locally[name], name


def test_more_workers_than_the_cluster_holds_is_refused_before_anything_waits(ray_address, images, tmp_path):
    proc = fade("detect", str(images), *FAST_ARGS, "--ray", ray_address, "--ray-workers", "3")
    assert proc.returncode == 3
    assert "--ray-workers 3 needs 3 CPUs; the cluster has 2 CPUs" in proc.stderr


# Without a cluster: the options and the worker's set-up.

@pytest.mark.parametrize("args, message", [
    (["--ray", "./images-folder"], "write `--ray auto` before the images"),
    (["--ray-workers", "2"], "--ray-workers given without --ray"),
    (["--ray", "auto", "--device", "cuda"], "give --ray-gpus-per-worker"),
    (["--ray", "auto", "--device", "cpu", "--ray-gpus-per-worker", "0.5"], "drop one of them"),
])
def test_ray_options_that_cannot_work_are_refused(tmp_path, args, message):
    (tmp_path / "img.png").write_bytes((QUERIES / "good_a.png").read_bytes())
    result = CliRunner().invoke(cli, ["detect", str(tmp_path), "--weights", str(WEIGHTS), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_an_address_where_no_cluster_listens_fails_in_seconds(tmp_path):
    import socket

    (tmp_path / "img.png").write_bytes((QUERIES / "good_a.png").read_bytes())
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens once closed
    started = time.monotonic()
    proc = fade("detect", str(tmp_path), *FAST_ARGS, "--ray", f"127.0.0.1:{port}", timeout=120)
    assert proc.returncode == 3
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in proc.stderr
    assert time.monotonic() - started < 60


def test_a_worker_node_without_the_weights_names_itself_and_the_fix(tiny_config, tmp_path):
    from dataclasses import replace

    from fade_cli.runs.ray.cluster import WorkerNodeError
    from fade_cli.runs.ray.ray_detect import load_on_worker, prepared_for_workers
    from fade_cli.engine import FadeEngine

    engine = FadeEngine.from_config(tiny_config.replace(seg_sizes=(240,), cls_size=240))
    prepared = prepared_for_workers(engine)
    moved = tmp_path / "elsewhere.pt"
    elsewhere = replace(prepared, config=prepared.config.replace(weights=str(moved)))
    with pytest.raises(WorkerNodeError) as raised:
        load_on_worker(elsewhere)
    message = str(raised.value)
    assert f"weights file not found: {moved}" in message
    assert "worker node" in message and "shared storage" in message and "docs/scale.md" in message
    assert raised.value.exit_code == 2
    shutil.copy(WEIGHTS, moved)
    assert load_on_worker(elsewhere).reference_count == 0  # with the file there, the same state loads
