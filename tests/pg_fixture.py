"""A throwaway PostgreSQL server for the tests (a pytest plugin loaded by conftest.py).

``postgres_url`` (session): starts a private cluster from Debian's binaries
(``/usr/lib/postgresql/*/bin``: ``initdb`` + ``pg_ctl``) in a temporary directory, listening on
a free loopback port only, and stops it at the end of the session. PostgreSQL refuses to run
as root, so as root it runs as the ``postgres`` user (``runuser -u postgres --``).
``postgres_db`` (function): a fresh, empty database on that server for one test
(``new_database`` makes one for a wider scope).

Missing binaries fail the test with the install line (``apt-get install -y postgresql``);
they are not skipped.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

INSTALL = "apt-get update && apt-get install -y postgresql"


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str]) -> None:
    done = subprocess.run(_as_owner(cmd), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )


def start_cluster() -> tuple[str, Callable[[], None]]:
    """Start a private server; return its URL and a function that stops and removes it."""
    bindir = _bin_dir()
    if bindir is None:
        raise FileNotFoundError(
            f"PostgreSQL server binaries not found under /usr/lib/postgresql; run: {INSTALL}"
        )
    root = Path(tempfile.mkdtemp(prefix="tierlm-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = _free_port()
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
    _run([*initdb, "--no-sync", "-E", "UTF8"])
    opts = (
        f"-p {port} -c listen_addresses=127.0.0.1 -k {sock} -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data)]
    _run([*pg_ctl, "-o", opts, "-l", str(root / "log"), "-w", "-t", "60", "start"])

    def stop() -> None:
        subprocess.run(
            _as_owner([*pg_ctl, "-m", "immediate", "-w", "stop"]),
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)

    return f"postgresql://postgres@127.0.0.1:{port}/postgres", stop


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:PORT/postgres`` of a private, running server."""
    try:
        url, stop = start_cluster()
    except FileNotFoundError as e:
        pytest.fail(str(e))
    try:
        yield url
    finally:
        stop()


def new_database(postgres_url: str) -> str:
    """Create a new, empty database on the server at ``postgres_url``; return its URL."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def postgres_db(postgres_url: str) -> str:
    """The URL of a new, empty database on the test server."""
    return new_database(postgres_url)
