"""Group commit: request records are queued and committed in batches by one thread.

``put`` costs a queue append on the request path. The writer thread takes everything queued
(up to ``max_batch``) and commits it in one transaction, so under load many records share one
commit. The queue is bounded: when it is full, ``put`` blocks until the writer catches up
(counted in ``stats.blocked``, with a warning) and never drops a record. A batch that cannot be
committed after a few tries is spilled to a JSON-lines file next to the ledger (counted in
``stats.spilled``, logged as an error) and can be replayed with ``Ledger.replay_spill``.
``flush`` waits until everything queued before it is committed; ``when_committed`` calls back
(on the writer thread) once it is, so an event loop can await it without a thread of its own;
``close`` flushes and stops.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tierlm.ledger.records import RequestRecord

log = logging.getLogger("tierlm.ledger")

_RETRY_DELAYS = (0.05, 0.25, 1.0)


@dataclass(slots=True)
class WriterStats:
    queued: int = 0
    committed: int = 0
    batches: int = 0
    blocked: int = 0  # puts that had to wait for a full queue
    retries: int = 0
    spilled: int = 0  # records written to the spill file after repeated failures

    def to_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}


class _Flush:
    __slots__ = ("done",)

    def __init__(self, done: Callable[[], None]) -> None:
        self.done = done


_STOP = object()


class BatchWriter:
    """One background thread committing queued records in batches."""

    def __init__(
        self,
        write: Callable[[list[RequestRecord]], None],
        errors: tuple[type[BaseException], ...],
        *,
        spill_path: Path,
        max_queue: int = 10_000,
        max_batch: int = 1_000,
    ) -> None:
        self._write = write
        self._errors = errors
        self._spill_path = spill_path
        self._max_batch = max_batch
        self._q: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self.stats = WriterStats()
        self._closed = False
        self._last_warning = 0.0
        self._thread = threading.Thread(target=self._run, name="tierlm-ledger-writer", daemon=True)
        self._thread.start()

    def put(self, rec: RequestRecord) -> None:
        if self._closed:
            raise RuntimeError("the ledger is closed")
        try:
            self._q.put_nowait(rec)
        except queue.Full:
            self.stats.blocked += 1
            now = time.monotonic()
            if now - self._last_warning > 10:
                self._last_warning = now
                log.warning("ledger queue full (%d): requests wait for the writer", self._q.maxsize)
            self._q.put(rec)
        self.stats.queued += 1

    @property
    def pending(self) -> int:
        return self._q.qsize()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is committed (or spilled)."""
        if not self._thread.is_alive():
            return self._q.empty()
        event = threading.Event()
        self._q.put(_Flush(event.set))
        return event.wait(timeout)

    def when_committed(self, done: Callable[[], None]) -> None:
        """Call ``done`` once everything queued so far is committed (or spilled)."""
        if not self._thread.is_alive():
            done()
            return
        self._q.put(_Flush(done))

    def close(self, timeout: float | None = 60.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._q.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            items = [self._q.get()]
            while len(items) < self._max_batch:
                try:
                    items.append(self._q.get_nowait())
                except queue.Empty:
                    break
            batch = [i for i in items if isinstance(i, RequestRecord)]
            if batch:
                self._commit(batch)
            for i in items:
                if isinstance(i, _Flush):
                    i.done()
            if any(i is _STOP for i in items):
                return

    def _commit(self, batch: list[RequestRecord]) -> None:
        for delay in (*_RETRY_DELAYS, None):
            try:
                self._write(batch)
            except self._errors as e:
                if delay is None:
                    self._spill(batch, e)
                    return
                self.stats.retries += 1
                log.warning("ledger write failed (%s); retrying in %.2fs", e, delay)
                time.sleep(delay)
            except Exception as e:  # a bug, not the database: keep the records, log loudly
                log.exception("ledger writer failed unexpectedly")
                self._spill(batch, e)
                return
            else:
                self.stats.committed += len(batch)
                self.stats.batches += 1
                return

    def _spill(self, batch: list[RequestRecord], error: BaseException) -> None:
        self._spill_path.parent.mkdir(parents=True, exist_ok=True)
        with self._spill_path.open("a", encoding="utf-8") as f:
            for rec in batch:
                f.write(json.dumps(rec.to_dict()) + "\n")
        self.stats.spilled += len(batch)
        log.error(
            "ledger write failed %d times (%s): %d records spilled to %s",
            len(_RETRY_DELAYS) + 1,
            error,
            len(batch),
            self._spill_path,
        )
