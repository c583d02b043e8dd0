"""Measured energy per generated token for local backends, from Linux RAPL counters.

Counters: the powercap interface, ``/sys/class/powercap/<zone>:N`` with ``energy_uj``
(microjoules, monotonically increasing) and ``max_energy_range_uj`` (where it wraps to 0).
Only package domains (``intel-rapl:0``, ``intel-rapl:1``; recent kernels expose AMD's the same
way) are read, never their subdomains (``intel-rapl:0:0``, core/uncore/dram), which the
package already counts. A counter that went down between two readings wrapped once:
``after + range - before``.

No counter (no powercap directory, no package domain) or an unreadable one (``energy_uj`` is
root-only on many kernels since CVE-2020-8694) means no measurement and a plain reason
(:attr:`JoulesMeter.reason`), never an error.

:class:`JoulesMeter` (one per local backend) reads the counters when a generation starts and
when it ends (in the backend, off the routing decision), and turns the energy used and the
generated tokens into joules per token. The package is shared, so a generation is measured
only when it ran alone: one that started while another of the same backend was running, or
during which another started, is not counted (generations of other backends or processes on
the same package are not seen, and add to the measurement). The estimate is an exponentially
weighted mean (weight :data:`ALPHA` for the newest sample) and counts only after
:data:`MIN_SAMPLES` samples. The energy policy uses it for a backend with no configured
``joules_per_token`` (a configured value wins).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POWERCAP = Path("/sys/class/powercap")
ALPHA = 0.2  # weight of the newest sample in the smoothed estimate
MIN_SAMPLES = 3  # samples before the estimate counts
_PACKAGE = re.compile(r"^[a-z-]+-rapl:\d+$")  # a package domain; subdomains have two colons


_UNMEASURED = "no generation measured yet"


class RaplUnavailable(Exception):
    """No counter can be read (the reason, for people; never raised past the meter)."""


@dataclass(frozen=True, slots=True)
class _Domain:
    energy: Path
    max_range: int


class RaplCounter:
    """The package domains under a powercap-shaped ``root`` (found on first use)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or POWERCAP
        self._domains: list[_Domain] | None = None

    def _find(self) -> list[_Domain]:
        if self._domains is None:
            try:
                zones = sorted(p for p in self.root.iterdir() if _PACKAGE.match(p.name))
            except OSError as e:
                raise RaplUnavailable(f"no powercap directory {self.root}: {e.strerror}") from e
            if not zones:
                raise RaplUnavailable(f"no RAPL package domain under {self.root}")
            self._domains = [
                _Domain(z / "energy_uj", int(_read(z / "max_energy_range_uj"))) for z in zones
            ]
        return self._domains

    def read(self) -> tuple[int, ...]:
        """Each package's counter now, microjoules (raises :class:`RaplUnavailable`)."""
        return tuple(int(_read(d.energy)) for d in self._find())

    def joules(self, before: tuple[int, ...], after: tuple[int, ...]) -> float:
        """Energy used between two readings of :meth:`read`, all packages, joules."""
        total = 0
        for d, b, a in zip(self._find(), before, after, strict=True):
            total += a - b if a >= b else a + d.max_range - b
        return total / 1e6


def _read(path: Path) -> str:
    try:
        text = path.read_text(encoding="ascii").strip()
    except OSError as e:  # EACCES: root-only counters; EISDIR and others: not a counter
        raise RaplUnavailable(f"cannot read {path}: {e.strerror or e}") from e
    if not text.isdigit():
        raise RaplUnavailable(f"{path}: not a counter ({text[:20]!r})")
    return text


@dataclass(frozen=True, slots=True)
class Start:
    """A generation's start: the counters then, and whether it started alone."""

    counters: tuple[int, ...]
    overlaps: int
    alone: bool


class JoulesMeter:
    """One backend's measured joules per generated token (see the module docstring)."""

    def __init__(self, counter: RaplCounter | None = None) -> None:
        self.counter = counter or RaplCounter()
        self.estimate: float | None = None
        self.samples = 0
        self.reason = _UNMEASURED
        self._active = 0
        self._overlaps = 0  # generations that started while another ran
        self._lock = threading.Lock()

    def begin(self) -> Start | None:
        """At a generation's start: the counters (``None``: none readable, see ``reason``)."""
        with self._lock:
            self._active += 1
            if self._active > 1:
                self._overlaps += 1
            overlaps, alone = self._overlaps, self._active == 1
        try:
            return Start(self.counter.read(), overlaps, alone)
        except RaplUnavailable as e:
            self.reason = str(e)
            return None

    def end(self, start: Start | None, tokens: int) -> None:
        """At its end (also after a failure, with 0 tokens): one sample if it ran alone."""
        with self._lock:
            self._active -= 1
            alone = start is not None and start.alone and start.overlaps == self._overlaps
        if start is None or not alone or tokens <= 0:
            return
        try:
            joules = self.counter.joules(start.counters, self.counter.read())
        except RaplUnavailable as e:
            self.reason = str(e)
            return
        self._add(joules / tokens)

    def _add(self, sample: float) -> None:
        with self._lock:
            prev = self.estimate
            self.estimate = sample if prev is None else ALPHA * sample + (1 - ALPHA) * prev
            self.samples += 1
            if self.samples < MIN_SAMPLES:
                self.reason = f"{self.samples} of {MIN_SAMPLES} samples"
            else:
                self.reason = ""

    @property
    def joules_per_token(self) -> float | None:
        """The smoothed estimate once it has :data:`MIN_SAMPLES` samples, else ``None``."""
        return self.estimate if self.samples >= MIN_SAMPLES else None

    def to_dict(self) -> dict[str, Any]:
        """Estimate, samples and why there is none; before the first generation, whether
        the counters can be read at all (a few microseconds)."""
        if self.samples == 0 and self.reason == _UNMEASURED:
            try:
                self.counter.read()
            except RaplUnavailable as e:
                self.reason = str(e)
        j = self.joules_per_token
        return {
            "measured_joules_per_token": None if j is None else round(j, 4),
            "samples": self.samples,
            "detail": self.reason,
        }


def describe(energy: dict[str, Any]) -> str:
    """One line for people from :meth:`JoulesMeter.to_dict`."""
    j = energy.get("measured_joules_per_token")
    if j is not None:
        return f"measured {j:g} J/token ({energy['samples']} samples)"
    return f"J/token not measured ({energy['detail']})"
