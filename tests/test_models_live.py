"""``tierlm models ps|load|unload`` against a live gateway with the real SmolLM2 model, the
``/admin/models`` routes behind them, a reload that keeps an unchanged local model loaded,
and ``tierlm models recommend``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import SMOLLM2
from fakes import free_port, serve
from fakes.openai_server import make_app
from server_util import ADMIN_KEY, USER_KEY, sha
from tierlm.cli.models_live import estimate_gb
from tierlm.config import load_settings
from tierlm.server import create_app

TIERLM = str(Path(sys.executable).parent / "tierlm")
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def config(fake: str, *, n_ctx: int = 1024, timeout: float = 10.0) -> dict[str, Any]:
    return {
        "backends": [
            {"name": "smol", "kind": "llama_cpp", "model": str(SMOLLM2), "n_ctx": n_ctx},
            {
                "name": "alpha",
                "kind": "openai",
                "url": fake + "/v1",
                "model": "alpha",
                "boundary": "site",
                "timeouts": {"connect": 1.0, "first_token": timeout},
            },
        ],
        "tiers": [{"name": "tiny", "backends": ["smol"]}, {"name": "site", "backends": ["alpha"]}],
        "ledger": {"url": "off"},
        "routing": {"complexity_method": "length"},
        "server": {
            "api_keys": [
                {"name": "user", "hash": sha(USER_KEY)},
                {"name": "admin", "hash": sha(ADMIN_KEY), "admin": True},
            ]
        },
    }


@pytest.fixture
def gateway(tmp_path: Path, models_dir: Path) -> Iterator[tuple[str, Path]]:
    path = tmp_path / "tierlm.yaml"
    with serve(make_app()) as fake:
        path.write_text(yaml.safe_dump(config(fake)))
        app = create_app(load_settings(path), reload=lambda: load_settings(path))
        with serve(app, lifespan="on", start_within=60, grace=5) as url:
            yield url, path


def cli(*args: str, key: str | None = ADMIN_KEY) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TIERLM_ADMIN_KEY"}
    if key is not None:
        env["TIERLM_ADMIN_KEY"] = key
    return subprocess.run(
        [TIERLM, "models", *args], capture_output=True, text=True, timeout=300, env=env
    )


def state(url: str) -> dict[str, Any]:
    (smol,) = httpx.get(url + "/admin/models", headers=ADMIN, timeout=30).json()["models"]
    assert smol["backend"] == "smol"
    return dict(smol)


def reload(url: str, path: Path, **kw: Any) -> dict[str, Any]:
    fake = yaml.safe_load(path.read_text())["backends"][1]["url"].removesuffix("/v1")
    path.write_text(yaml.safe_dump(config(fake, **kw)))
    r = httpx.post(url + "/admin/reload", headers=ADMIN, timeout=60)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_ps_load_unload_and_reload_keeps_the_loaded_model(gateway: tuple[str, Path]) -> None:
    url, path = gateway
    ps = cli("ps", "--url", url)
    assert ps.returncode == 0, ps.stderr
    assert "smol" in ps.stdout and "not loaded" in ps.stdout and "alpha" not in ps.stdout

    loaded = cli("load", "smol", "--url", url)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.startswith("loaded smol")
    s = state(url)
    assert s["loaded"] is True and s["memory_gb"] > 0 and s["idle_s"] >= 0
    assert "loaded" in cli("ps", "--url", url).stdout.split("smol", 1)[1].split("\n")[0]

    # a reload that leaves smol's configuration alone keeps the same, loaded, model
    assert reload(url, path, timeout=20.0)["changed"] == ["alpha"]
    assert state(url)["loaded"] is True
    # one that changes it builds a new backend: not loaded until used
    assert reload(url, path, n_ctx=512, timeout=20.0)["changed"] == ["smol"]
    assert state(url)["loaded"] is False

    assert cli("load", "smol", "--url", url).returncode == 0
    unloaded = cli("unload", "smol", "--url", url)
    assert unloaded.returncode == 0, unloaded.stderr
    assert unloaded.stdout.strip() == "unloaded smol"
    assert state(url)["loaded"] is False
    assert cli("unload", "smol", "--url", url).stdout.strip() == "smol was not loaded"


def test_models_cli_errors_are_one_line(gateway: tuple[str, Path]) -> None:
    url, _ = gateway
    remote = cli("load", "alpha", "--url", url)
    assert remote.returncode == 2
    assert "backend 'alpha' is not a local model (local: smol)" in remote.stderr
    missing = cli("unload", "nope", "--url", url)
    assert missing.returncode == 2 and "backend 'nope' does not exist" in missing.stderr
    nokey = cli("ps", "--url", url, key=None)
    assert nokey.returncode == 2 and "missing API key" in nokey.stderr
    down = cli("ps", "--url", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1
    assert down.stderr.startswith("error: no gateway at http://127.0.0.1:")
    for r in (remote, missing, nokey, down):
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_recommend_says_what_fits_this_machine() -> None:
    r = subprocess.run([TIERLM, "models", "recommend"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("this machine: ")
    rows = [line.split() for line in r.stdout.splitlines()]
    table = {
        (row[0], row[1]): row for row in rows if row and row[0][:-1].replace(".", "").isdigit()
    }
    assert {"0.5B", "1.5B", "3B", "7B", "14B", "70B"} <= {size for size, _ in table}
    order = {"no": 0, "RAM": 1, "GPU": 2}
    for quant, bits in {"Q4_K_M": 4.85, "Q8_0": 8.5}.items():
        sized = sorted((float(s[:-1]), row) for (s, q), row in table.items() if q == quant)
        for params, row in sized:
            assert float(row[2]) == pytest.approx(estimate_gb(params, bits), abs=0.051)
        fits = [order[row[4]] for _, row in sized]
        assert fits == sorted(fits, reverse=True), "a bigger model fits where a smaller did not"
    assert float(table[("7B", "Q8_0")][2]) > float(table[("7B", "Q4_K_M")][2])
    assert table[("70B", "Q8_0")][5] == "site" and table[("0.5B", "Q4_K_M")][5] == "tiny"
