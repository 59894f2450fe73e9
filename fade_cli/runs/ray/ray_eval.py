"""`fade eval --ray`: the (class, seed) runs of an evaluation spread over a pool of Ray Data actors.

Each actor builds an :class:`~fade_cli.evaluation.evaluate.Evaluator` once (the model loaded once, prompts
encoded once per class name) and evaluates whole runs with it; the driver receives each run's
:class:`~fade_cli.evaluation.evaluate.RunResult` (metrics, per-image records) and writes the report as a local
run does. A run is computed by the same code as locally, so its metrics are those of a local run.
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from fade_cli.config import EngineConfig
from fade_cli.runs.ray.cluster import (
    RaySettings,
    absolute_paths,
    indexed_items,
    map_with_workers,
    on_worker_node,
    pickled_column,
    streamed_results,
    worker_pool,
)
from fade_cli.evaluation.evaluate import EvalMapSink, Evaluator, RunResult, ScoredImageSink
from fade_cli.evaluation.plan import EvalSettings, PlannedRun
from fade_cli.evaluation.prompts import PromptSource
from fade_cli.core.memory import guard_engine_failures


class EvaluationWorker:
    """Ray Data actor: one Evaluator, loaded once; each call evaluates whole planned runs."""

    def __init__(self, config: EngineConfig, prompts: PromptSource, settings: EvalSettings,
                 on_eval_map: Optional[EvalMapSink], on_scored: Optional[ScoredImageSink]):
        import torch

        if not torch.cuda.is_available():
            torch.set_num_threads(1)  # the one CPU this worker reserved, not every core of the node
        self.evaluator = guard_engine_failures(lambda: on_worker_node(lambda: Evaluator(config, prompts, settings)))
        self.on_eval_map = on_eval_map
        self.on_scored = on_scored

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pickle

        results = []
        for blob in batch["item"]:
            run: PlannedRun = pickle.loads(blob)
            results.append(guard_engine_failures(lambda: self.evaluator.evaluate(
                run, on_eval_map=self.on_eval_map, on_scored=self.on_scored)))
        return {"index": batch["index"], "result": pickled_column(results)}


def evaluate_on_ray(
    evaluator: Evaluator,
    runs: list[PlannedRun],
    settings: RaySettings,
    on_eval_map: Optional[EvalMapSink] = None,
    on_scored: Optional[ScoredImageSink] = None,
) -> Iterator[tuple[int, RunResult]]:
    """(index in ``runs``, result) of every run, as runs finish on the connected cluster (in any order).

    ``evaluator`` is the driver's: its config, prompt source and settings go to every worker. The callbacks run
    in the workers (they write into a folder every node sees).
    """
    pool = worker_pool(settings, batches=len(runs))
    dataset = indexed_items(list(runs), blocks=len(runs))
    results = map_with_workers(dataset, EvaluationWorker, pool, 1, config=absolute_paths(evaluator.config),
                               prompts=evaluator.prompts.source, settings=evaluator.settings,
                               on_eval_map=on_eval_map, on_scored=on_scored)
    yield from streamed_results(results, "result")


def in_plan_order(evaluator: Evaluator, finished: dict[int, RunResult]) -> list[RunResult]:
    """The finished runs in the order of the plan, their prompt sets recorded in the driver's evaluator as a
    local run records them (the report lists the sets used)."""
    results = [finished[index] for index in sorted(finished)]
    for result in results:
        evaluator.prompts.sets(result.prompt_class)
    return results
