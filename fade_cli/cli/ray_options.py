"""The options of a run on a Ray cluster (`--ray`, docs/scale.md), shared by `detect` and `eval`.

Nothing here imports Ray: it is imported only when --ray is given.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import click

from fade_cli.cli.options import FiniteFloat, add_options, parsed_with, refuse_without
from fade_cli.runs.ray.cluster import RaySettings, check_address
from fade_cli.core.errors import InputError

RAY_OPTION_NAMES = ("ray_address", "ray_workers", "ray_gpus_per_worker")


RAY_OPTIONS = [
    click.option("--ray", "ray_address", is_flag=False, flag_value="auto", metavar="[ADDRESS]",
                 callback=parsed_with(check_address, (InputError,)),
                 help="Run on a Ray cluster (pip install '.[ray]'): auto (default: the running cluster, else a local "
                      "one started for the run), local, HOST:PORT or ray://HOST:PORT. Needs shared storage for "
                      "the images, --out and the weights; see docs/scale.md."),
    click.option("--ray-workers", type=click.IntRange(min=1), metavar="N",
                 help="With --ray: scoring workers, each with the model loaded once [default: as many as the "
                      "cluster holds, one per CPU, or per --ray-gpus-per-worker share of the GPUs]."),
    click.option("--ray-gpus-per-worker", type=FiniteFloat(0, 8), default=0.0, show_default=True, metavar="F",
                 help="With --ray: GPUs each worker reserves; a fraction (0.5) puts several workers on one GPU; "
                      "0 scores on CPUs."),
]


def ray_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the Ray options (`detect`, `eval`)."""
    return add_options(command, RAY_OPTIONS)


def pop_ray_settings(ctx: click.Context, kwargs: dict[str, Any]) -> Optional[RaySettings]:
    """The run's Ray settings (None without --ray); a --ray-* option without --ray is refused."""
    values = {name: kwargs.pop(name) for name in RAY_OPTION_NAMES}
    if values["ray_address"] is None:
        refuse_without(ctx, RAY_OPTION_NAMES[1:], "--ray", "size a run on a Ray cluster")
        return None
    return RaySettings(address=values["ray_address"], workers=values["ray_workers"],
                       gpus_per_worker=values["ray_gpus_per_worker"])


def start_ray(ctx: click.Context, settings: RaySettings, device: str) -> None:
    """Connect to the cluster (or start a local one) for the rest of the command; clear errors first.

    Called after the output folder is locked: the context closes the connection (and a local cluster's workers)
    before it releases the lock, so no worker of this run writes into a folder another run holds.
    """
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise InputError("--ray needs Ray Data: pip install 'fade[ray]' (or pip install 'ray[data]')")
    from fade_cli.runs.ray.cluster import check_device, ray_session

    check_device(settings, device)
    ctx.with_resource(ray_session(settings.address))
