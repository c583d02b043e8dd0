"""Energy sources: a JSON file, an HTTP endpoint on 127.0.0.1, a sysfs-shaped directory, the
hourly carbon schedule; stale and failing sources read as unknown with a plain reason; the
background thread and the Router's cached snapshot."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fakes import serve
from tierlm.config.settings import EnergyConfig
from tierlm.signals.energy import EnergyMonitor, describe, read_sysfs


class Clock:
    def __init__(self, t: float = 1_780_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def monitor(source: str, clock: Clock | None = None, **cfg: object) -> EnergyMonitor:
    return EnergyMonitor(EnergyConfig(source=source, **cfg), clock=clock or Clock())  # type: ignore[arg-type]


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_file_source_reads_every_field_and_its_age(tmp_path: Path) -> None:
    f = write(
        tmp_path / "e.json",
        {"battery": 0.42, "charging": False, "carbon_g_per_kwh": 510, "solar_surplus_w": 0},
    )
    clock = Clock()
    m = monitor(f"file:{f}", clock)
    assert m.snapshot().status == "pending"
    m.refresh()
    clock.t += 30
    s = m.snapshot()
    assert (s.status, s.battery, s.charging, s.carbon_g_per_kwh) == ("ok", 0.42, False, 510)
    assert s.age_s == 30
    assert "30 s old" in describe(s.to_dict())


def test_missing_fields_stay_unknown(tmp_path: Path) -> None:
    m = monitor(f"file:{write(tmp_path / 'e.json', {'carbon_g_per_kwh': 90})}")
    s = m.refresh()
    assert s.known and s.battery is None and s.carbon_g_per_kwh == 90


def test_stale_reading_is_unknown_with_its_age(tmp_path: Path) -> None:
    clock = Clock()
    m = monitor(f"file:{write(tmp_path / 'e.json', {'battery': 0.1})}", clock, max_age_seconds=60)
    m.refresh()
    clock.t += 61
    s = m.snapshot()
    assert s.status == "stale" and not s.known and s.battery is None
    assert s.detail == "last reading 61 s old (max 60 s)"


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, "cannot read"),
        ("{not json", "not JSON"),
        ('{"battery": 42}', "battery: Input should be less than or equal to 1"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_failing_file_is_unknown_with_a_plain_reason(
    tmp_path: Path, content: str | None, why: str
) -> None:
    f = tmp_path / "e.json"
    if content is not None:
        f.write_text(content)
    s = monitor(f"file:{f}").refresh()
    assert s.status == "failing" and not s.known
    assert why in s.detail


def test_a_failure_replaces_an_earlier_good_reading(tmp_path: Path) -> None:
    f = write(tmp_path / "e.json", {"battery": 0.9})
    m = monitor(f"file:{f}")
    assert m.refresh().battery == 0.9
    f.unlink()
    assert m.refresh().status == "failing" and m.snapshot().battery is None


def _supply(root: Path, name: str, **files: str) -> None:
    (root / name).mkdir(parents=True)
    for k, v in files.items():
        (root / name / k).write_text(v + "\n")


def test_sysfs_battery_and_mains(tmp_path: Path) -> None:
    _supply(tmp_path, "BAT0", type="Battery", capacity="15", status="Discharging")
    _supply(tmp_path, "AC", type="Mains", online="0")
    assert read_sysfs(tmp_path) == {"battery": 0.15, "charging": False}
    (tmp_path / "AC" / "online").write_text("1\n")
    s = monitor(f"sysfs:{tmp_path}").refresh()
    assert (s.status, s.battery, s.charging) == ("ok", 0.15, True)


def test_sysfs_without_a_battery_reports_only_mains(tmp_path: Path) -> None:
    _supply(tmp_path, "AC", type="Mains", online="1")
    assert read_sysfs(tmp_path) == {"battery": None, "charging": True}
    gone = monitor(f"sysfs:{tmp_path / 'gone'}").refresh()
    assert gone.status == "failing" and gone.detail.startswith("cannot read")
    empty = tmp_path / "empty"
    empty.mkdir()
    s = monitor(f"sysfs:{empty}").refresh()
    assert (s.status, s.detail) == ("none", "the source reports nothing")


def test_hourly_carbon_schedule_fills_carbon(tmp_path: Path) -> None:
    schedule = [float(100 + h) for h in range(24)]
    clock = Clock(datetime(2026, 6, 1, 13, 30, tzinfo=UTC).timestamp())
    s = monitor("none", clock, carbon_schedule=schedule).refresh()
    assert (s.status, s.carbon_g_per_kwh) == ("ok", 113.0)
    # a source's own carbon figure wins over the schedule
    f = write(tmp_path / "e.json", {"carbon_g_per_kwh": 700})
    assert monitor(f"file:{f}", clock, carbon_schedule=schedule).refresh().carbon_g_per_kwh == 700


@pytest.fixture
def energy_server() -> Iterator[tuple[str, dict[str, object]]]:
    """An HTTP energy endpoint; the dict says what it answers (``status`` for errors)."""
    state: dict[str, object] = {"body": {"battery": 0.8, "charging": True}, "status": 200}

    async def energy(_: Request) -> Response:
        if state["status"] != 200:
            return Response("down", status_code=int(state["status"]))  # type: ignore[call-overload]
        return JSONResponse(state["body"])

    with serve(Starlette(routes=[Route("/energy", energy)])) as url:
        yield url + "/energy", state


def test_http_source_and_its_failures(energy_server: tuple[str, dict[str, object]]) -> None:
    url, state = energy_server
    m = monitor(url, timeout_seconds=1.0)
    s = m.refresh()
    assert (s.status, s.battery, s.charging, s.source) == ("ok", 0.8, True, url)
    state["status"] = 503
    s = m.refresh()
    assert (s.status, s.detail) == ("failing", f"HTTP 503 from {url}")


def test_http_source_unreachable_is_failing() -> None:
    from fakes import free_port

    url = f"http://127.0.0.1:{free_port()}/energy"
    s = monitor(url, timeout_seconds=0.5).refresh()
    assert s.status == "failing" and s.detail == f"ConnectError from {url}"


def test_unknown_source_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="unknown energy source 'battery'"):
        EnergyConfig(source="battery")


def test_background_thread_reads_and_stops(tmp_path: Path) -> None:
    f = write(tmp_path / "e.json", {"battery": 0.5})
    m = monitor(f"file:{f}", refresh_seconds=3600)
    m.start()
    try:
        assert m.first_reading(10).battery == 0.5
        assert m._thread is not None and m._thread.name == "tierlm-energy"
    finally:
        m.close()
    assert m._thread is None
    assert not any(t.name == "tierlm-energy" for t in threading.enumerate())


def test_doctor_shows_the_energy_state(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fakes.openai_server import make_app as openai_app
    from tierlm.cli.main import app

    f = write(tmp_path / "e.json", {"battery": 0.3, "carbon_g_per_kwh": 250})
    with serve(openai_app()) as url:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            "backends:\n"
            f"  - {{name: site, kind: openai, provider: vllm, url: '{url}/v1', model: m}}\n"
            "tiers: [{name: site, backends: [site]}]\n"
            f"energy: {{source: 'file:{f}'}}\n"
        )
        out = CliRunner().invoke(app, ["doctor", "--config", str(cfg)])
        assert out.exit_code == 0, out.output
        assert f"energy: file:{f}: ok, 0 s old; battery 0.3, carbon_g_per_kwh 250" in out.output
        out = CliRunner().invoke(app, ["doctor", "--config", str(cfg), "--json"])
    assert json.loads(out.output)["energy"]["carbon_g_per_kwh"] == 250
