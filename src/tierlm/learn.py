"""Learning from routing: recalibrate each cascading tier's threshold on the deployment's own
recorded outcomes (``tierlm learn``).

Data: every answer the cascade judged and *returned* (decisions ``accept``, ``keep``,
``late_fail``), with its judge score, joined to the feedback its request received
(``POST /v1/feedback``: a score, or thumbs up = 1 / down = 0); an answer is good when its
feedback quality is at least 0.7 (the report's bar). Escalated cheap answers were never seen
by a person, so they carry no label; a threshold learned from accepted answers can only be
checked where answers were kept or streamed below it.

Fit, per tier: the threshold that makes "score >= threshold" agree best with "good" on the
earlier half of the rated answers (by time), chosen among the observed scores; then both the
current and the learned threshold are measured on the later half, which the fit never saw:
agreement, bad answers that would be accepted, and good answers that would escalate.
:func:`write_calibration` stores the learned thresholds in ``<data_dir>/calibration.json``,
which the router reads at start-up (a tier's configured threshold and the request's hint
still take precedence).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tierlm.ledger.store import Store

GOOD = 0.7
MIN_RATED = 20
CALIBRATION = "calibration.json"
_QUALITY = "CASE WHEN f.score IS NOT NULL THEN f.score WHEN f.thumbs = 'up' THEN 1.0 ELSE 0.0 END"


@dataclass(slots=True)
class Outcome:
    """How one threshold does on a set of rated answers."""

    threshold: float
    agreement: float  # share where "accepted" equals "good"
    bad_accepted: int
    good_escalated: int


@dataclass(slots=True)
class TierFit:
    tier: str
    rated: int
    before: Outcome  # the current threshold, on the later half
    after: Outcome  # the learned threshold, on the later half

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rated_answers(store: Store, since: float) -> dict[str, list[tuple[float, bool]]]:
    """tier -> [(judge score, good)] for returned judged answers with feedback, oldest first."""
    out: dict[str, list[tuple[float, bool]]] = {}
    with store.transaction("read") as tx:
        rows = tx.q(
            f"SELECT a.tier, a.judge_score, AVG({_QUALITY}), MIN(r.ts) FROM attempts a "
            "JOIN requests r ON r.id = a.request_id JOIN feedback f ON f.request_id = r.id "
            "WHERE a.judge_score IS NOT NULL AND a.judge_decision IN ('accept', 'keep', "
            "'late_fail') AND r.ts >= ? GROUP BY a.request_id, a.n, a.tier, a.judge_score "
            "ORDER BY MIN(r.ts)",
            (since,),
        )
    for tier, score, quality, _ts in rows:
        out.setdefault(str(tier), []).append((float(score), float(quality) >= GOOD))
    return out


def outcome(pairs: list[tuple[float, bool]], threshold: float) -> Outcome:
    accepted = [(s >= threshold, good) for s, good in pairs]
    return Outcome(
        threshold=round(threshold, 4),
        agreement=sum(a == g for a, g in accepted) / max(len(accepted), 1),
        bad_accepted=sum(a and not g for a, g in accepted),
        good_escalated=sum(g and not a for a, g in accepted),
    )


def best_threshold(pairs: list[tuple[float, bool]]) -> float:
    """The observed score (or 0) whose threshold agrees best with the labels; ties: lower."""
    candidates = sorted({0.0, *(s for s, _ in pairs)})
    return max(candidates, key=lambda t: (outcome(pairs, t).agreement, -t))


def fit(
    rated: dict[str, list[tuple[float, bool]]], current: dict[str, float]
) -> tuple[list[TierFit], list[str]]:
    """Per tier: learn on the earlier half, compare on the later half; and what was skipped."""
    fits, skipped = [], []
    for tier, pairs in sorted(rated.items()):
        if len(pairs) < MIN_RATED or tier not in current:
            skipped.append(f"{tier}: {len(pairs)} rated answers (need {MIN_RATED})")
            continue
        half = len(pairs) // 2
        learned = best_threshold(pairs[:half])
        test = pairs[half:]
        fits.append(TierFit(tier, len(pairs), outcome(test, current[tier]), outcome(test, learned)))
    return fits, skipped


def read_calibration(directory: Path) -> dict[str, float]:
    """The learned thresholds (tier -> threshold), or none."""
    from tierlm.errors import ConfigError

    path = directory / CALIBRATION
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): float(v) for k, v in data["cascade_thresholds"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(
            f"{path} is not a calibration written by `tierlm learn --write` ({e}); "
            "delete it or run `tierlm learn --write` again"
        ) from e


def write_calibration(directory: Path, fits: list[TierFit]) -> Path:
    """Store the learned thresholds next to the ledger; returns the file written."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CALIBRATION
    merged = {**read_calibration(directory), **{f.tier: f.after.threshold for f in fits}}
    path.write_text(json.dumps({"cascade_thresholds": merged}, indent=1) + "\n", "utf-8")
    return path
