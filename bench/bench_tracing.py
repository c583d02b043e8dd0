"""What OpenTelemetry tracing costs a gateway request: tracing off vs on.

One fast OpenAI-wire upstream (``bench_gateway``'s raw asyncio server, its own process) and
one gateway process per mode, all started at once; a client (``http.client``, keep-alive,
one request at a time) sends rounds of requests to each mode in turn, so a busy moment of
the machine hits every mode alike. Modes:

- ``off``: no ``telemetry`` section (``opentelemetry`` is not even imported);
- ``on``: tracing on, every span kept, the batch processor exporting to an exporter that
  drops them (the cost of making, ending and queueing the spans);
- ``sampled-out``: tracing on at ``sample_ratio: 0`` (non-recording spans; traceparent
  still sent to the site backend);
- ``otlp``: tracing on, exported over OTLP/HTTP (protobuf) to a local sink that answers 200
  (the exporter's thread shares the gateway's interpreter).

Latency is the client's time to the whole answer (non-stream) or to the last byte
(stream); the added cost of a mode is its percentile minus ``off``'s. On a shared machine
latency swings with the load; the gateway process's CPU time per request (user + system,
from ``/proc``, the exporter's thread included) is the steadier measure of what tracing
costs.

    .venv/bin/python bench/bench_tracing.py [--requests 2000] [--rounds 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gateway import BENCH_KEY, free_port, run_upstream, tierlm_config, wait_http

MODES = ("off", "on", "sampled-out", "otlp")


def serve(mode: str, port: int, upstream: str, sink: str, tmp: str) -> None:
    """The gateway of ``mode`` (run in its own process): ``bench_gateway``'s configuration
    (one key, the upstream, ledger off) plus the mode's ``telemetry``."""
    import uvicorn

    from tierlm.config import load_settings
    from tierlm.router import Router
    from tierlm.server import create_app, uvicorn_config

    telemetry: dict[str, Any] = {"enabled": mode != "off", "endpoint": sink + "/v1/traces"}
    if mode == "sampled-out":
        telemetry["sample_ratio"] = 0.0
    (Path(tmp) / mode).mkdir()
    path = tierlm_config(upstream, port, Path(tmp) / mode, ledger=False)
    s = load_settings(path, overrides={"telemetry": telemetry})
    tracing = None
    if mode in ("on", "sampled-out"):
        from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

        from tierlm.telemetry import Tracing

        class Drop(SpanExporter):
            def export(self, spans: Sequence[Any]) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        tracing = Tracing(s.telemetry, Drop())
    router = Router(s, tracing=tracing)
    app = create_app(router, owns_router=True)
    uvicorn.Server(uvicorn_config(s, app, log_level="warning")).run()


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that reads each export and answers 200."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def sink() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def timed(conn: http.client.HTTPConnection, body: bytes, n: int) -> list[float]:
    """``n`` requests one after another on a fresh connection (the last round's may have
    idled past the server's keep-alive), after one untimed; each one's milliseconds to its
    last byte."""
    headers = {"content-type": "application/json", "authorization": f"Bearer {BENCH_KEY}"}
    conn.close()
    conn.request("POST", "/v1/chat/completions", body, headers)
    conn.getresponse().read()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body, headers)
        resp = conn.getresponse()
        data = resp.read()
        out.append((time.perf_counter() - t0) * 1000.0)
        assert resp.status == 200, data[:200]
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000, help="per mode and kind")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--upstream", help=argparse.SUPPRESS)
    ap.add_argument("--sink", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.upstream, args.sink, args.tmp)
        return
    up_port = free_port()
    upstream = multiprocessing.Process(target=run_upstream, args=(up_port,), daemon=True)
    upstream.start()
    up_url = f"http://127.0.0.1:{up_port}"
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    with sink() as sink_url, tempfile.TemporaryDirectory() as tmp:
        try:
            for mode in MODES:
                port = free_port()
                cmd = [sys.executable, __file__, "--serve", mode, "--port", str(port)]
                cmd += ["--upstream", up_url, "--sink", sink_url, "--tmp", tmp]
                procs[mode] = (subprocess.Popen(cmd), port)
            for proc, port in procs.values():
                wait_http(f"http://127.0.0.1:{port}/health", proc)
            results = measure({m: (p, proc.pid) for m, (proc, p) in procs.items()}, args)
        finally:
            for proc, _ in procs.values():
                proc.terminate()
                proc.wait(timeout=15)
            upstream.terminate()
    print(table(results))


def cpu_ms(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far, milliseconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")


def measure(
    gateways: dict[str, tuple[int, int]], args: argparse.Namespace
) -> dict[str, dict[str, list[float]]]:
    """Per mode and kind: each request's latency, and (key ``cpu-whole``/``cpu-stream``)
    the gateway's CPU milliseconds per request of each round."""
    results: dict[str, dict[str, list[float]]] = {
        m: {"whole": [], "stream": [], "cpu-whole": [], "cpu-stream": []} for m in gateways
    }
    per_round = max(args.requests // args.rounds, 1)
    conns = {
        m: http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for m, (port, _) in gateways.items()
    }
    for kind in ("whole", "stream"):
        body = json.dumps(
            {
                "model": "auto",
                "stream": kind == "stream",
                "messages": [{"role": "user", "content": "Say hello."}],
            }
        ).encode()
        for conn in conns.values():  # warm-up: connections, first-use imports
            timed(conn, body, 50)
        for _ in range(args.rounds):
            for mode, conn in conns.items():
                pid = gateways[mode][1]
                before = cpu_ms(pid)
                results[mode][kind] += timed(conn, body, per_round)
                results[mode][f"cpu-{kind}"].append((cpu_ms(pid) - before) / (per_round + 1))
    return results


def table(results: dict[str, dict[str, list[float]]]) -> str:
    lines = [
        "| mode | kind | CPU ms/request | +CPU vs off | p50 ms | p99 ms | +p50 vs off "
        "| +p99 vs off |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in ("whole", "stream"):
        base = results["off"][kind]
        base_cpu = statistics.median(results["off"][f"cpu-{kind}"])
        for mode, by_kind in results.items():
            xs = by_kind[kind]
            cpu = statistics.median(by_kind[f"cpu-{kind}"])  # the median round
            d50 = pct(xs, 0.5) - pct(base, 0.5)
            d99 = pct(xs, 0.99) - pct(base, 0.99)
            lines.append(
                f"| {mode} | {kind} | {cpu:.3f} | {cpu - base_cpu:+.3f} | {pct(xs, 0.5):.2f} "
                f"| {pct(xs, 0.99):.2f} | {d50:+.2f} | {d99:+.2f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
