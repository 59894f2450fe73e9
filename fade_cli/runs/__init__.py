"""The ways of running the engine over inputs, each a source and a sink around the same calls:
``runner`` (a folder: `fade detect`), ``watch`` + ``watch_log`` (`fade watch`), ``serve`` (HTTP),
``ray`` (a Ray cluster)."""
