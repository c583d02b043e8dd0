"""README's examples, read from README.md itself so they cannot drift from what loads.

Every ``yaml`` block is loaded with no environment at all (no site URL, no cloud key): a block
that declares ``backends`` alone, a fragment (``server:``, ``tiers:`` ...) on top of the first
complete one (its top-level keys replace that one's). The Python snippet must import every
name it uses.
"""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

import pytest

from tierlm.config import load_settings
from tierlm.server.auth import hash_key

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)


def _complete(text: str) -> bool:
    return bool(re.search(r"^backends:", text, re.M))


YAML = _blocks("yaml")


def test_readme_has_the_examples_this_file_loads() -> None:
    assert len(YAML) >= 2 and _complete(YAML[0])
    assert _blocks("python")


@pytest.mark.parametrize("index", range(len(YAML)))
def test_every_readme_config_loads_without_environment(tmp_path: Path, index: int) -> None:
    text = YAML[index].replace("<sha256>", hash_key(f"key-{index}"))
    if not _complete(text):
        text = YAML[0] + text
    path = tmp_path / "tierlm.yaml"
    path.write_text(text, encoding="utf-8")
    s = load_settings(path, env={})
    assert s.tiers and s.backends
    assert all(b in {x.name for x in s.backends} for t in s.tiers for b in t.backends)


def test_readme_python_snippet_imports_what_it_uses() -> None:
    (snippet,) = _blocks("python")
    tree = ast.parse(snippet)
    bound = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            bound |= {a.asname or a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    assert used <= bound, f"README's Python uses {sorted(used - bound)} without importing it"
    import tierlm

    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
    assert all(hasattr(tierlm, name) for name in imported)
