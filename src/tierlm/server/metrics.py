"""Prometheus metrics of the gateway, through ``prometheus_client``. Exposed at ``/metrics``:

- ``tierlm_requests_total{route,tier,backend,status}`` counter
- ``tierlm_request_duration_seconds{route}`` histogram (time to the whole answer)
- ``tierlm_requests_in_flight`` gauge
- ``tierlm_fallbacks_total{tier,backend}`` counter: answers that did not come from the plan's
  first candidate
- ``tierlm_stream_errors_total`` counter: streams that ended with an in-band error

Each :class:`Metrics` has its own registry (a reload keeps the same one). With
``PROMETHEUS_MULTIPROC_DIR`` set before the process starts (several gateway processes on one
host writing to one directory: prometheus_client's multiprocess mode), each process writes
its values there and ``/metrics`` of any of them renders the sum over all (in flight: over
the live ones). No ``*_created`` series.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """Counters, one histogram and a gauge of one gateway process."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=False)
        self._requests = Counter(
            "tierlm_requests",
            "Requests answered, by route, tier, backend, status.",
            ["route", "tier", "backend", "status"],
            registry=r,
        )
        self._duration = Histogram(
            "tierlm_request_duration_seconds",
            "Time to the whole answer.",
            ["route"],
            buckets=BUCKETS,
            registry=r,
        )
        self._in_flight = Gauge(
            "tierlm_requests_in_flight",
            "Requests being answered now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._fallbacks = Counter(
            "tierlm_fallbacks",
            "Answers from other than the plan's first choice.",
            ["tier", "backend"],
            registry=r,
        )
        self._stream_errors = Counter(
            "tierlm_stream_errors", "Streams ended with an in-band error.", registry=r
        )
        self._in = 0
        self._errors = 0
        self._series: dict[tuple[str, str, str, int], tuple[Counter, Histogram]] = {}

    @property
    def in_flight(self) -> int:
        """Requests being answered by this process now (``+=``/``-=`` move the gauge)."""
        return self._in

    @in_flight.setter
    def in_flight(self, value: int) -> None:
        self._in = value
        self._in_flight.set(value)

    @property
    def stream_errors(self) -> int:
        """Streams this process ended with an in-band error (``+= 1`` counts one)."""
        return self._errors

    @stream_errors.setter
    def stream_errors(self, value: int) -> None:
        self._stream_errors.inc(value - self._errors)
        self._errors = value

    def observe(self, route: str, tier: str, backend: str, status: int, seconds: float) -> None:
        key = (route, tier, backend, status)
        series = self._series.get(key)
        if series is None:  # label lookups cost more than the update: once per label set
            series = self._series[key] = (
                self._requests.labels(route, tier, backend, str(status)),
                self._duration.labels(route),
            )
        series[0].inc()
        series[1].observe(seconds)

    def fallback(self, tier: str, backend: str) -> None:
        self._fallbacks.labels(tier, backend).inc()

    def render(self) -> str:
        """The text exposition: this process's, or every process's in multiprocess mode."""
        if os.environ.get(MULTIPROC_ENV):
            from prometheus_client import multiprocess

            registry = CollectorRegistry(auto_describe=False)
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry).decode()
        return generate_latest(self.registry).decode()


def process_exited() -> None:
    """In multiprocess mode, drop this process's in-flight gauge from the sum (``serve()``
    calls it as it exits); otherwise nothing."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
