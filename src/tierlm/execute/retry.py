"""When to try the same backend again, when to move on, and what counts against a backend.

Failures fall in three groups:

=====================  ========================================  ==========================
group                  errors                                    what the executor does
=====================  ========================================  ==========================
transient              ``RateLimited``, ``Overloaded``,          retry the same backend (at
                       ``ServerError``, ``BackendUnavailable``   most ``max_retries`` times,
                                                                 backoff with full jitter,
                                                                 ``Retry-After`` honoured up
                                                                 to a cap), then move on
slow or broken         ``BackendTimeout``, ``ProtocolError``     move on at once: waiting
                                                                 again would double the delay
caller                 ``ContextLengthExceeded``,                never the same backend again;
                       ``ContentPolicyError``,                   see the executor for which
                       ``BackendBadRequest``                     other candidates remain
=====================  ========================================  ==========================

Transient and slow-or-broken failures (and ``BackendAuthError``: a broken key is an outage
of that backend for us; ``ModelUnavailable``: so is a local model that is missing) count
against the backend's circuit breaker; caller errors do not.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tierlm.errors import (
    BackendAuthError,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    ModelUnavailable,
    Overloaded,
    ProtocolError,
    RateLimited,
    ServerError,
)

_TRANSIENT = (RateLimited, Overloaded, ServerError, BackendUnavailable)
_UPSTREAM_FAULT = (*_TRANSIENT, BackendTimeout, ProtocolError, BackendAuthError, ModelUnavailable)


def retry_after(err: BackendError) -> float | None:
    """The pause the backend asked for, if any (``RateLimited.retry_after``, or the same
    attribute on any other error an adapter chose to give it)."""
    value = getattr(err, "retry_after", None)
    return float(value) if isinstance(value, int | float) and value >= 0 else None


def is_transient(err: BackendError) -> bool:
    """May the same backend succeed if asked again shortly?"""
    return isinstance(err, _TRANSIENT)


def counts_against_backend(err: BackendError) -> bool:
    """Is this the backend's fault (circuit breaker failure), not the caller's?"""
    return isinstance(err, _UPSTREAM_FAULT)


@dataclass(slots=True)
class RetryPolicy:
    """Bounded retries of one candidate.

    Backoff before retry ``n`` (0-based) is uniform in ``[0, min(max_delay, base_delay * 2**n)]``
    (full jitter). A ``Retry-After`` is waited for exactly when it is at most
    ``retry_after_cap`` and fits the time left; a longer one moves on to the next candidate
    (and the executor holds the backend's breaker open for that long, up to ``hold_cap``).
    """

    max_retries: int = 2
    base_delay: float = 0.25
    max_delay: float = 4.0
    retry_after_cap: float = 5.0
    hold_cap: float = 300.0
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must not be negative")
        if self.base_delay < 0 or self.max_delay < 0 or self.retry_after_cap < 0:
            raise ValueError("retry delays must not be negative")

    def delay(self, err: BackendError, retry_no: int, remaining: float) -> float | None:
        """Seconds to wait before retrying after ``err``, or ``None``: move on instead.

        ``retry_no`` counts the retries already made on this candidate; ``remaining`` is the
        time left in the candidate's total budget.
        """
        if retry_no >= self.max_retries or not is_transient(err):
            return None
        wait = retry_after(err)
        if wait is not None:
            return None if wait > self.retry_after_cap or wait >= remaining else wait
        wait = self.rng.uniform(0.0, min(self.max_delay, self.base_delay * 2**retry_no))
        return wait if wait < remaining else None
