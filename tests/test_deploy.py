"""The deployment files in ``deploy/`` fit together and fit tierlm: the example config loads
through tierlm's own loader (with the Postgres URL from the environment, as compose passes
it), the compose file wires two replicas to the services that config names, with health
checks on ``/health``, and the systemd unit runs that config, reloads on SIGHUP and waits
longer than the drain. (Docker is not run here: no daemon on the build machine.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tierlm.config import load_settings
from tierlm.config.settings import Settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
CONFIG_IN_CONTAINER = "/etc/tierlm/tierlm.yaml"
LEDGER_URL = "postgresql://tierlm:s3cret@postgres:5432/tierlm"


def _settings() -> Settings:
    return load_settings(DEPLOY / "tierlm.yaml", env={"TIERLM_LEDGER__URL": LEDGER_URL})


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _unit() -> dict[str, list[str]]:
    """``Key -> [values]`` of the systemd unit (every section; comments dropped)."""
    out: dict[str, list[str]] = {}
    for line in (DEPLOY / "tierlm.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)s?", value)
    assert match, value
    return float(match.group(1))


def test_the_example_config_loads_as_a_replica_config() -> None:
    s = _settings()
    assert s.ledger.url == LEDGER_URL  # the environment's URL, with its password
    assert s.ledger.commit_before_reply
    assert s.cache.store == "redis" and s.server.rate_limit_url
    assert s.budgets.limits and s.data_dir
    assert [t.name for t in s.tiers] == ["site", "cloud"]


def test_compose_runs_two_replicas_on_the_services_the_config_names() -> None:
    compose, s = _compose(), _settings()
    services = compose["services"]
    replicas = {n: v for n, v in services.items() if n.startswith("tierlm")}
    assert len(replicas) == 2
    named = {s.ledger.url, s.cache.redis_url, s.server.rate_limit_url}
    hosts = {urlsplit(u or "").hostname for u in named}
    assert hosts == {"postgres", "redis"} and hosts <= services.keys()
    published = set()
    for svc in replicas.values():
        mount = next(v for v in svc["volumes"] if v.endswith(f":{CONFIG_IN_CONTAINER}:ro"))
        assert (DEPLOY / mount.split(":")[0]).resolve() == (DEPLOY / "tierlm.yaml").resolve()
        assert svc["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }
        check = " ".join(svc["healthcheck"]["test"])
        assert f"http://127.0.0.1:{s.server.port}/health" in check
        assert _seconds(svc["stop_grace_period"]) > s.server.drain_seconds
        url = svc["environment"]["TIERLM_LEDGER__URL"]
        assert url.startswith("postgresql://tierlm:${POSTGRES_PASSWORD") and "@postgres:" in url
        (port,) = svc["ports"]
        assert port.startswith("127.0.0.1:") and port.endswith(f":{s.server.port}")
        published.add(port)
    assert len(published) == 2
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f'"--config", "{CONFIG_IN_CONTAINER}"' in dockerfile


def test_the_systemd_unit_serves_the_config_and_reloads_on_sighup() -> None:
    unit, s = _unit(), _settings()
    (start,) = unit["ExecStart"]
    assert start.split()[1:4] == ["serve", "--config", CONFIG_IN_CONTAINER]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["Restart"] == ["on-failure"] and unit["User"] == ["tierlm"]
    assert unit["NoNewPrivileges"] == ["true"] and unit["ProtectSystem"] == ["strict"]
    assert s.data_dir in unit["ReadWritePaths"]  # the ledger's spill file is writable
    assert _seconds(unit["TimeoutStopSec"][0]) > s.server.drain_seconds


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    text = (DEPLOY / "tierlm.service").read_text()
    unit = tmp_path / "tierlm.service"  # the binary is not installed here: stand in for it
    unit.write_text(text.replace("/opt/tierlm/bin/tierlm", "/bin/true"))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
