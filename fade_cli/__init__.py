"""fade: zero-shot and few-shot visual anomaly detection (FADE, BMVC 2024).

The library: :class:`Detector` (score images, from a bank, references or zero-shot),
:class:`Result`, :func:`build_bank` and :class:`Settings` (docs/library.md). The engine
lives in :mod:`fade_cli.engine`, image and result I/O in :mod:`fade_cli.io`, and the
command line in :mod:`fade_cli.cli`. Importing this package does not import torch.
"""

__version__ = "0.1.0"

# The public names, imported on first use so that `import fade_cli` (and `fade --help`) stays light.
_PUBLIC = {"Detector": "fade_cli.detector", "Result": "fade_cli.detector", "build_bank": "fade_cli.detector",
           "Settings": "fade_cli.settings", "SettingError": "fade_cli.settings", "Thresholds": "fade_cli.bank.calibration"}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'fade_cli' has no attribute {name!r}")


def _find_checkout_data_packages() -> None:
    """Make ``fade_cli.prompts`` and ``fade_cli.plugins`` importable from a source checkout.

    The wheel installs the top-level ``prompts/`` and ``plugins/`` folders inside
    this package; in a checkout (``python -m fade_cli`` run from the repository
    root) they sit beside it instead.
    """
    import os

    here = os.path.dirname(__file__)
    root = os.path.dirname(here)
    if not os.path.isdir(os.path.join(here, "prompts")) and os.path.isfile(os.path.join(root, "prompts", "__init__.py")):
        __path__.append(root)  # noqa: F821 - module attribute of a package


_find_checkout_data_packages()
