"""The llama.cpp runtime on this machine: where ``llama-server`` is, how it is started, and
whether llama.cpp runs here at all (the smoke check).

- :func:`find_server`: the ``llama-server`` binary the local tier runs as its worker:
  ``$TIERLM_LLAMA_SERVER``, else the one ``scripts/setup`` built into the virtualenv
  (``<venv>/bin/llama-server``), else one on ``PATH``.
- :func:`server_command`: its command line for one model (slots, context, threads, polling,
  flash attention).
- :func:`smoke_check`: a one-token generation through each runtime (the ``llama_cpp`` Python
  module and the ``llama-server`` worker), each in a subprocess, so a build that uses CPU
  instructions this machine lacks (SIGILL), or crashes otherwise (SIGSEGV, abort), is reported
  as a plain message with the ``CMAKE_ARGS`` to rebuild with, not as a dead process.
  ``scripts/setup`` ends with it (``python -m tierlm.llama_runtime``) and ``tierlm doctor``
  runs it too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tierlm.supervisor import (
    Backoff,
    WorkerDown,
    WorkerSupervisor,
    describe_exit,
    urlopen_direct,
)

if TYPE_CHECKING:
    from tierlm.config.backends import LlamaCppConfig

SERVER_ENV = "TIERLM_LLAMA_SERVER"
# What scripts/setup builds with on x86-64 (CMAKE_ARGS unset), and the oldest-CPU fallback.
PORTABLE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
BASELINE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF"
SMOKE_TIMEOUT = 180.0
_SMOKE_CODE = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=2, verbose=False)
out = llm.create_completion("Hello", max_tokens=1, temperature=0)
print(len(out["choices"][0]["text"]) >= 0)
"""


def find_server() -> Path | None:
    """The ``llama-server`` binary to run as the local worker, or None."""
    explicit = os.environ.get(SERVER_ENV)
    if explicit:
        p = Path(explicit).expanduser()
        return p if p.is_file() else None
    venv = Path(sys.prefix) / "bin" / "llama-server"
    if venv.is_file():
        return venv
    found = shutil.which("llama-server")
    return Path(found) if found else None


def default_threads() -> int:
    """Generation threads when the config does not say: every core (measured: see README)."""
    return max(os.cpu_count() or 1, 1)


def server_command(
    binary: Path, model: Path, port: int, cfg: LlamaCppConfig, slots: int
) -> list[str]:
    """``llama-server`` for one model on 127.0.0.1:``port`` with ``slots`` parallel slots
    (continuous batching), each with the backend's full ``n_ctx``, and flash attention as
    the in-process engine has it."""
    threads = cfg.threads or default_threads()
    cmd = [
        str(binary),
        "--model", str(model),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--alias", cfg.model,
        "--parallel", str(slots),
        "--ctx-size", str(cfg.n_ctx * slots),
        "--no-kv-unified",
        "--threads", str(threads),
        "--threads-batch", str(threads),
        "--poll", str(cfg.poll),
        "--cache-ram", str(cfg.cache_ram_mb),
        "--no-webui",
        "--metrics",
        "--no-warmup",
        "--flash-attn", "on" if cfg.flash_attn else "off",
    ]  # fmt: skip
    if cfg.n_batch is not None:
        cmd += ["--batch-size", str(cfg.n_batch)]
    cmd += cfg.server_args
    return cmd


def worker_env(cfg: LlamaCppConfig) -> dict[str, str]:
    """The worker's environment: ours, OpenMP threads that sleep rather than spin while they
    wait (measured: see README), and ``env``."""
    env = {**os.environ}
    env.setdefault("OMP_WAIT_POLICY", "passive")
    env.update(cfg.env)
    return env


@dataclass(frozen=True, slots=True)
class SmokeResult:
    runtime: str  # "llama_cpp module" or "llama-server worker"
    ok: bool
    detail: str  # seconds taken, or what failed and what to do

    def line(self) -> str:
        return f"{self.runtime}: {'ok' if self.ok else 'FAILED'} ({self.detail})"


def smoke_check(model: Path, *, server: Path | None = None) -> list[SmokeResult]:
    """One token through the Python module and through the worker binary, each isolated."""
    results = [_smoke_module(model)]
    binary = server or find_server()
    if binary is None:
        results.append(
            SmokeResult(
                "llama-server worker",
                False,
                "llama-server not found: run ./scripts/setup (it builds it into .venv/bin), "
                f"or set {SERVER_ENV} to a llama-server binary",
            )
        )
    else:
        results.append(_smoke_server(binary, model))
    return results


def _advice(how: str) -> str:
    cmake = os.environ.get("CMAKE_ARGS", "")
    suggest = BASELINE_ARGS if PORTABLE_ARGS in cmake else PORTABLE_ARGS
    return (
        f"llama.cpp {how} during a one-token test generation. A build for a CPU this machine "
        "does not match crashes like this (SIGILL: an instruction the CPU lacks). Rebuild "
        f'with: CMAKE_ARGS="{suggest}" TIERLM_REBUILD=1 ./scripts/setup'
    )


def _smoke_module(model: Path) -> SmokeResult:
    name = "llama_cpp module"
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _SMOKE_CODE, str(model)],
            capture_output=True,
            text=True,
            timeout=SMOKE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return SmokeResult(name, False, f"no token in {SMOKE_TIMEOUT:g} s")
    if proc.returncode == 0:
        return SmokeResult(name, True, f"1 token in {time.perf_counter() - start:.1f} s")
    if proc.returncode < 0:
        return SmokeResult(name, False, _advice(f"crashed with {describe_exit(proc.returncode)}"))
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    if "No module named 'llama_cpp'" in proc.stderr:
        return SmokeResult(name, False, "llama-cpp-python is not installed: ./scripts/setup")
    return SmokeResult(name, False, f"{describe_exit(proc.returncode)}: {tail}")


def _smoke_server(binary: Path, model: Path) -> SmokeResult:
    name = "llama-server worker"
    start = time.perf_counter()
    from tierlm.config.backends import LlamaCppConfig

    cfg = LlamaCppConfig(name="smoke", model="smoke", n_ctx=256)
    sup = WorkerSupervisor(
        "smoke",
        lambda port: server_command(binary, model, port, cfg, slots=1),
        env=worker_env(cfg),
        backoff=Backoff(delay=3600),
    )
    try:
        sup.wait_ready(SMOKE_TIMEOUT)
        gen = sup.generation
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        req = urllib.request.Request(
            sup.base_url + "/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        try:
            with urlopen_direct(req, timeout=SMOKE_TIMEOUT) as r:
                json.load(r)
        except (urllib.error.URLError, OSError, ValueError) as e:
            died = sup.died(gen)
            if died is None:
                return SmokeResult(name, False, f"no answer: {e}")
            return SmokeResult(name, False, _advice(f"(llama-server) exited with {died}"))
    except WorkerDown:
        how = sup.last_exit or "no exit status"
        tail = next((ln for ln in reversed(sup.log) if ln.strip()), "")
        if how.startswith("SIG"):
            return SmokeResult(name, False, _advice(f"(llama-server) crashed with {how}"))
        return SmokeResult(name, False, f"llama-server exited with {how}: {tail}")
    finally:
        sup.stop()
    return SmokeResult(name, True, f"1 token in {time.perf_counter() - start:.1f} s")


def main() -> int:
    """``python -m tierlm.llama_runtime [MODEL]``: the smoke check; exit 1 when one fails."""
    from tierlm import models
    from tierlm.errors import ModelNotFound
    from tierlm.paths import models_dir

    spec = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct"
    try:
        model = models.resolve(spec, models_dir(), download=False)
    except ModelNotFound as e:
        print(f"smoke check skipped: {e}", file=sys.stderr)
        return 1
    results = smoke_check(model)
    for r in results:
        print(f"smoke check, {r.line()}", file=sys.stdout if r.ok else sys.stderr)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
