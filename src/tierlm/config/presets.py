"""The four classic deployments, complete and driven by environment variables.

=============  ===========================  ================================================
preset         tiers                        needs
=============  ===========================  ================================================
edge-only      tiny                         nothing (the embedded default)
air-gapped     tiny -> site                 TIERLM_SITE_URL; nothing external, ever
budget         tiny -> cloud                a cloud key (OPENAI_API_KEY, ANTHROPIC_API_KEY...)
full-stack     tiny -> site -> cloud        TIERLM_SITE_URL and a cloud key
=============  ===========================  ================================================

- tiny: ``TIERLM_TINY_MODEL`` (default: SmolLM2-135M-Instruct, resolved locally), in-process
  llama.cpp; ``TIERLM_TINY_THREADS``.
- site: an OpenAI-compatible server at ``TIERLM_SITE_URL`` serving ``TIERLM_SITE_MODEL``
  (``TIERLM_SITE_PROVIDER``: vllm, sglang, llama-server, ollama-openai...; default vllm),
  boundary ``site`` (``TIERLM_SITE_BOUNDARY=host`` when it runs on this machine),
  key from ``TIERLM_SITE_API_KEY_ENV`` if the server wants one.
- cloud: one backend per provider whose standard key variable is set, in the order of
  ``CLOUD_ORDER`` (``TIERLM_CLOUD_PROVIDERS=openai,anthropic`` picks and orders them);
  model ``TIERLM_<PROVIDER>_MODEL`` or the provider's default.

A preset is a starting point: a backend whose variables are missing is built as a placeholder
that carries the message saying what to set (:data:`NEEDS`). The loader raises that message
only when the final configuration still uses the placeholder, so a config that replaces
``backends:`` never needs the preset's variables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tierlm.config.providers import CLOUD_ORDER, PROVIDERS
from tierlm.errors import ConfigError

DEFAULT_TINY_MODEL = "smollm2-135m-instruct"
# The key of a placeholder backend: what to set before the preset can build it.
NEEDS = "__needs__"
# SmolLM2's recommended sampling; without a repeat penalty the 135M model loops.
SMOLLM2_SAMPLING: dict[str, Any] = {"temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.1}


def _placeholder(name: str, message: str) -> dict[str, Any]:
    return {"name": name, "kind": "openai", "model": name, NEEDS: message}


def _tiny(env: Mapping[str, str]) -> dict[str, Any]:
    model = env.get("TIERLM_TINY_MODEL", DEFAULT_TINY_MODEL)
    b: dict[str, Any] = {
        "name": "smollm2" if model == DEFAULT_TINY_MODEL else "tiny",
        "kind": "llama_cpp",
        "model": model,
        "context_window": 8192,
        # four slots in the llama-server worker: concurrent requests are batched, not queued
        "max_concurrency": 4,
    }
    if model == DEFAULT_TINY_MODEL:
        b["sampling"] = dict(SMOLLM2_SAMPLING)
    if env.get("TIERLM_TINY_THREADS"):
        b["threads"] = env["TIERLM_TINY_THREADS"]
    return b


def _site(env: Mapping[str, str], preset: str) -> dict[str, Any]:
    url = env.get("TIERLM_SITE_URL")
    if not url:
        return _placeholder(
            "site",
            f"preset '{preset}' needs the site server: set TIERLM_SITE_URL to its "
            "OpenAI-compatible base URL (e.g. http://gpu-server:8000/v1) and TIERLM_SITE_MODEL "
            "to the model it serves (or replace the preset's backends: in the config file)",
        )
    b: dict[str, Any] = {
        "name": "site",
        "kind": "openai",
        "provider": env.get("TIERLM_SITE_PROVIDER", "vllm"),
        "url": url,
        "model": env.get("TIERLM_SITE_MODEL", "default"),
        "boundary": env.get("TIERLM_SITE_BOUNDARY", "site"),
        "timeouts": {"connect": 1.0},
    }
    if env.get("TIERLM_SITE_API_KEY_ENV"):
        b["api_key_env"] = env["TIERLM_SITE_API_KEY_ENV"]
    if env.get("TIERLM_SITE_CONTEXT"):
        b["context_window"] = env["TIERLM_SITE_CONTEXT"]
    return b


def _cloud(env: Mapping[str, str], preset: str) -> list[dict[str, Any]]:
    wanted = env.get("TIERLM_CLOUD_PROVIDERS")
    order = [p.strip() for p in wanted.split(",") if p.strip()] if wanted else list(CLOUD_ORDER)
    out = []
    for name in order:
        p = PROVIDERS.get(name)
        if p is None or p.key_env is None or p.url is None:
            raise ConfigError(f"TIERLM_CLOUD_PROVIDERS names an unknown cloud provider: {name!r}")
        if not env.get(p.key_env):
            continue
        out.append(
            {
                "name": name,
                "kind": p.kind,
                "provider": name,
                "url": p.url,
                "model": env.get(f"TIERLM_{name.upper()}_MODEL", p.default_model),
                "api_key_env": p.key_env,
                "boundary": "external",
            }
        )
    if not out:
        keys = ", ".join(PROVIDERS[n].key_env or "" for n in order)
        return [
            _placeholder(
                "cloud",
                f"preset '{preset}' needs at least one cloud API key: set one of {keys} "
                "(or replace the preset's backends: in the config file)",
            )
        ]
    return out


def _edge_only(env: Mapping[str, str]) -> dict[str, Any]:
    tiny = _tiny(env)
    return {
        "deployment": "edge-only",
        "backends": [tiny],
        "tiers": [{"name": "tiny", "backends": [tiny["name"]], "strength": 1.0}],
    }


def _air_gapped(env: Mapping[str, str]) -> dict[str, Any]:
    tiny, site = _tiny(env), _site(env, "air-gapped")
    return {
        "deployment": "air-gapped",
        "air_gapped": True,
        "backends": [tiny, site],
        "tiers": [
            {"name": "tiny", "backends": [tiny["name"]], "strength": 0.35},
            {"name": "site", "backends": ["site"], "strength": 1.0},
        ],
    }


def _budget(env: Mapping[str, str]) -> dict[str, Any]:
    tiny, cloud = _tiny(env), _cloud(env, "budget")
    return {
        "deployment": "budget",
        "backends": [tiny, *cloud],
        "tiers": [
            {"name": "tiny", "backends": [tiny["name"]], "strength": 0.35},
            {"name": "cloud", "backends": [c["name"] for c in cloud], "strength": 1.0},
        ],
    }


def _full_stack(env: Mapping[str, str]) -> dict[str, Any]:
    tiny, site, cloud = _tiny(env), _site(env, "full-stack"), _cloud(env, "full-stack")
    return {
        "deployment": "full-stack",
        "backends": [tiny, site, *cloud],
        "tiers": [
            {"name": "tiny", "backends": [tiny["name"]], "strength": 0.35},
            {"name": "site", "backends": ["site"], "strength": 0.7},
            {"name": "cloud", "backends": [c["name"] for c in cloud], "strength": 1.0},
        ],
    }


PRESETS: dict[str, Callable[[Mapping[str, str]], dict[str, Any]]] = {
    "edge-only": _edge_only,
    "air-gapped": _air_gapped,
    "budget": _budget,
    "full-stack": _full_stack,
}


def build_preset(name: str, env: Mapping[str, str]) -> dict[str, Any]:
    try:
        factory = PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown preset {name!r} (known: {', '.join(sorted(PRESETS))})"
        ) from None
    return factory(env)
