"""``/metrics`` through prometheus_client: the metric names, and its multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``): what several gateway processes count adds up, and a process
that exited leaves the in-flight sum."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tierlm.server.metrics import Metrics

WORKER = """
import sys
from tierlm.server.metrics import Metrics, process_exited
m = Metrics()
m.in_flight += 2
m.in_flight -= 1
m.observe("/v1/chat/completions", "site", "site", 200, 0.02)
m.fallback("site", "b")
m.stream_errors += 1
if sys.argv[1] == "exit":
    process_exited()
print(m.render())
"""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def run(directory: Path, *args: str) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    out = subprocess.run(
        [sys.executable, "-c", WORKER, *args], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout


def test_names_and_values_in_one_process() -> None:
    m = Metrics()
    m.in_flight += 1
    m.observe("/api/chat", "tiny", "smol", 503, 0.3)
    got = samples(m.render())
    labels = (("backend", "smol"), ("route", "/api/chat"), ("status", "503"), ("tier", "tiny"))
    assert got[("tierlm_requests_total", labels)] == 1
    assert got[("tierlm_requests_in_flight", ())] == 1
    assert (
        got[("tierlm_request_duration_seconds_bucket", (("le", "0.5"), ("route", "/api/chat")))]
        == 1
    )
    assert (
        got[("tierlm_request_duration_seconds_bucket", (("le", "0.25"), ("route", "/api/chat")))]
        == 0
    )
    assert got[("tierlm_stream_errors_total", ())] == 0
    assert not any(name.endswith("_created") for name, _ in got)


def test_processes_add_up_in_multiprocess_mode(tmp_path: Path) -> None:
    run(tmp_path, "stay")
    run(tmp_path, "stay")
    text = run(tmp_path, "exit")  # rendered by the third, after it marked itself exited
    got = samples(text)
    route = ("route", "/v1/chat/completions")
    labels = (
        ("backend", "site"),
        route,
        ("status", "200"),
        ("tier", "site"),
    )
    assert got[("tierlm_requests_total", labels)] == 3
    assert got[("tierlm_fallbacks_total", (("backend", "b"), ("tier", "site")))] == 3
    assert got[("tierlm_stream_errors_total", ())] == 3
    assert got[("tierlm_request_duration_seconds_count", (route,))] == 3
    # in flight: the two processes never marked exited count 1 each, the third no longer
    assert got[("tierlm_requests_in_flight", ())] == 2
