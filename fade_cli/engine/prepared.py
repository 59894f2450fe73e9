"""An engine ready to score, less the model's weights: what a bank file rebuilds and what Ray ships to its workers.

    prepared = PreparedEngine.of(engine)          # tensors on the CPU, nothing of the model but its identity
    again = prepared.engine(load_model(config))   # the same scores, on the loaded model's device

A bank (fade_cli.bank) keeps its own file format and turns into a :class:`PreparedEngine` to run; a Ray run
(fade_cli.runs.ray) puts one in the object store for its workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from fade_cli.backbone.file_hash import model_identity
from fade_cli.backbone.model import LoadedModel
from fade_cli.config import EngineConfig
from fade_cli.core.errors import FadeError, ModelError
from fade_cli.engine.detector import FadeEngine
from fade_cli.engine.memory_bank import MemoryBank
from fade_cli.io.roi import RegionPlan

# Builds the error for a model other than the prepared one: (prepared identity, loaded identity) -> error.
Mismatch = Callable[[dict, dict], FadeError]


def _other_model(expected: dict, loaded: dict) -> FadeError:
    return ModelError(f"the engine was prepared with the model {expected}, but the model loaded is {loaded}")


@dataclass(frozen=True)
class PreparedEngine:
    """Everything an engine scores with besides the model's weights.

    ``identity`` is :func:`model_identity` of the model the engine was prepared with; ``counts_by_size`` the
    patches of each reference per size (an ROI keeps only some; None: every reference alike); ``regions`` where
    frames are inspected (None: whole frames).
    """

    config: EngineConfig
    identity: dict
    cls_classifier_2d: torch.Tensor
    seg_classifier_2d: torch.Tensor
    patches_by_size: dict[int, torch.Tensor]
    reference_count: int
    counts_by_size: Optional[dict[int, list[int]]] = None
    regions: Optional[RegionPlan] = None

    @classmethod
    def of(cls, engine: FadeEngine) -> "PreparedEngine":
        """The engine's prompt classifiers and memory bank on the CPU, with its config, model identity and region."""
        counts = engine.bank.counts_by_size
        return cls(
            config=engine.config,
            identity=model_identity(engine.config, engine.loaded.identity),
            cls_classifier_2d=engine.cls_classifier_2d.cpu(),
            seg_classifier_2d=engine.seg_classifier_2d.cpu(),
            patches_by_size={size: patches.cpu() for size, patches in engine.bank.patches_by_size.items()},
            reference_count=engine.reference_count,
            counts_by_size=None if counts is None else {size: list(sizes) for size, sizes in counts.items()},
            regions=engine.regions,
        )

    def check_model(self, loaded: LoadedModel, mismatch: Mismatch = _other_model) -> None:
        """Refuse any model but the one the engine was prepared with (``mismatch`` says why)."""
        identity = model_identity(self.config, loaded.identity)
        if identity != self.identity:
            raise mismatch(self.identity, identity)

    def engine(self, loaded: LoadedModel, mismatch: Mismatch = _other_model) -> FadeEngine:
        """The engine again, on ``loaded``'s device: no prompt or reference is encoded again."""
        self.check_model(loaded, mismatch)
        counts = None if self.counts_by_size is None else {size: list(c) for size, c in self.counts_by_size.items()}
        bank = MemoryBank({size: patches.to(loaded.device) for size, patches in self.patches_by_size.items()}, counts)
        return FadeEngine.from_saved(loaded, self.config, self.cls_classifier_2d, self.seg_classifier_2d, bank,
                                     self.reference_count, self.regions)
