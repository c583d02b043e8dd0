"""The open backend registry: tierlm's own kinds and a third-party one, all entry points of
``tierlm.backends``. The plugin here is a real distribution (a ``dist-info`` with
``entry_points.txt``) on ``sys.path``, found by ``importlib.metadata`` as pip would leave it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from server_util import settings
from tierlm import Router
from tierlm.backends import create_backend, registry
from tierlm.config import load_settings
from tierlm.config.backends import BackendConfig, LlamaCppConfig, OpenAIConfig
from tierlm.errors import ConfigError

BUILT_IN = ["anthropic", "function", "llama_cpp", "ollama", "openai", "transformers"]

PLUGIN = '''
"""A third-party backend kind: it shouts the prompt back."""
from tierlm.backends.base import Backend
from tierlm.backends.registry import BackendSpec
from tierlm.config.backends import BackendConfig
from tierlm.types import ChatResponse, Message, StreamEvent, Boundary
from typing import Literal


class ShoutConfig(BackendConfig):
    default_boundary = Boundary.HOST
    kind: Literal["shout"] = "shout"
    volume: int = 3


class ShoutBackend(Backend):
    async def complete(self, request):
        text = request.messages[-1].text.upper() + "!" * self.config.volume
        return ChatResponse(model=self.model, message=Message(role="assistant", content=text))

    async def stream(self, request):
        yield StreamEvent(text=(await self.complete(request)).text)
        yield StreamEvent(finish_reason="stop")


SPEC = BackendSpec(ShoutConfig, ShoutBackend)
NOT_A_SPEC = ShoutBackend
'''


def _dist(root: Path, name: str, entry_points: dict[str, str], module: str = "") -> None:
    """A distribution as pip installs it: the module and its ``dist-info``."""
    if module:
        (root / f"{name}.py").write_text(module)
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[tierlm.backends]\n{lines}")


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A site directory on ``sys.path`` holding the test's distributions."""
    modules = set(sys.modules)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    monkeypatch.undo()
    for name in set(sys.modules) - modules:
        if name.startswith("tierlm_"):
            del sys.modules[name]  # the plugin modules of this test only
    registry.refresh()


def test_the_built_in_kinds_are_entry_points_too() -> None:
    assert registry.kinds() == BUILT_IN
    assert registry.spec("llama_cpp", key="k").config is LlamaCppConfig


def test_listing_kinds_and_validating_imports_no_adapter() -> None:
    code = textwrap.dedent(
        """
        import sys
        from tierlm.backends import registry
        kinds = registry.kinds()
        registry.parse_backend({"name": "t", "kind": "llama_cpp", "model": "m"})
        registry.parse_backend({"name": "h", "kind": "transformers", "model": "m"})
        heavy = [m for m in sys.modules if m.startswith(("tierlm.backends.llama", "llama_cpp",
                 "tierlm.backends.transformers", "torch", "transformers", "aiohttp"))]
        print(len(kinds), heavy)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "6 []", out.stderr


def test_a_third_party_kind_routes_with_no_change_to_tierlm(plugins: Path) -> None:
    _dist(plugins, "tierlm_shout", {"shout": "tierlm_shout:SPEC"}, PLUGIN)
    registry.refresh()
    assert registry.kinds() == sorted([*BUILT_IN, "shout"])
    s = settings(
        [{"name": "loud", "kind": "shout", "model": "shouter", "volume": 2}],
        [{"name": "t", "backends": ["loud"]}],
    )
    (cfg,) = s.backends
    assert type(cfg).__name__ == "ShoutConfig" and cfg.where.label == "host"
    with Router(s) as router:
        resp = router.chat("hello")
    assert (resp.text, resp.backend) == ("HELLO!!", "loud")


def test_a_third_party_kind_is_validated_as_strictly(plugins: Path, tmp_path: Path) -> None:
    _dist(plugins, "tierlm_shout", {"shout": "tierlm_shout:SPEC"}, PLUGIN)
    registry.refresh()
    cfg = tmp_path / "tierlm.yaml"
    cfg.write_text(
        "backends:\n  - {name: loud, kind: shout, model: m, volum: 2}\n"
        "tiers:\n  - {name: t, backends: [loud]}\n"
    )
    with pytest.raises(ConfigError, match=r"config key `backends.0.volum`: Extra inputs"):
        load_settings(cfg, env={})


@pytest.mark.parametrize(
    ("entry", "module", "why"),
    [
        ("tierlm_broken:SPEC", "import not_installed_dependency_xyz\n", "ModuleNotFoundError"),
        ("tierlm_broken:NOPE", "X = 1\n", "AttributeError"),
        (
            "tierlm_broken:NOT_A_SPEC",
            PLUGIN,
            "ShoutBackend'>, not a tierlm.backends.registry.BackendSpec(",
        ),
    ],
)
def test_a_broken_plugin_is_a_config_error_with_its_cause(
    plugins: Path, tmp_path: Path, entry: str, module: str, why: str
) -> None:
    _dist(plugins, "tierlm_broken", {"broken": entry}, module)
    registry.refresh()
    cfg = tmp_path / "tierlm.yaml"
    cfg.write_text(
        "backends:\n  - {name: b, kind: broken, model: m}\ntiers:\n  - {name: t, backends: [b]}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_settings(cfg, env={})
    msg = str(e.value)
    assert "config key `backends.0.kind`: backend 'b': backend kind 'broken'" in msg, msg
    assert f"{entry} (from tierlm_broken)" in msg and why in msg, msg
    assert registry.kinds() == sorted([*BUILT_IN, "broken"])  # the others still work
    assert load_settings(env={}).backends[0].kind == "llama_cpp"


def test_a_kind_declared_twice_names_both(plugins: Path) -> None:
    _dist(plugins, "tierlm_shout", {"openai": "tierlm_shout:SPEC"}, PLUGIN)
    registry.refresh()
    with pytest.raises(ConfigError) as e:
        registry.spec("openai", key="backends.x.kind")
    msg = str(e.value)
    assert "declared twice" in msg and "(from tierlm)" in msg and "(from tierlm_shout)" in msg


def test_create_backend_checks_the_config_class() -> None:
    cfg = OpenAIConfig(name="x", model="m", url="http://127.0.0.1:9/v1", boundary="site")
    forged = cfg.model_copy(update={"kind": "llama_cpp"})
    with pytest.raises(ConfigError, match=r"config key `backends.x.kind`: kind 'llama_cpp' is"):
        create_backend(forged)
    with pytest.raises(ConfigError, match=r"backends.x.kind`: unknown backend kind 'nope'"):
        create_backend(cfg.model_copy(update={"kind": "nope"}))


def test_the_base_class_is_not_a_kind() -> None:
    with pytest.raises(TypeError, match="parse_backend"):
        BackendConfig(name="x", kind="openai", model="m")
