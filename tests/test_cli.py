"""The CLI as a user runs it: real subprocesses, the real model, clear errors."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

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


class _Pipe:
    """Reads a child's pipe in a thread, so a test can wait for given output (bounded)."""

    def __init__(self, stream: IO[str]) -> None:
        self.text = ""
        self._stream = stream
        self._chunks: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        while chunk := stream.read(1):
            self._chunks.put(chunk)
        self._chunks.put("")

    def wait_for(self, needle: str, timeout: float = 60) -> None:
        while needle not in self.text:
            chunk = self._chunks.get(timeout=timeout)
            assert chunk, f"the pipe closed before {needle!r} appeared: {self.text!r}"
            self.text += chunk

    def close(self) -> str:
        """Everything the child wrote, once it has closed the pipe."""
        self._thread.join(timeout=60)
        while chunk := self._chunks.get_nowait() if not self._chunks.empty() else "":
            self.text += chunk
        self._stream.close()
        return self.text


def _upstream_config(tmp_path: Path, url: str, model: str = "upstream-model") -> Path:
    """One backend on ``url``; generous timeouts, so only Ctrl-C ends a stalled answer."""
    backend = {
        "name": "slow",
        "kind": "openai",
        "provider": "sglang",
        "url": url,
        "model": model,
        "boundary": "site",
        "timeouts": {"first_token": 60, "stall": 120, "total": 300},
    }
    config = {
        "backends": [backend],
        "tiers": [{"name": "site", "backends": ["slow"], "strength": 1.0}],
        "ledger": {"url": "off"},
        "routing": {"complexity_method": "length"},
    }
    path = tmp_path / "tierlm.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def test_ctrl_c_stops_an_answer_and_the_repl_goes_on(tmp_path: Path) -> None:
    import signal

    from fakes.faulty_upstream import FaultyUpstream, Scenario

    with FaultyUpstream() as up:
        # five words, then the stream stays open and silent: the answer cannot finish first
        config = _upstream_config(tmp_path, up.add("slow", Scenario("stall", after=5)))
        p = subprocess.Popen(
            [TIERLM, "chat", "--config", str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # as from a terminal: a suite started in the background (`... &` in a script)
            # ignores SIGINT, and a child would inherit that
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        assert p.stdin is not None and p.stdout is not None and p.stderr is not None
        out, err = _Pipe(p.stdout), _Pipe(p.stderr)
        try:
            p.stdin.write("Say the words.\n")
            p.stdin.flush()
            out.wait_for("w4")  # the answer is under way, and stalled
            p.send_signal(signal.SIGINT)
            err.wait_for("stopped")  # the dim line of an interrupted answer
            p.stdin.write("/help\n/exit\n")
            p.stdin.close()
            assert p.wait(timeout=60) == 0, err.close()
        finally:  # a failure above must not leave the child and its pipes to later tests
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdin.close()
            out.close()
            err.close()
    assert "/exit, /quit" in err.text  # /help was answered by the REPL, not sent to the model
    assert "Traceback" not in err.text
    assert up.count("slow") == 1


def test_chat_exits_when_its_reader_goes_away(tmp_path: Path) -> None:
    """``tierlm chat --once ... | head``: once the reader has gone, the next write fails in the
    router's loop thread; the command must end, not wait for that thread forever."""
    from fakes.faulty_upstream import FaultyUpstream, Scenario

    with FaultyUpstream() as up:  # far more than a pipe buffer: writes go on after the close
        config = _upstream_config(tmp_path, up.add("long", Scenario(tokens=200_000)))
        p = subprocess.Popen(
            [TIERLM, "chat", "--once", "Say the words.", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert p.stdout is not None and p.stderr is not None
        seen = ""
        while "w4 " not in seen and len(seen) < 10_000:
            seen += p.stdout.read(1)
        assert "w4 " in seen, seen
        p.stdout.close()  # the reader goes away mid-answer (as `head` does)
        try:
            code = p.wait(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
        err = p.stderr.read()
        p.stderr.close()
    assert code != 0
    assert "Traceback" not in err, err


def test_the_status_line_is_one_line_when_piped(tmp_path: Path) -> None:
    from fakes.faulty_upstream import FaultyUpstream, Scenario

    model = "a-model-with-a-rather-long-name-as-self-hosted-servers-often-have-q4_k_m"
    with FaultyUpstream() as up:
        config = _upstream_config(tmp_path, up.add("slow", Scenario(model=model)), model)
        r = run("chat", "--once", "Say the words.", "--config", str(config), env={"COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and len(lines[0]) > 80, r.stderr  # longer than the terminal...
    assert lines[0].startswith("site · slow") and "first token" in lines[0]  # ...not wrapped


def test_ctrl_c_in_any_command_is_exit_130_without_a_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer

    from tierlm.cli.common import run_app

    app = typer.Typer()

    @app.command()
    def slow() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("sys.argv", ["tierlm"])
    assert run_app(app) == 130
    assert "Traceback" not in capsys.readouterr().err
