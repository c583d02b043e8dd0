"""Energy state: battery, charging, grid carbon intensity and solar surplus, read in the
background and handed to the policy as a cached snapshot.

Sources (``energy.source`` in the config):

- ``sysfs`` (or ``sysfs:DIR``): Linux ``/sys/class/power_supply``: each ``Battery``'s
  ``capacity`` (percent) and ``status``, each mains/USB supply's ``online``. The battery share
  is the mean of the batteries; charging is any supply online or any battery ``Charging``.
- ``file:PATH`` or an ``http://`` / ``https://`` URL: JSON
  ``{"battery": 0..1, "charging": bool, "carbon_g_per_kwh": number, "solar_surplus_w": number}``,
  every field optional; HTTP with short timeouts.
- ``auto`` (the default): ``sysfs`` where that directory exists, else none.
- ``none``: only ``carbon_schedule`` (24 values, g/kWh by UTC hour), which also fills the
  carbon intensity when a source gives none.

:class:`EnergyMonitor` reads the source on a daemon thread every ``refresh_seconds``; the
request path only calls :meth:`EnergyMonitor.snapshot`, which returns the last reading with
its age and never touches the source. A reading older than ``max_age_seconds`` is ``stale``
and a failed one ``failing``: both count as unknown (no field known), with the reason in
``detail``. Nothing is read at import, and nothing at all unless an ``energy`` section is
configured.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    from tierlm.config.settings import EnergyConfig

SYSFS = Path("/sys/class/power_supply")


class EnergyError(Exception):
    """A source could not be read (kept as the snapshot's ``detail``, never raised further)."""


class _Reading(BaseModel):
    """What a file or HTTP source returns."""

    model_config = ConfigDict(extra="ignore")

    battery: float | None = Field(default=None, ge=0, le=1)
    charging: bool | None = None
    carbon_g_per_kwh: float | None = Field(default=None, ge=0)
    solar_surplus_w: float | None = None


@dataclass(frozen=True, slots=True)
class EnergyState:
    """One reading and how it stands now. Fields are ``None`` when unknown."""

    source: str
    status: str = "pending"  # ok | stale | failing | pending (not read yet) | none
    battery: float | None = None
    charging: bool | None = None
    carbon_g_per_kwh: float | None = None
    solar_surplus_w: float | None = None
    read_at: float | None = None  # wall-clock seconds of the reading
    age_s: float | None = None
    detail: str = ""

    @property
    def known(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "status": self.status,
            "age_s": None if self.age_s is None else round(self.age_s, 1),
            "battery": self.battery,
            "charging": self.charging,
            "carbon_g_per_kwh": self.carbon_g_per_kwh,
            "solar_surplus_w": self.solar_surplus_w,
            "detail": self.detail,
        }


def describe(state: dict[str, Any]) -> str:
    """One line for people: source, status, age and what is known (from ``to_dict()``)."""
    known = ", ".join(
        f"{k} {state[k]}"
        for k in ("battery", "charging", "carbon_g_per_kwh", "solar_surplus_w")
        if state.get(k) is not None
    )
    age = f", {state['age_s']:g} s old" if state.get("age_s") is not None else ""
    detail = f" ({state['detail']})" if state.get("detail") else ""
    return f"{state['source']}: {state['status']}{age}{detail}; {known or 'nothing known'}"


def resolve_source(source: str) -> str:
    """``auto`` becomes ``sysfs`` where the power-supply directory exists, else ``none``."""
    if source == "auto":
        return "sysfs" if SYSFS.is_dir() else "none"
    return source


def read_source(source: str, timeout: float) -> dict[str, Any]:
    """The fields ``source`` gives now (raises :class:`EnergyError` with a plain reason)."""
    if source == "none":
        return {}
    if source == "sysfs" or source.startswith("sysfs:"):
        return read_sysfs(Path(source[6:]) if source.startswith("sysfs:") else SYSFS)
    if source.startswith("file:"):
        path = Path(source[5:]).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise EnergyError(f"cannot read {path}: {e.strerror or e}") from e
        return _parse(text)
    try:
        r = httpx.get(source, timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as e:
        raise EnergyError(f"{type(e).__name__} from {source}") from e
    if r.status_code != 200:
        raise EnergyError(f"HTTP {r.status_code} from {source}")
    return _parse(r.text)


def _parse(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise EnergyError("expected a JSON object")
        return _Reading.model_validate(data).model_dump()
    except json.JSONDecodeError as e:
        raise EnergyError(f"not JSON: {e.msg}") from e
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise EnergyError(f"{where}: {err['msg']}") from e


def read_sysfs(root: Path) -> dict[str, Any]:
    """Battery share and charging from a ``power_supply``-shaped directory."""
    try:
        devices = sorted(root.iterdir())
    except OSError as e:
        raise EnergyError(f"cannot read {root}: {e.strerror or e}") from e
    shares: list[float] = []
    charging: bool | None = None
    for dev in devices:
        kind = _sysfs_value(dev / "type")
        if kind == "Battery":
            capacity = _sysfs_value(dev / "capacity")
            if capacity is not None and capacity.isdigit():
                shares.append(min(int(capacity), 100) / 100)
            status = _sysfs_value(dev / "status")
            if status in ("Charging", "Discharging"):
                charging = bool(charging) or status == "Charging"
        elif kind is not None:  # Mains, USB, ...
            online = _sysfs_value(dev / "online")
            if online in ("0", "1"):
                charging = bool(charging) or online == "1"
    battery = round(sum(shares) / len(shares), 4) if shares else None
    return {"battery": battery, "charging": charging}


def _sysfs_value(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


class EnergyMonitor:
    """The energy state, refreshed on a background thread; :meth:`snapshot` is what the
    request path reads (no I/O). ``clock`` returns wall-clock seconds (tests inject one)."""

    def __init__(self, config: EnergyConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.source = resolve_source(config.source)
        self.clock = clock
        self._last = EnergyState(source=self.source)
        self._stop = threading.Event()
        self._read = threading.Event()  # set once the first reading is in
        self._thread: threading.Thread | None = None

    def refresh(self) -> EnergyState:
        """Read the source now (the background thread's job; also ``route`` and ``doctor``)."""
        now = self.clock()
        try:
            fields = read_source(self.source, self.config.timeout_seconds)
            status, detail = "ok", ""
        except EnergyError as e:
            fields, status, detail = {}, "failing", str(e)
        schedule = self.config.carbon_schedule
        if status == "ok" and schedule and fields.get("carbon_g_per_kwh") is None:
            fields["carbon_g_per_kwh"] = schedule[datetime.fromtimestamp(now, UTC).hour]
        if status == "ok" and not any(v is not None for v in fields.values()):
            status, detail = "none", "the source reports nothing"
        self._last = EnergyState(
            source=self.source, status=status, read_at=now, detail=detail, **fields
        )
        self._read.set()
        return self.snapshot()

    def first_reading(self, timeout: float) -> EnergyState:
        """:meth:`snapshot`, after waiting up to ``timeout`` seconds for the first reading
        (a one-off decision: ``tierlm route``; never the gateway's request path)."""
        self._read.wait(timeout)
        return self.snapshot()

    def snapshot(self) -> EnergyState:
        """The last reading, aged; a stale one has no known field."""
        last = self._last
        if last.read_at is None:
            return replace(last, detail=last.detail or "not read yet")
        age = max(self.clock() - last.read_at, 0.0)
        max_age = self.config.max_age_seconds
        if last.status == "ok" and age > max_age:
            return EnergyState(
                source=last.source,
                status="stale",
                read_at=last.read_at,
                age_s=age,
                detail=f"last reading {age:.0f} s old (max {max_age:g} s)",
            )
        return replace(last, age_s=age)

    def start(self) -> None:
        """Read now and then every ``refresh_seconds``, on a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="tierlm-energy")
            self._thread.start()

    def _run(self) -> None:
        while True:
            self.refresh()
            if self._stop.wait(self.config.refresh_seconds):
                return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.config.timeout_seconds + 1)
            self._thread = None
