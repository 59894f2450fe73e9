"""`fade serve`: an HTTP inspection service around the same engine calls as `fade detect`.

The rooms, lowest first:

- :mod:`batcher`: one worker thread owns the device; requests for the same bank that
  arrive together are scored in one forward pass (dynamic batching, bounded queue).
- :mod:`service`: the banks being served, decoding in a thread pool, the rows (built by
  ``fade_cli.runner.finish_row``, so a served row is a `fade detect` row), readiness.
- :mod:`archive`: the optional audit trail (each request's image and its row).
- :mod:`metrics`: the Prometheus metrics.
- :mod:`app`: the HTTP API (FastAPI): routes, limits, errors, the bearer token.
- :mod:`server`: uvicorn, with a graceful drain on SIGTERM/SIGINT.

Nothing here is imported by `fade --help`; FastAPI and uvicorn are the ``serve`` extra.
"""
