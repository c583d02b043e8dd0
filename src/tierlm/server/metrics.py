"""Prometheus metrics, written by hand in the text exposition format.

Cheap on the hot path: one dict increment and one bisect per request. Exposed at ``/metrics``:

- ``tierlm_requests_total{route,tier,backend,status}`` counter
- ``tierlm_request_duration_seconds{route}`` histogram (time to the whole answer)
- ``tierlm_requests_in_flight`` gauge
- ``tierlm_fallbacks_total{tier,backend}`` counter: answers that did not come from the plan's
  first candidate
- ``tierlm_stream_errors_total`` counter: streams that ended with an in-band error
"""

from __future__ import annotations

import bisect
from collections import defaultdict

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters, one histogram and gauges of one gateway process."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str, int], int] = defaultdict(int)
        self.fallbacks: dict[tuple[str, str], int] = defaultdict(int)
        self.buckets: dict[str, list[int]] = {}
        self.sums: dict[str, float] = defaultdict(float)
        self.in_flight = 0
        self.stream_errors = 0

    def observe(self, route: str, tier: str, backend: str, status: int, seconds: float) -> None:
        self.requests[(route, tier, backend, status)] += 1
        counts = self.buckets.get(route)
        if counts is None:
            counts = self.buckets[route] = [0] * (len(BUCKETS) + 1)
        counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sums[route] += seconds

    def fallback(self, tier: str, backend: str) -> None:
        self.fallbacks[(tier, backend)] += 1

    def render(self) -> str:
        out = [
            "# HELP tierlm_requests_total Requests answered, by route, tier, backend, status.",
            "# TYPE tierlm_requests_total counter",
        ]
        for (route, tier, backend, status), n in sorted(self.requests.items()):
            out.append(
                f'tierlm_requests_total{{route="{_esc(route)}",tier="{_esc(tier)}",'
                f'backend="{_esc(backend)}",status="{status}"}} {n}'
            )
        out += [
            "# HELP tierlm_request_duration_seconds Time to the whole answer.",
            "# TYPE tierlm_request_duration_seconds histogram",
        ]
        for route, counts in sorted(self.buckets.items()):
            r = _esc(route)
            acc = 0
            for le, n in zip((*BUCKETS, float("inf")), counts, strict=True):
                acc += n
                label = "+Inf" if le == float("inf") else repr(le)
                out.append(
                    f'tierlm_request_duration_seconds_bucket{{route="{r}",le="{label}"}} {acc}'
                )
            out.append(f'tierlm_request_duration_seconds_sum{{route="{r}"}} {self.sums[route]}')
            out.append(f'tierlm_request_duration_seconds_count{{route="{r}"}} {acc}')
        out += [
            "# HELP tierlm_requests_in_flight Requests being answered now.",
            "# TYPE tierlm_requests_in_flight gauge",
            f"tierlm_requests_in_flight {self.in_flight}",
            "# HELP tierlm_fallbacks_total Answers from other than the plan's first choice.",
            "# TYPE tierlm_fallbacks_total counter",
        ]
        for (tier, backend), n in sorted(self.fallbacks.items()):
            out.append(
                f'tierlm_fallbacks_total{{tier="{_esc(tier)}",backend="{_esc(backend)}"}} {n}'
            )
        out += [
            "# HELP tierlm_stream_errors_total Streams ended with an in-band error.",
            "# TYPE tierlm_stream_errors_total counter",
            f"tierlm_stream_errors_total {self.stream_errors}",
        ]
        return "\n".join(out) + "\n"
