"""`fade detect --ray`: a run's images scored by a pool of Ray Data actors, rows back on the driver in file order.

The pipeline (Ray Data)::

    file list --map_batches(decode_batch)--> decoded images, resized for the engine      (CPU tasks)
              --map_batches(ScoringWorker)--> rows; maps, heatmaps, masks written into OUT  (actors, GPUs)
              --iter_batches--> driver: results in file order, progress bar, stdout

Workers on CPUs (no --ray-gpus-per-worker) decode their own batches: each reserves a CPU, and decoding tasks
would wait for CPUs the workers hold.

The driver prepares the engine as a local run does (prompts, references, calibration) and puts its tensors
in the object store once (a :class:`fade_cli.engine.prepared.PreparedEngine`); each actor reads them once and
loads the model's vision tower from its node's cache or the weights path, which every node must see
(docs/scale.md). Scoring and the files of each image go through the same runner code as a local run (``runner.run_decoded``, ``finish_row``),
so the rows and files are those of a local run. A batch whose worker died is run again by Ray; the driver
keeps the first row of each image, so every image appears exactly once.
"""
from __future__ import annotations

import contextlib
import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from PIL import Image

from fade_cli.bank.calibration import Thresholds
from fade_cli.config import EngineConfig
from fade_cli.runs.ray.cluster import (
    ClusterError,
    RaySettings,
    WorkerNodeError,
    absolute_paths,
    block_count,
    bounded_map_batches,
    indexed_items,
    map_with_workers,
    node_name,
    on_worker_node,
    pickled_column,
    streamed_results,
    worker_pool,
)
from fade_cli.engine.detector import FadeEngine, batch_size_for, resize_for_config
from fade_cli.engine.prepared import PreparedEngine
from fade_cli.io.images import ImageFile
from fade_cli.io.outputs import ImageWriter, ResultRow
from fade_cli.core.memory import guard_engine_failures
from fade_cli.runs.row_order import RowsInOrder, finished
from fade_cli.runs.runner import batch_of_decoded, decode_one, run_decoded


def prepared_for_workers(engine: FadeEngine) -> PreparedEngine:
    """The engine as the workers rebuild it: its file paths made absolute for every node."""
    prepared = PreparedEngine.of(engine)
    return replace(prepared, config=absolute_paths(prepared.config))


def load_on_worker(prepared: PreparedEngine) -> FadeEngine:
    """Load the model's vision tower on this node and rebuild the engine; a clear error naming the node when its
    weights are missing or differ from the driver's."""
    from fade_cli.engine.detector import checked_model_source
    from fade_cli.backbone.model import load_model

    def other_model(driver: dict, loaded: dict) -> WorkerNodeError:
        return WorkerNodeError(f"worker node {node_name()} loaded another model than the driver: {loaded} "
                               f"instead of {driver}; give every node the same weights", 3)

    loaded = on_worker_node(lambda: load_model(prepared.config, checked_model_source(prepared.config),
                                               text_tower=False))
    return prepared.engine(loaded, other_model)


@dataclass(frozen=True)
class WorkerOutputs:
    """What the workers write into the output folder, and the thresholds of the rows."""

    out_dir: Optional[str] = None
    map_size: Optional[int] = None
    save_maps: bool = True
    save_heatmaps: bool = True
    save_thumbnails: bool = False
    thresholds: Thresholds = Thresholds()

    @classmethod
    def of(cls, output: Optional[ImageWriter], thresholds: Thresholds) -> "WorkerOutputs":
        if output is None:
            return cls(thresholds=thresholds)
        return cls(os.path.abspath(output.out_dir), output.map_size, output.save_maps, output.save_heatmaps,
                   output.save_thumbnails, thresholds)

    def writer(self) -> Optional["_FilesOnly"]:
        if self.out_dir is None:
            return None
        return _FilesOnly(Path(self.out_dir), self.map_size, self.save_maps, self.save_heatmaps, self.save_thumbnails)


class _FilesOnly(ImageWriter):
    """A worker's sink: the files of each image; its row goes back to the driver, which writes the tables."""

    def add(self, row: ResultRow) -> None:
        pass


@dataclass
class _Decoded:
    """One file after the decoding task: its image and resized inputs, or why it could not be read."""

    file: ImageFile
    image: Optional[Image.Image]
    inputs: Optional[dict[int, np.ndarray]]
    error: Optional[str]


def decode_batch(batch: dict[str, np.ndarray], config: EngineConfig) -> dict[str, np.ndarray]:
    """Ray Data task: decode and resize a block of files. An unreadable file becomes its error, never an
    exception: Ray would run the task again and again."""
    decoded = []
    for blob in batch["item"]:
        file = pickle.loads(blob)
        image, inputs, error = decode_one(file, lambda picture: resize_for_config(picture, config))
        decoded.append(_Decoded(file, image, inputs, error))
    return {"index": batch["index"], "decoded": pickled_column(decoded)}


class ScoringWorker:
    """Ray Data actor: loads the model and the prepared engine once, then scores batches and writes their files.

    ``prepared`` is a one-item list holding the object reference of the :class:`PreparedEngine`: inside a list
    Ray leaves it a reference, so every worker fetches the tensors once from the object store.
    """

    def __init__(self, prepared: list, outputs: WorkerOutputs, cpu_threads: int):
        import ray

        engine_state: PreparedEngine = ray.get(prepared[0])
        if engine_state.config.device == "cpu" or not torch.cuda.is_available():
            torch.set_num_threads(cpu_threads)  # the CPUs this worker reserved, not every core of the node
        self.engine = guard_engine_failures(lambda: load_on_worker(engine_state))
        self.outputs = outputs
        self.writer = outputs.writer()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "decoded" not in batch:  # a CPU worker decodes its own batches: no CPU is left to decoding tasks
            batch = decode_batch(batch, self.engine.config)
        decoded: list[_Decoded] = [pickle.loads(blob) for blob in batch["decoded"]]
        ready = batch_of_decoded(self.engine, [item.file for item in decoded],
                                 [(item.image, item.inputs, item.error) for item in decoded])
        rows: list[ResultRow] = []
        guard_engine_failures(lambda: run_decoded(self.engine, [ready], self.writer, self.outputs.thresholds,
                                                  rows.append))
        return {"index": batch["index"], "row": pickled_column(rows)}


def _check_complete(rows: RowsInOrder, count: int) -> None:
    if rows.passed != count:
        raise ClusterError(f"the Ray job ended with {count - rows.passed} of {count} image(s) without a result")


def run_detection_on_ray(
    engine: FadeEngine,
    files: list[ImageFile],
    settings: RaySettings,
    output: Optional[ImageWriter] = None,
    thresholds: Thresholds = Thresholds(),
    on_row: Optional[Callable[[ResultRow], None]] = None,
) -> None:
    """:func:`fade_cli.runs.runner.run_detection` on the connected Ray cluster: the same rows, to ``output.add`` and
    ``on_row`` in file order, and the same files in ``output``'s folder, written by the workers.

    On KeyboardInterrupt (Ctrl-C, SIGTERM) the rows already received are passed on, in file order, and the
    interrupt goes on to the caller. A failed job raises the FadeError a worker raised, else a ClusterError.
    """
    if not files:
        return
    rows = RowsInOrder(output, on_row)
    try:
        with contextlib.closing(_scored_rows(engine, files, settings, output, thresholds)) as scored:
            for index, row in scored:
                rows.put(index, finished(row))  # a second row of an image comes from a batch Ray ran again
                rows.hand_over()
        _check_complete(rows, len(files))
    except KeyboardInterrupt:
        rows.salvage()
        raise


def _scored_rows(engine: FadeEngine, files: list[ImageFile], settings: RaySettings, output: Optional[ImageWriter],
                 thresholds: Thresholds) -> Iterator[tuple[int, ResultRow]]:
    import ray

    # The workers' device decides the default batch size, not the driver's (a CPU head driving GPU workers).
    batch_size = batch_size_for(engine.config, torch.device("cuda" if settings.gpus_per_worker else "cpu"))
    pool = worker_pool(settings, batches=-(-len(files) // batch_size))
    prepared = prepared_for_workers(engine)
    listing = [ImageFile(Path(os.path.abspath(file.path)), file.relative) for file in files]
    dataset = indexed_items(listing, block_count(len(files), batch_size, pool.size))
    if pool.num_gpus:  # GPU workers wait on no decoder: CPU tasks decode the next images meanwhile
        dataset = bounded_map_batches(dataset, decode_batch, "max_retries", fn_kwargs={"config": prepared.config},
                                      batch_format="numpy")
    outputs = WorkerOutputs.of(output, thresholds)
    scored = map_with_workers(dataset, ScoringWorker, pool, batch_size, prepared=[ray.put(prepared)],
                              outputs=outputs, cpu_threads=max(1, int(pool.num_cpus)))
    yield from streamed_results(scored, "row")
