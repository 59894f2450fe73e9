"""The page itself: one HTML file with its CSS, JavaScript and data inline.

The data goes in as JSON inside ``<script type="application/json">``, with
``<``, ``>``, ``&`` and the JavaScript line separators U+2028/U+2029 written as
``\\uXXXX`` escapes (and the bytes of a file name that is not UTF-8 as ``\\udcXX``): no file name can end the script element or start markup,
and the page reads it with ``JSON.parse``. The page's script builds every
element from that data with ``textContent`` and attributes, never as HTML.
"""
from __future__ import annotations

import html
import json
import re
from importlib import resources
from typing import Any

from fade_cli.io.images import escape_undecodable

_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_UNSAFE = re.compile("[<>&\u2028\u2029]")
_SLOT = re.compile(r"/\*@(TITLE|STYLE|SCRIPT|DATA)@\*/")


def embedded_json(data: Any) -> str:
    """JSON that is safe as the text of a script element (and equal to ``data`` once parsed)."""
    text = escape_undecodable(json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False))
    return _UNSAFE.sub(lambda match: _ESCAPES[match.group()], text)


def _static(name: str) -> str:
    return (resources.files("fade_cli.report") / "static" / name).read_text(encoding="utf-8")


def render_page(title: str, data: Any) -> str:
    """The report's HTML: the page template with its title, style, script and ``data`` filled in.

    Every slot is filled in one pass, so text put into one slot is never searched for another.
    """
    parts = {
        "TITLE": html.escape(title),
        "STYLE": _static("report.css"),
        "SCRIPT": _static("report.js"),
        "DATA": embedded_json(data),
    }
    return _SLOT.sub(lambda match: parts[match.group(1)], _static("report.html"))
