"""``tierlm cache stats|clear``: the answer cache (layer 0).

With ``--url`` (and an admin ``--key`` when the gateway has keys), the running gateway's cache
is read or cleared through ``/admin/cache``. Without, the configured SQLite store is opened
directly; the in-memory cache lives only in the gateway process, so it needs ``--url``.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tierlm.cli.common import CONFIG_HELP, PRESET_HELP, fail, load


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="The answer cache: stats and clear.", no_args_is_help=True)
    group.command()(stats)
    group.command()(clear)
    app.add_typer(group, name="cache")


_URL_HELP = "A running gateway (e.g. http://127.0.0.1:8080): its /admin/cache."
_KEY_HELP = "The gateway's admin API key (default: $TIERLM_API_KEY)."


def stats(
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    preset: str | None = typer.Option(None, "--preset", "-p", help=PRESET_HELP),
    url: str | None = typer.Option(None, "--url", help=_URL_HELP),
    key: str | None = typer.Option(None, "--key", envvar="TIERLM_API_KEY", help=_KEY_HELP),
) -> None:
    """Entries, bytes and hit counts, as JSON."""
    typer.echo(json.dumps(_call("GET", url, key) if url else _store(config, preset, False)))


def clear(
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    preset: str | None = typer.Option(None, "--preset", "-p", help=PRESET_HELP),
    url: str | None = typer.Option(None, "--url", help=_URL_HELP),
    key: str | None = typer.Option(None, "--key", envvar="TIERLM_API_KEY", help=_KEY_HELP),
) -> None:
    """Drop every cached answer."""
    typer.echo(json.dumps(_call("DELETE", url, key) if url else _store(config, preset, True)))


def _store(config: Path | None, preset: str | None, clear: bool) -> dict[str, object]:
    from tierlm.layer0.store import SQLiteStore
    from tierlm.paths import data_dir

    settings = load(config, preset)
    c = settings.cache
    if c.store != "sqlite":
        raise fail("the in-memory cache lives in the gateway process: give --url", 2)
    path = Path(c.path) if c.path else data_dir(settings) / "cache.sqlite3"
    store = SQLiteStore(path, c.ttl_seconds, c.max_entries, c.max_bytes)
    try:
        return {"cleared": store.clear()} if clear else store.stats()
    finally:
        store.close()


def _call(method: str, url: str, key: str | None) -> dict[str, object]:
    import httpx

    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.request(
            method, url.rstrip("/") + "/admin/cache", headers=headers, timeout=10, trust_env=False
        )
    except httpx.HTTPError as e:
        raise fail(f"cannot reach {url}: {e}", 1) from None
    if r.status_code != 200:
        raise fail(f"{url} answered HTTP {r.status_code}: {r.text[:200]}", 1)
    body: dict[str, object] = r.json()
    return body
