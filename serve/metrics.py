"""The service's Prometheus metrics (one registry per service, so tests can run several)."""
from __future__ import annotations


class Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self):
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            disable_created_metrics,
        )

        disable_created_metrics()  # no *_created series: they double the output and nobody graphs them

        self.registry = r = CollectorRegistry()
        self.requests = Counter("jedi_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("jedi_request_latency_seconds", "End-to-end request latency", ["endpoint"],
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30), registry=r)
        self.errors = Counter("jedi_errors", "Failed requests by error type", ["type"], registry=r)
        self.batch = Histogram("jedi_batch_size", "Videos per model call", ["model"],
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.infer = Histogram("jedi_inference_seconds", "Time of one batched model call", ["model"],
                               buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5), registry=r)
        self.decode = Histogram("jedi_decode_seconds", "Upload decode + preprocessing time",
                                buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5), registry=r)
        self.queue = Gauge("jedi_queue_depth", "Decoded videos waiting for the model", ["model"], registry=r)
        self.in_flight = Gauge("jedi_requests_in_flight", "Requests being handled", registry=r)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
