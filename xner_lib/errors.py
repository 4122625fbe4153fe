"""Error analysis over whole test sets, by entity type (issue 14, point 1; the paper's case study, section 4.4).

Entities are strict IOB2 chunks, read by :func:`~xner_lib.evaluate.entity_set` (seqeval, as the primary score
reads them), after the corpus's primary view (:func:`~xner_lib.evaluate.harmonised`: Weibo NAM-only, GPE as
LOC; MISC predictions on Chinese as O). Within each sentence every gold entity and every predicted entity
falls into exactly one category, decided by the entities of the other side that share a token with it:

=================  ==================================================================  ===========
category           the entity (gold or predicted) ...                                   side
=================  ==================================================================  ===========
``correct``        has a counterpart with the same span and the same type               both
``type``           has a counterpart with the same span and another type (confusion)    both
``boundary``       has no same-span counterpart but overlaps one of the same type       both
``boundary_type``  has no same-span counterpart and overlaps only ones of other types   both
``missed``         gold, overlapped by no prediction                                    gold
``spurious``       predicted, overlapping no gold entity                                predicted
=================  ==================================================================  ===========

The rule is checked in that order, so an entity overlapping one counterpart of its own type and one of
another type is a ``boundary`` error. Chunks of one sequence never overlap, so a same-span counterpart is
unique. Gold entities are counted under their gold type, predicted ones under their predicted type, so

    correct + type + boundary + boundary_type + missed    = gold entities    (recall's denominator)
    correct + type + boundary + boundary_type + spurious  = predicted ones   (precision's denominator)

per type and in total (:func:`error_counts` asserts both), and ``correct`` is seqeval's strict true
positives. The two sides' ``boundary`` counts may differ: one gold entity split into two predictions is one
gold and two predicted boundary errors. :func:`confusions` lists which type became which.

This module reads tags only: it never imports a model.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from .evaluate import entity_set, harmonised

#: categories of a gold entity, in the order tables and figures show them
GOLD_CATEGORIES: tuple[str, ...] = ("correct", "type", "boundary", "boundary_type", "missed")
#: categories of a predicted entity
PRED_CATEGORIES: tuple[str, ...] = ("correct", "type", "boundary", "boundary_type", "spurious")
#: readable names of the categories (table columns, figure legends)
CATEGORY_NAMES: dict[str, str] = {"correct": "correct", "type": "type confusion", "boundary": "boundary error",
                                  "boundary_type": "boundary + type", "missed": "missed", "spurious": "spurious"}
SIDES: tuple[str, ...] = ("gold", "pred")

Span = tuple[str, int, int]  # (type, start, end), end exclusive


@dataclass(frozen=True)
class Classified:
    """One entity and its category: ``side`` (``gold`` or ``pred``), ``sentence``, ``type``, ``start``,
    ``end`` (exclusive token offsets), ``category``; ``other`` is the type of the counterpart that decided the
    category (same span, or overlapping), empty for ``missed``, ``spurious``."""

    side: str
    sentence: int
    type: str
    start: int
    end: int
    category: str
    other: str = ""


def _overlap(a: Span, b: Span) -> bool:
    return a[1] < b[2] and b[1] < a[2]


def classify_spans(mine: Sequence[Span], theirs: Sequence[Span], *, missing: str) -> list[tuple[str, str]]:
    """Per entity of ``mine``, ``(category, counterpart type)`` against the other side's entities ``theirs``
    (module docstring); ``missing`` is the category of an entity nothing overlaps (``missed`` for gold,
    ``spurious`` for predictions)."""
    out = []
    for ent in mine:
        same = [t for t in theirs if (t[1], t[2]) == (ent[1], ent[2])]
        if same:
            out.append(("correct" if same[0][0] == ent[0] else "type", same[0][0]))
            continue
        over = [t for t in theirs if _overlap(ent, t)]
        kin = [t for t in over if t[0] == ent[0]]
        if kin:
            out.append(("boundary", kin[0][0]))
        elif over:
            out.append(("boundary_type", over[0][0]))
        else:
            out.append((missing, ""))
    return out


def classify_entities(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> list[Classified]:
    """Every gold and every predicted entity of aligned IOB2 tag sequences (already harmonised), with its
    category. Strict IOB2 chunks (:func:`~xner_lib.evaluate.entity_set`)."""
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences but predictions have {len(pred)}")
    by_sent: dict[str, dict[int, list[Span]]] = {"gold": defaultdict(list), "pred": defaultdict(list)}
    for side, seqs in (("gold", gold), ("pred", pred)):
        for t, i, s, e in sorted(entity_set(seqs, strict=True), key=lambda x: (x[1], x[2])):
            by_sent[side][i].append((t, s, e))
    out: list[Classified] = []
    for i in sorted(set(by_sent["gold"]) | set(by_sent["pred"])):
        g, p = by_sent["gold"].get(i, []), by_sent["pred"].get(i, [])
        for side, mine, theirs, missing in (("gold", g, p, "missed"), ("pred", p, g, "spurious")):
            for ent, (cat, other) in zip(mine, classify_spans(mine, theirs, missing=missing), strict=True):
                out.append(Classified(side, i, ent[0], ent[1], ent[2], cat, other))
    return out


def error_counts(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], fmt: str | None = None,
                 view: str | None = None) -> pd.DataFrame:
    """Per entity type, the gold entities and the predicted ones by category, one row per type plus ``all``.

    ``fmt``: the corpus format; gold and predictions then pass through its view (default the primary one,
    :func:`~xner_lib.evaluate.harmonised`); None: the tags are taken as they are. Columns: ``type``,
    ``gold``, ``gold_<category>`` for :data:`GOLD_CATEGORIES`, ``pred``, ``pred_<category>`` for
    :data:`PRED_CATEGORIES`. Asserts that each side's categories add up to its entities and that
    ``correct`` is the same on both sides."""
    if fmt is not None:
        gold, pred = harmonised(gold, pred, fmt, view)
    ents = classify_entities(gold, pred)
    counts: Counter[tuple[str, str, str]] = Counter((c.side, c.type, c.category) for c in ents)
    types = sorted({c.type for c in ents})
    rows = []
    for etype in [*types, "all"]:
        row: dict[str, object] = {"type": etype}
        for side, cats in (("gold", GOLD_CATEGORIES), ("pred", PRED_CATEGORIES)):
            vals = {c: sum(n for (sd, t, cat), n in counts.items() if sd == side and cat == c and etype in (t, "all"))
                    for c in cats}
            row[side] = sum(1 for c in ents if c.side == side and etype in (c.type, "all"))
            row.update({f"{side}_{c}": v for c, v in vals.items()})
            assert sum(vals.values()) == row[side], (etype, side, vals, row[side])
        rows.append(row)
    df = pd.DataFrame(rows)
    total = df[df.type == "all"].iloc[0]
    assert total["gold_correct"] == total["pred_correct"], "a correct entity is correct on both sides"
    assert total["gold"] == len(entity_set(gold)) and total["pred"] == len(entity_set(pred))
    return df


def confusions(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], fmt: str | None = None,
               view: str | None = None) -> pd.DataFrame:
    """Which type each gold entity of category ``type`` or ``boundary_type`` was predicted as: rows gold type,
    columns predicted type, counts (gold side, so every such gold entity once)."""
    if fmt is not None:
        gold, pred = harmonised(gold, pred, fmt, view)
    pairs = Counter((c.type, c.other) for c in classify_entities(gold, pred)
                    if c.side == "gold" and c.category in ("type", "boundary_type"))
    if not pairs:
        return pd.DataFrame()
    df = pd.Series(pairs).unstack(fill_value=0)
    df.index.name, df.columns.name = "gold", "predicted"
    return df


#: the entity lengths (tokens: characters on Chinese) :func:`length_counts` reports; the last bin is open
LENGTH_BINS: tuple[int, ...] = (1, 2, 3, 4, 5)


def length_counts(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], fmt: str | None = None,
                  view: str | None = None, bins: Sequence[int] = LENGTH_BINS) -> pd.DataFrame:
    """Recall and precision by entity length (issue 13, the weak types: single characters, long names): per
    length bin (``1``, ..., ``"5+"`` for the last), the gold entities of that length and how many are correct,
    the predicted entities of that length and how many are correct, and the strict recall and precision they
    give. A gold entity is binned by its own length, a predicted one by its own, so a correct entity counts in
    the same bin on both sides. ``fmt``/``view`` as in :func:`error_counts`."""
    if fmt is not None:
        gold, pred = harmonised(gold, pred, fmt, view)
    last = bins[-1]

    def label(n: int) -> str:
        return f"{last}+" if n >= last else str(n)

    counts: Counter[tuple[str, str, bool]] = Counter(
        (c.side, label(c.end - c.start), c.category == "correct") for c in classify_entities(gold, pred))
    rows = []
    for b in map(label, bins):
        row: dict[str, object] = {"length": b}
        for side in SIDES:
            row[side] = counts[(side, b, True)] + counts[(side, b, False)]
            row[f"{side}_correct"] = counts[(side, b, True)]
        row["recall"] = round(row["gold_correct"] / row["gold"], 4) if row["gold"] else float("nan")
        row["precision"] = round(row["pred_correct"] / row["pred"], 4) if row["pred"] else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def error_table(results: Mapping[tuple[str, str], pd.DataFrame]) -> pd.DataFrame:
    """The :func:`error_counts` of several (corpus, model) pairs as one table: ``corpus`` and ``model``
    columns first, then the counts, and the recall and precision those counts give (strict)."""
    frames = []
    for (corpus, model), df in results.items():
        frames.append(df.assign(corpus=corpus, model=model))
    out = pd.concat(frames, ignore_index=True)
    out["recall"] = (out.gold_correct / out.gold.where(out.gold > 0)).round(4)
    out["precision"] = (out.pred_correct / out.pred.where(out.pred > 0)).round(4)
    first = ["corpus", "model", "type"]
    return out[first + [c for c in out.columns if c not in first]]
