"""`fade serve`: an HTTP inspection service around the same engine calls as `fade detect`.

The rooms, lowest first:

- :mod:`batcher`: one worker thread owns the device; requests for the same bank that
  arrive together are scored in one forward pass (dynamic batching, bounded queue).
- :mod:`service`: the banks being served, decoding in a thread pool, the rows (built by
  ``fade_cli.runs.runner.finish_row``, so a served row is a `fade detect` row), readiness.
- :mod:`admission`: a request's images admitted before decoding, from their headers'
  pixel counts (a budget of decoded pixels in flight).
- :mod:`archive`: the optional audit trail (each request's image and its row).
- :mod:`metrics`: the Prometheus metrics.
- :mod:`app`: the HTTP API (FastAPI): routes, limits, errors, the bearer token.
- :mod:`connections`: uvicorn's h11 protocol with head and body deadlines and a connection
  cap under the open-file limit.
- :mod:`server`: uvicorn, with a graceful drain on SIGTERM/SIGINT.

Nothing here is imported by `fade --help`; FastAPI and uvicorn are the ``serve`` extra.
"""
