"""Layer 0: answers that need no model (rules and the answer cache); see :mod:`.core`.

Nothing is imported here, so the configuration can import :mod:`.config` cheaply.
"""
