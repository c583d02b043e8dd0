"""The CLI's one error path: every user error is one line on stderr and exit status 2.

Each command is run as a user runs it (a real subprocess) with bad flags, bad values and bad
configurations; none may print a traceback, a usage block or more than one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from tierlm.cli.common import PrivacyLevel
from tierlm.types import Privacy

TIERLM = str(Path(sys.executable).with_name("tierlm"))

# (arguments, what the one line must say)
BAD_FLAGS = [
    (("frobnicate",), "No such command 'frobnicate'"),
    (("judge", "--bogus"), "No such option: --bogus"),
    (("chat", "--bogus"), "No such option: --bogus"),
    (("chat", "--once", "hi", "--privacy", "secret"), "'secret' is not one of"),
    (("route", "--privacy", "secret", "hi"), "'secret' is not one of"),
    (("route", "--quality", "7", "hi"), "--quality"),
    (("serve", "--port", "eighty"), "Invalid value for '--port'"),
    (("serve", "--bogus"), "No such option: --bogus"),
    (("models", "fetch"), "No such command 'fetch'"),
    (("models", "list", "--bogus"), "No such option: --bogus"),
    (("doctor", "--bogus"), "No such option: --bogus"),
    (("eval",), "Missing argument"),
    (("report", "--bogus"), "No such option: --bogus"),
    (("audit", "verify", "--bogus"), "No such option: --bogus"),
    (("audit", "bogus"), "No such command 'bogus'"),
    (("keys", "bogus"), "No such command 'bogus'"),
    (("chat", "--once", "hi", "--preset", "nope"), "unknown preset 'nope'"),
    (("route", "   "), "the prompt is empty"),
]

# backend entries that only fail when the backend is built (not when the YAML is read)
BAD_BACKENDS = {
    "unknown provider": (
        {"name": "site", "kind": "openai", "provider": "vlm", "model": "m", "boundary": "site"},
        "unknown provider 'vlm'",
    ),
    "openai without url": (
        {"name": "site", "kind": "openai", "model": "m", "boundary": "site"},
        "needs `url`",
    ),
}
COMMANDS = [
    ("serve", "--port", "0"),
    ("route", "hi"),
    ("chat", "--once", "hi"),
]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TIERLM, *args],
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, "COLUMNS": "80"},
        timeout=120,
        check=False,
    )


def assert_one_line(r: subprocess.CompletedProcess[str], says: str) -> None:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and says in lines[0], lines[0]
    assert "Traceback" not in r.stderr + r.stdout


@pytest.mark.parametrize(("args", "says"), BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flags_are_one_line(args: tuple[str, ...], says: str) -> None:
    assert_one_line(run(*args), says)


def test_a_bad_privacy_names_the_allowed_values() -> None:
    r = run("route", "--privacy", "secret", "hi")
    assert_one_line(r, "'public', 'enhanced', 'private'")
    assert list(get_args(PrivacyLevel)) == [
        p.value for p in Privacy
    ]  # the CLI's list is the enum's


@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
@pytest.mark.parametrize("case", sorted(BAD_BACKENDS))
def test_bad_backend_configs_are_one_line(
    tmp_path: Path, command: tuple[str, ...], case: str
) -> None:
    backend, says = BAD_BACKENDS[case]
    config = tmp_path / "tierlm.yaml"
    config.write_text(
        json.dumps(
            {
                "backends": [backend],
                "tiers": [{"name": "main", "backends": ["site"], "strength": 1.0}],
                "ledger": {"url": "off"},
            }
        )
    )
    r = run(*command, "--config", str(config))
    assert_one_line(r, says)
    assert "startup failed" not in r.stderr


def test_route_jsonl_with_bad_lines_exits_2_and_names_them() -> None:
    lines = ["not json", json.dumps({"prompt": "hi"}), "[1, 2]", json.dumps({"prompt": 3})]
    r = run("route", "--jsonl", "-", stdin="\n".join(lines) + "\n")
    assert_one_line(r, "3 line(s) could not be routed (line 1, 3, 4)")
    out = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [o.get("line") for o in out] == [1, None, 3, 4]
    assert "error" not in out[1] and out[1]["tier"] == "tiny"
