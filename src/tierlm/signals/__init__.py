"""Signals: what a request is, before the policy decides where it may and should go.

- :mod:`~tierlm.signals.sensitivity`: personal data, secrets and organisation terms
  (kinds and spans, never values) and redaction.
- :mod:`~tierlm.signals.task`: tools requested, extraction, code, long context, token count.
- :mod:`~tierlm.signals.complexity`: how hard the request is (its own module).

Importing this package is cheap: no model, no data file is loaded until a detector is built.
"""

from tierlm.signals.sensitivity import (
    SensitivityDetector,
    count_kinds,
    scan_view,
)
from tierlm.signals.task import TaskInfo, detect_task, estimate_tokens

__all__ = [
    "SensitivityDetector",
    "TaskInfo",
    "count_kinds",
    "detect_task",
    "estimate_tokens",
    "scan_view",
]
