"""A circuit breaker per backend: stop sending work to a backend that keeps failing.

::

    closed ──(threshold consecutive failures)──► open ──(cool-down elapsed)──► half-open
      ▲                                            ▲                              │
      └───────────── probe succeeded ──────────────┼──── probe failed ────────────┘

- **closed**: every attempt may go; consecutive upstream failures are counted, a success resets
  the count.
- **open**: nothing goes (the executor skips the backend and records the skip) until the
  cool-down has passed.
- **half-open**: exactly one attempt (the *probe*) may go; everyone else is still refused. Its
  success closes the breaker, its failure opens it for another cool-down. A probe that ends
  without a verdict (the caller went away) hands its slot back with :meth:`release`.
- A backend that asks for a pause (``Retry-After`` longer than the executor will wait) is
  held open for that long (:meth:`hold_for`), so later requests do not knock either.

Only upstream failures count (outages, timeouts, 429/5xx, broken streams); caller errors such
as context length or content policy prove the backend is answering and count as success. The
executor decides which is which; this module only keeps the state. The clock is injectable so
tests can drive a one-minute outage in a second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

Clock = Callable[[], float]
log = logging.getLogger(__name__)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """``threshold`` consecutive failures open the breaker for ``cooldown`` seconds."""

    threshold: int = 5
    cooldown: float = 30.0

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError("breaker threshold must be at least 1")
        if self.cooldown < 0:
            raise ValueError("breaker cooldown must not be negative")


class CircuitBreaker:
    """The breaker of one backend. Not thread-safe: use it from one event loop."""

    def __init__(
        self, name: str, config: BreakerConfig | None = None, clock: Clock = time.monotonic
    ) -> None:
        self.name = name
        self.config = config or BreakerConfig()
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._open_until = 0.0
        self._probing = False
        # (clock time, new state) for every change: for metrics, logs and tests.
        self.transitions: list[tuple[float, BreakerState]] = []

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose cool-down has passed reads as half-open)."""
        if self._state is BreakerState.OPEN and self._cooled_down():
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def failures(self) -> int:
        return self._failures

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it would now)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._open_until - self._clock())

    def allow(self) -> bool:
        """May an attempt go now? In half-open, ``True`` hands out the one probe slot, which
        the caller must settle with :meth:`success`, :meth:`failure` or :meth:`release`."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if not self._cooled_down():
                return False
            self._move(BreakerState.HALF_OPEN)
        if self._probing:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self._failures = 0
        self._probing = False
        if self._state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED)

    def failure(self) -> None:
        self._failures += 1
        was_probe = self._probing
        self._probing = False
        probe_failed = self._state is BreakerState.HALF_OPEN and was_probe
        too_many = self._state is BreakerState.CLOSED and self._failures >= self.config.threshold
        if probe_failed or too_many:
            self._open()

    def release(self) -> None:
        """Give a probe slot back without a verdict (the attempt was abandoned)."""
        self._probing = False

    def hold_for(self, seconds: float) -> None:
        """The backend asked for a pause (``Retry-After``): open for at least ``seconds``,
        whatever the failure count. Settles a probe slot like :meth:`failure` would."""
        self._probing = False
        until = self._clock() + max(0.0, seconds)
        if self._state is BreakerState.OPEN:
            self._open_until = max(self._open_until, until)
        else:
            self._open_until = until
            self._move(BreakerState.OPEN)

    def _open(self) -> None:
        self._open_until = self._clock() + self.config.cooldown
        self._move(BreakerState.OPEN)

    def _cooled_down(self) -> bool:
        return self._clock() >= self._open_until

    def _move(self, state: BreakerState) -> None:
        self._state = state
        self.transitions.append((self._clock(), state))
        level = logging.WARNING if state is BreakerState.OPEN else logging.INFO
        if log.isEnabledFor(level):
            extra = f" for {self.retry_in():.1f} s" if state is BreakerState.OPEN else ""
            log.log(level, "circuit breaker of %s is %s%s", self.name, state.value, extra)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name} {self.state.value} failures={self._failures}>"


class BreakerBoard:
    """One breaker per backend name, made on first use with the same settings and clock."""

    def __init__(self, config: BreakerConfig | None = None, clock: Clock = time.monotonic) -> None:
        self.config = config or BreakerConfig()
        self.clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}

    def __getitem__(self, name: str) -> CircuitBreaker:
        b = self._breakers.get(name)
        if b is None:
            b = self._breakers[name] = CircuitBreaker(name, self.config, self.clock)
        return b

    def states(self) -> dict[str, str]:
        """``{backend: state}`` for health pages and metrics."""
        return {n: b.state.value for n, b in self._breakers.items()}
