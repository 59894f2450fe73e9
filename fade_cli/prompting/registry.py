"""Finding prompt generators: package entry points and a local plugins folder.

Two ways in, checked the same way:

* an installed package declares an entry point in the group
  ``fade.prompt_generators`` (``name = package.module:GeneratorClass``); fade's
  own generators are registered exactly like this, from ``plugins/``;
* a folder of plain ``.py`` files (``--plugins-dir`` or ``$FADE_PLUGINS_DIR``,
  several folders separated by ``os.pathsep``), for stations where installing
  a package is hard; each module lists its classes in ``PROMPT_GENERATORS``.

A plugin that fails to import, to build, or that breaks the interface is
recorded as a :class:`BrokenPlugin` with its name and the reason; the other
generators keep working. Nothing is imported until :func:`discover_generators`
runs, so importing fade never runs plugin code.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Union

from fade_cli.core.errors import FadeError, InputError
from fade_cli.prompting.interface import PromptGenerator, interface_problems

ENTRY_POINT_GROUP = "fade.prompt_generators"
PLUGINS_DIR_ENV = "FADE_PLUGINS_DIR"
FOLDER_ATTRIBUTE = "PROMPT_GENERATORS"
DEFAULT_GENERATOR = "vocabulary"


@dataclass(frozen=True)
class GeneratorEntry:
    generator: PromptGenerator
    source: str


@dataclass(frozen=True)
class BrokenPlugin:
    name: str
    source: str
    error: str


@dataclass
class GeneratorRegistry:
    """The generators that loaded, by name, and the plugins that did not."""

    entries: dict[str, GeneratorEntry] = field(default_factory=dict)
    broken: list[BrokenPlugin] = field(default_factory=list)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def get(self, name: str) -> PromptGenerator:
        """The generator called ``name``; a clear error when it is unknown or broken."""
        if name in self.entries:
            return self.entries[name].generator
        for plugin in self.broken:
            if plugin.name == name:
                raise FadeError(f"prompt generator '{name}' is broken ({plugin.source}): {plugin.error}")
        known = ", ".join(self.names()) or "none"
        raise InputError(f"unknown prompt generator '{name}' (installed: {known}); see `fade prompts generators`")

    def add(self, candidate: Any, name_hint: str, source: str, must_match: bool = False) -> None:
        """Register one loaded object (a generator class or instance), or record why it is broken.

        ``must_match``: the generator's name must equal ``name_hint`` (an entry point's name).
        """
        try:
            generator = candidate() if isinstance(candidate, type) else candidate
        except Exception as exc:  # plugin code: any failure is reported, never raised
            self.broken.append(BrokenPlugin(name_hint, source, f"cannot create it: {_describe(exc)}"))
            return
        problems = interface_problems(generator)
        name = getattr(generator, "name", name_hint)
        if problems:
            self.broken.append(BrokenPlugin(name if isinstance(name, str) else name_hint, source, "; ".join(problems)))
        elif must_match and name != name_hint:
            self.broken.append(BrokenPlugin(name_hint, source, f"the entry point is '{name_hint}' but the generator "
                                                               f"calls itself '{name}'"))
        elif name in self.entries:
            self.broken.append(BrokenPlugin(name, source, f"name already used by {self.entries[name].source}"))
        else:
            self.entries[name] = GeneratorEntry(generator, source)


def discover_generators(plugins_dir: Union[str, Path, None] = None) -> GeneratorRegistry:
    """Every generator from entry points, then from the plugins folders.

    ``plugins_dir`` wins over ``$FADE_PLUGINS_DIR``; a folder that does not exist
    is an :class:`InputError`.
    """
    registry = GeneratorRegistry()
    for entry_point in _entry_points():
        _add_entry_point(registry, entry_point)
    for folder in plugin_folders(plugins_dir):
        for path in sorted(folder.glob("*.py")):
            if not path.name.startswith("_"):
                _add_module_file(registry, path)
    return registry


def plugin_folders(plugins_dir: Union[str, Path, None] = None) -> list[Path]:
    """The local plugin folders in use: the argument, else those in ``$FADE_PLUGINS_DIR``."""
    if plugins_dir is not None:
        raw: Iterable[str] = [str(plugins_dir)]
    else:
        raw = [part for part in os.environ.get(PLUGINS_DIR_ENV, "").split(os.pathsep) if part]
    folders = [Path(part).expanduser() for part in raw]
    for folder in folders:
        if not folder.is_dir():
            raise InputError(f"plugins folder {folder} does not exist (from --plugins-dir or ${PLUGINS_DIR_ENV})")
    return folders


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    """The group's entry points, sorted by name so discovery does not depend on sys.path order."""
    return sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (ep.name, ep.value))


def _add_entry_point(registry: GeneratorRegistry, entry_point: importlib.metadata.EntryPoint) -> None:
    dist = getattr(entry_point, "dist", None)
    package = f", package {dist.metadata['Name']} {dist.version}" if dist is not None else ""
    source = f"entry point {entry_point.value}{package}"
    try:
        candidate = entry_point.load()
    except Exception as exc:  # plugin code: any failure is reported, never raised
        registry.broken.append(BrokenPlugin(entry_point.name, source, f"cannot import it: {_describe(exc)}"))
        return
    registry.add(candidate, entry_point.name, source, must_match=True)


def _add_module_file(registry: GeneratorRegistry, path: Path) -> None:
    source = f"plugins folder file {path}"
    module_name = f"_fade_local_plugins.{path.stem}"
    try:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look the module up here
        spec.loader.exec_module(module)
    except Exception as exc:  # plugin code: any failure is reported, never raised
        sys.modules.pop(module_name, None)
        registry.broken.append(BrokenPlugin(path.stem, source, f"cannot import it: {_describe(exc)}"))
        return
    candidates = getattr(module, FOLDER_ATTRIBUTE, None)
    if not isinstance(candidates, (list, tuple)) or not candidates:
        registry.broken.append(BrokenPlugin(path.stem, source, f"it defines no {FOLDER_ATTRIBUTE} list"))
        return
    for candidate in candidates:
        registry.add(candidate, path.stem, source)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
