"""The FADE engine: images in, scores and anomaly maps out.

    engine = FadeEngine.from_config(EngineConfig(class_name="screw"))
    engine.add_references([Image.open("good.png")])      # optional: few-shot
    [result] = engine.detect([Image.open("query.png")])
    result.score, result.anomaly_map                      # float, (G, G) array
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np
import torch
from PIL import Image

from fade_cli.config import EngineConfig, MutualSettings, VisionPreset
from fade_cli.engine.fusion import average_over_sizes, fuse_maps, masks_on_grid, patch_scores_to_grid
from fade_cli.engine.gem import GemVisionEncoder, VisionFeatures
from fade_cli.engine import text_cache
from fade_cli.engine.memory_bank import MemoryBank
from fade_cli.engine import mutual
from fade_cli.backbone.model import LoadedModel, ModelSource, load_model, resolve_device, resolve_model_source
from fade_cli.engine.precision import resolve_precision, vision_tower
from fade_cli.engine.sizes import check_input_sizes, model_geometry
from fade_cli.engine.preprocess import normalise, resize_rgb8, stack_rgb8
from fade_cli.engine.result import Detection
from fade_cli.engine.text import abnormal_probability, text_classifier
from fade_cli.core.errors import InputError
from fade_cli.prompting.prompt_set import PromptSet, with_default_prompts
from fade_cli.core.naming import named

if TYPE_CHECKING:
    from fade_cli.io.roi import RegionPlan

# Default images per forward pass: a GPU needs batches to be busy; a CPU gains nothing from them but memory use.
GPU_BATCH_SIZE, CPU_BATCH_SIZE = 8, 1


class FadeEngine:
    """CLIP + GEM + prompt ensembles + memory bank, as configured by an :class:`EngineConfig`."""

    def __init__(
        self,
        loaded: LoadedModel,
        config: EngineConfig,
        cls_classifier_2d: torch.Tensor,
        seg_classifier_2d: torch.Tensor,
    ):
        self.loaded = loaded
        self.config = config
        self.device = loaded.device
        self.precision = resolve_precision(config.precision, self.device)
        tower = vision_tower(loaded.model, self.precision.precision, loaded.cast_towers)
        self.encoder = GemVisionEncoder(
            tower, depth=config.gem_depth, iters=config.gem_iters, temperature=config.gem_temperature
        )
        # The memory bank is searched in the tower's precision (neighbours' similarities recomputed in float32).
        self.search_dtype = self.encoder.matrix_dtype
        if config.compile:
            # One graph per input size; the first batch at each size pays the compilation.
            self.encoder = torch.compile(self.encoder, dynamic=False)
        self.cls_classifier_2d = cls_classifier_2d.to(self.device)
        self.seg_classifier_2d = seg_classifier_2d.to(self.device)
        self.bank = MemoryBank()
        self.reference_count = 0
        # Where frames are inspected (a fade_cli.io.roi.RegionPlan; None: whole frames). The engine scores what it
        # is given; the runner cuts frames to their region and hands the masks to add_references/detect_prepared.
        self.regions = None

    @classmethod
    def from_config(
        cls,
        config: EngineConfig,
        cls_prompts: Optional[PromptSet] = None,
        seg_prompts: Optional[PromptSet] = None,
        loaded: Optional[LoadedModel] = None,
        source: Optional[ModelSource] = None,
    ) -> "FadeEngine":
        """Load the model and encode the prompt sets (built-in defaults when not given).

        ``source`` is what :func:`checked_model_source` returned for ``config``, when the caller has it.
        """
        validate_config(config)
        cls_prompts, seg_prompts = with_default_prompts(cls_prompts, seg_prompts)
        if loaded is None:
            source = source or checked_model_source(config)
            geometry = model_geometry(source.name)
            dim = geometry.embed_dim if geometry is not None else None
            cached = cached_prompt_classifiers(source.identity, config, cls_prompts, seg_prompts, dim)
            loaded = load_model(config, source, text_tower=cached is None)
            if cached is not None:
                return cls(loaded, config, *cached)
        cls_classifier, seg_classifier = encode_prompt_sets(loaded, config, cls_prompts, seg_prompts)
        return cls(loaded, config, cls_classifier, seg_classifier)

    @classmethod
    def from_saved(
        cls,
        loaded: LoadedModel,
        config: EngineConfig,
        cls_classifier_2d: torch.Tensor,
        seg_classifier_2d: torch.Tensor,
        bank: MemoryBank,
        reference_count: int,
        regions: Optional["RegionPlan"] = None,
    ) -> "FadeEngine":
        """An engine assembled from its parts: no prompt or reference is encoded again.

        The parts are taken as they are (no model check): engines from saved parts, a bank file's or a Ray
        worker's, are rebuilt by :meth:`fade_cli.engine.prepared.PreparedEngine.engine`, which checks the model.
        """
        validate_config(config)
        engine = cls(loaded, config, cls_classifier_2d, seg_classifier_2d)
        engine.bank = bank
        engine.reference_count = reference_count
        engine.regions = regions
        return engine

    def run_info(self) -> dict:
        """How this engine runs, for a run's metadata: device, model, the precision with why it was chosen,
        the class and sizes it was set up with, how many reference images its bank holds and its region."""
        info = {"device": str(self.device), "model": dict(self.loaded.identity), "precision": self.precision.to_dict(),
                "class_name": self.config.class_name, "scales": list(self.config.seg_sizes),
                "cls_size": self.config.cls_size, "references": self.reference_count}
        if self.regions is not None:
            info["region"] = self.regions.describe()
        return info

    @property
    def batch_size(self) -> int:
        """Images per forward pass: the configured number, else the device's default."""
        return batch_size_for(self.config, self.device)

    @property
    def preset(self) -> VisionPreset:
        return self.config.preset(has_references=self.reference_count > 0)

    def add_references(self, images: list[Image.Image], inside: Optional[list[Optional[np.ndarray]]] = None) -> None:
        """Add good images to the memory bank, at every segmentation size.

        ``inside``: per image, the bool mask of its inspected pixels (None: all); the patches of cells that hold
        none of them never enter the bank.
        """
        feature = self.config.preset(has_references=True).feature
        pixels_by_size = self.prepare(images)
        for size in self.config.seg_sizes:
            features = self._encode(pixels_by_size[size])
            keep = None if not _any_region(inside) else masks_on_grid(inside, features.grid, self.device).flatten(1)
            self.bank.add(size, features.patches(feature), keep)
        self.reference_count += len(images)

    def resize_for_input(self, image: Image.Image) -> dict[int, np.ndarray]:
        """One image resized to every size the engine encodes: {size: (size, size, 3) uint8}.

        CPU work only (PIL releases the GIL), safe to run for many images in background threads.
        """
        return resize_for_config(image, self.config)

    def batch_inputs(self, resized: list[dict[int, np.ndarray]]) -> dict[int, torch.Tensor]:
        """Stack :meth:`resize_for_input` results: {size: (B, size, size, 3) uint8}, pinned for a GPU."""
        pin = self.device.type == "cuda"
        return {size: stack_rgb8([one[size] for one in resized], pin=pin) for size in resized[0]}

    def prepare(self, images: list[Image.Image]) -> dict[int, torch.Tensor]:
        """Resize a batch at every size the engine needs (:meth:`resize_for_input` + :meth:`batch_inputs`)."""
        return self.batch_inputs([self.resize_for_input(image) for image in images])

    def detect(self, images: list[Image.Image]) -> list[Detection]:
        """Score a batch of images (one forward pass per size for the whole batch)."""
        return self.detect_prepared(self.prepare(images)) if images else []

    def detect_prepared(
        self, pixels_by_size: dict[int, torch.Tensor], inside: Optional[list[Optional[np.ndarray]]] = None
    ) -> list[Detection]:
        """Score a batch that :meth:`prepare` has already turned into tensors.

        ``inside``: per image, the bool mask of its inspected pixels (None: all of them). The maps are 0 in the
        cells holding none of them, and the vision score is the maximum of the cells that do.
        """
        preset = self.preset
        use_vision = bool(self.bank) or preset.use_query
        language_grids, vision_grids = [], []
        language_scores = None
        for size in _sizes_to_encode(self.config):
            features = self._encode(pixels_by_size[size])
            if size == self.config.cls_size:
                language_scores = abnormal_probability(features.clip_cls_bd, self.cls_classifier_2d)
            if size in self.config.seg_sizes:
                language_grids.append(self._language_grid(features))
                if use_vision:
                    vision_grids.append(self._vision_grid(features, size, preset))
        language_map = average_over_sizes(language_grids)
        vision_map = average_over_sizes(vision_grids) * preset.multiplier if use_vision else None
        if _any_region(inside):
            cells = masks_on_grid(inside, language_map.shape[-1], language_map.device)
            language_map = language_map * cells
            vision_map = None if vision_map is None else vision_map * cells
        return _assemble(language_scores, language_map, vision_map, preset)

    def encode_for_mutual(
        self, pixels_by_size: dict[int, torch.Tensor], settings: MutualSettings
    ) -> mutual.MutualBatch:
        """First pass of mutual scoring: a batch's language scores and map, class tokens and stored patch features."""
        self._refuse_references_for_mutual()
        feature = self.config.preset(has_references=False, mutual=True).feature
        language_grids, patches, grids = [], {}, {}
        for size in _sizes_to_encode(self.config):
            features = self._encode(pixels_by_size[size])
            if size == self.config.cls_size:
                language_scores = abnormal_probability(features.clip_cls_bd, self.cls_classifier_2d)
                class_tokens = features.clip_cls_bd
            if size in self.config.seg_sizes:
                language_grids.append(self._language_grid(features))
                patches[size] = mutual.stored(features.patches(feature), settings)
                grids[size] = features.grid
        return mutual.MutualBatch(language_scores, average_over_sizes(language_grids), class_tokens, patches, grids)

    def detect_mutual(self, batches: list[mutual.MutualBatch], settings: MutualSettings) -> list[Detection]:
        """Second pass: score a group's images (the batches of :meth:`encode_for_mutual`) against each other."""
        self._refuse_references_for_mutual()
        group = mutual.concatenate(batches)
        preset = self.config.preset(has_references=False, mutual=True)
        grids = [mutual.mutual_vision_grid(group.patches_by_size[size], group.grids[size], settings)
                 for size in self.config.seg_sizes]
        vision_map = average_over_sizes(grids) * preset.multiplier
        vision_scores = mutual.vision_score_override(vision_map, group, settings)
        return _assemble(group.language_scores_b, group.language_map_bhw, vision_map, preset, vision_scores)

    def _refuse_references_for_mutual(self) -> None:
        if self.bank:
            raise InputError("mutual scoring is zero-shot: the engine holds reference images")

    def _encode(self, pixels_bhwc: torch.Tensor) -> VisionFeatures:
        pixels = normalise(pixels_bhwc.to(self.device, non_blocking=True))
        with precision_context(self.precision.precision):
            return self.encoder(pixels)

    def _language_grid(self, features: VisionFeatures) -> torch.Tensor:
        scores = abnormal_probability(features.gem_patches_bnd, self.seg_classifier_2d)
        return patch_scores_to_grid(scores, features.grid)

    def _vision_grid(self, features: VisionFeatures, size: int, preset: VisionPreset) -> torch.Tensor:
        distances = self.bank.patch_distances(size, features.patches(preset.feature), preset.use_query,
                                              self.search_dtype)
        return patch_scores_to_grid(distances, features.grid)


def precision_context(precision: str) -> contextlib.AbstractContextManager:
    """For tf32, TF32 matrix products and convolutions, the flags restored after.

    bf16 and fp16 need no context: their tower holds weights of that dtype (``precision.vision_tower``).
    """
    if precision == "tf32":
        return _tf32_allowed()
    return contextlib.nullcontext()


@contextlib.contextmanager
def _tf32_allowed() -> Iterator[None]:
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def validate_config(config: EngineConfig) -> None:
    if "{}" not in config.text_template:
        raise InputError(f"{named('text_template')} {config.text_template!r} must contain '{{}}' where the prompt goes")
    if not config.seg_sizes:
        raise InputError("at least one segmentation size is needed")
    if config.gem_iters < 0 or config.gem_depth < 2:
        raise InputError("GEM depth must be at least 2 and iterations at least 0")
    if config.batch_size is not None and config.batch_size < 1:
        raise InputError(f"{named('batch_size')} must be at least 1")


def batch_size_for(config: EngineConfig, device: torch.device) -> int:
    """Images per forward pass: the configured number, else the device's default."""
    if config.batch_size is not None:
        return config.batch_size
    return GPU_BATCH_SIZE if device.type == "cuda" else CPU_BATCH_SIZE


def checked_model_source(config: EngineConfig) -> ModelSource:
    """What :func:`load_model` will load, after checking the settings, the model files and the input sizes
    against the model and the device's memory: every usage error before any weight is read."""
    validate_config(config)
    source = resolve_model_source(config)
    device = resolve_device(config.device)
    check_input_sizes(config, source.name, device, batch_size_for(config, device))
    return source


def _filled_prompt_sets(config: EngineConfig, cls_prompts: PromptSet, seg_prompts: PromptSet) -> list[PromptSet]:
    """{classname} filled as configured: the class name, or 'object'."""
    cls_name = config.class_name if config.cls_use_classname else "object"
    seg_name = config.class_name if config.seg_use_classname else "object"
    return [cls_prompts.filled(cls_name), seg_prompts.filled(seg_name)]


def _cache_key(identity: dict, config: EngineConfig, prompts: PromptSet) -> str:
    return text_cache.classifier_key(identity, config.text_template, prompts.normal, prompts.abnormal)


def cached_prompt_classifiers(
    identity: dict, config: EngineConfig, cls_prompts: PromptSet, seg_prompts: PromptSet, dim: Optional[int] = None
) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """Both (2, ``dim``) classifiers from the on-disk cache, or None if either is missing or damaged."""
    directory = text_cache.text_cache_dir(config.cache_dir)
    found = [
        text_cache.load_cached(directory, _cache_key(identity, config, prompts), dim)
        for prompts in _filled_prompt_sets(config, cls_prompts, seg_prompts)
    ]
    return None if any(f is None for f in found) else (found[0], found[1])


def encode_prompt_sets(
    loaded: LoadedModel, config: EngineConfig, cls_prompts: PromptSet, seg_prompts: PromptSet
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode both prompt sets into (2, D) classifiers, through the on-disk cache."""
    directory = text_cache.text_cache_dir(config.cache_dir)
    classifiers = []
    for prompts in _filled_prompt_sets(config, cls_prompts, seg_prompts):
        key = _cache_key(loaded.identity, config, prompts)
        classifier = text_cache.load_cached(directory, key, int(loaded.model.visual.output_dim))
        if classifier is None:
            if not loaded.has_text_tower:
                raise RuntimeError("the text tower was not loaded, but prompt embeddings are missing from the cache")
            classifier = text_classifier(loaded.model, loaded.tokenizer, prompts, config.text_template, loaded.device)
            text_cache.store(directory, key, classifier)
        classifiers.append(classifier)
    return classifiers[0], classifiers[1]


def resize_for_config(image: Image.Image, config: EngineConfig) -> dict[int, np.ndarray]:
    """:meth:`FadeEngine.resize_for_input` without an engine (decoding on a machine that holds no model)."""
    return {size: resize_rgb8(image, size) for size in _sizes_to_encode(config)}


def _any_region(inside: Optional[list[Optional[np.ndarray]]]) -> bool:
    return inside is not None and any(mask is not None for mask in inside)


def _sizes_to_encode(config: EngineConfig) -> list[int]:
    return sorted(set(config.seg_sizes) | {config.cls_size})


def _assemble(
    language_scores: torch.Tensor,
    language_map: torch.Tensor,
    vision_map: Optional[torch.Tensor],
    preset: VisionPreset,
    vision_scores: Optional[torch.Tensor] = None,
) -> list[Detection]:
    """Fuse maps and scores (FADE_SPEC section 6) and move them to numpy.

    ``vision_scores`` None: the maximum of each vision map.
    """
    if vision_map is None:
        fused, vision_scores = language_map, None
    else:
        fused = fuse_maps(language_map, vision_map, preset.weight)
        if vision_scores is None:
            vision_scores = vision_map.flatten(1).amax(dim=1)
    if vision_scores is None or preset.image_score == "language":
        scores = language_scores
    elif preset.image_score == "vision":
        scores = vision_scores
    else:
        scores = (language_scores + vision_scores) / 2
    scores = scores.clamp(0.0, 1.0)

    # One transfer per tensor for the whole batch, not one per image.
    host = lambda t: None if t is None else t.float().cpu().numpy()  # noqa: E731
    scores_np, language_np, vision_np = host(scores), host(language_scores), host(vision_scores)
    fused_np, language_map_np, vision_map_np = host(fused), host(language_map), host(vision_map)
    return [
        Detection(
            score=float(scores_np[i]),
            language_score=float(language_np[i]),
            vision_score=None if vision_np is None else float(vision_np[i]),
            anomaly_map=np.clip(fused_np[i], 0.0, 1.0),
            language_map=language_map_np[i],
            vision_map=None if vision_map_np is None else vision_map_np[i],
            fused_map=fused_np[i],
        )
        for i in range(len(scores_np))
    ]
