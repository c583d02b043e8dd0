"""Policy: constraints, then the objective, giving an explainable :class:`~tierlm.types.Plan`."""

from tierlm.policy.engine import Conditions, Policy, Signals

__all__ = ["Conditions", "Policy", "Signals"]
