"""A supervised worker process: start it, know when it is ready, restart it when it dies.

The local model runs in a worker process (llama.cpp's ``llama-server``), never in the
gateway's: a model that crashes (SIGSEGV, SIGILL, an abort, an OOM kill) costs the attempts in
flight, not the gateway. :class:`WorkerSupervisor` owns one such process:

- **start**: ``command(port)`` is run on a free loopback port, in its own monitor thread (the
  thread that waits on the process; Linux's parent-death signal ends the worker with it, so a
  gateway killed with SIGKILL leaves no orphan). The worker is *ready* when ``GET ready_path``
  answers 200.
- **states**: ``stopped`` → ``starting`` → ``ready``; a worker that exits on its own goes to
  ``backoff`` (its exit and the last lines of its stderr are kept) and is started again after
  ``delay`` seconds, doubling per crash up to ``max_delay``; a worker that stayed up for
  ``stable_after`` seconds resets the delay. :meth:`stop` (keep-alive unload, shutdown) goes to
  ``stopped`` and does not restart.
- **generations**: every start is a new generation; a request remembers the generation it was
  sent to, and :meth:`died` says whether that generation has exited (waiting a moment for the
  exit to be noticed: a dropped connection usually arrives just before the exit status).

It is thread-based on purpose: the sync ``Router`` API, the gateway and tests each run their
own event loops, and the worker must outlive any one of them. Async callers wait through
``asyncio.to_thread`` only while the worker is not ready (the hot path is one attribute read).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import http.client
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

State = Literal["stopped", "starting", "ready", "backoff"]
_PR_SET_PDEATHSIG = 1
_POLL = 0.02  # seconds between readiness probes while a worker loads


@dataclass(frozen=True, slots=True)
class Backoff:
    """Restart delays: ``delay`` doubling per consecutive crash up to ``max_delay``."""

    delay: float = 0.2
    max_delay: float = 30.0
    stable_after: float = 60.0  # uptime that forgives earlier crashes

    def after(self, crashes: int) -> float:
        return float(min(self.delay * 2 ** max(crashes - 1, 0), self.max_delay))


def describe_exit(returncode: int) -> str:
    """``SIGSEGV (segmentation fault)`` for a signal death, ``exit status 1`` otherwise."""
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode)
        except ValueError:
            return f"signal {-returncode}"
        what = signal.strsignal(sig) or ""
        return f"{sig.name} ({what.lower()})" if what else sig.name
    return f"exit status {returncode}"


# Loopback requests never go through an HTTP proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def urlopen_direct(req: str | urllib.request.Request, timeout: float) -> http.client.HTTPResponse:
    """``urllib.request.urlopen`` without proxies (for the worker on 127.0.0.1)."""
    resp: http.client.HTTPResponse = _DIRECT.open(req, timeout=timeout)
    return resp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class WorkerSupervisor:
    """One supervised worker process (see the module docstring)."""

    def __init__(
        self,
        name: str,
        command: Callable[[int], Sequence[str]],
        *,
        ready_path: str = "/health",
        backoff: Backoff | None = None,
        env: dict[str, str] | None = None,
        log_lines: int = 40,
    ) -> None:
        self.name = name
        self._command = command
        self._ready_path = ready_path
        self.backoff = backoff or Backoff()
        self._env = env
        self._cond = threading.Condition()
        self.state: State = "stopped"
        self.generation = 0
        self.port = 0
        self.pid: int | None = None
        self.starts = 0
        self.crashes = 0  # all crashes since the supervisor was made
        self.consecutive_crashes = 0
        self.last_exit = ""  # how the last worker ended, e.g. "SIGSEGV (segmentation fault)"
        self.last_crash_at: float | None = None  # time.time() of the last crash
        self.ready_since: float | None = None  # time.monotonic() the current worker got ready
        self.retry_at: float | None = None  # time.monotonic() of the next start in backoff
        self.log: collections.deque[str] = collections.deque(maxlen=log_lines)
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- control ----------------------------------------------------------------------------
    def ensure_started(self) -> None:
        """Start the worker unless it is running, starting or waiting to restart."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self.state = "starting"
            self._thread = threading.Thread(
                target=self._run, name=f"worker-{self.name}", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker (SIGTERM, then SIGKILL) and do not restart it."""
        self._stop.set()
        with self._cond:
            proc, thread = self._proc, self._thread
            self._cond.notify_all()
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def wait_ready(self, timeout: float) -> int:
        """Block until a worker is ready; return its generation.

        Raises :class:`WorkerDown` when the worker is in backoff, exits while loading, or is
        not ready within ``timeout`` seconds.
        """
        self.ensure_started()
        deadline = time.monotonic() + timeout
        with self._cond:
            crashes = self.crashes
            while True:
                if self.crashes > crashes:  # the worker it waited for died (even if restarted)
                    raise WorkerDown(f"worker exited with {self.last_exit} while loading")
                if self.state == "ready":
                    return self.generation
                if self.state in ("backoff", "stopped"):
                    raise WorkerDown(self._down_reason())
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkerDown(f"worker not ready after {timeout:g} s")
                self._cond.wait(left)

    def wait_state(self, state: State, timeout: float, *, after: int = 0) -> bool:
        """Wait until the worker is in ``state`` with a generation above ``after`` (through
        restarts, unlike :meth:`wait_ready`); False if that did not happen in ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (self.state == state and self.generation > after):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def died(self, generation: int, wait: float = 2.0) -> str | None:
        """How worker ``generation`` ended, if it has (waiting up to ``wait`` seconds)."""
        deadline = time.monotonic() + wait
        with self._cond:
            while self.generation == generation and self.state in ("ready", "starting"):
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self.last_exit or "stopped"

    def kill(self, sig: int) -> None:
        """Send ``sig`` to the current worker (tests, benches, operators)."""
        if self.pid is not None:
            os.kill(self.pid, sig)

    def snapshot(self) -> dict[str, Any]:
        """The state for ``/health``, ``/metrics`` and ``tierlm doctor``."""
        now = time.monotonic()
        return {
            "state": self.state,
            "pid": self.pid if self.state in ("starting", "ready") else None,
            "port": self.port or None,
            "starts": self.starts,
            "restarts": max(self.starts - 1, 0),
            "crashes": self.crashes,
            "last_exit": self.last_exit or None,
            "uptime_s": round(now - self.ready_since, 1) if self.ready_since else None,
            "retry_in_s": round(max(self.retry_at - now, 0), 2) if self.retry_at else None,
        }

    # -- the monitor thread -----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            rc = self._one_life()
            if self._stop.is_set():
                break
            delay = self._crashed(rc)
            if self._stop.wait(delay):
                break
        with self._cond:
            self.state = "stopped"
            self.retry_at = None
            self._cond.notify_all()

    def _one_life(self) -> int:
        port = free_port()
        proc = subprocess.Popen(
            list(self._command(port)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self._env,
            preexec_fn=_die_with_parent,  # only prctl: no locks
        )
        with self._cond:
            self._proc, self.pid, self.port = proc, proc.pid, port
            self.generation += 1
            self.starts += 1
            self.state, self.retry_at, self.ready_since = "starting", None, None
            self._cond.notify_all()
        reader = threading.Thread(target=self._read_log, args=(proc,), daemon=True)
        reader.start()
        if self._await_ready(proc):
            with self._cond:
                self.state, self.ready_since = "ready", time.monotonic()
                self._cond.notify_all()
        rc = proc.wait()
        reader.join(5)
        return rc

    def _await_ready(self, proc: subprocess.Popen[bytes]) -> bool:
        url = self.base_url + self._ready_path
        while proc.poll() is None and not self._stop.is_set():
            try:
                with urlopen_direct(url, timeout=2) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or 503 while the model loads
            self._stop.wait(_POLL)
        return False

    def _crashed(self, rc: int) -> float:
        with self._cond:
            uptime = time.monotonic() - self.ready_since if self.ready_since else 0.0
            if uptime >= self.backoff.stable_after:
                self.consecutive_crashes = 0
            self.crashes += 1
            self.consecutive_crashes += 1
            self.last_exit = describe_exit(rc)
            self.last_crash_at = time.time()
            delay = self.backoff.after(self.consecutive_crashes)
            self.state, self.ready_since = "backoff", None
            self.retry_at = time.monotonic() + delay
            self._cond.notify_all()
        return delay

    def _read_log(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            self.log.append(raw.decode("utf-8", "replace").rstrip())
        proc.stderr.close()

    def _down_reason(self) -> str:
        if self.state == "backoff":
            left = max((self.retry_at or 0) - time.monotonic(), 0)
            return f"worker exited with {self.last_exit}; restarting in {left:.1f} s"
        return "worker stopped"


class WorkerDown(Exception):
    """The worker is not there to answer (crashed, restarting, or stopped)."""


def prometheus_lines(workers: dict[str, WorkerSupervisor]) -> list[str]:
    """``/metrics`` lines for each backend's worker: up, restarts, crashes."""
    out = [
        "# HELP tierlm_worker_up A backend's worker process is ready (1) or not (0).",
        "# TYPE tierlm_worker_up gauge",
    ]
    out += [
        f'tierlm_worker_up{{backend="{n}"}} {int(w.state == "ready")}' for n, w in workers.items()
    ]
    out += [
        "# HELP tierlm_worker_restarts_total Worker processes started again after the first.",
        "# TYPE tierlm_worker_restarts_total counter",
    ]
    out += [
        f'tierlm_worker_restarts_total{{backend="{n}"}} {max(w.starts - 1, 0)}'
        for n, w in workers.items()
    ]
    out += [
        "# HELP tierlm_worker_crashes_total Worker processes that exited on their own.",
        "# TYPE tierlm_worker_crashes_total counter",
    ]
    out += [f'tierlm_worker_crashes_total{{backend="{n}"}} {w.crashes}' for n, w in workers.items()]
    return out
