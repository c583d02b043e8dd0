"""The text-heavy signals of a request (sensitivity findings, task kind and size), and a pool
of worker processes that reads them for large requests off the caller's process.

The scan of a large request is CPU-bound and holds the interpreter lock in long regular
expression calls (about 1 s a megabyte of text), so a thread does not free an event loop
from it: :class:`ScanPool` runs :func:`scan_request` in ``workers`` separate processes
(started on first use, ``spawn``), each with its own scanner built from the same routing
settings (:func:`build_privacy`, the one place the scanner is configured). What the worst
case costs is bounded by the request size limit (``server.max_body_bytes``) and by the
number of workers: at most ``workers`` scans run at once; the others wait their turn.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tierlm.config.settings import RoutingConfig
    from tierlm.privacy import PrivacyGuard
    from tierlm.signals.task import TaskInfo
    from tierlm.types import ChatRequest, Finding

Scanned = tuple["list[Finding]", "TaskInfo"]


def build_privacy(routing: RoutingConfig) -> PrivacyGuard:
    """The privacy scanner (over the sensitivity detector) the routing settings describe."""
    from tierlm.privacy import PrivacyGuard
    from tierlm.signals.sensitivity import SensitivityDetector

    return PrivacyGuard(SensitivityDetector(terms=routing.sensitive_terms))


def scan_request(privacy: PrivacyGuard, request: ChatRequest, long_context_tokens: int) -> Scanned:
    """What is sensitive in everything ``request`` forwards, and what it asks for."""
    from tierlm.signals.task import detect_task

    return privacy.scan(request), detect_task(request, long_context_tokens=long_context_tokens)


_worker: tuple[PrivacyGuard, int] | None = None  # set in each worker process only


def _start_worker(routing: RoutingConfig) -> None:
    global _worker
    _worker = (build_privacy(routing), routing.long_context_tokens)


def _scan_in_worker(request: ChatRequest) -> Scanned:
    assert _worker is not None, "not a scan worker"
    return scan_request(_worker[0], request, _worker[1])


class ScanPool:
    """:func:`scan_request` in worker processes (see the module docstring)."""

    def __init__(self, routing: RoutingConfig, workers: int = 2) -> None:
        self.routing = routing
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    async def scan(self, request: ChatRequest) -> Scanned:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(self.routing,),
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, _scan_in_worker, request)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
