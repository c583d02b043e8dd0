"""Answer checking: score an answer as the probability that it is good enough.

:class:`Judge` (``judge(Case) -> Verdict``) is what ``tierlm judge`` and the cascade
(:mod:`tierlm.execute.cascade`) call; see :mod:`tierlm.judge.model` for how it scores.
"""

from tierlm.judge.model import FEATURES, Case, Judge, Verdict, case_for

__all__ = ["FEATURES", "Case", "Judge", "Verdict", "case_for"]
