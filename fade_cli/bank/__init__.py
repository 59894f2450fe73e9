"""Saved reference banks: the file format, compatibility checks and threshold calibration.

- ``bank.py``: what a bank holds; ``load_bank`` / ``save_bank``.
- ``container.py``: the bytes (safetensors with a checksum, deterministic).
- ``calibration.py``: the threshold statistic and its record.
- ``compat.py``: is a bank usable with this model and these settings.
- ``leave_one_out.py`` and ``engine_bridge.py``: engine <-> bank (these import torch).

Importing the package, ``bank.py``, ``calibration.py`` or ``compat.py`` does not import torch.
"""
