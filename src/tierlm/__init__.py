"""tierlm: a local-first, tiered LLM router.

from tierlm import Router
router = Router.from_config()            # the embedded default: SmolLM2 in-process
print(router.chat("What is the capital of France?").text)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Boundary",
    "ChatRequest",
    "ChatResponse",
    "Message",
    "Plan",
    "Privacy",
    "Router",
    "Settings",
    "StreamEvent",
    "TierlmError",
    "Usage",
    "__version__",
    "load_settings",
]

if TYPE_CHECKING:
    from tierlm.config import Settings, load_settings
    from tierlm.errors import TierlmError
    from tierlm.router import Router
    from tierlm.types import (
        Boundary,
        ChatRequest,
        ChatResponse,
        Message,
        Plan,
        Privacy,
        StreamEvent,
        Usage,
    )

_LAZY = {
    "Router": "tierlm.router",
    "Settings": "tierlm.config",
    "load_settings": "tierlm.config",
    "TierlmError": "tierlm.errors",
    **{
        n: "tierlm.types"
        for n in (
            "Boundary",
            "ChatRequest",
            "ChatResponse",
            "Message",
            "Plan",
            "Privacy",
            "StreamEvent",
            "Usage",
        )
    },
}


def __getattr__(name: str) -> Any:
    """Import the public names on first use, so ``tierlm --help`` stays fast."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tierlm' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
