"""Benchmark evaluation: the field's metrics on MVTec-AD, VisA and labelled folders.

The pieces are importable without click (FADE_SPEC section 7):

- :mod:`~fade_cli.evaluation.datasets`: reading the dataset layouts into test samples;
- :mod:`~fade_cli.evaluation.shots`: seeded choice of the k reference shots;
- :mod:`~fade_cli.evaluation.masks` and :mod:`~fade_cli.evaluation.maps`: ground truth and
  anomaly maps at the evaluation size;
- :mod:`~fade_cli.evaluation.metrics`, :mod:`~fade_cli.evaluation.pixels` and
  :mod:`~fade_cli.evaluation.aupro`: image metrics, streamed pixel metrics, AUPRO;
- :mod:`~fade_cli.evaluation.evaluate`: running the engine per class and seed;
- :mod:`~fade_cli.evaluation.summary` and :mod:`~fade_cli.evaluation.outputs`: means over
  seeds and classes, metrics.csv / metrics.json / the Markdown table.

Reading datasets, planning runs and computing metrics do not import torch;
``maps``, ``evaluate`` and the writers of ``report`` and ``worst`` do.
"""
