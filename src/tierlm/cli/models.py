"""``tierlm models list|pull|rm``: the local GGUF files the in-process tier can use
(``ps|load|unload|recommend``: :mod:`tierlm.cli.models_live`)."""

from __future__ import annotations

from pathlib import Path

import typer

from tierlm.cli.common import CONFIG_HELP, fail, load

models_app = typer.Typer(
    help="Local models: GGUF files, and the models a running gateway has loaded.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    from tierlm.cli import models_live

    models_live.register(models_app)
    app.add_typer(models_app, name="models")


def _dir(config: Path | None) -> Path:
    from tierlm.paths import models_dir

    return models_dir(load(config, None))


@models_app.command("list")
def list_(config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP)) -> None:
    """List the models in the models directory, and where each known alias resolves."""
    from rich.console import Console
    from rich.table import Table

    from tierlm import models

    d = _dir(config)
    t = Table(title=f"models in {d}", title_justify="left")
    t.add_column("name")
    t.add_column("size", justify="right")
    t.add_column("path")
    for f in models.list_models(d):
        t.add_row(f.stem, f"{f.stat().st_size / 1e6:.0f} MB", str(f))
    for alias in models.KNOWN_MODELS:
        hit = models.find_local(alias, d)
        t.add_row(
            alias,
            f"{hit.stat().st_size / 1e6:.0f} MB" if hit else "-",
            str(hit) if hit else "not found (tierlm models pull " + alias + ")",
        )
    Console().print(t)


@models_app.command()
def pull(
    spec: str = typer.Argument(
        ..., help="An alias (smollm2-135m-instruct) or hf:OWNER/REPO/FILE.gguf."
    ),
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
) -> None:
    """Download a model from the Hugging Face hub into the models directory."""
    from tierlm import models

    d = _dir(config)
    found = models.find_local(spec, d)
    if found is not None:
        typer.echo(f"already here: {found}")
        return
    typer.echo(str(models.pull(spec, d)))


@models_app.command("rm")
def rm(
    spec: str = typer.Argument(..., help="The model's name, file name or alias."),
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
) -> None:
    """Delete a model file from the models directory."""
    from tierlm import models
    from tierlm.errors import ModelNotFound

    try:
        path = models.remove(spec, _dir(config))
    except ModelNotFound as e:
        raise fail(str(e)) from None
    typer.echo(f"removed {path}")
