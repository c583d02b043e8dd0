"""The CLI as a user runs it: real subprocesses, the real model, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TIERLM = str(Path(sys.executable).with_name("tierlm"))


def run(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [TIERLM, *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=stdin,
        timeout=180,
        check=False,
    )


def test_version() -> None:
    from tierlm import __version__

    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"tierlm {__version__}"


def test_chat_once_answers_from_the_tiny_tier(models_dir: Path) -> None:
    r = run("chat", "--once", "What is the capital of France?", "--max-tokens", "40")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip(), "no answer printed"
    # the dim line on stderr names tier, backend, tokens and latency
    assert "tiny · smollm2" in r.stderr
    assert "tokens" in r.stderr and " s" in r.stderr


def test_chat_once_json(models_dir: Path) -> None:
    r = run("chat", "--once", "Say hello.", "--json", "--max-tokens", "16")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["tier"] == "tiny" and out["backend"] == "smollm2"
    assert out["usage"]["completion_tokens"] > 0 and out["text"]


def test_chat_without_a_model_says_what_to_do(tmp_path: Path) -> None:
    env = {"TIERLM_MODELS_DIR": str(tmp_path), "TIERLM_TINY_MODEL": "qwen2.5-0.5b-instruct"}
    r = run("chat", "--once", "hi", env=env)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert "model 'qwen2.5-0.5b-instruct' was not found" in r.stderr
    assert f"put qwen2.5-0.5b-instruct.gguf into {tmp_path}" in r.stderr


def test_repl_handles_eof_and_exit(models_dir: Path) -> None:
    r = run("chat", "--max-tokens", "8", stdin="Say hi.\n/exit\n")
    assert r.returncode == 0, r.stderr
    assert "tiny · smollm2" in r.stderr
    r = run("chat", stdin="")  # Ctrl-D at once
    assert r.returncode == 0 and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("chat", "--once", "hi", "--preset", "nope"), "unknown preset 'nope'"),
        (("route", "--preset", "full-stack", "hi"), "TIERLM_SITE_URL"),
        (("route", "   "), "the prompt is empty"),
        (("route",), "give either a PROMPT or --jsonl FILE"),
        (("route", "--jsonl", "/nonexistent/file.jsonl"), "cannot read"),
        (("chat", "--once", "hi", "--config", "/nonexistent.yaml"), "config file not found"),
    ],
)
def test_bad_input_is_a_clear_error(args: tuple[str, ...], message: str) -> None:
    r = run(*args)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_models_list_shows_where_the_default_resolves(models_dir: Path) -> None:
    r = run("models", "list")
    assert r.returncode == 0, r.stderr
    assert "smollm2-135m-instruct" in r.stdout and "stories260K" in r.stdout


def test_ctrl_c_stops_an_answer_and_the_repl_goes_on(models_dir: Path) -> None:
    import signal
    import time

    p = subprocess.Popen(
        [TIERLM, "chat", "--max-tokens", "400"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write("Write a long story about a pump.\n")
    p.stdin.flush()
    assert p.stdout.read(3).startswith("> ")  # the prompt, then the answer's first character
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    time.sleep(0.5)
    p.stdin.write("/exit\n")
    p.stdin.flush()
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "stopped" in err and "Traceback" not in err
