"""docs/cli.md is every command's current --help (regenerate: python tests/make_cli_docs.py)."""
from __future__ import annotations

import difflib

import pytest

from make_cli_docs import CLI_DOCS, REGENERATE, cli_docs


def test_the_command_reference_is_current():
    expected = cli_docs()
    written = CLI_DOCS.read_text(encoding="utf-8") if CLI_DOCS.is_file() else ""
    if written != expected:
        diff = list(difflib.unified_diff(written.splitlines(), expected.splitlines(), "docs/cli.md", "--help now",
                                         lineterm="", n=1))
        pytest.fail(f"docs/cli.md is not the commands' current --help; run `{REGENERATE}`\n" + "\n".join(diff[:40]),
                    pytrace=False)
