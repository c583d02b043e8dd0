"""Hot paths: the recorded requests' most frequent shapes, proposed as layer-0 rules.

Reads the ledger's stored prompts (kept only with ``ledger.store_prompts: true``, and then
redacted as stored) of a period, newest first, at most ``max_rows`` of them; requests already
answered by layer 0 (tiers ``rules`` and ``cache``) are left out. Then:

1. **shape**: the prompt's last line (rules read the last user message; the stored prompt is
   every message's text joined by newlines), lower case, whitespace collapsed, with
   placeholders: ``{id}`` for words mixing letters and digits, ``{n}`` for whole numbers,
   ``{x}`` for decimals, ``{text}`` for a redacted span (``[EMAIL]``...);
2. **exact groups**: the requests of one shape, added up (volume, cost, model calls, the
   tiers and backends that answered, a few answers as stored);
3. **near groups**: the ``max_shapes`` most frequent shapes are embedded with the layer-0
   embedder (:mod:`tierlm.layer0.embed`); most frequent first, a shape joins the first cluster
   whose head it reaches ``threshold`` cosine similarity with, has the same placeholders, and
   agrees with under the near-miss guard (:mod:`tierlm.layer0.guard`: "turn on" never merges
   with "turn off"). Rarer shapes stay alone. Time and memory are bounded by ``max_rows``
   and ``max_shapes``.

Each cluster of at least ``min_count`` requests gets a proposed rule in the layer-0 rules
format (:mod:`tierlm.layer0.config`): one shape, a case-insensitive anchored ``regex`` whose
named groups are its placeholders (named after the word before them: ``pump {n}`` gives
``(?P<pump>\\d+)``); several, an ``examples`` matcher with the same slots. A shape with no
placeholder gets a ``template`` action pinned to its most frequent answer (a pinned cache
entry); one with slots a ``tool_call`` action to rename (it answers only a client offering
that tool). :func:`snippet` writes them as YAML for the ``rules:`` list.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from tierlm.layer0.guard import Anchors, anchors

if TYPE_CHECKING:
    from tierlm.layer0.embed import Embedder
    from tierlm.ledger.store import Tx

ANSWERED_BY_LAYER0 = ("rules", "cache")
NOT_STORED = (
    "prompts are not stored, so there is nothing to cluster: set ledger.store_prompts: true "
    "(sensitive spans are redacted before storing) and let traffic accumulate"
)
_REDACTED = re.compile(r"\[[A-Z][A-Z_]*\]")
_ID = re.compile(r"(?<![\w{])(?=[\w-]*\d)(?=[\w-]*[a-z])[a-z0-9][\w-]*(?![\w}])")
_DECIMAL = re.compile(r"(?<![\w.{])\d+\.\d+(?![\w}])")
_INT = re.compile(r"(?<![\w.{])\d+(?![\w}])")
_SPACE = re.compile(r"\s+")
_HOLE = re.compile(r"\{(n|x|id|text)\}")
_WORD = re.compile(r"[a-z_][a-z0-9_]*$", re.ASCII)
# what each placeholder matches in a request, and its slot type
SLOT: dict[str, tuple[str, str]] = {
    "n": (r"\d+", "int"),
    "x": (r"\d+\.\d+", "float"),
    "id": (r"(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[A-Za-z0-9][\w-]*", "str"),
    "text": (r".+?", "str"),
}
_SAMPLES = 3


def shape(prompt: str) -> str:
    """The normalised shape of a stored prompt's last line."""
    lines = prompt.strip().splitlines()
    text = _REDACTED.sub("{text}", lines[-1] if lines else "").lower()
    text = _ID.sub("{id}", text)
    text = _DECIMAL.sub("{x}", text)
    text = _INT.sub("{n}", text)
    return _SPACE.sub(" ", text).strip()


@dataclass(slots=True)
class Cluster:
    """Requests of one shape, or of near shapes merged into the most frequent one."""

    shape: str  # the most frequent shape
    shapes: list[str] = field(default_factory=list)  # every shape merged in, head first
    requests: int = 0
    cost_usd: float = 0.0
    model_calls: int = 0
    tiers: dict[str, int] = field(default_factory=dict)
    backends: dict[str, int] = field(default_factory=dict)
    answers: list[str] = field(default_factory=list)  # the most given, redacted as stored
    rule: dict[str, Any] | None = None  # the proposed rule (layer-0 rules format)

    def add(self, other: Cluster) -> None:
        self.shapes += other.shapes
        self.requests += other.requests
        self.cost_usd += other.cost_usd
        self.model_calls += other.model_calls
        for mine, theirs in ((self.tiers, other.tiers), (self.backends, other.backends)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v


@dataclass(slots=True)
class HotPaths:
    since: float
    until: float
    scanned: int = 0  # requests with a stored prompt that were read
    without_prompt: int = 0  # requests in the period with no stored prompt
    clusters: list[Cluster] = field(default_factory=list)
    note: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_groups(
    tx: Tx, start: float, end: float, max_rows: int
) -> tuple[dict[str, Cluster], dict[str, Counter[str]], int, int]:
    """Exact groups of the period's stored prompts, each shape's answers counted, how many
    requests were read and how many had no stored prompt."""
    skip = ", ".join(f"'{t}'" for t in ANSWERED_BY_LAYER0)
    where = f"ts >= ? AND ts < ? AND COALESCE(tier, '') NOT IN ({skip})"
    rows = tx.q(
        "SELECT prompt, completion, tier, backend, cost_usd, attempts FROM requests "
        f"WHERE {where} AND prompt IS NOT NULL ORDER BY ts DESC LIMIT ?",
        (start, end, max_rows),
    )
    (missing,) = tx.q(
        f"SELECT COUNT(*) FROM requests WHERE {where} AND prompt IS NULL", (start, end)
    )[0]
    groups: dict[str, Cluster] = {}
    answers: dict[str, Counter[str]] = {}
    for prompt, completion, tier, backend, cost, calls in rows:
        s = shape(str(prompt))
        if not s or s.startswith("[withheld"):
            continue
        g = groups.get(s)
        if g is None:
            g = groups[s] = Cluster(s, [s])
        g.requests += 1
        g.cost_usd += float(cost or 0.0)
        g.model_calls += int(calls or 0)
        g.tiers[tier or "-"] = g.tiers.get(tier or "-", 0) + 1
        g.backends[backend or "-"] = g.backends.get(backend or "-", 0) + 1
        if completion:
            seen = answers.setdefault(s, Counter())
            if completion in seen or len(seen) < 8:  # a few distinct answers per shape
                seen[completion] += 1
    return groups, answers, len(rows), int(missing)


def merge(
    groups: dict[str, Cluster], embedder: Embedder, threshold: float, max_shapes: int
) -> list[Cluster]:
    """Near shapes merged into clusters, most requests first (see the module docstring)."""
    ranked = sorted(groups.values(), key=lambda g: (-g.requests, g.shape))
    embedded = ranked[:max_shapes]
    if not embedded:
        return []
    vectors = np.stack([embedder.embed(g.shape) for g in embedded])
    sims = vectors @ vectors.T  # max_shapes squared floats at most
    keys: dict[int, tuple[tuple[str, ...], Anchors]] = {}  # computed when first compared

    def key(i: int) -> tuple[tuple[str, ...], Anchors]:
        if i not in keys:
            s = embedded[i].shape
            keys[i] = (tuple(sorted(_HOLE.findall(s))), anchors(s))
        return keys[i]

    heads: list[int] = []  # indexes into embedded
    for i, g in enumerate(embedded):
        row = sims[i, heads] if heads else np.zeros(0, dtype=np.float32)
        for j in np.flatnonzero(row >= threshold):
            h = heads[j]
            if key(h)[0] == key(i)[0] and key(h)[1].agrees(key(i)[1]) is None:
                embedded[h].add(g)
                break
        else:
            heads.append(i)
    clusters = [embedded[i] for i in heads] + ranked[max_shapes:]  # rarer shapes stay alone
    return sorted(clusters, key=lambda c: (-c.requests, c.shape))


def hot_paths(
    tx: Tx,
    embedder: Embedder,
    *,
    start: float,
    end: float,
    min_count: int = 5,
    top: int = 10,
    threshold: float = 0.9,
    max_rows: int = 200_000,
    max_shapes: int = 2_000,
) -> HotPaths:
    """The ``top`` clusters of at least ``min_count`` requests in ``[start, end)``, with rules."""
    t0 = time.perf_counter()
    out = HotPaths(since=start, until=end)
    groups, answers, out.scanned, out.without_prompt = read_groups(tx, start, end, max_rows)
    if out.scanned == 0 and out.without_prompt:
        out.note = NOT_STORED
    clusters = [
        c for c in merge(groups, embedder, threshold, max_shapes) if c.requests >= min_count
    ]
    names: set[str] = set()
    for c in clusters[:top]:
        counted: Counter[str] = Counter()
        for s in c.shapes:
            counted.update(answers.get(s, Counter()))
        c.answers = [a for a, _ in counted.most_common(_SAMPLES)]
        c.cost_usd = round(c.cost_usd, 9)
        c.rule = propose(c, names, threshold)
    out.clusters = clusters[:top]
    out.seconds = round(time.perf_counter() - t0, 4)
    return out


def top_shapes(tx: Tx, start: float, end: float, top: int = 5, min_count: int = 5) -> list[Cluster]:
    """The most frequent exact shapes (no embedding): what ``tierlm report`` shows as hot
    paths, the cost and model calls a rule or pinned answer would save."""
    groups, _, _, _ = read_groups(tx, start, end, 100_000)
    ranked = sorted(groups.values(), key=lambda g: (-g.requests, g.shape))
    return [g for g in ranked[:top] if g.requests >= min_count]


def _slot_names(template: str) -> list[tuple[str, str]]:
    """``(name, kind)`` of each placeholder, named after the word before it when possible."""
    out: list[tuple[str, str]] = []
    pos = 0
    for m in _HOLE.finditer(template):
        before = _WORD.search(template[pos : m.start()].rstrip())
        name = before.group() if before else m.group(1)
        if name in {n for n, _ in out} or name in ("n", "x", "id", "text"):
            name = f"{m.group(1)}{len(out) + 1}"
        out.append((name, m.group(1)))
        pos = m.end()
    return out


def to_regex(template: str) -> tuple[str, dict[str, str]]:
    """An anchored, case-insensitive regex for a shape, and its groups' types."""
    parts, types, pos = ["(?i)^\\s*"], {}, 0
    for (name, kind), m in zip(_slot_names(template), _HOLE.finditer(template), strict=True):
        parts.append(_literal(template[pos : m.start()]))
        parts.append(f"(?P<{name}>{SLOT[kind][0]})")
        if SLOT[kind][1] != "str":
            types[name] = SLOT[kind][1]
        pos = m.end()
    parts.append(_literal(template[pos:]) + "\\s*$")
    return "".join(parts), types


def _literal(text: str) -> str:
    return "\\s+".join(re.escape(w) for w in text.split(" ")) if text else ""


def _rule_name(c: Cluster, taken: set[str]) -> str:
    words = re.findall(r"[a-z0-9]+", _HOLE.sub(" ", c.shape), re.ASCII)[:4] or ["path"]
    base = name = "hot-" + "-".join(words)
    i = 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


def propose(c: Cluster, taken: set[str], threshold: float) -> dict[str, Any]:
    """A rule for one cluster, as the ``rules:`` list of the configuration spells it."""
    slots = _slot_names(c.shape)
    match: dict[str, Any]
    if len(c.shapes) == 1:
        regex, types = to_regex(c.shape)
        match = {"regex": regex, **({"types": types} if types else {})}
    else:
        examples = [_named(s, slots) for s in c.shapes[:8]]
        match = {
            "examples": examples,
            "slots": {n: {"pattern": SLOT[k][0], "type": SLOT[k][1]} for n, k in slots},
            "threshold": threshold,
        }
    name = _rule_name(c, taken)
    action: dict[str, Any]
    if not slots and c.answers:
        action = {"kind": "template", "text": c.answers[0]}
    else:
        action = {
            "kind": "tool_call",
            "name": name.removeprefix("hot-").replace("-", "_"),
            "arguments": {n: "{" + n + "}" for n, _ in slots},
        }
    return {"name": name, "match": match, "action": action}


def _named(template: str, slots: list[tuple[str, str]]) -> str:
    """A shape with its placeholders named as the head's slots (``{pump}``): the i-th
    placeholder of a kind gets the name of the head's i-th slot of that kind."""
    names = {k: iter([n for n, kind in slots if kind == k]) for k in SLOT}
    return _HOLE.sub(lambda m: "{" + next(names[m.group(1)]) + "}", template)


def snippet(hp: HotPaths) -> str:
    """The proposed rules as YAML for the configuration's ``rules:`` list."""
    rules = [c.rule for c in hp.clusters if c.rule is not None]
    if not rules:
        return ""
    head = (
        "# Proposed by `tierlm hotpaths`: review each rule (rename tool_call actions to the\n"
        "# function your client offers; check pinned answers), then add to rules: in the config.\n"
    )
    return head + yaml.safe_dump({"rules": rules}, sort_keys=False, allow_unicode=True, width=100)
