"""fade: zero-shot and few-shot visual anomaly detection (FADE, BMVC 2024).

The engine lives in :mod:`fade_cli.engine`, image and result I/O in
:mod:`fade_cli.io`, and the command line in :mod:`fade_cli.cli`. Importing this
package does not import torch.
"""

__version__ = "0.1.0"
