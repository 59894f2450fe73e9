"""The service's Prometheus metrics, in a registry of its own (one per app: tests run several)."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServeMetrics:
    """Requests by route and status, detect latency, batch sizes, queue depth, images scored and NG verdicts."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("fade_http_requests", "HTTP requests answered, by route and status code.",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("fade_detect_latency_seconds", "Time from receiving a /v1/detect request to its answer.",
                                 buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.batch_size = Histogram("fade_batch_size", "Images per forward pass.", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.queue_depth = Gauge("fade_queue_depth", "Images waiting for the model.", registry=self.registry)
        self.images = Counter("fade_images_scored", "Images scored, by bank.", ["bank"], registry=self.registry)
        self.ng = Counter("fade_ng", "Images judged NG, by bank.", ["bank"], registry=self.registry)
        self.ready = Gauge("fade_ready", "1 when the service answers /v1/detect, else 0.", registry=self.registry)

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)
