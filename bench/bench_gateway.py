"""Gateway overhead: tierlm serve (and LiteLLM's proxy) in front of a fast local upstream.

Three kinds of process, each on its own: a fast OpenAI-wire upstream (raw asyncio + uvloop,
a fixed small completion, streaming or not), the gateway under test, and the load generator
(``wrk``, closed loop: each connection sends its next request when the last one finished).

Targets: the upstream directly; tierlm with the ledger off; ``tierlm+ratelimit``, the same
with rpm/tpm limits on its key (never reached: the cost of checking them; only with
``--only``); tierlm with the default SQLite ledger; ``tierlm-inproc``, tierlm whose backend
answers in-process at once (the gateway's own cost, without the HTTP client to the
upstream); LiteLLM's proxy. For each, at each concurrency (1, 64, 256), streaming and not:
requests/s and latency percentiles (time to the whole answer). The added latency of a
gateway is the difference of percentiles: p50(gateway) - p50(direct) and p99(gateway) -
p99(direct); under saturation (64, 256) it is mostly queueing in the gateway. RSS is VmRSS
from /proc: idle (started, no request yet, no model loaded) and after the load (and the
peak, VmHWM). Both gateways check one API key.

Open loop (below saturation, so added latency is not closed-loop queueing): a load-generator
process (aiohttp + uvloop) sends requests at a fixed rate (``--open-rates``, default 300 and
600 req/s) with at most ``--open-cap`` (64) in flight, and times each from the moment it was
*due* to its last byte, so a slow gateway cannot hide its stalls by delaying the next send
(no coordinated omission). Same targets; LiteLLM only with ``--litellm-open-rates`` (it
saturates near 50 req/s here, far below those rates).

    .venv/bin/python bench/bench_gateway.py [--duration 5] [--litellm PATH | --litellm '']
        [--open-rates 300 600] [--open-duration 5]

Needs ``wrk`` (Debian: ``apt-get install wrk``). LiteLLM runs from its own virtualenv, so its
dependencies stay out of ours (``python -m venv /tmp/litellm-venv &&
/tmp/litellm-venv/bin/pip install 'litellm[proxy]'``), with
``LITELLM_LOCAL_MODEL_COST_MAP=True`` (offline).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bench-model"
ANSWER = "Hello there, how are you?"
# Both gateways authenticate every request with one key (LiteLLM refuses to start without).
BENCH_KEY = "sk-bench-" + "0123456789abcdef" * 3
BODY = {
    "model": "auto",
    "messages": [{"role": "user", "content": "Say hello in five words."}],
    "max_tokens": 16,
}

# -- the upstream -----------------------------------------------------------------------------
_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
).encode()


def _sse_body() -> bytes:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": w}) for w in ("Hello", " there,", " how", " are", " you?")]
    events.append(chunk({}, "stop"))
    events.append(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": MODEL,
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
        }
    )
    out = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return out + b"data: [DONE]\n\n"


def _response(status: str, ctype: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n"
        "connection: keep-alive\r\n\r\n"
    ).encode() + body


class _Upstream(asyncio.Protocol):
    """HTTP/1.1 keep-alive, just enough for the OpenAI chat and models routes."""

    JSON = _response("200 OK", "application/json", _COMPLETION)
    SSE = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked"
        b"\r\nconnection: keep-alive\r\n\r\n"
    )
    SSE_BODY = _sse_body()
    MODELS = _response(
        "200 OK",
        "application/json",
        json.dumps({"object": "list", "data": [{"id": MODEL}]}).encode(),
    )
    NOT_FOUND = _response("404 Not Found", "application/json", b'{"error":"not found"}')

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: Any = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v)
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            self._answer(head.split(" ", 2), body)

    def _answer(self, line: list[str], body: bytes) -> None:
        path = line[1] if len(line) > 1 else ""
        if path.endswith("/chat/completions"):
            if b'"stream":true' in body.replace(b" ", b""):
                # the stream in several chunked-encoding pieces, written at once
                parts = self.SSE_BODY.split(b"\n\n")[:-1]
                out = [self.SSE]
                out += [b"%x\r\n%s\n\n\r\n" % (len(p) + 2, p) for p in parts]
                out.append(b"0\r\n\r\n")
                self.t.write(b"".join(out))
            else:
                self.t.write(self.JSON)
        elif path.endswith("/models"):
            self.t.write(self.MODELS)
        else:
            self.t.write(self.NOT_FOUND)


def run_upstream(port: int) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            _Upstream, "127.0.0.1", port, backlog=4096
        )
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- tierlm's own cost: the gateway with an in-process backend that answers at once --------
def run_echo_gateway(port: int) -> None:
    """``tierlm serve`` whose only backend answers in-process: no HTTP client in the way."""
    import uvicorn

    from tierlm.backends.base import Backend
    from tierlm.config.settings import Settings
    from tierlm.router import Router
    from tierlm.server import create_app
    from tierlm.types import ChatRequest, ChatResponse, Message, StreamEvent, Usage

    usage = Usage(prompt_tokens=12, completion_tokens=7)

    class Echo(Backend):
        async def complete(self, request: ChatRequest) -> ChatResponse:
            msg = Message(role="assistant", content=ANSWER)
            return ChatResponse(model=self.model, message=msg, usage=usage)

        async def stream(self, request: ChatRequest) -> Any:
            for w in ("Hello", " there,", " how", " are", " you?"):
                yield StreamEvent(text=w, model=self.model)
            yield StreamEvent(finish_reason="stop", usage=usage, model=self.model)

    settings = Settings.model_validate(
        {
            "backends": [
                {
                    "name": "upstream",
                    "kind": "openai",
                    "url": "http://127.0.0.1:9/v1",
                    "model": MODEL,
                    "boundary": "site",
                }
            ],
            "tiers": [{"name": "site", "backends": ["upstream"]}],
            "ledger": {"url": "off"},
            "server": {
                "port": port,
                "api_keys": [
                    {"name": "bench", "hash": hashlib.sha256(BENCH_KEY.encode()).hexdigest()}
                ],
            },
        }
    )
    router = Router(settings, backends={"upstream": Echo(settings.backends[0])})
    gc.set_threshold(10_000, 50, 50)  # as `tierlm serve` does
    uvicorn.run(
        create_app(router, freeze_gc=True),
        loop="asyncio",
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        server_header=False,
    )


# -- processes ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code < 500:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def rss_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process and its children, MB."""
    pids = [pid]
    with contextlib.suppress(OSError):
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        pids += [int(p) for p in out.stdout.split()]
    total = {"rss": 0.0, "hwm": 0.0}
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total["rss"] += int(line.split()[1]) / 1024
                if line.startswith("VmHWM:"):
                    total["hwm"] += int(line.split()[1]) / 1024
    return total


@contextlib.contextmanager
def process(
    cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if log:
            out.close()  # type: ignore[union-attr]


# -- load ----------------------------------------------------------------------------------
_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
wrk.body = [[%s]]
done = function(summary, latency, requests)
  io.write(string.format("RESULT {\\"requests\\": %%d, \\"duration_us\\": %%d, " ..
    "\\"p50_us\\": %%d, \\"p99_us\\": %%d, \\"errors\\": %%d, \\"non2xx\\": %%d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout, summary.errors.status))
end
"""


def wrk(url: str, body: dict[str, Any], conc: int, duration: float, tmp: Path) -> dict[str, Any]:
    script = tmp / f"wrk-{conc}.lua"
    script.write_text(_LUA % (BENCH_KEY, json.dumps(body)))
    threads = 1 if conc == 1 else 2
    cmd = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(conc),
        "-d",
        f"{max(int(duration), 1)}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    r = json.loads(line[len("RESULT ") :])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["p50_ms"], r["p99_ms"] = r["p50_us"] / 1000, r["p99_us"] / 1000
    return r


def check_answer(url: str, body: dict[str, Any]) -> str:
    """One request by hand: the gateway really answers (and the stream really ends)."""
    import httpx

    r = httpx.post(url, json=body, headers={"authorization": f"Bearer {BENCH_KEY}"}, timeout=30)
    if r.status_code != 200:
        raise RuntimeError(f"{url} answered {r.status_code}: {r.text[:500]}")
    if body.get("stream"):
        assert "[DONE]" in r.text, r.text[-300:]
        return "stream ok"
    return str(r.json()["choices"][0]["message"]["content"])


# -- open loop: requests at a fixed rate, latency from the scheduled send time ----------------
def run_open_loop(url: str, rate: float, duration: float, stream: bool, cap: int) -> None:
    """The open-loop load generator (its own process; prints one ``RESULT`` JSON line).

    Request ``i`` is due at ``t0 + i / rate`` whatever happened before (no coordinated
    omission): it starts then, or as soon as one of the ``cap`` connections is free, and its
    latency runs from the time it was due to its last byte. One second of the same load first,
    not counted, opens the connections."""
    import aiohttp

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    body = {**BODY, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    data = json.dumps(body).encode()
    headers = {"authorization": f"Bearer {BENCH_KEY}", "content-type": "application/json"}

    async def main() -> dict[str, Any]:
        clock = time.perf_counter  # uvloop's loop.time() ticks in whole milliseconds
        slots = asyncio.Semaphore(cap)
        connector = aiohttp.TCPConnector(limit=cap)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def one(due: float, out: list[tuple[float, float]], bad: list[int]) -> None:
                async with slots:
                    sent = clock()
                    try:
                        async with session.post(url, data=data, headers=headers) as r:
                            raw = await r.read()
                        if r.status != 200 or (stream and b"[DONE]" not in raw):
                            bad.append(r.status)
                    except (aiohttp.ClientError, TimeoutError):
                        bad.append(0)
                out.append((clock() - due, sent - due))

            async def phase(seconds: float) -> tuple[list[tuple[float, float]], list[int], float]:
                out: list[tuple[float, float]] = []
                bad: list[int] = []
                tasks = []
                t0 = clock() + 0.01
                for i in range(int(rate * seconds)):
                    due = t0 + i / rate
                    if due > clock():
                        await asyncio.sleep(due - clock())
                    tasks.append(asyncio.create_task(one(due, out, bad)))
                await asyncio.gather(*tasks)
                return out, bad, clock() - t0

            await phase(1.0)  # warm-up: connections open, caches warm
            res, bad, took = await phase(duration)
        lat = sorted(r[0] for r in res)
        lag = sorted(r[1] for r in res)

        def q(xs: list[float], p: float) -> float:
            return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000 if xs else float("nan")

        return {
            "rate": rate,
            "requests": len(lat),
            "achieved": len(lat) / took,
            "p50_ms": q(lat, 0.50),
            "p90_ms": q(lat, 0.90),
            "p99_ms": q(lat, 0.99),
            "max_ms": q(lat, 1.0),
            # how late requests left the generator (its timer tick, or no free connection)
            "send_lag_p50_ms": q(lag, 0.50),
            "send_lag_p99_ms": q(lag, 0.99),
            "errors": len(bad),
        }

    print("RESULT " + json.dumps(asyncio.run(main())), flush=True)


def open_loop(url: str, rate: float, duration: float, stream: bool, cap: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--open-loop-run", url, str(rate), str(duration)]
    cmd += ["--cap", str(cap)] + (["--stream-run"] if stream else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT ") :]))


# -- targets -------------------------------------------------------------------------------------
def tierlm_config(upstream: str, port: int, tmp: Path, ledger: bool, limits: bool = False) -> Path:
    """``limits``: the bench key has rpm and tpm limits, high enough never to refuse."""
    import yaml

    key: dict[str, Any] = {"name": "bench", "hash": hashlib.sha256(BENCH_KEY.encode()).hexdigest()}
    if limits:
        key.update(rpm=10**9, tpm=10**12)

    cfg: dict[str, Any] = {
        "backends": [
            {
                "name": "upstream",
                "kind": "openai",
                "url": upstream + "/v1",
                "model": MODEL,
                "boundary": "site",
                "max_connections": 1024,
            }
        ],
        "tiers": [{"name": "site", "backends": ["upstream"]}],
        "server": {
            "port": port,
            "api_keys": [key],
        },
        "data_dir": str(tmp / "data"),
    }
    if not ledger:
        cfg["ledger"] = {"url": "off"}
    path = tmp / f"tierlm-{'ledger' if ledger else 'off'}{'-limits' if limits else ''}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def litellm_config(upstream: str, tmp: Path) -> Path:
    import yaml

    cfg = {
        "model_list": [
            {
                "model_name": "auto",
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": upstream + "/v1",
                    "api_key": "sk-none",
                },
            }
        ],
        "litellm_settings": {"telemetry": False},
    }
    path = tmp / "litellm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def measure(
    name: str,
    url: str,
    pid: int | None,
    args: argparse.Namespace,
    tmp: Path,
    open_rates: list[float] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "runs": {}}
    if pid is not None:
        time.sleep(2)
        out["idle"] = rss_mb(pid)
    for stream in (False, True):
        body = {**BODY, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        out["check_" + ("stream" if stream else "json")] = check_answer(url, body)
        wrk(url, body, 16, 1, tmp)  # warm-up
        for conc in args.concurrency:
            r = wrk(url, body, conc, args.duration, tmp)
            out["runs"][f"{'stream' if stream else 'json'}/{conc}"] = r
            print(
                f"  {name:14} {'stream' if stream else 'json':6} c={conc:<4} "
                f"{r['rps']:8.0f} req/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms"
                f"  errors {r['errors'] + r['non2xx']}",
                flush=True,
            )
    for stream in (False, True) if open_rates else ():
        mode = "stream" if stream else "json"
        for rate in open_rates:
            r = open_loop(url, rate, args.open_duration, stream, args.open_cap)
            out.setdefault("open", {})[f"{mode}/{rate:g}"] = r
            print(
                f"  {name:14} {mode:6} open {rate:5g}/s  {r['achieved']:6.0f} req/s  "
                f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}  "
                f"(send lag p50 {r['send_lag_p50_ms']:.2f} p99 {r['send_lag_p99_ms']:.2f} ms)",
                flush=True,
            )
    if pid is not None:
        out["loaded"] = rss_mb(pid)
    return out


def run_tierlm(
    name: str,
    upstream: str,
    ledger: bool,
    args: argparse.Namespace,
    tmp: Path,
    limits: bool = False,
) -> dict[str, Any]:
    port = free_port()
    cfg = tierlm_config(upstream, port, tmp, ledger, limits)
    cmd = [str(Path(sys.executable).parent / "tierlm"), "serve", "--config", str(cfg)]
    env = {"TIERLM_LOG_LEVEL": "warning", "XDG_DATA_HOME": str(tmp / "xdg")}
    with process(cmd, env, tmp / f"{name}.log") as proc:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        return measure(name, url, proc.pid, args, tmp, args.open_rates)


def run_echo(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    port = free_port()
    cmd = [sys.executable, __file__, "--echo-only", str(port)]
    with process(cmd, None, tmp / "echo.log") as proc:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        return measure("tierlm-inproc", url, proc.pid, args, tmp, args.open_rates)


def run_litellm(upstream: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any] | None:
    exe = args.litellm
    if not exe or not Path(exe).exists():
        print(f"  (LiteLLM not found at {exe}: skipped)")
        return None
    port = free_port()
    cmd = [
        exe,
        "--config",
        str(litellm_config(upstream, tmp)),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_MASTER_KEY": BENCH_KEY,
        "NO_DOCS": "True",
    }
    with process(cmd, env, tmp / "litellm.log") as proc:
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, timeout=180)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        return measure("litellm", url, proc.pid, args, tmp, args.litellm_open_rates)


# -- report ---------------------------------------------------------------------------------
def _added(res: dict[str, Any], direct: dict[str, Any], key: str, q: str) -> float:
    return float(res["runs"][key][q] - direct["runs"][key][q])


def table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    direct = results["direct"]
    names = [n for n in ("tierlm", "tierlm+ledger", "tierlm-inproc", "litellm") if results.get(n)]
    keys = [f"{m}/{c}" for m in ("json", "stream") for c in args.concurrency]
    lines = [
        "| mode / concurrency | direct req/s | "
        + " | ".join(f"{n} req/s | {n} +p50 ms | {n} +p99 ms" for n in names)
        + (" | tierlm / litellm req/s | litellm / tierlm +p50 |" if "litellm" in names else " |")
    ]
    lines.append("|" + "---|" * (lines[0].count("|") - 1))
    for k in keys:
        row = [k, f"{direct['runs'][k]['rps']:.0f}"]
        for n in names:
            r = results[n]["runs"][k]
            err = r["errors"] + r["non2xx"]
            row += [
                f"{r['rps']:.0f}" + (f" ({err} err)" if err else ""),
                f"{_added(results[n], direct, k, 'p50_ms'):.2f}",
                f"{_added(results[n], direct, k, 'p99_ms'):.2f}",
            ]
        if "litellm" in names:
            t, lt = results["tierlm"]["runs"][k], results["litellm"]["runs"][k]
            a_t = _added(results["tierlm"], direct, k, "p50_ms")
            a_l = _added(results["litellm"], direct, k, "p50_ms")
            row += [
                f"{t['rps'] / lt['rps']:.1f}x" if lt["rps"] else "n/a",
                f"{a_l / a_t:.1f}x" if a_t > 0 and lt["requests"] else "n/a",
            ]
        lines.append("| " + " | ".join(row) + " |")
    lines += open_table(results)
    lines += [
        "",
        "| process | idle RSS MB | RSS after load MB | peak RSS MB |",
        "|---|---|---|---|",
    ]
    for n in names:
        r = results[n]
        lines.append(
            f"| {n} | {r['idle']['rss']:.0f} | {r['loaded']['rss']:.0f} | "
            f"{r['loaded']['hwm']:.0f} |"
        )
    return "\n".join(lines)


def open_table(results: dict[str, dict[str, Any]]) -> list[str]:
    """Open loop: latency from the scheduled send time at a fixed offered rate; the added
    latency of a gateway is again the difference of percentiles against the upstream."""
    direct = results["direct"].get("open") or {}
    if not direct:
        return []
    names = [n for n in results if n != "direct" and results[n].get("open")]
    head = "| mode / offered rate | direct p50 ms | direct p99 ms | "
    head += " | ".join(f"{n} req/s | {n} +p50 ms | {n} +p99 ms" for n in names) + " |"
    lines = ["", head, "|" + "---|" * (head.count("|") - 1)]
    for k, d in direct.items():
        row = [k + "/s", f"{d['p50_ms']:.2f}", f"{d['p99_ms']:.2f}"]
        for n in names:
            r = results[n]["open"].get(k)
            if r is None:
                row += ["", "", ""]
                continue
            err = f" ({r['errors']} err)" if r["errors"] else ""
            row += [
                f"{r['achieved']:.0f}{err}",
                f"{r['p50_ms'] - d['p50_ms']:.2f}",
                f"{r['p99_ms'] - d['p99_ms']:.2f}",
            ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument(
        "--litellm", default="/tmp/litellm-venv/bin/litellm", help="LiteLLM CLI ('' to skip)"
    )
    ap.add_argument(
        "--only", nargs="+", default=["tierlm", "tierlm+ledger", "tierlm-inproc", "litellm"]
    )
    ap.add_argument(
        "--open-rates",
        type=float,
        nargs="*",
        default=[300.0, 600.0],
        help="open-loop rates, requests/s (none: skip the open-loop runs)",
    )
    ap.add_argument(
        "--litellm-open-rates",
        type=float,
        nargs="*",
        default=[],
        help="open-loop rates for LiteLLM (default none: it saturates near 50 req/s here)",
    )
    ap.add_argument("--open-duration", type=float, default=5.0, help="seconds per open run")
    ap.add_argument("--open-cap", type=int, default=64, help="most requests in flight (open)")
    ap.add_argument("--json", type=Path, help="write all results here")
    ap.add_argument("--open-loop-run", nargs=3, metavar="X", help=argparse.SUPPRESS)
    ap.add_argument("--cap", type=int, default=64, help=argparse.SUPPRESS)
    ap.add_argument("--stream-run", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--upstream-only", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--echo-only", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.upstream_only:
        run_upstream(args.upstream_only)
        return
    if args.echo_only:
        run_echo_gateway(args.echo_only)
        return
    if args.open_loop_run:
        url, rate, seconds = args.open_loop_run
        run_open_loop(url, float(rate), float(seconds), args.stream_run, args.cap)
        return
    if shutil.which("wrk") is None:
        sys.exit("needs wrk: apt-get install wrk")
    with tempfile.TemporaryDirectory(prefix="tierlm-bench-") as t:
        tmp = Path(t)
        port = free_port()
        up_cmd = [sys.executable, __file__, "--upstream-only", str(port)]
        with process(up_cmd, log=tmp / "upstream.log") as up:
            upstream = f"http://127.0.0.1:{port}"
            wait_http(upstream + "/v1/models", up)
            print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
            results: dict[str, dict[str, Any]] = {
                "direct": measure(
                    "direct", upstream + "/v1/chat/completions", None, args, tmp, args.open_rates
                )
            }
            if "tierlm" in args.only:
                results["tierlm"] = run_tierlm("tierlm", upstream, False, args, tmp)
            if "tierlm+ratelimit" in args.only:
                results["tierlm+ratelimit"] = run_tierlm(
                    "tierlm+ratelimit", upstream, False, args, tmp, limits=True
                )
            if "tierlm+ledger" in args.only:
                results["tierlm+ledger"] = run_tierlm("tierlm+ledger", upstream, True, args, tmp)
            if "tierlm-inproc" in args.only:
                results["tierlm-inproc"] = run_echo(args, tmp)
            if "litellm" in args.only:
                lite = run_litellm(upstream, args, tmp)
                if lite:
                    results["litellm"] = lite
    print()
    print(table(results, args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
