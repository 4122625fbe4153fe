"""Label harmonisation between CoNLL-2003, WeiboNER and People's Daily (DESIGN.md, Data).

One table, :data:`HARMONISATION`, maps every corpus type to the type the model is trained on or scored
against; ``docs/method.md`` shows the same table (a test keeps the two equal). Shared types are PER, LOC
and ORG. CoNLL MISC is trained as its own class, and a MISC prediction on Chinese counts as O. Weibo GPE
becomes LOC. Weibo nominal mentions (``*.NOM``) are not names: the primary view (``weibo_nam``) drops
them, the ``weibo_nam_nom`` view keeps them as their type.
"""

from __future__ import annotations

from collections.abc import Sequence

#: view -> {corpus entity type -> harmonised type, or None for O}
HARMONISATION: dict[str, dict[str, str | None]] = {
    "conll": {"PER": "PER", "LOC": "LOC", "ORG": "ORG", "MISC": "MISC"},
    #: CoNLL on the shared types (MISC as O): comparable between models trained with and without MISC
    "conll_shared": {"PER": "PER", "LOC": "LOC", "ORG": "ORG", "MISC": None},
    "weibo_nam": {
        "PER.NAM": "PER", "LOC.NAM": "LOC", "GPE.NAM": "LOC", "ORG.NAM": "ORG",
        "PER.NOM": None, "LOC.NOM": None, "GPE.NOM": None, "ORG.NOM": None,
    },
    "weibo_nam_nom": {
        "PER.NAM": "PER", "LOC.NAM": "LOC", "GPE.NAM": "LOC", "ORG.NAM": "ORG",
        "PER.NOM": "PER", "LOC.NOM": "LOC", "GPE.NOM": "LOC", "ORG.NOM": "ORG",
    },
    "peoples_daily": {"PER": "PER", "LOC": "LOC", "ORG": "ORG"},
    #: what a model trained on CoNLL may predict, scored on Chinese: MISC has no Chinese gold.
    "chinese_prediction": {"PER": "PER", "LOC": "LOC", "ORG": "ORG", "MISC": None},
}

#: the labels the model is trained with (CoNLL types), IOB2, ``O`` first.
MODEL_TYPES: tuple[str, ...] = ("PER", "LOC", "ORG", "MISC")
MODEL_LABELS: tuple[str, ...] = ("O",) + tuple(f"{p}-{t}" for t in MODEL_TYPES for p in ("B", "I"))
SHARED_TYPES: tuple[str, ...] = ("PER", "LOC", "ORG")

#: the entity types each corpus format has, as the model names them: a model decoding a Chinese corpus
#: over its target's label set may predict these only (MISC forbidden; DESIGN.md, Data).
TARGET_TYPES: dict[str, tuple[str, ...]] = {
    "conll": MODEL_TYPES,
    "weibo": SHARED_TYPES,
    "peoples_daily": SHARED_TYPES,
}

#: the evaluation views of each corpus format (the first is the primary one).
VIEWS: dict[str, tuple[str, ...]] = {
    "conll": ("conll", "conll_shared"),
    "weibo": ("weibo_nam", "weibo_nam_nom"),
    "peoples_daily": ("peoples_daily",),
}


def harmonise(tags: Sequence[str], view: str) -> list[str]:
    """Map IOB2 ``tags`` through ``HARMONISATION[view]``; a type mapped to None becomes ``O``.

    Raises ``KeyError`` naming the type when ``view`` has no entry for it.
    """
    table = HARMONISATION[view]
    out: list[str] = []
    for tag in tags:
        if tag == "O":
            out.append(tag)
            continue
        prefix, etype = tag[:2], tag[2:]
        if etype not in table:
            raise KeyError(f"label view {view!r} has no entry for entity type {etype!r}")
        new = table[etype]
        out.append("O" if new is None else prefix + new)
    return out
