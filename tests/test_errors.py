"""Error analysis by entity type (issue 14.1): each category on hand-made sentences, every entity counted once."""

from __future__ import annotations

import random

import matplotlib
import pandas as pd
import pytest

from xner_lib.errors import (
    GOLD_CATEGORIES,
    PRED_CATEGORIES,
    classify_entities,
    confusions,
    error_counts,
    error_table,
    length_counts,
)
from xner_lib.evaluate import score, score_views

matplotlib.use("Agg")


def cats(gold: list[str], pred: list[str]) -> tuple[list[tuple], list[tuple]]:
    """(type, start, end, category) of the gold and of the predicted entities of one sentence."""
    out = classify_entities([gold], [pred])
    pick = lambda side: [(c.type, c.start, c.end, c.category) for c in out if c.side == side]  # noqa: E731
    return pick("gold"), pick("pred")


def row(df, etype: str = "all") -> dict:
    return df[df.type == etype].iloc[0].to_dict()


def test_a_correct_entity_is_correct_on_both_sides() -> None:
    assert cats(["B-PER", "I-PER", "O"], ["B-PER", "I-PER", "O"]) == ([("PER", 0, 2, "correct")],
                                                                       [("PER", 0, 2, "correct")])


def test_same_span_other_type_is_a_type_confusion() -> None:
    g, p = cats(["O", "B-LOC", "I-LOC"], ["O", "B-ORG", "I-ORG"])
    assert g == [("LOC", 1, 3, "type")] and p == [("ORG", 1, 3, "type")]
    table = confusions([["O", "B-LOC", "I-LOC"]], [["O", "B-ORG", "I-ORG"]])
    assert table.loc["LOC", "ORG"] == 1


def test_same_type_overlapping_other_span_is_a_boundary_error() -> None:
    g, p = cats(["B-PER", "I-PER", "I-PER", "O"], ["O", "B-PER", "I-PER", "O"])
    assert g == [("PER", 0, 3, "boundary")] and p == [("PER", 1, 3, "boundary")]


def test_other_type_overlapping_other_span_is_boundary_and_type() -> None:
    g, p = cats(["B-ORG", "I-ORG", "I-ORG", "O"], ["O", "O", "B-LOC", "I-LOC"])
    assert g == [("ORG", 0, 3, "boundary_type")] and p == [("LOC", 2, 4, "boundary_type")]


def test_unmatched_gold_is_missed_and_unmatched_prediction_spurious() -> None:
    g, p = cats(["B-PER", "O", "O", "O"], ["O", "O", "B-LOC", "O"])
    assert g == [("PER", 0, 1, "missed")] and p == [("LOC", 2, 3, "spurious")]


def test_a_gold_entity_split_in_two_is_one_gold_and_two_predicted_boundary_errors() -> None:
    gold = ["B-ORG", "I-ORG", "I-ORG", "I-ORG"]
    pred = ["B-ORG", "I-ORG", "B-ORG", "I-ORG"]
    g, p = cats(gold, pred)
    assert [c[3] for c in g] == ["boundary"] and [c[3] for c in p] == ["boundary", "boundary"]
    r = row(error_counts([gold], [pred]))
    assert (r["gold"], r["gold_boundary"], r["pred"], r["pred_boundary"]) == (1, 1, 2, 2)


def test_an_overlap_of_the_same_type_wins_over_one_of_another_type() -> None:
    gold = ["B-PER", "I-PER", "I-PER", "I-PER"]
    pred = ["B-LOC", "I-LOC", "B-PER", "I-PER"]
    g, p = cats(gold, pred)
    assert g == [("PER", 0, 4, "boundary")]
    assert p == [("LOC", 0, 2, "boundary_type"), ("PER", 2, 4, "boundary")]


def test_an_orphan_inside_tag_is_no_entity_as_in_the_strict_score() -> None:
    g, p = cats(["O", "B-PER", "O"], ["O", "I-PER", "O"])  # strict IOB2: I-PER after O opens nothing
    assert g == [("PER", 1, 2, "missed")] and p == []


def test_counts_by_type_add_up_per_side_and_name_each_category() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG", "O"],
            ["B-LOC", "I-LOC", "O", "O", "B-PER", "O", "O", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG", "O", "O", "B-ORG", "O"],
            ["O", "B-LOC", "I-LOC", "O", "O", "O", "B-PER", "O"]]
    df = error_counts(gold, pred)
    assert df.type.tolist() == ["LOC", "ORG", "PER", "all"]
    per, loc, org, total = row(df, "PER"), row(df, "LOC"), row(df, "ORG"), row(df)
    assert (per["gold_correct"], per["gold_missed"], per["pred_spurious"]) == (1, 1, 1)
    assert (loc["gold_type"], loc["gold_boundary"], loc["pred_boundary"]) == (1, 1, 1)
    assert (org["gold_boundary"], org["pred_type"], org["pred_boundary"]) == (1, 1, 1)
    for r in (per, loc, org, total):
        assert sum(r[f"gold_{c}"] for c in GOLD_CATEGORIES) == r["gold"]
        assert sum(r[f"pred_{c}"] for c in PRED_CATEGORIES) == r["pred"]
    assert total["gold"] == 5 and total["pred"] == 5
    for col in df.columns[1:]:
        assert total[col] == sum(r[col] for r in (per, loc, org))


def random_tags(rng: random.Random, n: int, types: tuple[str, ...] = ("PER", "LOC", "ORG")) -> list[str]:
    return [rng.choice(["O", "O", "O", *(f"{p}-{t}" for t in types for p in "BI")]) for _ in range(n)]


def test_on_random_sequences_nothing_is_lost_and_correct_is_seqevals_true_positives() -> None:
    rng = random.Random(0)
    for _ in range(20):
        gold = [random_tags(rng, rng.randint(1, 12)) for _ in range(30)]
        pred = [random_tags(rng, len(g)) for g in gold]
        ents = classify_entities(gold, pred)
        s = score(gold, pred)
        total = row(error_counts(gold, pred))  # asserts inside that each side adds up
        assert total["gold"] == s["strict"]["support"] == sum(c.side == "gold" for c in ents)
        assert total["pred"] == s["strict"]["n_pred"] == sum(c.side == "pred" for c in ents)
        assert total["gold_correct"] == total["pred_correct"] == s["strict"]["n_correct"]
        assert len({(c.side, c.sentence, c.start) for c in ents}) == len(ents)  # each entity once
        for etype, per in s["per_type"].items():
            assert row(error_counts(gold, pred), etype)["gold_correct"] == per["n_correct"]


def test_a_corpus_format_scores_its_primary_view() -> None:
    gold = [["B-PER.NAM", "I-PER.NAM", "B-PER.NOM", "O", "B-GPE.NAM", "I-GPE.NAM"]]
    pred = [["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-MISC"]]
    df = error_counts(gold, pred, "weibo")  # NAM only, GPE as LOC, MISC predictions as O
    total = row(df)
    assert (total["gold"], total["gold_correct"], total["gold_boundary"]) == (2, 1, 1)
    assert (total["pred"], total["pred_spurious"]) == (3, 1)  # the PER on a nominal mention
    primary = score_views(gold, pred, "weibo")["weibo_nam"]["strict"]
    assert total["gold_correct"] == primary["n_correct"] and total["pred"] == primary["n_pred"]


def test_error_table_and_figure_cover_every_corpus_and_model() -> None:
    from xner_lib.report import plot_errors

    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    results = {("weibo", "baseline"): error_counts(gold, [["O", "O", "O", "B-LOC"]]),
               ("weibo", "full"): error_counts(gold, [["B-PER", "I-PER", "O", "B-ORG"]]),
               ("pd", "baseline"): error_counts(gold, [["B-PER", "O", "O", "O"]])}
    table = error_table(results)
    assert table.columns.tolist()[:4] == ["corpus", "model", "type", "gold"]
    full = table[(table.model == "full") & (table.type == "all")].iloc[0]
    assert (full.recall, full.precision) == (0.5, 0.5)
    fig = plot_errors(table)
    assert len(fig.axes) == 2
    heights = sum(p.get_height() for p in fig.axes[0].patches)
    wb = table[(table.corpus == "weibo") & (table.type != "all")]
    assert heights == pytest.approx(2 * (wb.gold.sum() + wb.pred.sum()))  # each entity once per type, once in all


def test_length_bins_count_each_entity_by_its_own_length_and_give_recall_and_precision() -> None:
    gold = [["B-PER", "O", "B-LOC", "I-LOC", "O", "B-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG"],
            ["B-LOC", "O", "O"]]
    pred = [["B-PER", "O", "B-LOC", "O", "O", "B-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG"],
            ["O", "B-ORG", "O"]]
    df = length_counts(gold, pred).set_index("length")
    assert df.index.tolist() == ["1", "2", "3", "4", "5+"]
    # gold: PER(1) correct, LOC(2) boundary, ORG(6) correct, LOC(1) missed; pred: PER(1), LOC(1), ORG(6), ORG(1)
    assert df.loc["1", ["gold", "gold_correct", "pred", "pred_correct"]].tolist() == [2, 1, 3, 1]
    assert df.loc["2", ["gold", "gold_correct", "pred", "pred_correct"]].tolist() == [1, 0, 0, 0]
    assert df.loc["5+", ["gold", "gold_correct", "pred", "pred_correct"]].tolist() == [1, 1, 1, 1]
    assert df.loc["1", "recall"] == 0.5 and df.loc["1", "precision"] == 0.3333
    assert df["gold"].sum() == 4 and df["pred"].sum() == 4 and pd.isna(df.loc["3", "recall"])
