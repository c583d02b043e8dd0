"""Configuration: precedence, presets, and validation errors that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tierlm.config import load_settings
from tierlm.config.backends import AnthropicConfig, LlamaCppConfig, OpenAIConfig
from tierlm.errors import ConfigError
from tierlm.types import Boundary


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "tierlm.yaml"
    p.write_text(text)
    return p


def test_no_config_is_the_embedded_default() -> None:
    s = load_settings(env={})
    assert s.deployment == "edge-only"
    assert [t.name for t in s.tiers] == ["tiny"]
    (b,) = s.backends
    assert (b.kind, b.model, b.where) == ("llama_cpp", "smollm2-135m-instruct", Boundary.PROCESS)


def test_precedence_preset_file_env_overrides(tmp_path: Path) -> None:
    f = _write(tmp_path, "routing:\n  quality: 0.3\nserver:\n  port: 9001\n")
    assert load_settings(f, env={}).routing.quality == 0.3
    env = {"TIERLM_ROUTING__QUALITY": "0.7"}
    s = load_settings(f, env=env)
    assert (s.routing.quality, s.server.port) == (0.7, 9001)
    s = load_settings(f, env=env, overrides={"routing": {"quality": 0.9}})
    assert s.routing.quality == 0.9
    # the file is found through TIERLM_CONFIG too
    assert load_settings(env={"TIERLM_CONFIG": str(f)}).server.port == 9001


def test_env_top_level_names(tmp_path: Path) -> None:
    s = load_settings(
        env={
            "TIERLM_MODELS_DIR": str(tmp_path),
            "TIERLM_AIR_GAPPED": "true",
            "TIERLM_UNRELATED": "x",
        }
    )
    assert s.models_dir == str(tmp_path) and s.air_gapped is True


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        ("routing:\n  qualty: 0.3\n", "routing.qualty", "Extra inputs are not permitted"),
        ("routing:\n  quality: 2\n", "routing.quality", "less than or equal to 1"),
        ("server:\n  port: many\n", "server.port", "valid integer"),
        (
            "backends:\n  - {name: x, kind: openai, model: m, url: 'http://h'}\n"
            "tiers:\n  - {name: t, backends: [x]}\n",
            "backends.0",
            "must declare its boundary",
        ),
        (
            "backends:\n  - {name: x, kind: llama_cpp, model: m}\n"
            "tiers:\n  - {name: t, backends: [y]}\n",
            "tiers[0].backends",
            "uses backend 'y'",
        ),
        (
            "backends:\n  - {name: x, kind: grpc, model: m}\n",
            "backends.0.kind",
            "backend 'x': unknown backend kind 'grpc' (known: anthropic, function, llama_cpp,",
        ),
        (
            "backends:\n  - {name: x, kind: llama_cpp, model: m, n_ctxx: 512}\n",
            "backends.0.n_ctxx",
            "Extra inputs are not permitted",
        ),
        (  # a key of another kind is refused too
            "backends:\n  - {name: x, kind: openai, model: m, boundary: site, n_ctx: 512}\n",
            "backends.0.n_ctx",
            "Extra inputs are not permitted",
        ),
        (
            "backends:\n  - {name: x, kind: llama_cpp, model: m, options: {top_q: 1}}\n",
            "backends.0",
            "options.top_q: kind 'llama_cpp' has no such setting",
        ),
    ],
)
def test_validation_errors_point_at_the_key(tmp_path: Path, text: str, key: str, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(_write(tmp_path, text), env={})
    msg = str(e.value)
    assert f"config key `{key}`" in msg and why in msg, msg
    assert str(tmp_path) in msg


def test_bad_env_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"config key `server.port`"):
        load_settings(env={"TIERLM_SERVER__PORT": "high"})


def test_air_gapped_refuses_an_external_backend(tmp_path: Path) -> None:
    text = (
        "air_gapped: true\nbackends:\n  - {name: tiny, kind: llama_cpp, model: m}\n"
        "  - {name: gpt, kind: openai, provider: openai, model: gpt-4o}\n"
        "tiers:\n  - {name: tiny, backends: [tiny]}\n  - {name: cloud, backends: [gpt]}\n"
    )
    with pytest.raises(ConfigError, match="air-gapped deployment cannot configure external"):
        load_settings(_write(tmp_path, text), env={})


def test_presets_are_complete_and_env_driven() -> None:
    env = {
        "TIERLM_SITE_URL": "http://127.0.0.1:8000/v1",
        "TIERLM_SITE_MODEL": "llama-70b",
        "OPENAI_API_KEY": "sk-test",
        "ANTHROPIC_API_KEY": "sk-ant-test",
    }
    full = load_settings(preset="full-stack", env=env)
    assert [t.name for t in full.tiers] == ["tiny", "site", "cloud"]
    assert full.tiers[2].backends == ["openai", "anthropic"]
    assert full.backend("site").model == "llama-70b"
    assert full.backend("site").where is Boundary.SITE
    assert full.backend("anthropic").kind == "anthropic"
    gapped = load_settings(preset="air-gapped", env=env)
    assert gapped.air_gapped and all(b.where < Boundary.EXTERNAL for b in gapped.backends)
    budget = load_settings(preset="budget", env={"DEEPSEEK_API_KEY": "k"})
    assert [t.name for t in budget.tiers] == ["tiny", "cloud"]
    assert budget.backend("deepseek").api_key_env == "DEEPSEEK_API_KEY"


def test_preset_errors_say_what_to_set() -> None:
    with pytest.raises(ConfigError, match=r"unknown preset 'nope'.*edge-only"):
        load_settings(preset="nope", env={})
    with pytest.raises(ConfigError, match="set TIERLM_SITE_URL"):
        load_settings(preset="full-stack", env={"OPENAI_API_KEY": "k"})
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        load_settings(preset="budget", env={})


def test_unreadable_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.yaml", env={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(_write(tmp_path, "a: [1,\n"), env={})
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_settings(_write(tmp_path, "- 1\n- 2\n"), env={})


_OWN_BACKENDS = (
    "backends:\n  - {name: tiny, kind: llama_cpp, model: m}\n"
    "  - {name: gpu, kind: openai, provider: vllm, url: 'http://127.0.0.1:9/v1', model: g}\n"
    "tiers:\n  - {name: tiny, backends: [tiny]}\n  - {name: site, backends: [gpu]}\n"
)


@pytest.mark.parametrize("preset", ["air-gapped", "budget", "full-stack"])
def test_a_preset_is_a_starting_point(tmp_path: Path, preset: str) -> None:
    """The preset's variables are needed only for backends the final config still uses."""
    s = load_settings(_write(tmp_path, f"preset: {preset}\n" + _OWN_BACKENDS), env={})
    assert [b.name for b in s.backends] == ["tiny", "gpu"]
    assert s.deployment == f"{preset}, customised: tiny → site"
    assert s.air_gapped is (preset == "air-gapped")  # the preset's other settings stay
    # a config that keeps the preset's backends still needs what they need
    with pytest.raises(ConfigError, match=r"TIERLM_SITE_URL|OPENAI_API_KEY"):
        load_settings(_write(tmp_path, f"preset: {preset}\nrouting: {{quality: 0.4}}\n"), env={})


def test_deployment_describes_a_config_without_preset(tmp_path: Path) -> None:
    text = _OWN_BACKENDS + "  - {name: more, backends: [gpu]}\n"
    assert load_settings(_write(tmp_path, text), env={}).deployment == "custom: tiny → site → more"
    named = load_settings(_write(tmp_path, "deployment: plant-a\n" + _OWN_BACKENDS), env={})
    assert named.deployment == "plant-a"


def test_an_api_key_naming_a_missing_tier_is_refused(tmp_path: Path) -> None:
    digest = "ab" * 32
    text = _OWN_BACKENDS + (
        f"server:\n  api_keys:\n    - {{name: ok, hash: {digest}}}\n"
        f"    - {{name: plant, hash: {digest}, tiers: [tiny, gpu]}}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_settings(_write(tmp_path, text), env={})
    assert "config key `server.api_keys[1].tiers`" in str(e.value)
    assert "'gpu', not a tier here (tiers: tiny, site)" in str(e.value)


def test_a_raw_key_pasted_as_hash_is_refused_without_echoing_it(tmp_path: Path) -> None:
    text = _OWN_BACKENDS + "server:\n  api_keys:\n    - {name: k, hash: sk-my-real-key}\n"
    with pytest.raises(ConfigError) as e:
        load_settings(_write(tmp_path, text), env={})
    msg = str(e.value)
    assert "config key `server.api_keys.0.hash`" in msg and "64 hex digits" in msg
    assert "sk-my-real-key" not in msg
    upper = _OWN_BACKENDS + f"server:\n  api_keys:\n    - {{name: k, hash: {'AB' * 32}}}\n"
    assert load_settings(_write(tmp_path, upper), env={}).server.api_keys[0].hash == "ab" * 32


def test_tier_named_like_a_backend_with_more_backends(tmp_path: Path) -> None:
    base = (
        "backends:\n  - {name: site, kind: openai, provider: vllm, url: 'http://h/v1', model: a}\n"
        "  - {name: site2, kind: openai, provider: vllm, url: 'http://h2/v1', model: b}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_settings(
            _write(tmp_path, base + "tiers:\n  - {name: site, backends: [site, site2]}\n"), env={}
        )
    assert "config key `tiers[0].name`" in str(e.value)
    assert "rename the tier or the backend (e.g. tier 'site-tier')" in str(e.value)
    # a backend that is not defined at all is the error shown, not the naming clash
    with pytest.raises(ConfigError) as e:
        load_settings(
            _write(tmp_path, base + "tiers:\n  - {name: site, backends: [site, gpu9]}\n"), env={}
        )
    assert "uses backend 'gpu9', which is not defined" in str(e.value)
    assert "ambiguous" not in str(e.value)


def test_each_kind_has_its_own_typed_settings(tmp_path: Path) -> None:
    text = (
        "backends:\n"
        "  - {name: tiny, kind: llama_cpp, model: m, n_ctx: 512, sampling: {temperature: 0.2}}\n"
        "  - {name: site, kind: openai, model: m, url: 'http://h/v1', boundary: site,\n"
        "     quirks: [top_k], headers: {x-team: a}, max_connections: 8}\n"
        "  - {name: claude, kind: anthropic, model: c, max_tokens: 512}\n"
        "tiers:\n  - {name: t, backends: [tiny, site, claude]}\n"
    )
    s = load_settings(_write(tmp_path, text), env={})
    tiny, site, claude = s.backends
    assert isinstance(tiny, LlamaCppConfig) and isinstance(site, OpenAIConfig)
    assert isinstance(claude, AnthropicConfig)
    assert (tiny.n_ctx, tiny.sampling.temperature, tiny.prompt_window()) == (512, 0.2, 512)
    assert (site.quirks, site.headers, site.max_connections) == (["top_k"], {"x-team": "a"}, 8)
    assert claude.where is Boundary.EXTERNAL and claude.provider_name() == "anthropic"


def test_the_old_options_bag_still_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = (
        "backends:\n"
        "  - {name: tiny, kind: llama_cpp, model: m,\n"
        "     options: {temperature: 0.3, repeat_penalty: 1.2, poll: 50, max_tokens: 64}}\n"
        "  - {name: site, kind: openai, model: m, url: 'http://h/v1', boundary: site,\n"
        "     options: {quirks: [top_k], keepalive_timeout: 0}}\n"
        "tiers:\n  - {name: t, backends: [tiny, site]}\n"
    )
    s = load_settings(_write(tmp_path, text), env={})
    tiny, site = s.backends
    assert isinstance(tiny, LlamaCppConfig) and isinstance(site, OpenAIConfig)
    assert (tiny.sampling.temperature, tiny.sampling.repeat_penalty) == (0.3, 1.2)
    assert (tiny.poll, tiny.max_tokens) == (50, 64)
    assert (site.quirks, site.keepalive_timeout) == (["top_k"], 0.0)
    assert "`sampling.temperature`, `sampling.repeat_penalty`, `poll`" in caplog.text
