"""``tierlm batch submit|list|status|cancel|results``: deferred work, for scripts.

Each command talks to a running gateway's Batch API (``/v1/files``, ``/v1/batches``;
``--url``, default ``http://127.0.0.1:8080``; the API key from ``--key`` or
``$TIERLM_API_KEY``), so a job is the same whether a script or the ``openai`` SDK submitted
it, and the gateway's scheduler runs it. A gateway that is not running is one line and exit
status 1; an error it answers (a bad line of the file, an unknown id) one line and exit 2.

- ``submit FILE.jsonl [--window 24h] [--meta KEY=VALUE ...] [--wait]``: upload and start;
  prints the batch id (``--json``: the batch object); ``--wait`` polls until it ends.
- ``list [--limit N]``, ``status ID``: ids, status and line counts (``--json``: as served).
- ``cancel ID``: waiting lines are cancelled, running ones finish.
- ``results ID [-o out.jsonl] [--errors]``: the output file (``--errors``: the error file).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from tierlm.cli.common import fail

DEFAULT_URL = "http://127.0.0.1:8080"
URL_HELP = "The gateway's base URL."
KEY_HELP = "An API key of the gateway (when it has keys configured)."
_FINAL = ("completed", "expired", "cancelled", "failed")


def register(app: typer.Typer) -> None:
    batch_app = typer.Typer(help="Deferred work through the gateway's Batch API.")
    batch_app.command("submit")(submit)
    batch_app.command("list")(list_batches)
    batch_app.command("status")(status)
    batch_app.command("cancel")(cancel)
    batch_app.command("results")(results)
    app.add_typer(batch_app, name="batch")


def _call(method: str, url: str, path: str, key: str | None, **kw: Any) -> Any:
    """One request to the gateway; JSON back (``raw``: the body's text)."""
    import httpx

    raw = kw.pop("raw", False)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.request(method, url.rstrip("/") + path, headers=headers, timeout=300, **kw)
    except httpx.TransportError as e:
        raise fail(f"no gateway at {url}: {e} (start one with `tierlm serve`)") from None
    if r.status_code >= 400:
        try:
            err = r.json().get("error")
            message = err.get("message") if isinstance(err, dict) else str(err)
        except (ValueError, AttributeError):
            message = r.text[:200]
        raise fail(f"{message} (HTTP {r.status_code})", 2 if r.status_code < 500 else 1)
    if raw:
        return r.text
    try:
        return r.json()
    except ValueError:
        raise fail(f"{url}{path} answered without JSON (is it tierlm?)") from None


def _line(b: dict[str, Any]) -> str:
    counts = b.get("request_counts") or {}
    lines = (b.get("tierlm") or {}).get("lines") or {}
    waiting = lines.get("waiting", 0) + lines.get("running", 0)
    return (
        f"{b['id']}  {b['status']:<11} {counts.get('completed', 0)}/{counts.get('total', 0)} "
        f"done, {counts.get('failed', 0)} failed, {waiting} waiting"
    )


def _meta(pairs: list[str]) -> dict[str, str] | None:
    out: dict[str, str] = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise fail(f"--meta {p!r}: expected KEY=VALUE", 2)
        out[k] = v
    return out or None


def submit(
    file: Path = typer.Argument(..., help="A JSONL file of chat requests (OpenAI's format)."),
    window: str = typer.Option("24h", "--window", help="The completion window: 24h, 90m, 2d."),
    meta: list[str] = typer.Option([], "--meta", help="KEY=VALUE metadata (repeatable)."),
    wait: bool = typer.Option(False, "--wait", help="Poll until the batch has ended."),
    json_out: bool = typer.Option(False, "--json", help="Print the batch object as JSON."),
    url: str = typer.Option(DEFAULT_URL, "--url", help=URL_HELP),
    key: str | None = typer.Option(None, "--key", envvar="TIERLM_API_KEY", help=KEY_HELP),
) -> None:
    """Upload FILE and start a batch over it."""
    try:
        data = file.read_bytes()
    except OSError as e:
        raise fail(f"cannot read {file}: {e.strerror or e}", 2) from None
    uploaded = _call(
        "POST", url, "/v1/files", key, files={"file": (file.name, data)}, data={"purpose": "batch"}
    )
    body = {
        "input_file_id": uploaded["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": window,
        "metadata": _meta(meta),
    }
    batch = _call("POST", url, "/v1/batches", key, json=body)
    if wait:
        while batch["status"] not in _FINAL:
            time.sleep(1.0)
            batch = _call("GET", url, f"/v1/batches/{batch['id']}", key)
    typer.echo(json.dumps(batch) if json_out else (_line(batch) if wait else batch["id"]))


def list_batches(
    limit: int = typer.Option(20, "--limit", min=1, max=100, help="How many, newest first."),
    json_out: bool = typer.Option(False, "--json", help="Print the list as JSON."),
    url: str = typer.Option(DEFAULT_URL, "--url", help=URL_HELP),
    key: str | None = typer.Option(None, "--key", envvar="TIERLM_API_KEY", help=KEY_HELP),
) -> None:
    """The newest batches this key can see."""
    page = _call("GET", url, "/v1/batches", key, params={"limit": limit})
    if json_out:
        typer.echo(json.dumps(page))
        return
    for b in page["data"]:
        typer.echo(_line(b))


def status(
    batch_id: str = typer.Argument(..., help="The batch id."),
    json_out: bool = typer.Option(False, "--json", help="Print the batch object as JSON."),
    url: str = typer.Option(DEFAULT_URL, "--url", help=URL_HELP),
    key: str | None = typer.Option(None, "--key", envvar="TIERLM_API_KEY", help=KEY_HELP),
) -> None:
    """One batch: status, line counts, and why its lines wait."""
    b = _call("GET", url, f"/v1/batches/{batch_id}", key)
    if json_out:
        typer.echo(json.dumps(b))
        return
    typer.echo(_line(b))
    for why in (b.get("tierlm") or {}).get("waiting") or []:
        typer.echo(f"  waiting: {why}")


def cancel(
    batch_id: str = typer.Argument(..., help="The batch id."),
    url: str = typer.Option(DEFAULT_URL, "--url", help=URL_HELP),
    key: str | None = typer.Option(None, "--key", envvar="TIERLM_API_KEY", help=KEY_HELP),
) -> None:
    """Cancel a batch: its waiting lines are not run."""
    typer.echo(_line(_call("POST", url, f"/v1/batches/{batch_id}/cancel", key)))


def results(
    batch_id: str = typer.Argument(..., help="The batch id."),
    out: Path | None = typer.Option(None, "--output", "-o", help="Write here (default: stdout)."),
    errors: bool = typer.Option(False, "--errors", help="The error file instead."),
    url: str = typer.Option(DEFAULT_URL, "--url", help=URL_HELP),
    key: str | None = typer.Option(None, "--key", envvar="TIERLM_API_KEY", help=KEY_HELP),
) -> None:
    """The output (or error) file of a finished batch, one JSON line per request."""
    b = _call("GET", url, f"/v1/batches/{batch_id}", key)
    file_id = b.get("error_file_id" if errors else "output_file_id")
    if file_id is None:
        what = "error" if errors else "output"
        ended = b["status"] in _FINAL
        raise fail(
            f"batch {batch_id} has no {what} file ({b['status']}"
            f"{'' if ended else ': not finished yet'})",
            2,
        )
    text = _call("GET", url, f"/v1/files/{file_id}/content", key, raw=True)
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as e:
        raise fail(f"cannot write {out}: {e.strerror or e}", 2) from None
    typer.echo(f"{len(text.splitlines())} lines written to {out}")
