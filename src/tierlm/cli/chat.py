"""``tierlm chat``: a streaming REPL, or one answer with ``--once`` for scripts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from tierlm.cli.common import CONFIG_HELP, PRESET_HELP, PRIVACY_HELP, PrivacyLevel, load

if TYPE_CHECKING:
    from rich.console import Console

    from tierlm.execute.streams import RoutedStream
    from tierlm.router import Router
    from tierlm.types import ChatRequest, Message


def register(app: typer.Typer) -> None:
    app.command()(chat)


def chat(
    once: str | None = typer.Option(None, "--once", help="Answer this prompt and exit."),
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    preset: str | None = typer.Option(None, "--preset", "-p", help=PRESET_HELP),
    model: str = typer.Option(
        "auto", "--model", "-m", help="auto (route), or a tier or backend name (pin)."
    ),
    system: str | None = typer.Option(None, "--system", "-s", help="A system prompt."),
    privacy: PrivacyLevel | None = typer.Option(None, "--privacy", help=PRIVACY_HELP),
    max_tokens: int | None = typer.Option(None, "--max-tokens", min=1),
    temperature: float | None = typer.Option(None, "--temperature", min=0.0, max=2.0),
    json_out: bool = typer.Option(False, "--json", help="With --once: print the answer as JSON."),
) -> None:
    """Chat with the router: replies stream; a dim line says which tier answered."""
    from rich.console import Console

    from tierlm.router import Router

    router = Router.from_config(load(config, preset))
    opts: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": temperature}
    if privacy:
        opts["hints"] = {"privacy": privacy}
    history: list[Message] = []
    if system:
        from tierlm.types import Message

        history.append(Message(role="system", content=system))
    out = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    try:
        if once is not None:
            if json_out:
                _once_json(router, history, once, opts)
            else:
                _turn(router, history, once, opts, out, err)
            return
        _repl(router, history, opts, out, err)
    finally:
        router.close()


def _request(history: list[Message], prompt: str, opts: dict[str, Any]) -> ChatRequest:
    from tierlm.types import ChatRequest, Message

    msgs = [*history, Message(role="user", content=prompt)]
    return ChatRequest(
        messages=msgs, stream=True, **{k: v for k, v in opts.items() if v is not None}
    )


def _once_json(router: Router, history: list[Message], prompt: str, opts: dict[str, Any]) -> None:
    import json

    req = _request(history, prompt, opts).model_copy(update={"stream": False})
    resp = router.chat(req)
    typer.echo(
        json.dumps(
            {
                "text": resp.text,
                "tier": resp.tier,
                "backend": resp.backend,
                "model": resp.model,
                "usage": resp.usage.to_openai(),
                "latency_ms": resp.latency_ms,
            }
        )
    )


def _turn(
    router: Router,
    history: list[Message],
    prompt: str,
    opts: dict[str, Any],
    out: Console,
    err: Console,
) -> str:
    """Stream one answer to stdout; then the dim line on stderr. Ctrl-C stops the answer."""
    req = _request(history, prompt, opts)
    t0 = time.perf_counter()
    ttft: float | None = None
    parts: list[str] = []
    usage = None
    rs: RoutedStream | None = None

    async def consume(rs: RoutedStream) -> None:
        nonlocal ttft, usage
        async for ev in rs:
            if ev.text:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                parts.append(ev.text)
                out.print(ev.text, end="", markup=False, soft_wrap=True)
                out.file.flush()
            if ev.usage is not None:
                usage = ev.usage

    interrupted = False
    try:
        rs = router.astream(req)
        router._run(consume(rs))
    except KeyboardInterrupt:
        interrupted = True
        if rs is not None:
            router._run(rs.aclose())
    out.print()
    took = time.perf_counter() - t0
    toks = f"{usage.prompt_tokens}→{usage.completion_tokens} tokens" if usage else "tokens ?"
    first = f" · first token {ttft:.2f} s" if ttft is not None else ""
    stop = " · stopped" if interrupted else ""
    where = f"{rs.tier} · {rs.backend} ({rs.model})" if rs is not None else "not started"
    # one line however narrow the terminal (or 80 columns when piped): never wrapped
    err.print(f"[dim]{where} · {toks} · {took:.2f} s{first}{stop}[/dim]", soft_wrap=True)
    return "".join(parts)


REPL_HELP = """commands:
  /help          this list
  /exit, /quit   leave (Ctrl-D too)
Ctrl-C stops an answer; anything else is sent to the model (the conversation is kept)."""


def _command(line: str) -> str | None:
    """The REPL command on ``line`` (one word starting with '/'), or None for a prompt."""
    word = line.strip()
    return word if word.startswith("/") and len(word.split()) == 1 and "/" not in word[1:] else None


def _repl(
    router: Router, history: list[Message], opts: dict[str, Any], out: Console, err: Console
) -> None:
    from tierlm.types import Message

    err.print("[dim]tierlm chat: Ctrl-C stops an answer, Ctrl-D (or /exit) quits, /help.[/dim]")
    while True:
        try:
            prompt = input("> ")
        except EOFError:
            err.print()
            return
        except KeyboardInterrupt:
            err.print()
            continue
        if not prompt.strip():
            continue
        command = _command(prompt)
        if command in ("/exit", "/quit"):
            return
        if command is not None:
            err.print(REPL_HELP if command == "/help" else f"unknown command {command}; try /help")
            continue
        try:
            answer = _turn(router, history, prompt, opts, out, err)
        except Exception as e:
            from tierlm.errors import TierlmError

            if not isinstance(e, TierlmError):
                raise
            err.print(f"[bold red]error:[/] {e}", markup=True)
            continue
        history.extend(
            [Message(role="user", content=prompt), Message(role="assistant", content=answer)]
        )
