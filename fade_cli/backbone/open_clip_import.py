"""Importing open_clip with what fade's towers need, not the optional backends it imports eagerly.

``import open_clip`` imports two large optional libraries for towers fade's usual
architectures do not have: transformers (0.5 s here, 2.8 s measured on a loaded machine),
for text towers that are Hugging Face models (``text_cfg.hf_model_name``) and CoCa's caption
generation (which fade never runs), and timm (0.2 to 0.4 s beyond torchvision), for vision
towers that are timm models (``vision_cfg.timm_model_name``, which GEM cannot run anyway).
So open_clip is imported with both hidden, which open_clip treats as "not installed" (it
catches the ImportError), and the hiding ends with that import: a later ``import
transformers`` (the LLM prompt generator) works as usual. An architecture that does have
such a tower first has open_clip's adapter module run again, now with its library
(:func:`enable_backends_for`; :mod:`fade_cli.backbone.model` calls it before building a model).

torchvision (imported by open_clip for its preprocessing transforms and a ResNet layer, and
which imports torch._dynamo, about 1.3 s) stays: open_clip cannot be imported without it.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import sys
import threading
from types import ModuleType
from typing import Any, Iterator, Mapping

# Optional library -> (open_clip's module that adapts it, the architecture config section and key that need it).
OPTIONAL_BACKENDS = {
    "transformers": ("open_clip.hf_model", "text_cfg", "hf_model_name"),
    "timm": ("open_clip.timm_model", "vision_cfg", "timm_model_name"),
}
_IMPORT_LOCK = threading.Lock()


def open_clip_module() -> ModuleType:
    """open_clip, imported (the first time) without the optional backends not imported yet."""
    with _IMPORT_LOCK:
        if "open_clip" not in sys.modules:
            with _hidden(tuple(OPTIONAL_BACKENDS)):
                import open_clip  # noqa: F401
        return sys.modules["open_clip"]


def backends_needed(model_config: Mapping[str, Any]) -> list[str]:
    """The optional libraries an open_clip architecture config builds a tower with."""
    needed = []
    for library, (_, section, key) in OPTIONAL_BACKENDS.items():
        part = model_config.get(section)
        if isinstance(part, Mapping) and part.get(key):
            needed.append(library)
    return needed


def enable_backends_for(model_config: Mapping[str, Any]) -> None:
    """Run open_clip's adapter of each library the architecture needs again, where it was imported hidden.

    ``importlib.reload`` runs the module again in its own namespace, so the classes other
    open_clip modules imported from it see the library from now on.
    """
    with _IMPORT_LOCK:
        for library in backends_needed(model_config):
            adapter = sys.modules.get(OPTIONAL_BACKENDS[library][0])
            if adapter is None or getattr(adapter, library, None) is not None:
                continue
            if importlib.util.find_spec(library) is None:
                continue  # not installed: open_clip says so itself when the tower is built
            importlib.reload(adapter)


@contextlib.contextmanager
def _hidden(names: tuple[str, ...]) -> Iterator[None]:
    """``import NAME`` raises ImportError inside, for the names not already imported; restored after."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment] - the import system's "not importable" mark
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]



class _FromOpenClip(logging.Filter):
    """Drops the records logged from open_clip's files. open_clip logs through the root logger itself
    (``logging.warning(...)``), so there is no logger of its own whose level could be set instead."""

    def __init__(self) -> None:
        super().__init__()
        self.folder = os.path.join(os.path.dirname(open_clip_module().__file__), "")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.pathname.startswith(self.folder)


@contextlib.contextmanager
def open_clip_logs_dropped() -> Iterator[None]:
    """Inside, open_clip's log records are dropped and every other logger's kept (``logging.disable`` would
    drop every thread's records, a library user's included)."""
    from_open_clip = _FromOpenClip()
    logging.root.addFilter(from_open_clip)
    try:
        yield
    finally:
        logging.root.removeFilter(from_open_clip)
