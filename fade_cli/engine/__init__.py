"""The FADE engine: model, GEM, text, memory bank and fusion. Imports torch."""
from fade_cli.engine.detector import FadeEngine
from fade_cli.engine.result import Detection

__all__ = ["Detection", "FadeEngine"]
