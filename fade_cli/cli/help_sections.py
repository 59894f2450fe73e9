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
SECTION_ORDER = ("Everyday", "Inspection region", "Outputs", "Prompts", "Limits and timeouts", "Speed and machine",
                 "Mutual scoring", "Ray cluster", "Model", "Published method", "Other options")
OTHER = "Other options"


class SectionedCommand(click.Command):
    """A command whose options are listed in sections (:data:`SECTION_ORDER`)."""

    def __init__(self, *args: Any, sections: Optional[dict[str, tuple[str, ...]]] = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.section_of = {name: title for title, names in (sections or {}).items() for name in names}
        # Within a section, the options a command lists come in its order, before the others.
        self.rank = {name: index for names in (sections or {}).values() for index, name in enumerate(names)}

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        grouped: dict[str, list[tuple[int, str, str]]] = {title: [] for title in SECTION_ORDER}
        for position, param in enumerate(self.get_params(ctx)):
            record = param.get_help_record(ctx)
            if record is not None:
                rank = self.rank.get(param.name or "", len(self.rank) + position)
                grouped.setdefault(self._section(param), []).append((rank, *record))
        for title, rows in grouped.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl([(term, text) for _, term, text in sorted(rows, key=lambda row: row[0])])

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
