"""``tierlm doctor`` against real backends (in-process SmolLM2, local HTTP servers) and the
host information it shows."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fakes import free_port, serve
from fakes.ollama_server import make_app as ollama_app
from fakes.openai_server import make_app as openai_app
from tierlm import hostinfo
from tierlm.cli import doctor as doctor_cli


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, str]]:
    with serve(openai_app()) as oai, serve(ollama_app()) as oll:
        yield oai, oll


def _app() -> typer.Typer:
    app = typer.Typer()
    doctor_cli.register(app)

    @app.command()
    def _other() -> None:  # a second command keeps `doctor` a named subcommand
        """unused"""

    return app


def _config(tmp_path: Path, oai: str, oll: str) -> Path:
    down = f"http://127.0.0.1:{free_port()}/v1"
    text = f"""
backends:
  - {{name: tiny, kind: llama_cpp, model: smollm2-135m-instruct, n_ctx: 512}}
  - {{name: site-down, kind: openai, provider: vllm, url: "{down}", model: m,
      timeouts: {{connect: 0.5}}}}
  - {{name: vllm, kind: openai, provider: vllm, url: "http://user:pw@{oai[7:]}/v1",
      model: served-model}}
  - {{name: ollama, kind: ollama, url: "{oll}", model: llama3.2, boundary: host}}
  - {{name: claude, kind: anthropic, model: claude-3-5-haiku-latest, boundary: external}}
tiers:
  - {{name: tiny, backends: [tiny]}}
  - {{name: site, backends: [site-down, ollama, vllm]}}
  - {{name: cloud, backends: [claude]}}
"""
    path = tmp_path / "tierlm.yaml"
    path.write_text(text)
    return path


def test_doctor_json(tmp_path: Path, servers: tuple[str, str], models_dir: Path) -> None:
    result = CliRunner().invoke(
        _app(), ["doctor", "--config", str(_config(tmp_path, *servers)), "--json"]
    )
    assert result.exit_code == 1, result.output  # the cloud tier has no usable backend
    report = json.loads(result.stdout)
    b = {x["name"]: x for x in report["backends"]}
    assert b["tiny"]["state"] == "cold" and b["tiny"]["usable"]
    tiny = b["tiny"]["health"]
    assert 0 < tiny["memory_needed_gb"] < tiny["memory_free_gb"]
    assert b["tiny"]["price"]["source"] == "local"
    assert b["site-down"]["state"] == "unreachable"
    assert b["vllm"]["state"] == "loaded" and b["vllm"]["health"]["queued"] == 5
    assert "pw" not in b["vllm"]["where"] and "user" not in b["vllm"]["where"]
    assert b["ollama"]["state"] == "cold" and "llama3.2:latest" in b["ollama"]["health"]["models"]
    assert b["claude"]["state"] == "error" and "ANTHROPIC_API_KEY" in b["claude"]["detail"]
    assert b["claude"]["price"]["source"] == "table"
    tiers = {t["name"]: t["uses"] for t in report["tiers"]}
    # prefer_warm: the loaded vLLM model beats the cold Ollama one listed before it
    assert tiers == {"tiny": "tiny", "site": "vllm", "cloud": None}
    assert report["host"]["memory_total_bytes"] >= report["host"]["memory_available_bytes"] > 0


def test_doctor_text(tmp_path: Path, servers: tuple[str, str], models_dir: Path) -> None:
    result = CliRunner().invoke(_app(), ["doctor", "-c", str(_config(tmp_path, *servers))])
    out = result.stdout
    assert "host:" in out and "GB RAM free" in out
    assert "site-down" in out and "unreachable" in out
    assert "uses vllm" in out and "NOTHING" in out
    assert "needed" in out and "queued 5" in out


def test_doctor_preset_all_ok(models_dir: Path) -> None:
    result = CliRunner().invoke(_app(), ["doctor", "--preset", "edge-only", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tiers"][0]["uses"] == "smollm2"


def test_doctor_imports_nothing_heavy() -> None:
    code = (
        "import sys, tierlm.cli.doctor; "
        "print(sorted(m for m in ('httpx', 'numpy', 'llama_cpp', 'torch', 'rich') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_hostinfo_memory() -> None:
    total, free = hostinfo.memory_total_bytes(), hostinfo.memory_available_bytes()
    assert 0 < free <= total
    snap = hostinfo.snapshot()
    assert snap.cpu_count >= 1 and snap.to_dict()["memory_total_gb"] > 0
    assert hostinfo.fits(1) and not hostinfo.fits(total * 4)


def test_gpus_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\necho '0, NVIDIA H100 80GB HBM3, 81559, 80000, 3'\n"
        "echo '1, NVIDIA H100 80GB HBM3, 81559, 1024, [N/A]'\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    gpus = hostinfo.gpus(str(fake))
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[0].memory_total_bytes == 81559 * 1024**2 and gpus[0].utilization_pct == 3
    assert gpus[1].memory_free_bytes == 1024 * 1024**2 and gpus[1].utilization_pct is None
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert hostinfo.gpus() == []  # no binary: no GPUs, no error
    assert hostinfo.parse_nvidia_smi("garbage\n1, x\n") == []
    assert os.environ["PATH"].endswith("empty")
