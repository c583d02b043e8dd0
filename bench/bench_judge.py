"""The judge on RouterBench: leave-one-task-out APGR against the pre-answer scores, each
signal on its own, and judge latency. Prints markdown.

Run from the repository root (numpy only)::

    .venv/bin/python bench/bench_judge.py [--data ../shared/data/routing] [--latency-n 2000]

- *leave-one-task-out*: the judge refitted on two tasks (``train/train_judge.py``'s fit and
  L2 strength) judges the answers of the third; weak = the judged answer (mistral-7b,
  WizardLM-13B or Mixtral), strong = GPT-4 on the same request. Beside it, on the same
  rows: prompt length and the default pre-answer complexity score. ``judge, no others``:
  the same without the agreement term (a single answer, text checks and difficulty only).
- *signals*: each measured feature alone (higher = escalate for the failure checks, lower
  = escalate for agreement), per task.
- *latency*: ``Judge.judge`` with the shipped artefact on ``--latency-n`` of the examples
  (complexity included, as the CLI and cascade run it); p50 / p99 in ms.
- *cascade* (``--cascade-runs N``, 0 to skip): the real SmolLM2-135M tiny tier answers each
  of :data:`PLANT_PROMPTS` N times (greedy, 64 tokens) with and without ``cascade`` on its
  tier; the share of answers the judge would escalate at the default threshold, and the
  time the check adds (median per request). No stronger tier is configured, so nothing is
  sent anywhere: the escalation *rate* is measured, not a cloud's latency.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from train import train_judge as tj  # noqa: E402
from train.judge_data import JudgeSet, load  # noqa: E402
from train.routing_data import DEFAULT_DATA  # noqa: E402

from tierlm.judge import FEATURES, Case, Judge  # noqa: E402


def loto_table(js: JudgeSet) -> None:
    l2 = tj.load_l2()
    res = tj.loto(js, l2)
    alone = tj.loto(js, l2, without=("agreement",))
    print(f"\n### Leave-one-task-out APGR (l2={l2:g}; shared CPU, numbers are exact)\n")
    print("| held-out task | n | judge | judge, no others | prompt length | complexity |")
    print("|---|---|---|---|---|---|")
    for t, r in res.items():
        print(
            f"| {t} | {int(r['n'])} | **{r['judge']:.3f}** | {alone[t]['judge']:.3f} | "
            f"{r['length']:.3f} | {r['complexity']:.3f} |"
        )


def signal_table(js: JudgeSet) -> None:
    tasks = list(np.unique(js.tasks))
    print("\n### Each signal alone: APGR per task (— = never fires there)\n")
    print("| signal | " + " | ".join(f"{t} (fires)" for t in tasks) + " |")
    print("|---|" + "---|" * len(tasks))
    for i, f in enumerate(FEATURES):
        if f == "has_others":
            continue
        esc = -js.x[:, i] if f == "agreement" else js.x[:, i]
        cells = []
        for t in tasks:
            m = js.tasks == t
            x = js.x[m, i]
            if x.std() == 0:
                cells.append("—")
                continue
            fires = float((x > 0).mean()) if f not in ("agreement", "complexity") else 1.0
            cells.append(f"{tj.apgr(esc, js, m):.3f} ({fires:.0%})")
        print(f"| {f} | " + " | ".join(cells) + " |")


def latency(cases: list[Case], n: int) -> None:
    judge = Judge()
    rng = np.random.default_rng(0)
    picked = [cases[i] for i in rng.choice(len(cases), size=min(n, len(cases)), replace=False)]
    ms = []
    for c in picked:
        fresh = Case(question=c.question, answer=c.answer, others=c.others)  # complexity too
        t0 = time.perf_counter()
        judge.judge(fresh)
        ms.append((time.perf_counter() - t0) * 1000.0)
    p50, p99 = np.percentile(ms, [50, 99])
    print(f"\n### Judge latency ({len(ms)} answers, shared 2-core machine)\n")
    print(f"p50 {p50:.2f} ms, p99 {p99:.2f} ms (complexity score and all checks included)")


SMOLLM2 = REPO.parent / "shared/models/SmolLM2-135M-Instruct.Q4_1.gguf"
PLANT_PROMPTS = (
    "What is the capital of France?",
    "Turn on pump 3.",
    "What does the error code E42 on the filler mean?",
    "Convert 3.5 bar to psi.",
    "Write a Python function that returns the average of a list of numbers.",
    "Summarise in one sentence: the night shift found a leak at valve V-12 and closed it.",
    "Return the status of pump 2 as JSON with the keys pump and running.",
    "Which is heavier, 1 kg of steel or 1 kg of feathers? Answer A) steel B) feathers C) same.",
    "Draft a polite e-mail asking the supplier to confirm Friday's delivery of seal kits.",
    "Wie viele Schichten hat die Linie 3 pro Woche, wenn sie 24/7 läuft?",
)


def cascade(runs: int) -> None:
    import statistics

    from tierlm import Router
    from tierlm.config import load_settings

    def router(cascade: dict[str, object] | None) -> Router:
        backend = {"name": "tiny", "kind": "llama_cpp", "model": str(SMOLLM2), "n_ctx": 1024}
        return Router(
            load_settings(
                overrides={
                    "backends": [backend],
                    "tiers": [{"name": "tiny", "backends": ["tiny"], "cascade": cascade}],
                    "ledger": {"url": "off"},
                }
            )
        )

    plain, judged = router(None), router({})
    times: dict[str, list[float]] = {"plain": [], "cascade": []}
    below = 0
    for prompt in PLANT_PROMPTS * runs:
        for name, r in (("plain", plain), ("cascade", judged)):
            t0 = time.perf_counter()
            resp = r.chat(prompt, max_tokens=64, temperature=0.0)
            times[name].append((time.perf_counter() - t0) * 1000.0)
            if resp.cascade:
                below += resp.cascade[0]["decision"] != "accept"
    plain.close()
    judged.close()
    n = len(PLANT_PROMPTS) * runs
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n### Cascade on the real tiny tier ({n} answers, SmolLM2-135M, shared machine)\n")
    print(f"below the default threshold (would escalate): {below}/{n} = {below / n:.0%}")
    print(
        f"median request: {med['plain']:.0f} ms plain, {med['cascade']:.0f} ms with the check "
        f"(+{med['cascade'] - med['plain']:.1f} ms)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--latency-n", type=int, default=2000)
    ap.add_argument("--cascade-runs", type=int, default=1)
    args = ap.parse_args(argv)
    js = load(args.data)
    print(f"{len(js.cases)} judged answers (RouterBench train splits)")
    loto_table(js)
    signal_table(js)
    latency(js.cases, args.latency_n)
    if args.cascade_runs:
        cascade(args.cascade_runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
