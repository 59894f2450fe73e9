"""`fade models`: list, download and locate model weights (for stations without internet)."""
from __future__ import annotations

from typing import Optional

import click

from fade_cli.core import strict_json
from fade_cli.cli.help_sections import sectioned

CACHE_HELP = "Model cache folder [default: $FADE_CACHE_DIR, else the Hugging Face cache ($HF_HOME/hub)]."


def _size(size_bytes: Optional[int]) -> str:
    return "" if size_bytes is None else f"{size_bytes / 1e6:,.0f} MB"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def models() -> None:
    """List, download and locate model weights.

    Prepare an offline station on a connected machine, then copy the cache:

    \b
      fade models download ViT-B-16-plus-240 --pretrained laion400m_e31
      fade models path                  # the folder to copy
      fade models list --cached         # what a station can run offline
    """


@models.command("list", **sectioned(Everyday=("cached_only", "include_all", "output_format")))
@click.option("--cached", "cached_only", is_flag=True, help="Only models whose weights are in the cache.")
@click.option("--all", "include_all", is_flag=True, help="Also architectures fade cannot run (ResNets, timm towers).")
@click.option("--format", "output_format", type=click.Choice(["table", "jsonl"]), default="table", show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False), help=CACHE_HELP)
def list_command(cached_only: bool, include_all: bool, output_format: str, cache_dir: Optional[str]) -> None:
    """Published architectures and pretrained tags, whether each is cached, and its size.

    Reads the cache folder only; never uses the network.
    """
    from fade_cli.cli.console import stdout_console
    from rich.table import Table

    from fade_cli.config import DEFAULT_MODEL, DEFAULT_PRETRAINED
    from fade_cli.backbone.cache import cache_location, list_cached_models

    entries = [e for e in list_cached_models(cache_dir, include_all) if e.cached or not cached_only]
    if output_format == "jsonl":
        for entry in entries:
            click.echo(strict_json.dumps({"model": entry.model, "pretrained": entry.pretrained, "cached": entry.cached,
                                   "size_bytes": entry.size_bytes, "path": entry.path,
                                   "fade_compatible": entry.fade_compatible}, ensure_ascii=True))
        return
    table = Table(title=f"cache: {cache_location(cache_dir)}")
    for column in ("model", "pretrained", "cached", "size"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for entry in entries:
        default = " (default)" if (entry.model, entry.pretrained) == (DEFAULT_MODEL, DEFAULT_PRETRAINED) else ""
        name = entry.model if entry.fade_compatible else f"{entry.model} [dim](not runnable by fade)[/]"
        table.add_row(name, entry.pretrained + default, "yes" if entry.cached else "", _size(entry.size_bytes))
    stdout_console().print(table)


@models.command("download", **sectioned(Everyday=("pretrained", "quiet")))
@click.argument("model")
@click.option("--pretrained", required=True, help="Pretrained tag, e.g. laion400m_e31 (see `fade models list`).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help=CACHE_HELP)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar (the line saying what is downloaded stays).")
def download_command(model: str, pretrained: str, cache_dir: Optional[str], quiet: bool) -> None:
    """Download MODEL's weights into the cache (needs internet access).

    Weights already in the cache are used as they are, without asking the network. Without
    network access it fails within seconds (HF_HUB_ETAG_TIMEOUT sets the wait, 5 s by default).

    \b
      fade models download ViT-B-16-plus-240 --pretrained laion400m_e31
      FADE_CACHE_DIR=/media/usb/fade-cache fade models download ViT-L-14 --pretrained openai
    """
    import os

    from fade_cli.cli.console import download_announcer, shows_progress, stderr_console
    from fade_cli.backbone.cache import cache_location, download

    console = stderr_console()
    path = download(model, pretrained, cache_dir, announce=download_announcer(console),
                    progress=shows_progress(console, quiet))
    click.echo(path)
    click.echo(f"{model} ({pretrained}): {_size(os.path.getsize(path))} in {cache_location(cache_dir)}", err=True)


@models.command("path", **sectioned(Everyday=("cache_dir",)))
@click.option("--cache-dir", type=click.Path(file_okay=False), help=CACHE_HELP)
def path_command(cache_dir: Optional[str]) -> None:
    """Print the cache folder fade reads and downloads into (copy it to prepare a station)."""
    from fade_cli.backbone.cache import cache_location

    click.echo(cache_location(cache_dir))
