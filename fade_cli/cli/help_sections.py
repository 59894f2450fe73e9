"""`--help` in sections: the everyday options first, the published method's knobs last.

Engine options take their section from the settings schema (:mod:`fade_cli.settings`); a
command names the sections of its own options in one table (``sections=`` of
:class:`SectionedCommand`). An option named nowhere is listed under "Other options".
"""
from __future__ import annotations

from typing import Any, Optional

import click

from fade_cli.settings import SETTINGS_BY_NAME

# The order --help shows them in: what a quality engineer sets on the first day, then outputs, then speed.
SECTION_ORDER = ("Everyday", "Outputs", "Prompts", "Speed and machine", "Model", "Published method", "Other options")
OTHER = "Other options"


class SectionedCommand(click.Command):
    """A command whose options are listed in sections (:data:`SECTION_ORDER`)."""

    def __init__(self, *args: Any, sections: Optional[dict[str, tuple[str, ...]]] = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.section_of = {name: title for title, names in (sections or {}).items() for name in names}

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        grouped: dict[str, list[tuple[str, str]]] = {title: [] for title in SECTION_ORDER}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                grouped.setdefault(self._section(param), []).append(record)
        for title, rows in grouped.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)

    def _section(self, param: click.Parameter) -> str:
        if param.name in self.section_of:
            return self.section_of[param.name]
        setting = SETTINGS_BY_NAME.get(param.name or "")
        return setting.section if setting is not None else OTHER


def sectioned(**sections: tuple[str, ...]) -> dict[str, Any]:
    """Keyword arguments for ``click.command`` / ``group.command``: ``@click.command(**sectioned(Everyday=(...)))``.

    Section titles with spaces are written with underscores (``Speed_and_machine``).
    """
    return {"cls": SectionedCommand, "sections": {title.replace("_", " "): names for title, names in sections.items()}}
