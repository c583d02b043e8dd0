"""The scheduler: runs deferred lines inside their window when the conditions are best.

One :class:`Scheduler` per gateway process, a background task on its event loop. Each round
(every ``poll_seconds``, or sooner when a batch arrives or a line ends) it

1. writes its heartbeat and puts back the lines of schedulers that went silent
   (:meth:`~tierlm.batch.store.BatchStore.heartbeat`), expires the lines of batches whose
   window has ended and closes finished batches (output and error files);
2. looks at the waiting lines, oldest batch first, and starts those the window allows
   (:func:`~tierlm.batch.window.blockers`), at most ``concurrency`` in flight: each is
   claimed in the database first, then run through the :class:`Runner` (the gateway: the
   same Router path as a live request), then its answer recorded with the claim released
   in one transaction.

**Live traffic first.** A line whose backend (as planned at submission) is local (boundary
process, host or site) starts only while no live request is in flight and none started in
the last ``window.local_idle_seconds``, and takes at most
``slots - 1`` of that backend's slots (one, when it has one slot: ``max_concurrency`` of an
in-process model, ``batch.slots`` of a model server), so a
live request arriving finds a free slot. A live request arriving preempts deferred lines:
on a model of this host (boundary process or host, with ``window.preempt``), all of them,
since they share its CPU or GPU with the live request (except lines run because their
window is ending); on a site backend, the newest ones, when its free slots are fewer than
the live requests in flight. A preempted line is cancelled and goes back to waiting (its
claim does not count; what it had generated is dropped). A failure that trying again may
mend (the error is ``retryable``: overloaded, rate-limited, unreachable, timed out) goes
back to waiting for ``retry_seconds`` (doubling), up to ``max_attempts`` claims; after that,
and for any other error, the error answer is the line's result.

``clock`` gives wall-clock seconds (tests drive windows with their own and call
:meth:`step`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from tierlm.batch.store import Result
from tierlm.batch.window import Now, blockers

if TYPE_CHECKING:
    from tierlm.batch.config import BatchConfig
    from tierlm.batch.store import BatchStore, Line

log = logging.getLogger("tierlm.batch")
_INTERNAL = {"message": "internal error in the gateway", "type": "api_error"}
INTERNAL = Result(500, None, {"error": {**_INTERNAL, "code": "internal_error", "param": None}})


class Runner(Protocol):
    """What the scheduler needs from the gateway."""

    async def run(self, line: Line) -> Result:
        """Answer one line as a live request would be answered (errors as results)."""
        ...

    async def now(self, ts: float, key: str | None) -> Now:
        """The conditions at ``ts`` for a batch of ``key``."""
        ...

    def slots(self, backend: str | None) -> int | None:
        """A local backend's generation slots; ``None``: not local (or unknown)."""
        ...

    def same_host(self, backend: str) -> bool:
        """Whether ``backend`` runs on this host (boundary process or host)."""
        ...


@dataclass(slots=True)
class _Running:
    line: Line
    task: asyncio.Task[None]
    backend: str | None  # a local backend it holds a slot of
    started: float
    forced: bool  # its window is ending: not preempted
    answered: bool = False  # its answer is being recorded: not preempted


def _stopped(task: asyncio.Task[None]) -> None:
    """Say so loudly when the scheduler's loop ended by a failure (deferred work stops)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("deferred work stopped: the scheduler failed", exc_info=task.exception())


class Scheduler:
    """Claims and runs deferred lines; see the module doc."""

    def __init__(
        self,
        store: BatchStore,
        config: BatchConfig,
        runner: Runner,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.config, self.runner, self.clock = store, config, runner, clock
        self.worker = "sched-" + uuid.uuid4().hex[:16]
        self.waiting_why: dict[str, list[str]] = {}  # batch id -> why its lines wait
        self.preempted = 0
        self.last_live = float("-inf")  # clock time of the last live request's arrival
        self._running: dict[tuple[str, int], _Running] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- the background task --------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=self.worker)
            self._task.add_done_callback(_stopped)

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.step()
            except self.store.store.errors as e:  # the database is away: try again later
                log.warning("deferred work: the ledger database failed: %s", e)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.poll_seconds)

    async def aclose(self) -> None:
        """Stop; lines still running are cancelled and go back to waiting (a graceful
        restart runs them again: their answers were not recorded)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        running = [r.task for r in self._running.values()]
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def settle(self) -> None:
        """Wait until the lines in flight now have ended (answered, put back or preempted)."""
        await asyncio.gather(
            *(r.task for r in list(self._running.values())), return_exceptions=True
        )

    @property
    def running(self) -> int:
        return len(self._running)

    def local_running(self, backend: str) -> int:
        return sum(1 for r in self._running.values() if r.backend == backend)

    # -- one round ------------------------------------------------------------------------
    async def step(self) -> int:
        """One scheduling round (module doc); returns how many lines it started."""
        now = self.clock()
        cfg = self.config
        await asyncio.to_thread(self.store.heartbeat, self.worker, now, cfg.lease_seconds)
        await self._repair()
        await asyncio.to_thread(self.store.expire, now)
        await asyncio.to_thread(self.store.finalize, now)
        free = cfg.concurrency - len(self._running)
        if free <= 0:
            return 0
        waiting = await asyncio.to_thread(self.store.waiting, now, free + 64)
        started = 0
        conditions: dict[str | None, Now] = {}
        self.waiting_why = {}
        for w in waiting:
            if started >= free:
                break
            if (w.batch_id, w.n) in self._running:
                continue
            if w.key not in conditions:
                conditions[w.key] = await self.runner.now(now, w.key)
            why = self._why_not(w.backend, conditions[w.key], w.expires_at - now)
            if why:
                self.waiting_why.setdefault(w.batch_id, why)
                continue
            line = await asyncio.to_thread(
                self.store.claim, w.batch_id, w.n, self.worker, cfg.max_attempts, now
            )
            if line is not None:
                self._launch(line, w.backend, w.expires_at - now <= cfg.run_anyway_seconds)
                started += 1
        return started

    def _why_not(self, backend: str | None, now: Now, left_s: float) -> list[str]:
        slots = self.runner.slots(backend)
        forced = left_s <= self.config.run_anyway_seconds
        why = blockers(self.config.window, now, local=slots is not None, forced=forced)
        idle = self.config.window.local_idle_seconds
        quiet = self.clock() - self.last_live
        if slots is not None and self.config.window.local_idle and quiet < idle:
            why.append(f"a live request started {quiet:.1f} s ago (local idle: {idle:g} s)")
        if slots is not None and backend is not None:
            room = max(slots - 1, 1)
            if self.local_running(backend) >= room:
                why.append(f"{backend}: deferred lines hold {room} of its {slots} slot(s)")
        return why

    def _launch(self, line: Line, backend: str | None, forced: bool) -> None:
        local = backend if self.runner.slots(backend) is not None else None
        key = (line.batch_id, line.n)
        task = asyncio.get_running_loop().create_task(self._run(line))
        # a task cancelled before it started never runs _run's cleanup: this does it, and
        # the next round's repair puts its line back
        task.add_done_callback(lambda _: self._running.pop(key, None))
        self._running[key] = _Running(line, task, local, time.monotonic(), forced)

    async def _run(self, line: Line) -> None:
        """Run one claimed line and record its outcome; it leaves ``_running`` only once the
        database says so (answered, or back to waiting)."""
        key = (line.batch_id, line.n)
        try:
            try:
                result = await self.runner.run(line)
            except asyncio.CancelledError:  # preempted or stopping: not answered, not counted
                back = self.store.put_back
                await asyncio.shield(asyncio.to_thread(back, *key, self.worker, 0.0, count=False))
                raise
            except Exception as e:  # a fault of the gateway's: logged with its cause, and
                # the line's answer (a live request would get a 500), never a line left running
                log.error("deferred line %s/%d failed", line.batch_id, line.n, exc_info=e)
                result = INTERNAL
            self._running[key].answered = True  # too late to preempt
            await self._record(line, result)
        finally:
            self._running.pop(key, None)
            self._wake.set()

    async def _record(self, line: Line, result: Result) -> None:
        now = self.clock()
        if result.retry and line.claims < self.config.max_attempts:
            delay = self.config.retry_seconds * 2 ** (line.claims - 1)
            back, when = self.store.put_back, now + delay
            await asyncio.to_thread(back, line.batch_id, line.n, self.worker, when, count=True)
            return
        if not await asyncio.to_thread(self.store.finish, line, self.worker, result, now):
            log.warning(
                "deferred line %s/%d: its claim was lost (this scheduler was silent for "
                "%g s); the answer is dropped",
                line.batch_id,
                line.n,
                self.config.lease_seconds,
            )

    async def _repair(self) -> None:
        """Put back the lines the database says this scheduler runs but no task of it does
        (a line preempted before its task started, or again while it was being put back)."""
        held = await asyncio.to_thread(self.store.held_by, self.worker)
        for batch_id, n in held:
            if (batch_id, n) not in self._running:
                back = self.store.put_back
                await asyncio.to_thread(back, batch_id, n, self.worker, 0.0, count=False)

    # -- live traffic ---------------------------------------------------------------------
    def live_arrived(self, live: int) -> int:
        """A live request started (``live`` in flight now): preempt deferred lines on local
        backends (module doc). Returns how many were preempted."""
        self.last_live = self.clock()
        n = 0
        for backend in {r.backend for r in self._running.values() if r.backend is not None}:
            mine = sorted(
                (r for r in self._running.values() if r.backend == backend),
                key=lambda r: r.started,
                reverse=True,
            )
            mine = [r for r in mine if not r.answered]
            if self.config.window.preempt and self.runner.same_host(backend):
                victims = [r for r in mine if not r.forced]
            else:
                slots = self.runner.slots(backend) or 1
                victims = mine[: max(len(mine) + live - slots, 0)]
            for r in victims:
                r.task.cancel()
            n += len(victims)
        self.preempted += n
        return n
