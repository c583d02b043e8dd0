"""A throwaway Redis server for the tests (a pytest plugin loaded by conftest.py).

``redis_url`` (session): starts Debian's ``redis-server`` in the foreground on a free loopback
port, with no persistence, waits for its "Ready to accept connections" line, and stops it at
the end of the session (``start_redis`` starts one outside pytest, for the benches). A missing
binary fails the test with the install line.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator

import pytest

from fakes import free_port

INSTALL = "apt-get update && apt-get install -y redis-server"


def start_redis() -> tuple[str, Callable[[], None]]:
    """Start a private ``redis-server``; return its URL and a function that stops it."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError(f"redis-server not found; run: {INSTALL}")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="tierlm-redis-")
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    cmd += ["no", "--dir", workdir, "--maxmemory-policy", "allkeys-lru"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    out = proc.stdout
    drain = threading.Thread(target=out.read, daemon=True)

    def stop() -> None:
        proc.terminate()
        proc.wait(timeout=10)
        if drain.is_alive():
            drain.join(timeout=5)  # the log ends with the process
        out.close()
        shutil.rmtree(workdir, ignore_errors=True)

    seen: list[str] = []
    for line in out:
        seen.append(line)
        if "Ready to accept connections" in line:
            break
    else:
        stop()
        raise RuntimeError("redis-server did not start:\n" + "".join(seen))
    drain.start()  # keep reading its log, so a full pipe never blocks the server
    return f"redis://127.0.0.1:{port}/0", stop


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url, stop = start_redis()
    try:
        yield url
    finally:
        stop()
