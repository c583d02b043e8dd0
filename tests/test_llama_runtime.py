"""The llama.cpp smoke check (``python -m tierlm.llama_runtime``, the end of ``scripts/setup``,
and ``tierlm doctor``): one token through the ``llama_cpp`` module and through the
``llama-server`` worker, each in a subprocess.

A deliberately broken runtime (a ``llama_cpp`` module and a ``llama-server`` that kill
themselves with SIGSEGV, or SIGILL as a build for the wrong CPU does) gives the plain message
with the ``CMAKE_ARGS`` to rebuild with, never a traceback; the real runtime passes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MODELS, SMOLLM2
from tierlm.llama_runtime import BASELINE_ARGS, PORTABLE_ARGS, find_server

SRC = Path(__file__).resolve().parents[1] / "src"


def _broken_runtime(tmp_path: Path, signal_name: str) -> dict[str, str]:
    """An environment whose llama_cpp module and llama-server crash with ``signal_name``."""
    pkg = tmp_path / "fake" / "llama_cpp"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        f"import os, signal\nos.kill(os.getpid(), signal.{signal_name})\n"
    )
    server = tmp_path / "llama-server"
    server.write_text(f"#!/bin/sh\nkill -{signal_name[3:]} $$\n")
    server.chmod(0o755)
    return {
        **os.environ,
        "PYTHONPATH": f"{tmp_path / 'fake'}{os.pathsep}{SRC}",
        "TIERLM_LLAMA_SERVER": str(server),
        "TIERLM_MODELS_DIR": str(MODELS),
    }


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("signal_name", ["SIGSEGV", "SIGILL"])
def test_smoke_check_on_a_crashing_runtime_gives_the_message(
    tmp_path: Path, signal_name: str
) -> None:
    env = _broken_runtime(tmp_path, signal_name)
    out = _run([sys.executable, "-m", "tierlm.llama_runtime", str(SMOLLM2)], env)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr + out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2, out.stderr
    assert lines[0].startswith("smoke check, llama_cpp module: FAILED (llama.cpp crashed with ")
    assert lines[1].startswith("smoke check, llama-server worker: FAILED (llama.cpp (llama-")
    for line in lines:
        assert signal_name in line
        assert f'CMAKE_ARGS="{PORTABLE_ARGS}" TIERLM_REBUILD=1 ./scripts/setup' in line


def test_smoke_advice_after_a_portable_build_is_the_oldest_baseline(tmp_path: Path) -> None:
    env = {**_broken_runtime(tmp_path, "SIGILL"), "CMAKE_ARGS": PORTABLE_ARGS}
    out = _run([sys.executable, "-m", "tierlm.llama_runtime", str(SMOLLM2)], env)
    assert out.returncode == 1 and f'CMAKE_ARGS="{BASELINE_ARGS}"' in out.stderr


def test_doctor_runs_the_smoke_check(tmp_path: Path) -> None:
    env = {
        **_broken_runtime(tmp_path, "SIGSEGV"),
        "TIERLM_DATA_DIR": str(tmp_path / "data"),
        # the worker backend is built over the fake llama-server; in-process would not start
        "TIERLM_CONFIG": "",
    }
    code = "from tierlm.cli.main import main; main()"
    out = _run([sys.executable, "-c", code, "doctor", "--preset", "edge-only"], env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert "llama.cpp smoke check (one token, in a subprocess):" in out.stdout
    assert "llama-server worker: FAILED (llama.cpp (llama-server) crashed with SIGSEGV" in (
        out.stdout
    )
    assert "TIERLM_REBUILD=1 ./scripts/setup" in out.stdout


def test_smoke_check_passes_on_the_real_runtime() -> None:
    if find_server() is None:
        pytest.fail("llama-server is not installed: run ./scripts/setup")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = _run([sys.executable, "-m", "tierlm.llama_runtime", str(SMOLLM2)], env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == [
        "smoke check, llama_cpp module",
        "smoke check, llama-server worker",
    ]
    assert all(": ok (1 token in " in ln for ln in lines)
