"""Reloading a live gateway (``POST /admin/reload``, SIGHUP on ``tierlm serve``): requests in
flight finish on the configuration they started on, new ones use the new one, and a bad
configuration is refused naming its key while the old one keeps serving."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fakes import free_port, serve
from fakes.openai_server import make_app
from server_util import ADMIN_KEY, USER_KEY, sha
from tierlm.config import load_settings
from tierlm.server import create_app

TIERLM = str(Path(sys.executable).parent / "tierlm")
UPSTREAM = make_app()  # its "gated" requests finish only once a test sets UPSTREAM.state.gate
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
USER = {"authorization": f"Bearer {USER_KEY}"}


@pytest.fixture(scope="module")
def fake() -> Iterator[str]:
    with serve(UPSTREAM) as url:
        yield url


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    UPSTREAM.state.gate.clear()
    yield UPSTREAM.state.gate
    UPSTREAM.state.gate.set()  # nothing stays parked upstream


def config(fake: str, names: list[str], *, timeout: float = 10.0, **extra: Any) -> dict[str, Any]:
    """A config whose tier ``site`` holds a backend per name (its fake scenario = its name)."""
    backends = [
        {
            "name": n,
            "kind": "openai",
            "url": fake + "/v1",
            "model": n,
            "boundary": "site",
            "timeouts": {"connect": 1.0, "first_token": timeout},
        }
        for n in names
    ]
    return {
        "backends": backends,
        "tiers": [{"name": "site", "backends": names}],
        "ledger": {"url": "off"},
        "routing": {"complexity_method": "length"},
        "server": {
            "api_keys": [
                {"name": "user", "hash": sha(USER_KEY)},
                {"name": "admin", "hash": sha(ADMIN_KEY), "admin": True},
            ]
        },
        **extra,
    }


def write(path: Path, cfg: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(cfg))


@pytest.fixture
def live(fake: str, tmp_path: Path) -> Iterator[tuple[str, Path, Any]]:
    """A gateway in a thread started from a YAML file it re-reads on reload."""
    path = tmp_path / "tierlm.yaml"
    write(path, config(fake, ["alpha", "gated"]))
    app = create_app(load_settings(path), reload=lambda: load_settings(path))
    with serve(app, lifespan="on", start_within=60, grace=5) as url:
        yield url, path, app


def ask(client: httpx.Client, model: str, *, stream: bool = False) -> httpx.Response:
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    return client.post("/v1/chat/completions", json=body, headers=USER)


def in_flight(url: str) -> int:
    for line in httpx.get(url + "/metrics", headers=ADMIN).text.splitlines():
        if line.startswith("tierlm_requests_in_flight "):
            return int(float(line.split()[1]))
    return 0


def wait_for(cond: Any, what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def start_gated(url: str, n: int) -> list[tuple[threading.Thread, dict[str, Any]]]:
    """``n`` requests (streamed and whole) parked at the fake upstream, in flight."""
    out = []
    for i in range(n):
        res: dict[str, Any] = {}

        def run(res: dict[str, Any] = res, stream: bool = i % 2 == 1) -> None:
            with httpx.Client(base_url=url, timeout=60) as c:
                r = ask(c, "gated", stream=stream)
                res["status"], res["text"] = r.status_code, r.text
                res["backend"] = r.headers.get("x-tierlm-backend")

        t = threading.Thread(target=run)
        t.start()
        out.append((t, res))
    wait_for(lambda: in_flight(url) >= n, "the gated requests never started")
    return out


def test_reload_swaps_config_while_requests_in_flight_finish(
    live: tuple[str, Path, Any], fake: str, gate: threading.Event
) -> None:
    url, path, app = live
    parked = start_gated(url, 4)
    # "gated" changes (another timeout), "alpha" goes, "beta" comes
    write(path, config(fake, ["gated", "beta"], timeout=20.0))
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/admin/reload", headers=ADMIN)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["added"], body["removed"], body["changed"]) == (["beta"], ["alpha"], ["gated"])
        assert body["tiers"] == ["site"]
        assert all(t.is_alive() for t, _ in parked), "a request in flight was cut by the reload"
        # new requests see the new configuration at once
        assert ask(c, "beta").headers["x-tierlm-backend"] == "beta"
        assert ask(c, "alpha").status_code == 404
        ids = [m["id"] for m in c.get("/v1/models", headers=USER).json()["data"]]
        assert "beta" in ids and "alpha" not in ids
        # the replaced gateway stays open while its requests run
        assert len(app.state.live._owns) == 2
        gate.set()
        for t, res in parked:
            t.join(timeout=30)
            assert res["status"] == 200, res
            assert res["backend"] == "gated"
            assert "Hello" in res["text"] or '"content":"lo"' in res["text"]
        # ... and is closed once they have finished
        wait_for(lambda: len(app.state.live._owns) == 1, "the old gateway was never closed")
        assert ask(c, "gated").status_code == 200


def test_bad_config_is_refused_naming_the_key_and_the_old_one_serves(
    live: tuple[str, Path, Any], fake: str, gate: threading.Event
) -> None:
    url, path, _ = live
    parked = start_gated(url, 2)
    bad = config(fake, ["alpha", "gated"])
    bad["tiers"][0]["backends"] = ["alpha", "nowhere"]
    write(path, bad)
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/admin/reload", headers=ADMIN)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "config_error"
        assert "tier 'site' uses backend 'nowhere'" in err["message"]
        wrong_kind = config(fake, ["alpha", "gated"])
        wrong_kind["backends"][0]["kind"] = "telepathy"
        write(path, wrong_kind)
        r = c.post("/admin/reload", headers=ADMIN)
        assert r.status_code == 400
        assert "config key `backends.0.kind`" in r.json()["error"]["message"]
        # the old configuration keeps serving, in flight and new
        assert ask(c, "alpha").headers["x-tierlm-backend"] == "alpha"
        gate.set()
        for t, res in parked:
            t.join(timeout=30)
            assert res["status"] == 200, res


def test_reload_needs_the_admin_key(live: tuple[str, Path, Any]) -> None:
    url, _, _ = live
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.post("/admin/reload").status_code == 401
        assert c.post("/admin/reload", headers=USER).status_code == 403
        assert c.get("/admin/models", headers=USER).status_code == 403


def test_no_request_is_dropped_across_repeated_reloads(
    live: tuple[str, Path, Any], fake: str
) -> None:
    """A steady stream of requests from several clients while the config flips between two
    versions: every request is answered."""
    url, path, _ = live
    stop = threading.Event()
    results: list[int] = []
    versions = [config(fake, ["alpha", "gated"]), config(fake, ["alpha", "gated"], timeout=5.0)]

    def client(stream: bool) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while not stop.is_set():
                results.append(ask(c, "alpha", stream=stream).status_code)

    threads = [threading.Thread(target=client, args=(i % 2 == 1,)) for i in range(4)]
    for t in threads:
        t.start()
    reloads = 0
    with httpx.Client(base_url=url, timeout=30) as c:
        for i in range(8):
            write(path, versions[i % 2])
            done = len(results)
            wait_for(lambda n=done: len(results) > n, "no request got through")
            assert c.post("/admin/reload", headers=ADMIN).status_code == 200
            reloads += 1
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert reloads == 8 and len(results) > 8
    assert [s for s in results if s != 200] == []


def test_sighup_reloads_tierlm_serve(fake: str, tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "tierlm.yaml"
    cfg = config(fake, ["alpha"])
    cfg["server"]["port"] = port
    write(path, cfg)
    proc = subprocess.Popen(
        [TIERLM, "serve", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    stderr = proc.stderr
    assert stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(stderr.readline, "")))
    reader.start()
    url = f"http://127.0.0.1:{port}"

    def models() -> list[str]:
        try:
            data = httpx.get(url + "/v1/models", headers=USER, timeout=2).json()["data"]
        except httpx.TransportError:
            return []
        return [m["id"] for m in data]

    try:
        wait_for(lambda: "alpha" in models(), "tierlm serve did not start", within=60)
        cfg2 = config(fake, ["alpha", "beta"])
        cfg2["server"]["port"] = port
        write(path, cfg2)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "beta" in models(), "SIGHUP did not reload the configuration")
        cfg2["backends"][1]["kind"] = "telepathy"
        write(path, cfg2)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any("reload refused" in line for line in lines), "no log line")
        refused = next(line for line in lines if "reload refused" in line)
        assert "config key `backends.1.kind`" in refused
        assert proc.poll() is None
        with httpx.Client(base_url=url, timeout=30) as c:
            assert ask(c, "beta").headers["x-tierlm-backend"] == "beta"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        finally:
            proc.kill()
            reader.join(timeout=10)
            stderr.close()


def test_rate_limit_counts_survive_a_reload(fake: str, tmp_path: Path) -> None:
    """A reload that leaves the keys alone is no way around a key's rate limit."""
    path = tmp_path / "tierlm.yaml"
    cfg = config(fake, ["alpha"])
    cfg["server"]["api_keys"][0]["rpm"] = 2
    write(path, cfg)
    app = create_app(load_settings(path), reload=lambda: load_settings(path))
    with serve(app, lifespan="on", start_within=60) as url, httpx.Client(base_url=url) as c:
        assert [ask(c, "alpha").status_code for _ in range(2)] == [200, 200]
        cfg["backends"][0]["timeouts"]["first_token"] = 20.0
        write(path, cfg)
        assert c.post("/admin/reload", headers=ADMIN).json()["changed"] == ["alpha"]
        limited = ask(c, "alpha")
        assert limited.status_code == 429 and "retry-after" in limited.headers
        # new limits are new counts
        cfg["server"]["api_keys"][0]["rpm"] = 5
        write(path, cfg)
        assert c.post("/admin/reload", headers=ADMIN).status_code == 200
        assert ask(c, "alpha").status_code == 200
