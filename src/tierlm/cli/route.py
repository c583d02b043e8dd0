"""``tierlm route``: print the decision for a prompt without calling any model."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import typer

from tierlm.cli.common import (
    CONFIG_HELP,
    PRESET_HELP,
    PRIVACY_HELP,
    PrivacyLevel,
    fail,
    invalid_value,
    load,
    open_text,
)

if TYPE_CHECKING:
    from tierlm.policy import Conditions
    from tierlm.router import Router
    from tierlm.types import ChatRequest, Plan


def register(app: typer.Typer) -> None:
    app.command()(route)


def route(
    prompt: str | None = typer.Argument(None, help="The prompt to route."),
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    preset: str | None = typer.Option(None, "--preset", "-p", help=PRESET_HELP),
    json_out: bool = typer.Option(False, "--json", help="One JSON object."),
    jsonl: str | None = typer.Option(
        None,
        "--jsonl",
        help='Route each line of FILE (\'-\' = stdin): {"prompt": ...} or {"messages": [...]}. '
        'A line that cannot be routed gets {"line": N, "error": ...}; then exit status 2.',
    ),
    live: bool = typer.Option(False, "--live", help="Ask every backend for its health first."),
    privacy: PrivacyLevel | None = typer.Option(None, "--privacy", help=PRIVACY_HELP),
    quality: float | None = typer.Option(
        None, "--quality", min=0.0, max=1.0, help="The quality bar for this request."
    ),
    energy_file: Path | None = typer.Option(
        None,
        "--energy-file",
        help='Read the energy state from this JSON file ({"battery": 0..1, "charging": bool, '
        '"carbon_g_per_kwh": n, "solar_surplus_w": n}) instead of the configured source.',
    ),
) -> None:
    """Explain where a prompt would go, and why."""
    from tierlm.router import Router

    if (prompt is None) == (jsonl is None):
        raise fail("give either a PROMPT or --jsonl FILE", 2)
    overrides = {"energy": {"source": f"file:{energy_file}"}} if energy_file else {}
    router = Router.from_config(load(config, preset, **overrides))
    try:
        if router.energy is not None:  # this one decision waits for the first reading
            router.energy.first_reading(router.energy.config.timeout_seconds + 1)
        cond = router._run(router.live_conditions()) if live else None
        if jsonl is not None:
            _route_lines(router, jsonl, cond)
            return
        assert prompt is not None
        hints: dict[str, Any] = {"privacy": privacy, "quality": quality}
        try:
            req = _request({"prompt": prompt, **hints})
        except ValueError as e:  # pydantic's ValidationError is one
            raise fail(_why(e), 2) from None
        plan = router.plan(req, cond)
        if json_out:
            typer.echo(json.dumps(plan.to_dict(), ensure_ascii=False))
        else:
            _explain(plan)
    finally:
        router.close()


def _request(obj: dict[str, Any]) -> ChatRequest:
    from tierlm.types import ChatRequest

    hints = {k: obj[k] for k in ("privacy", "quality", "urgency", "optimize") if obj.get(k)}
    if "messages" in obj:
        return ChatRequest(messages=obj["messages"], hints=hints)
    prompt = obj.get("prompt")
    if not isinstance(prompt, str):
        raise ValueError('each line needs "prompt" (a string) or "messages" (a list)')
    if not prompt.strip():
        raise ValueError("the prompt is empty")
    return ChatRequest.from_prompt(prompt, hints=hints)


def _route_lines(router: Router, source: str, cond: Conditions | None) -> None:
    from tierlm.errors import TierlmError

    stream: TextIO = open_text(source)
    out = sys.stdout
    bad: list[int] = []
    for n, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("each line must be a JSON object")
            result: dict[str, Any] = router.plan(_request(obj), cond).to_dict()
        except (ValueError, TierlmError) as e:
            result = {"line": n, "error": _why(e)}
        if "error" in result:
            bad.append(n)
        out.write(json.dumps(result, ensure_ascii=False) + "\n")
    out.flush()
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        raise fail(f"{len(bad)} line(s) could not be routed (line {shown})", 2)


def _why(e: Exception) -> str:
    """One line for a bad line or prompt."""
    from pydantic import ValidationError

    if isinstance(e, ValidationError):
        return invalid_value(e)
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _explain(plan: Plan) -> None:
    from rich.console import Console

    c = Console(highlight=False)
    d = plan.to_dict()
    c.print(f"[bold]{d['tier']}[/bold] → {d['backend']} ({d['boundary']})")
    c.print(
        f"complexity {d['complexity']:.2f} · privacy {d['privacy']}"
        + (
            f" · sensitive: {', '.join(sorted({f['kind'] for f in d['findings']}))}"
            if d["sensitive"]
            else ""
        )
    )
    if d.get("energy"):
        from tierlm.signals.energy import describe

        c.print(f"energy {describe(d['energy'])}", markup=False)
    c.print("why:")
    for r in d["reasons"]:
        c.print(f"  - {r}", markup=False)
    c.print("plan: " + " → ".join(f"{x['tier']}/{x['backend']}" for x in d["candidates"]))
