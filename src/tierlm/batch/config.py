"""Typed configuration of deferred work: the ``batch`` section.

::

    batch:
      concurrency: 4            # lines in flight at once, over every batch
      window:                   # when deferred lines run; every condition set must hold
        off_peak_hours: [0, 1, 2, 3, 4, 5, 22, 23]   # UTC hours (cheaper power or prices)
        max_carbon_g_per_kwh: 300                     # needs an energy section
        min_battery: 0.5                              # or charging
        min_solar_surplus_w: 200
        min_budget_share: 0.5   # at least half of every money budget left
        local_idle: true        # a line for a local model waits while live requests run,
        local_idle_seconds: 1   #   and for this long after the last one started
        preempt: true           # a live request stops deferred lines on this host's models
      run_anyway_seconds: 3600  # in the last hour of its window a line runs regardless

An unknown energy state, or no energy section, fails the energy conditions that are set
(a line then waits for the window's end, when it runs regardless). Privacy, keys and budgets
still apply to every line, forced or not.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_SLOTS = 2  # of a local model server not in ``batch.slots``


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class WindowConfig(_Strict):
    """The conditions under which a deferred line may run (all of those set)."""

    off_peak_hours: list[int] | None = Field(default=None, min_length=1)  # UTC hours 0..23
    max_carbon_g_per_kwh: float | None = Field(default=None, ge=0)
    min_battery: float | None = Field(default=None, ge=0, le=1)  # met while charging too
    min_solar_surplus_w: float | None = None
    min_budget_share: float | None = Field(default=None, ge=0, le=1)
    local_idle: bool = True
    # ... and none started in the last this many seconds (a burst of live traffic is not
    # over when one request ends; a deferred line started in a short gap would be preempted)
    local_idle_seconds: float = Field(default=1.0, ge=0)
    # a live request arriving stops the deferred lines running on a model of this host
    # (boundary process or host: they share its CPU or GPU); they run again later
    preempt: bool = True

    @field_validator("off_peak_hours")
    @classmethod
    def _hours(cls, v: list[int] | None) -> list[int] | None:
        bad = [h for h in v or [] if not 0 <= h <= 23]
        if bad:
            raise ValueError(f"{bad[0]} is not an hour 0..23")
        return v


class BatchConfig(_Strict):
    """Deferred work through the OpenAI Batch API (``/v1/files``, ``/v1/batches``)."""

    enabled: bool = True  # needs a ledger (the jobs live in its database)
    concurrency: int = Field(default=4, ge=1)  # lines in flight at once
    window: WindowConfig = Field(default_factory=WindowConfig)
    run_anyway_seconds: float = Field(default=3600.0, ge=0)
    max_file_bytes: int = Field(default=64 * 1024 * 1024, gt=0)  # an uploaded input file
    max_lines: int = Field(default=50_000, ge=1)  # lines per input file
    max_attempts: int = Field(default=3, ge=1)  # claims of a line: retries of a retryable error
    retry_seconds: float = Field(default=30.0, ge=0)  # first retry delay, doubling
    poll_seconds: float = Field(default=1.0, gt=0)  # the scheduler's idle wake-up
    lease_seconds: float = Field(default=30.0, gt=0)  # a silent scheduler's lines are reclaimed
    # generation slots of local model servers (site or host HTTP backends), whose capacity
    # tierlm cannot see; deferred lines leave one free. In-process models: max_concurrency.
    slots: dict[str, int] = Field(default_factory=dict)
