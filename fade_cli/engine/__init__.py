"""The FADE engine: model, GEM, text, memory bank and fusion.

``FadeEngine`` is imported on first use, so that light modules (the result
type, the writers) can be imported without torch.
"""
from typing import Any

__all__ = ["Detection", "FadeEngine"]


def __getattr__(name: str) -> Any:
    if name == "FadeEngine":
        from fade_cli.engine.detector import FadeEngine

        return FadeEngine
    if name == "Detection":
        from fade_cli.engine.result import Detection

        return Detection
    raise AttributeError(name)
