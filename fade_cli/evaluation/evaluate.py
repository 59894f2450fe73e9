"""Running the engine over a dataset's classes and seeds, and scoring the outcome.

The model is loaded once; prompts are encoded once per class name
(:mod:`fade_cli.evaluation.prompts`); the memory
bank is built once per (class, seed) from the drawn reference shots. Each test
image's map is turned into eval-size codes and streamed into the class's
:class:`PixelAccumulator` at once, so only the small (G, G) engine maps of a
run are kept (for the heatmaps of the worst images).

    evaluator = Evaluator(config, fixed_prompts(), EvalSettings(shots=1, seeds=(0, 1)))
    for run in plan_runs(load_dataset(root, "mvtec"), evaluator.settings):   # fade_cli.evaluation.plan
        result = evaluator.evaluate(run)
        result.metrics["pixel_auroc"]
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

from fade_cli.config import EngineConfig
from fade_cli.engine.detector import FadeEngine, checked_model_source, validate_config
from fade_cli.engine.precision import resolve_precision
from fade_cli.backbone.model import LoadedModel, ModelSource, load_model
from fade_cli.engine.result import Detection
from fade_cli.core.errors import InputError
from fade_cli.evaluation.aupro import MAX_FPR
from fade_cli.evaluation.maps import codes_to_scores, eval_codes
from fade_cli.evaluation.masks import load_mask
from fade_cli.evaluation.metrics import image_curves, image_metrics
from fade_cli.evaluation.pixels import LEVELS, PixelAccumulator
from fade_cli.evaluation.plan import EvalSettings, PlannedRun
from fade_cli.evaluation.prompts import ClassPrompts, PromptSource, fixed_prompts
from fade_cli.evaluation.samples import GOOD, ClassSplit, TestSample
from fade_cli.io.images import ImageFile
from fade_cli.io.outputs import ResultRow
from fade_cli.runs.runner import load_references, run_detection


@dataclass
class ImageRecord:
    """One scored test image; ``grid_map`` is the engine's (G, G) float32 map."""

    relative: str
    path: Path
    defect: str
    score: float
    language_score: float
    vision_score: Optional[float]
    mask: Optional[Path]
    grid_map: np.ndarray = field(repr=False)

    @property
    def anomalous(self) -> bool:
        return self.defect != GOOD


@dataclass
class RunResult:
    """The metrics of one class with one seed, and what produced them."""

    class_name: str
    prompt_class: str
    seed: Optional[int]
    references: list[str]
    metrics: dict[str, Optional[float]]
    records: list[ImageRecord]
    missing_masks: list[str]
    # The points the metrics come from: "roc", "pr" (image) and "pro" (pixels), each None where undefined.
    curves: dict = field(default_factory=dict, repr=False)

    def counts(self) -> dict[str, int]:
        anomalous = sum(r.anomalous for r in self.records)
        return {
            "test_images": len(self.records),
            "good": len(self.records) - anomalous,
            "anomalous": anomalous,
            "missing_masks": len(self.missing_masks),
        }


EvalMapSink = Callable[[PlannedRun, TestSample, np.ndarray], None]
# Receives each scored test image while it is decoded in memory, with the engine's (G, G) map (thumbnails).
ScoredImageSink = Callable[[PlannedRun, TestSample, Image.Image, np.ndarray], None]


class Evaluator:
    """Scores planned runs with one loaded model."""

    def __init__(
        self,
        config: EngineConfig,
        prompts: Optional[PromptSource] = None,
        settings: EvalSettings = EvalSettings(),
        loaded: Optional[LoadedModel] = None,
        source: Optional[ModelSource] = None,
    ):
        """``prompts`` gives each class name its prompt sets (default: the built-in sets); ``source`` is what
        :func:`checked_model_source` returned for ``config``, when the caller has it."""
        validate_config(config)
        self.config = config
        self.settings = settings
        self.loaded = loaded or load_model(config, source or checked_model_source(config))
        self.precision = resolve_precision(config.precision, self.loaded.device)
        self.prompts = ClassPrompts(prompts or fixed_prompts(), self.loaded)
        # Where test images and references are inspected (fade_cli.io.roi.RegionPlan); pixel metrics count the
        # pixels inside it only. None: whole frames.
        self.regions = None

    def describe(self) -> dict:
        """Settings, engine config, model identity and prompt-set hashes, for the report."""
        engine = self.config.to_dict()
        engine["class_name"] = self.settings.prompt_class
        return {
            "settings": {
                "shots": self.settings.shots,
                "seeds": [s for s in self.settings.run_seeds() if s is not None],
                "eval_size": self.settings.eval_size,
                "quantize_8bit": self.settings.quantize_8bit,
                "prompt_class": self.settings.prompt_class or "the dataset's class name",
                "aupro_max_fpr": MAX_FPR,
                "map_coding": f"uint16 codes of the [0, 1] map ({LEVELS} levels)",
                "std": "population (ddof=0) over seeds",
                "mutual": None if self.settings.mutual is None else asdict(self.settings.mutual),
            },
            "engine": engine,
            "model": {**self.loaded.identity, "device": str(self.loaded.device)},
            "precision": self.precision.to_dict(),
            "prompts": {"by_class_name": self.prompts.describe()},
            **({} if self.regions is None else {"region": {
                **self.regions.describe(), "pixel_metrics": "computed on the pixels inside the ROI only"}}),
        }

    def prompt_class(self, split: ClassSplit) -> str:
        return self.settings.prompt_class or split.name

    def engine_for(self, run: PlannedRun) -> FadeEngine:
        """An engine for the run's class (prompts encoded once per class name) with its references."""
        config = self.config.replace(class_name=self.prompt_class(run.split))
        engine = FadeEngine(self.loaded, config, *self.prompts.classifiers(config))
        engine.regions = self.regions
        if run.references:
            load_references(engine, list(run.references))
        return engine

    def evaluate(
        self,
        run: PlannedRun,
        on_image: Optional[Callable[[], None]] = None,
        on_eval_map: Optional[EvalMapSink] = None,
        on_scored: Optional[ScoredImageSink] = None,
        on_encoded: Optional[Callable[[], None]] = None,
    ) -> RunResult:
        """Score every test image of the run's class and compute its metrics.

        With mutual scoring, ``on_encoded`` is called as each image is encoded (the first pass).
        """
        engine = self.engine_for(run)
        collector = _RunCollector(run, self.settings, on_image, on_eval_map, on_scored, self.regions)
        files = [ImageFile(sample.path, sample.relative) for sample in run.split.test]
        run_detection(engine, files, output=collector, mutual=self.settings.mutual, on_encoded=on_encoded)
        records = collector.records
        labels, scores = [r.anomalous for r in records], [r.score for r in records]
        metrics = image_metrics(labels, scores)
        metrics.update(collector.pixels.metrics())
        curves = {**image_curves(labels, scores), "pro": collector.pixels.pro_curve()}
        return RunResult(
            class_name=run.split.name,
            prompt_class=self.prompt_class(run.split),
            seed=run.seed,
            references=[f.relative for f in run.references],
            metrics=metrics,
            records=records,
            missing_masks=collector.missing_masks,
            curves=curves,
        )


class _RunCollector:
    """Receives each scored image from :func:`run_detection` (through its ``output`` interface:
    ``write_image`` and ``add``) and turns it into eval data at once."""

    writer_threads = 1  # the pixel histograms and records are built in file order, one image at a time

    def __init__(self, run: PlannedRun, settings: EvalSettings, on_image, on_eval_map, on_scored=None, regions=None):
        self.regions = regions
        self.run = run
        self.settings = settings
        self.samples = {sample.relative: sample for sample in run.split.test}
        self.pixels = PixelAccumulator()
        self.records: list[ImageRecord] = []
        self.missing_masks: list[str] = []
        self.on_image = on_image
        self.on_eval_map = on_eval_map
        self.on_scored = on_scored

    def write_image(self, relative: str, image: Image.Image, detection: Detection) -> tuple[None, None]:
        sample = self.samples[relative]
        codes = eval_codes(detection.anomaly_map, self.settings.eval_size, self.settings.quantize_8bit)
        if sample.anomalous and sample.mask is None:
            self.missing_masks.append(relative)
        else:
            mask = _mask_for(sample, image, self.settings.eval_size)
            self.pixels.add(codes, mask, self._inside(relative, image))
        if self.on_eval_map is not None:
            self.on_eval_map(self.run, sample, codes_to_scores(codes))
        if self.on_scored is not None:
            self.on_scored(self.run, sample, image, detection.anomaly_map)
        self.records.append(
            ImageRecord(relative, sample.path, sample.defect, detection.score, detection.language_score,
                        detection.vision_score, sample.mask, detection.anomaly_map)
        )
        return None, None

    def _inside(self, relative: str, image: Image.Image) -> Optional[np.ndarray]:
        """The eval-size bool mask of the ROI (None: every pixel counts)."""
        if self.regions is None:
            return None
        region = self.regions.region_for(relative, image.width, image.height, relative)
        if region.whole_frame:
            return None
        picture = Image.fromarray(region.mask.astype(np.uint8) * 255, "L")
        size = self.settings.eval_size
        return np.asarray(picture.resize((size, size), Image.NEAREST)) >= 128

    def add(self, row: ResultRow) -> None:
        if row.score is None:  # a scored row may carry a warning in its error (a tiny image): not unreadable
            raise InputError(f"cannot evaluate class {self.run.split.name!r}: test image unreadable: {row.error}")
        if self.on_image is not None:
            self.on_image()


def _mask_for(sample: TestSample, image: Image.Image, size: int) -> Optional[np.ndarray]:
    """The sample's eval-size mask (None for a good image), checked to fit its image's shape."""
    if sample.mask is None:
        return None
    return load_mask(sample.mask, size, image_size=image.size)
