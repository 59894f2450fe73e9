"""--help lists options in sections, everyday ones first, in every command."""
from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from fade_cli.cli import COMMANDS, cli


def leaf_commands():
    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        if isinstance(command, click.Group):
            for sub in command.commands:
                yield [name, sub]
        else:
            yield [name]


def help_of(path):
    args = [*path, "bottle", "--help"] if path == ["prompts", "generate"] else [*path, "--help"]
    result = CliRunner().invoke(cli, args, terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("path", list(leaf_commands()), ids=" ".join)
def test_every_command_lists_its_options_in_sections(path):
    text = help_of(path)
    headers = [line for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert "Options:" not in headers, f"fade {' '.join(path)} --help has one flat list"
    assert headers and headers[0] in ("Everyday:", "Outputs:"), headers


def test_detect_help_puts_the_everyday_options_first_in_order():
    text = help_of(["detect"])
    lines = text.splitlines()
    everyday = lines.index("Everyday:")
    first = [line.split()[0] for line in lines[everyday + 1 : everyday + 30] if line.startswith("  --")][:5]
    assert first == ["--refs", "--class", "--out", "--threshold", "--bank"]
    assert lines.index("Outputs:") < lines.index("Speed and machine:") < lines.index("Published method:")
    assert text.index("--class") < text.index("--gem-depth") and text.index("--class") < text.index("--scales")
    words = " ".join(text.split())
    assert "progress bar only" in words and "auto is the choice for CPU stations" in words and "8x faster" in words
