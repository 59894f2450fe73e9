"""The Ray cluster of a run: connecting (or starting a local one), sizing the worker pool, reading failures.

Ray is imported inside the functions, only when a command is given ``--ray``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import re
import signal
import socket
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, TypeVar

from fade_cli.config import EngineConfig
from fade_cli.core.errors import FadeError, InputError

T = TypeVar("T")

# --ray ADDRESS: auto (a running cluster, else a local one), local (always a new local one), HOST:PORT, ray://HOST:PORT.
ADDRESS_PATTERN = re.compile(r"^(auto|local|(ray://)?[A-Za-z0-9_.\-]+:\d{1,5})$")
# Rows per block of the file list: small runs are still cut into a few blocks per worker, long ones into blocks
# small enough that a killed worker repeats little.
MAX_ROWS_PER_BLOCK = 64
BLOCKS_PER_WORKER = 4
# Times a batch is run again after its worker process died (killed, out of memory, a crash in a decoder): enough
# for a lost node, and a batch that kills every worker it meets fails the job instead of retrying forever.
BATCH_RETRIES = 3
# Seconds to wait for a cluster's address to answer before saying it cannot be reached.
CONNECT_TIMEOUT_S = 10


class ClusterError(FadeError):
    """The cluster cannot run the job as asked: unreachable, too small, or a worker failed (exit code 3)."""


class WorkerNodeError(FadeError):
    """A worker node cannot set up the engine (no weights there, another model); keeps the exit code of its cause."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self):  # raised in a worker, re-raised on the driver: Ray pickles it on the way
        return (WorkerNodeError, (str(self), self.exit_code))


@dataclass(frozen=True)
class RaySettings:
    """How a run uses Ray: the cluster's address and the pool of scoring workers (None: as many as fit)."""

    address: str = "auto"
    workers: Optional[int] = None
    gpus_per_worker: float = 0.0


def check_address(address: str) -> str:
    """``address`` if it is auto, local, HOST:PORT or ray://HOST:PORT; else a usage error saying why."""
    if not ADDRESS_PATTERN.match(address):
        raise InputError(f"--ray {address!r}: give auto, local, HOST:PORT or ray://HOST:PORT (--ray takes the next "
                         "word as its address: write `--ray auto` before the images, or put --ray last)")
    return address


def check_device(settings: RaySettings, device: str) -> None:
    """A worker sees a GPU only when it reserves one: --device cuda without --ray-gpus-per-worker cannot work."""
    if device.startswith("cuda") and settings.gpus_per_worker == 0:
        raise InputError(f"--device {device} with --ray: give --ray-gpus-per-worker F (Ray hides the GPUs from "
                         "workers that reserve none)")
    if device == "cpu" and settings.gpus_per_worker > 0:
        raise InputError("--ray-gpus-per-worker reserves GPUs, but --device cpu scores on the CPU: drop one of them")


@contextlib.contextmanager
def ray_session(address: str) -> Iterator[None]:
    """Connected to the cluster at ``address`` while inside (a local one started for ``auto`` when none runs).

    Ray stays quiet: no dashboard, no worker logs copied to the driver, no progress bars of its own, so that
    stdout holds only fade's rows. A connection the caller already holds (a library caller, the tests) is used
    and left open.
    """
    import ray

    cluster_notices_to_stderr()
    if ray.is_initialized():
        yield
        return
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        _init(ray, address)
    finally:
        # Ray installs its own SIGTERM handler; fade's (stop as on Ctrl-C, keep the finished rows) must stay.
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGTERM, sigterm)
    quiet_ray_data()
    try:
        yield
    finally:
        ray.shutdown()


def cluster_notices_to_stderr() -> None:
    """Ray prints the cluster's notices to the driver's stdout ("(raylet) A worker died ... the task will be
    retried"); scripts read fade's rows there, so they go to stderr.

    Ray has no setting for this: the listener thread calls ``ray._private.worker.print_to_stdstream``, which is
    wrapped here. Without that function (another Ray version) nothing changes.
    """
    from ray._private import worker

    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "fade_to_stderr", False):
        return

    def to_stderr(data, *args, **kwargs):
        return original({**data, "is_err": True}, *args, **kwargs)

    to_stderr.fade_to_stderr = True
    worker.print_to_stdstream = to_stderr


def _init(ray, address: str) -> None:
    options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    if address == "local":
        ray.init(**options)
        return
    if address != "auto":
        check_reachable(address)
    try:
        ray.init(address=address, **options)
    except ConnectionError as exc:
        if address != "auto":
            raise ClusterError(f"cannot reach the Ray cluster at {address}: {exc}") from exc
        ray.init(**options)  # no cluster running: a local one, for this run only


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in seconds when nothing listens at HOST:PORT: Ray itself retries for minutes before it gives up."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} (is `ray start --head` "
                           "running there, and the port open from this machine?)") from exc


def quiet_ray_data() -> None:
    """Ray Data's progress bars and statistics would be drawn over fade's own progress bar."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


@dataclass(frozen=True)
class WorkerPool:
    """The scoring actors of a run: how many, and what each reserves."""

    size: int
    num_cpus: float
    num_gpus: float


def worker_pool(settings: RaySettings, batches: int) -> WorkerPool:
    """Size the pool from the cluster's resources; refuse what the cluster cannot hold (it would wait forever).

    CPU workers reserve one CPU each and decode their own images; GPU workers reserve one CPU too, and at
    least one CPU must stay free for the decoding tasks.
    """
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    on_gpu = settings.gpus_per_worker > 0
    fit_cpu = int(cpus - 1) if on_gpu else int(cpus)
    fit = min(fit_cpu, math.floor(gpus / settings.gpus_per_worker + 1e-9)) if on_gpu else fit_cpu
    size = settings.workers if settings.workers is not None else max(1, min(fit, batches))
    if size > fit:
        need = (f"{size} x {settings.gpus_per_worker:g} GPU and {size + 1} CPUs" if on_gpu else f"{size} CPUs")
        raise ClusterError(f"--ray-workers {size} needs {need}; the cluster has {cpus:g} CPUs and {gpus:g} GPUs "
                           f"(room for {max(fit, 0)} worker(s))")
    return WorkerPool(size=size, num_cpus=1.0, num_gpus=settings.gpus_per_worker)


def block_count(items: int, batch_size: int, workers: int) -> int:
    """Blocks to cut ``items`` into: a few per worker, never smaller than a batch, at most MAX_ROWS_PER_BLOCK rows."""
    batches = math.ceil(items / batch_size)
    return max(1, min(batches, max(workers * BLOCKS_PER_WORKER, math.ceil(items / MAX_ROWS_PER_BLOCK))))


def absolute_paths(config: EngineConfig) -> EngineConfig:
    """The config with its file paths absolute: a worker's working folder is not the driver's."""
    return config.replace(**{name: os.path.abspath(value) for name in ("weights", "model_config", "cache_dir")
                             if (value := getattr(config, name))})


def on_worker_node(load: Callable[[], T]) -> T:
    """Load the model on a worker node, never downloading (a hundred workers must not each fetch 800 MB); a
    failure names the node and says what every node needs."""
    from fade_cli.backbone.cache import go_offline

    go_offline()
    try:
        return load()
    except FadeError as exc:
        raise WorkerNodeError(f"worker node {node_name()} cannot load the model: {exc}. Every worker node needs "
                              "the weights: the same --weights path on shared storage, or a model cache every "
                              "node sees ($FADE_CACHE_DIR; see docs/scale.md)", exc.exit_code) from exc


def pickled_column(items: list) -> "Any":
    """A Ray Data column of pickled objects (bytes): Arrow leaves them alone, whatever file names they hold."""
    import numpy as np

    column = np.empty(len(items), dtype=object)
    column[:] = [pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL) for item in items]
    return column


def indexed_items(items: list, blocks: int):
    """A Ray dataset of ``{"index": i, "item": pickled item}`` rows cut into ``blocks`` blocks."""
    import ray.data

    rows = [{"index": index, "item": pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)}
            for index, item in enumerate(items)]
    return ray.data.from_items(rows, override_num_blocks=blocks)


def bounded_map_batches(dataset, fn, retry_option: str, **options):
    """``dataset.map_batches(fn, **options)`` with a batch retried at most BATCH_RETRIES times after its worker
    died (``retry_option``: max_retries for tasks, max_task_retries for actors).

    Ray Data retries forever by default, and takes a bound only through ``**ray_remote_args``, deprecated since
    Ray 2.60 (removed in 2.64: setup.cfg asks for an earlier Ray); the deprecation warning is not the user's.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        return dataset.map_batches(fn, **options, **{retry_option: BATCH_RETRIES})


def map_with_workers(dataset, worker_class: type, pool: WorkerPool, batch_size: int, **constructor_kwargs):
    """``dataset`` mapped by a pool of ``worker_class`` actors (Ray Data's stateful ``map_batches``): each built
    once with ``constructor_kwargs``, then called with batches of ``batch_size`` rows."""
    import ray.data

    return bounded_map_batches(
        dataset,
        worker_class,
        "max_task_retries",
        fn_constructor_kwargs=constructor_kwargs,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=pool.size),
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus or None,
    )


def streamed_results(dataset, column: str) -> Iterator[tuple[int, Any]]:
    """(index, unpickled ``column``) of every row of ``dataset``, as blocks finish (in any order).

    A failed job raises the FadeError a worker raised, else a ClusterError (see :func:`failure_of`).
    """
    blocks = iter(dataset.iter_batches(batch_size=None, batch_format="numpy"))
    try:
        for block in blocks:
            for index, blob in zip(block["index"], block[column]):
                yield int(index), pickle.loads(blob)
    except (FadeError, KeyboardInterrupt, GeneratorExit):
        raise
    except Exception as exc:  # Ray Data raises its own types (RayError and others) around a worker's error
        raise failure_of(exc) from None
    finally:
        close = getattr(blocks, "close", None)  # stops the job's workers when the driver stops early
        if close is not None:
            close()


def node_name() -> str:
    """This machine as a message names it: host name and IP address."""
    try:
        import ray

        address = ray.util.get_node_ip_address()
    except Exception:  # outside Ray (a unit test): the host name says enough
        address = ""
    return f"{socket.gethostname()} ({address})" if address else socket.gethostname()


def failure_of(exc: BaseException) -> FadeError:
    """The error to report for a failed Ray job: the fade error a worker raised, else a ClusterError naming the
    worker's exception.

    Ray wraps a worker's exception (``RayTaskError``, Ray Data's ``UserCodeException``) with the remote traceback
    in its text; the original is found along ``cause`` / ``__cause__`` and reported with its own message (and,
    for a fade error, its exit code).
    """
    chain, current = [], exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    originals = [error for error in chain if not _is_ray_wrapper(error)]
    for error in originals:
        if isinstance(error, FadeError):
            return error
    error = originals[0] if originals else chain[-1]
    lines = str(error).strip().splitlines()
    return ClusterError(f"the Ray job failed: {type(error).__name__}: {lines[0] if lines else ''}".rstrip(": "))


def _is_ray_wrapper(exc: BaseException) -> bool:
    from ray.exceptions import RayError, UserCodeException

    return isinstance(exc, (RayError, UserCodeException))
