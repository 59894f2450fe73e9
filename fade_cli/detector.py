"""fade as a library: a :class:`Detector` scores images and returns one :class:`Result` each.

    import fade_cli
    det = fade_cli.Detector.from_bank("screw.fadebank", device="cpu")
    det = fade_cli.Detector.from_references("good/", class_name="screw", calibrate=True, scales=(240, 448))
    det = fade_cli.Detector.zero_shot(class_name="screw", precision="auto")
    results = det.detect(["a.png", pil_image, numpy_rgb_array])
    results[0].score, results[0].verdict, results[0].anomaly_map

Keyword settings are the command line's option names with underscores (:mod:`fade_cli.settings`).
A result equals the row ``fade detect`` writes for the same image and settings, and its
``anomaly_map`` equals the saved map at the image's own size. Detectors built from banks of the
same model share one loaded model while any of them lives.
"""
from __future__ import annotations

import json
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence, Union

from fade_cli.bank.calibration import DEFAULT_MARGIN, MIN_REFERENCES, Calibration, Thresholds, choose_thresholds
from fade_cli.core.errors import ImageError
from fade_cli.prompting.prompt_set import PromptSet, load_prompt_set
from fade_cli.settings import SETTINGS_BY_NAME, SettingError, Settings, names_with_role, unknown_setting_error

if TYPE_CHECKING:  # importing these pulls in torch; `import fade_cli` stays light
    import numpy as np
    from PIL import Image

    from fade_cli.bank.bank import ReferenceBank
    from fade_cli.engine.detector import FadeEngine
    from fade_cli.backbone.model import LoadedModel
    from fade_cli.io.images import ImageFile
    from fade_cli.io.roi import RegionPlan

ImageInput = Union[str, os.PathLike, "Image.Image", "np.ndarray"]
# Settings a run from a bank may choose: how this machine runs, and where the bank's model files are here.
# A folder of per-image ROI masks is given at each run (the bank stores a fixed ROI itself).
BANK_RUN_SETTINGS = (*names_with_role("runtime"), "weights", "model_config", "roi_dir")


@dataclass(frozen=True)
class Result:
    """One image's outcome. ``verdict`` is None without an image threshold; ``anomaly_map`` is (H, W) float32 at
    the image's own size; ``regions`` (with a pixel threshold) lists its defects; ``error`` says why an image
    was not inspected (then the scores and the map are None)."""

    name: str
    score: Optional[float] = None
    language_score: Optional[float] = None
    vision_score: Optional[float] = None
    verdict: Optional[str] = None
    anomaly_map: Optional["np.ndarray"] = None
    regions: Optional[list[dict]] = None
    error: Optional[str] = None


class Detector:
    """An engine ready to score, with its thresholds. Build one with :meth:`from_bank`, :meth:`from_references`
    or :meth:`zero_shot`.

    ``thresholds``: the image and pixel thresholds and where each came from ("given", "calibrated", None);
    ``calibration``: the leave-one-out scores behind calibrated ones; ``bank``: the bank it was built from.
    """

    def __init__(self, engine: "FadeEngine", thresholds: Thresholds = Thresholds(),
                 calibration: Optional[Calibration] = None, bank: Optional["ReferenceBank"] = None):
        self.engine = engine
        self.thresholds = thresholds
        self.calibration = calibration
        self.bank = bank

    @classmethod
    def zero_shot(cls, *, thresholds: Thresholds = Thresholds(), **settings: Any) -> "Detector":
        """A detector without references: the published zero-shot method, judging with ``thresholds``."""
        chosen = Settings.of(**settings)
        regions = regions_of(chosen)
        engine = engine_for_settings(chosen)
        engine.regions = regions
        return cls(engine, choose_thresholds(None, thresholds))

    @classmethod
    def from_references(cls, refs: Union[str, os.PathLike, Sequence["ImageFile"]], *, calibrate: bool = False,
                        margin: float = DEFAULT_MARGIN, thresholds: Thresholds = Thresholds(),
                        **settings: Any) -> "Detector":
        """A few-shot detector whose memory bank holds the good images under ``refs`` (a folder or a file).

        With ``calibrate`` the thresholds come from the references alone (leave-one-out, ``margin`` x the
        highest score); the ``thresholds`` given win over the calibrated ones.
        """
        from fade_cli.runs.runner import load_references

        chosen = Settings.of(**settings)
        ref_files = reference_files(refs)
        regions = regions_of(chosen)
        engine = engine_for_settings(chosen)
        engine.regions = regions
        load_references(engine, ref_files)
        calibration = calibrate_references(engine, ref_files, margin) if calibrate else None
        return cls(engine, choose_thresholds(calibration, thresholds), calibration)

    @classmethod
    def from_bank(cls, bank: Union[str, os.PathLike, "ReferenceBank"], *, thresholds: Thresholds = Thresholds(),
                  **settings: Any) -> "Detector":
        """A detector from a saved bank (`fade bank build`, :func:`build_bank`): its model, settings, references
        and thresholds (each of the ``thresholds`` given wins over the bank's). Only how this machine runs may
        be chosen (device, precision, batch_size, cache_dir, compile) and where the bank's model files are here
        (weights, model_config)."""
        from fade_cli.bank.bank import load_bank

        saved = bank if not isinstance(bank, (str, os.PathLike)) else load_bank(bank)
        source = os.fspath(bank) if isinstance(bank, (str, os.PathLike)) else "the bank"
        regions = regions_of_bank(saved, settings.get("roi_dir"), source)
        engine = engine_for_bank(saved, bank_run_config(saved, settings), source)
        engine.regions = regions
        return cls(engine, thresholds_of_bank(saved, thresholds), saved.calibration, saved)

    def detect(self, images: Iterable[ImageInput]) -> list[Result]:
        """One :class:`Result` per image, in order: a path, a PIL image or an (H, W, 3) uint8 RGB array.
        An image that cannot be read gives a result with ``error`` set; the others are scored."""
        from fade_cli.runs.runner import in_region, score_prepared

        named = [_opened(item, index) for index, item in enumerate(images)]
        results: list[Optional[Result]] = [Result(name, error=error) if error else None for name, _, error in named]
        readable = [(index, name, image) for index, (name, image, error) in enumerate(named) if error is None]
        size = self.engine.batch_size
        for start in range(0, len(readable), size):
            chunk = []
            for index, name, image in readable[start : start + size]:
                try:
                    chunk.append((index, name, image, *in_region(self.engine, Path(name).name, name, image)))
                except ImageError as exc:  # the ROI does not fit this image, or its mask is missing
                    results[index] = Result(name, error=str(exc))
            if not chunk:
                continue
            inputs = self.engine.batch_inputs([self.engine.resize_for_input(cut) for _, _, _, cut, _ in chunk])
            regions = None if self.engine.regions is None else [region for *_, region in chunk]
            for (index, name, image, _, region), detection in zip(chunk, score_prepared(self.engine, inputs,
                                                                                       regions)):
                results[index] = self._result(name, image, detection, region)
        return [result for result in results if result is not None]

    def _result(self, name: str, image: "Image.Image", detection: Any, region: Any = None) -> Result:
        from fade_cli.io.heatmap import upsample_map
        from fade_cli.io.images import ImageFile
        from fade_cli.runs.runner import finish_row

        row = finish_row(ImageFile(Path(name), name), image, detection, None, self.thresholds, region=region)
        if row.score is None:
            return Result(name, error=row.error)
        return Result(name, row.score, row.language_score, row.vision_score, row.verdict,
                      upsample_map(detection.anomaly_map, image.height, image.width), row.regions, row.error)


def _opened(item: ImageInput, index: int) -> tuple[str, Optional["Image.Image"], Optional[str]]:
    """(name, 8-bit RGB image as displayed, None) or (name, None, why it cannot be read)."""
    import numpy as np
    from PIL import Image, ImageOps

    from fade_cli.io.images import load_image, to_rgb8

    if isinstance(item, (str, os.PathLike)):
        try:
            return os.fspath(item), load_image(Path(item)), None
        except ImageError as exc:
            return os.fspath(item), None, str(exc)
    name = f"image {index}"
    if isinstance(item, Image.Image):
        return name, to_rgb8(ImageOps.exif_transpose(item)), None
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3 or 0 in item.shape:
            return name, None, f"{name}: an array must be (H, W, 3) uint8 RGB, not {item.shape} {item.dtype}"
        return name, Image.fromarray(np.ascontiguousarray(item), "RGB"), None
    raise TypeError(f"{name}: expected a path, a PIL image or a numpy array, not {type(item).__name__}")


def regions_of(settings: Any) -> Optional["RegionPlan"]:
    """Where the frames of ``settings`` are inspected (None: whole frames); the ROI file is read and checked here."""
    from fade_cli.io.roi import region_plan

    return region_plan(settings.roi, settings.roi_dir, settings.roi_margin, settings.crop)


def regions_of_bank(bank: "ReferenceBank", roi_dir: Any, source: str) -> Optional["RegionPlan"]:
    """The bank's ROI; a folder of per-image masks only for a bank without a fixed ROI (and always for a bank whose
    references were cut to per-image masks)."""
    from dataclasses import replace

    from fade_cli.io.roi import region_plan

    plan = bank.regions
    if roi_dir is not None and plan is not None and plan.roi is not None:
        raise SettingError("roi_dir", f"the bank {source} sets the ROI ({plan.roi.name}); per-image masks cannot "
                                      "replace it: build another bank")
    if plan is not None and plan.roi is None and roi_dir is None:
        raise SettingError("roi_dir", f"the bank {source} was built from references cut to per-image ROI masks: "
                                      "give the folder of the images' masks")
    if roi_dir is None:
        return plan
    folder_plan = region_plan(folder=roi_dir)
    return folder_plan if plan is None else replace(plan, folder=folder_plan.folder)


def reference_files(refs: Union[str, os.PathLike, Sequence["ImageFile"]]) -> list["ImageFile"]:
    """The reference images under a folder (or one file), or the given list."""
    from fade_cli.io.images import require_images

    if isinstance(refs, (str, os.PathLike)):
        return require_images(Path(refs))
    return list(refs)


PROMPT_SETTINGS = ("prompts", "cls_prompts", "seg_prompts", "prompt_generator", "class_name")


def prompt_sets_for(prompts: Optional[str] = None, cls_prompts: Optional[str] = None,
                    seg_prompts: Optional[str] = None, prompt_generator: Optional[str] = None,
                    class_name: str = "object") -> tuple[Optional[PromptSet], Optional[PromptSet]]:
    """(image-score, map) prompt sets from the prompt files, else from the prompt generator; None: built-in."""
    both = load_prompt_set(prompts) if prompts else None
    cls_set = load_prompt_set(cls_prompts) if cls_prompts else both
    seg_set = load_prompt_set(seg_prompts) if seg_prompts else both
    if prompt_generator and (cls_set is None or seg_set is None):
        from fade_cli.prompting import generate_prompt_set

        generated = generate_prompt_set(prompt_generator, class_name)
        cls_set = cls_set if cls_set is not None else generated
        seg_set = seg_set if seg_set is not None else generated
    return cls_set, seg_set


def prompt_sets_of(settings: Any) -> tuple[Optional[PromptSet], Optional[PromptSet]]:
    return prompt_sets_for(**{name: getattr(settings, name) for name in PROMPT_SETTINGS})


def engine_for_settings(settings: Any, source: Any = None) -> "FadeEngine":
    """Load the model and encode the prompt sets of ``settings``."""
    from fade_cli.engine import FadeEngine

    return FadeEngine.from_config(settings.engine_config(), *prompt_sets_of(settings), source=source)


def calibrate_references(engine: "FadeEngine", ref_files: list["ImageFile"], margin: float = DEFAULT_MARGIN,
                         on_done: Any = None) -> Calibration:
    """Leave-one-out over the references already in ``engine`` (at least two)."""
    from fade_cli.bank.leave_one_out import leave_one_out

    return leave_one_out(engine, ref_files, margin, on_done=on_done)


def bank_run_config(bank: "ReferenceBank", settings: dict[str, Any]) -> Any:
    """The bank's config with this run's runtime settings and model file paths; any other setting is refused."""
    from fade_cli.bank.compat import model_files_for_bank
    from fade_cli.settings import RUNTIME_FIELDS

    for name in settings:
        if name not in SETTINGS_BY_NAME:
            raise unknown_setting_error(name)
        if name not in BANK_RUN_SETTINGS:
            raise SettingError(name, f"the bank sets {name}; build another bank to change it")
    checked = {name: SETTINGS_BY_NAME[name].check(value) for name, value in settings.items()}
    weights, model_config = model_files_for_bank(bank, checked.get("weights"), checked.get("model_config"))
    runtime = {SETTINGS_BY_NAME[name].field: value for name, value in checked.items()
               if SETTINGS_BY_NAME[name].field in RUNTIME_FIELDS or name == "precision"}
    return bank.config.replace(weights=weights, model_config=model_config, **runtime)


def thresholds_of_bank(bank: "ReferenceBank", given: Thresholds = Thresholds()) -> Thresholds:
    """The bank's thresholds, each replaced by the one given."""
    return given.given_over(bank.thresholds)


class _SharedModels:
    """Loaded models by what they are and where they run, kept while an engine uses them."""

    def __init__(self) -> None:
        self._models: "weakref.WeakValueDictionary[str, LoadedModel]" = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def vision_model(self, config: Any, source: Any = None) -> "LoadedModel":
        """The vision tower of ``config``'s model on its device, loaded once."""
        from fade_cli.engine.detector import checked_model_source
        from fade_cli.backbone.model import load_model

        key = json.dumps([config.model, config.pretrained, config.weights, config.model_config, config.device])
        with self._lock:
            loaded = self._models.get(key)
            if loaded is None:
                loaded = load_model(config, source or checked_model_source(config), text_tower=False)
                self._models[key] = loaded
            return loaded


SHARED_MODELS = _SharedModels()


def engine_for_bank(bank: "ReferenceBank", config: Any, source: str, model_source: Any = None) -> "FadeEngine":
    """An engine that scores like the one ``bank`` was built from (no text or reference is encoded again); banks
    of the same model on the same device share one loaded model."""
    from fade_cli.bank.engine_bridge import engine_from_bank

    return engine_from_bank(bank, SHARED_MODELS.vision_model(config, model_source), config, source)


def build_bank(refs: Union[str, os.PathLike], out: Union[str, os.PathLike], *, calibrate: bool = True,
               margin: float = DEFAULT_MARGIN, thresholds: Thresholds = Thresholds(), dtype: str = "float32",
               overwrite: bool = False, **settings: Any) -> "ReferenceBank":
    """Encode the good images under ``refs`` into the bank file ``out`` and return the bank.

    With ``calibrate`` (and at least two references) the thresholds come from leave-one-out over the
    references; the ``thresholds`` given win over them. An existing ``out`` is replaced only
    with ``overwrite``.
    """
    from fade_cli.bank.bank import save_bank
    from fade_cli.bank.engine_bridge import bank_from_engine
    from fade_cli.engine import FadeEngine
    from fade_cli.io.folder_lock import single_output_file
    from fade_cli.prompting.prompt_set import with_default_prompts
    from fade_cli.runs.runner import load_references

    chosen = Settings.of(**settings)
    cls_prompts, seg_prompts = with_default_prompts(*prompt_sets_of(chosen))
    ref_files = reference_files(refs)
    # Held from the start: another build of the same file is refused before, not after, the work.
    with single_output_file(Path(out), overwrite):
        engine = FadeEngine.from_config(chosen.engine_config(), cls_prompts, seg_prompts)
        engine.regions = regions_of(chosen)
        load_references(engine, ref_files)
        enough = calibrate and len(ref_files) >= MIN_REFERENCES
        calibration = calibrate_references(engine, ref_files, margin) if enough else None
        bank = bank_from_engine(engine, cls_prompts, seg_prompts, ref_files, dtype,
                                choose_thresholds(calibration, thresholds), calibration)
        save_bank(bank, Path(out))
    return bank


__all__ = ["Detector", "Result", "build_bank"]
