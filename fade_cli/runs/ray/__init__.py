"""Running `fade detect` and `fade eval` on a Ray cluster (docs/scale.md).

Nothing here imports Ray at module level: Ray is imported only when a command is given ``--ray``.
"""
