"""Entity-level scoring under the corpus views, and the metrics.json record (DESIGN.md, Evaluation)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from xner_lib import evaluate
from xner_lib.data.corpus import Dataset, Sentence
from xner_lib.evaluate import score, score_dataset, score_views, write_metrics

REPO = Path(__file__).resolve().parents[1]


def test_orphan_inside_start_counts_in_conlleval_but_not_strict():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["I-PER", "I-PER", "O", "B-LOC"]]
    s = score(gold, pred)
    # strict IOB2: "I-PER I-PER" is no entity; only LOC is predicted, and it is right
    assert (s["strict"]["n_pred"], s["strict"]["n_correct"], s["strict"]["support"]) == (1, 1, 2)
    assert s["strict"]["precision"] == 1.0 and s["strict"]["recall"] == 0.5
    assert s["strict"]["f1"] == pytest.approx(2 / 3)
    # conlleval: "I-PER I-PER" opens PER at 0-1, which matches the gold PER
    assert s["conlleval"]["precision"] == s["conlleval"]["recall"] == s["conlleval"]["f1"] == 1.0


def test_type_switch_inside_an_entity_splits_it_only_in_conlleval():
    s = score([["B-PER", "O"]], [["B-PER", "I-LOC"]])
    assert s["strict"]["f1"] == 1.0  # the orphan I-LOC is dropped; B-PER alone matches
    assert s["conlleval"]["n_pred"] == 2 and s["conlleval"]["precision"] == 0.5  # I-LOC opens a LOC
    assert set(s["per_type_conlleval"]) == {"PER", "LOC"} and set(s["per_type"]) == {"PER"}


def test_per_type_and_micro_numbers_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG"], ["B-LOC", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG", "O", "B-ORG"], ["B-LOC", "O"]]
    s = score(gold, pred)
    pt = s["per_type"]
    assert pt["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1, "n_pred": 1, "n_correct": 1}
    assert (pt["LOC"]["precision"], pt["LOC"]["recall"], pt["LOC"]["support"]) == (1.0, 0.5, 2)
    assert pt["LOC"]["f1"] == pytest.approx(2 / 3)
    assert (pt["ORG"]["precision"], pt["ORG"]["recall"], pt["ORG"]["n_pred"]) == (0.5, 1.0, 2)
    assert s["strict"]["precision"] == s["strict"]["recall"] == s["strict"]["f1"] == 0.75  # 3 of 4 each way
    assert (s["n_sentences"], s["n_tokens"]) == (2, 8)


def test_no_entities_anywhere_scores_zero_without_warnings(recwarn):
    s = score([["O", "O"]], [["O", "O"]])
    assert s["strict"]["f1"] == 0.0 and s["per_type"] == {}
    assert not recwarn.list


def test_misc_predictions_are_ignored_on_chinese_but_not_on_conll():
    gold = [["B-PER", "I-PER", "O"]]
    pred = [["B-PER", "I-PER", "B-MISC"]]
    pd = score_views(gold, pred, "peoples_daily")
    assert list(pd) == ["peoples_daily"] and pd["peoples_daily"]["strict"]["precision"] == 1.0
    conll = score_views(gold, pred, "conll")
    assert conll["conll"]["strict"]["precision"] == 0.5 and "MISC" in conll["conll"]["per_type"]
    weibo = score_views([["B-PER.NAM", "I-PER.NAM", "O"]], pred, "weibo")
    assert all(v["strict"]["precision"] == 1.0 for v in weibo.values())


def test_weibo_nominal_mentions_drop_from_primary_view_and_count_in_nam_nom():
    gold = [["B-PER.NOM", "I-PER.NOM", "O", "B-GPE.NAM", "I-GPE.NAM"]]
    pred = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]]
    views = score_views(gold, pred, "weibo")
    assert list(views) == ["weibo_nam", "weibo_nam_nom"] and evaluate.primary_view("weibo") == "weibo_nam"
    nam, nom = views["weibo_nam"]["strict"], views["weibo_nam_nom"]["strict"]
    assert (nam["support"], nam["n_pred"], nam["precision"], nam["recall"]) == (1, 2, 0.5, 1.0)  # GPE -> LOC
    assert (nom["support"], nom["precision"], nom["recall"]) == (2, 1.0, 1.0)


def test_score_dataset_reads_gold_and_format_from_the_dataset():
    sents = [Sentence(["王", "小", "明"], ["B-PER.NAM", "I-PER.NAM", "I-PER.NAM"], [1, 2, 3]),
             Sentence(["北", "京"], ["B-GPE.NOM", "I-GPE.NOM"], [5, 6])]
    ds = Dataset("weibo", "test", "weibo", Path("test.txt"), sents)
    out = score_dataset(ds, [["B-PER", "I-PER", "I-PER"], ["B-MISC", "I-MISC"]])
    assert out["weibo_nam"]["strict"]["f1"] == 1.0
    assert out["weibo_nam_nom"]["strict"]["recall"] == 0.5


def test_misaligned_predictions_raise_naming_the_sentence():
    gold = [["O"], ["B-PER", "O"], ["O"]]
    with pytest.raises(ValueError, match="gold has 3 sentences but predictions have 2"):
        score(gold, gold[:2])
    with pytest.raises(ValueError, match="sentence 1: gold has 2 tags but the prediction has 1"):
        score(gold, [["O"], ["B-PER"], ["O"]])
    with pytest.raises(ValueError, match="sentence 2"):
        score_views(gold, [["O"], ["B-PER", "O"], ["O", "O"]], "peoples_daily")
    with pytest.raises(ValueError, match="unknown corpus format"):
        score_views(gold, gold, "ontonotes")


@dataclass
class _Cfg:
    lr: float
    out: Path


def test_metrics_json_records_run_code_and_environment(tmp_path):
    scores = {"peoples_daily": score([["B-PER", "O"]], [["B-PER", "O"]]), "loss": float("nan")}
    rec = write_metrics(tmp_path / "runs" / "seed0", variant="baseline", encoder="e5-small-offline", seed=np.int64(0),
                        config={"head": _Cfg(4e-5, Path("x/y")), "dims": (100, 200), "w": np.float32(0.5)},
                        scores=scores, extra={"minutes": 1.5}, repo_dir=REPO)
    path = tmp_path / "runs" / "seed0" / "metrics.json"
    on_disk = json.loads(path.read_text(encoding="utf-8"))
    assert on_disk == rec
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temporary file left
    assert {"variant", "encoder", "seed", "config", "scores", "extra", "git", "versions", "timestamp_utc"} <= set(rec)
    assert rec["seed"] == 0 and rec["variant"] == "baseline" and rec["extra"] == {"minutes": 1.5}
    assert rec["config"] == {"head": {"lr": 4e-5, "out": "x/y"}, "dims": [100, 200], "w": 0.5}
    assert rec["scores"]["loss"] is None  # strict JSON: NaN is recorded as null
    assert rec["scores"]["peoples_daily"]["strict"]["f1"] == 1.0
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert rec["git"]["commit"] == head and isinstance(rec["git"]["dirty"], bool)
    assert set(rec["versions"]) == {*evaluate.VERSIONED_PACKAGES, "python"}
    assert rec["versions"]["seqeval"] == "1.2.2"
    written = datetime.strptime(rec["timestamp_utc"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - written).total_seconds()) < 600


def test_metrics_outside_a_repository_say_unknown(tmp_path):
    rec = write_metrics(tmp_path / "m.json", variant="v", encoder="e", seed=1, config={}, scores={},
                        repo_dir=tmp_path)
    assert rec["git"] == {"commit": "unknown", "dirty": None}
    assert (tmp_path / "m.json").exists()


def test_failed_metrics_write_keeps_the_old_file(tmp_path, monkeypatch):
    write_metrics(tmp_path, variant="old", encoder="e", seed=1, config={}, scores={})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(evaluate.json, "dump", boom)
    with pytest.raises(OSError, match="disk full"):
        write_metrics(tmp_path, variant="new", encoder="e", seed=1, config={}, scores={})
    assert json.loads((tmp_path / "metrics.json").read_text())["variant"] == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_evaluation_does_not_import_model_or_training_code():
    code = "import sys, xner_lib.evaluate; print(sorted(m for m in sys.modules if m.startswith('xner_lib')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    loaded = set(ast.literal_eval(out))
    assert "xner_lib.evaluate" in loaded and not {"xner_lib.train", "xner_lib.model"} & loaded


def test_git_state_is_dirty_for_changed_code_but_not_for_rewritten_results(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results" / "cpu").mkdir(parents=True)
    (tmp_path / "results" / "cpu" / "metrics.json").write_text("{}\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    state = evaluate.git_state(tmp_path / "results")
    assert len(state["commit"]) == 40 and state["dirty"] is False
    (tmp_path / "results" / "cpu" / "metrics.json").write_text('{"rerun": true}\n')  # a rerun rewrites results
    assert evaluate.git_state(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert evaluate.git_state(tmp_path / "results")["dirty"] is True


def test_paired_interval_and_change_table_against_a_hand_computation():
    from xner_lib.report import change_table, paired_interval

    mean, lo, hi = paired_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and hi - mean == pytest.approx(4.302653 * 1.0 / np.sqrt(3), abs=1e-5) and lo == 4.0 - hi

    def run(variant, seed, weibo, pd, variants=None):
        sc = {"weibo_test": {"weibo_nam": {"strict": {"f1": weibo}}},
              "peoples_daily_test": {"peoples_daily": {"strict": {"f1": pd}}}}
        return {"variant": variant, "seed": seed, "scores": sc, "extra": {"variant_scores": variants or {}}}

    alt = {"peoples_daily_test": {"peoples_daily": {"strict": {"f1": 0.5}}}}
    metrics = [run("base", 1, 0.40, 0.50, {"v": {**alt}}), run("base", 2, 0.44, 0.56, {"v": {**alt}}),
               run("other", 1, 0.42, 0.51), run("other", 2, 0.50, 0.55), run("other", 3, 0.9, 0.9)]
    t = change_table(metrics, "base", {"decode v": ("decode", "v"), "run other": ("run", "other")}).set_index("change")
    assert t.loc["reference", "Weibo (NAM) F1"] == pytest.approx(0.42)
    assert t.loc["run other", "Weibo (NAM) diff"] == pytest.approx(0.04)  # (0.02 + 0.06) / 2; seed 3 unpaired
    assert t.loc["decode v", "People's Daily diff"] == pytest.approx(-0.03)  # (0.0 - 0.06) / 2
    assert np.isnan(t.loc["decode v", "Weibo (NAM) F1"])  # the variant does not score Weibo
    assert t.loc["run other", "Weibo (NAM) 95% CI"] == "[-0.2141, +0.2941]"  # 0.04 +- 12.706 * 0.02828 / sqrt 2
    one = change_table(metrics[:3], "base", {"run other": ("run", "other")}).set_index("change")
    assert one.loc["run other", "Weibo (NAM) diff"] == pytest.approx(0.02)
    assert one.loc["run other", "Weibo (NAM) 95% CI"] == "none (one pair)"
    from xner_lib.report_file import parse_interval, verdict

    assert verdict(*parse_interval("none (one pair)")) == "no interval"


def test_own_selection_table_pairs_the_average_with_the_evaluation_best_of_the_same_runs():
    from xner_lib.report import own_selection_table

    def run(variant, seed, pd, selected=None):
        sc = {"peoples_daily_test": {"peoples_daily": {"strict": {"f1": pd}}}}
        vs = {"selected": {"peoples_daily_test": {"peoples_daily": {"strict": {"f1": selected}}}}} if selected else {}
        return {"variant": variant, "seed": seed, "scores": sc, "extra": {"variant_scores": vs}}

    metrics = [run("baseline", 1, 0.9), run("avg", 1, 0.50, 0.47), run("avg", 2, 0.54, 0.55)]
    t = own_selection_table(metrics, {"avg": "Checkpoint average"}).set_index("change")
    assert t.index.tolist() == ["Checkpoint average: average", "Checkpoint average: evaluation best"]
    assert t.loc["Checkpoint average: average", "People's Daily F1"] == pytest.approx(0.52)
    assert t.loc["Checkpoint average: evaluation best", "People's Daily F1"] == pytest.approx(0.51)
    assert t.loc["Checkpoint average: evaluation best", "People's Daily diff"] == pytest.approx(-0.01)  # (-.03+.01)/2
    assert t.loc["Checkpoint average: evaluation best", "seeds"] == "1 2"
    assert own_selection_table(metrics[:1], {}).empty  # no run scores its evaluation best beside an average


def test_selection_table_picks_a_candidate_only_beyond_the_baselines_seed_noise():
    from xner_lib.report import selection_table

    def run(variant, seed, dev, lr, weibo=0.9, stopped=False, config=None):
        return {"variant": variant, "seed": seed, "config": {"lr": lr, "head_lr": 1e-3, "seed": seed, **(config or {})},
                "scores": {"weibo_test": {"weibo_nam": {"strict": {"f1": weibo}}}},
                "extra": {"best_dev_f1": dev, "best_step": 100 * seed, "steps": 300, "stopped_early": stopped,
                          "seconds": {"train": 600.0}}}

    # sigma 0.002; one paired seed: threshold 2 * 0.002 * sqrt(2) = 0.00566
    base = [run("baseline", 1, 0.930, 5e-5), run("baseline", 2, 0.934, 5e-5), run("baseline", 3, 0.932, 5e-5)]
    # +0.005 on one seed is within the threshold, however well the candidate does on Chinese; a field the
    # reference record lacks (an older record) is not a change
    small = selection_table([*base, run("lr_hi", 1, 0.935, 1e-4, weibo=0.99, config={"device": "cpu"})],
                            "baseline", ["lr_hi"])
    assert small.loc[small.selected, "variant"].tolist() == ["baseline"]
    assert small.attrs["sigma"] == pytest.approx(0.002)
    row = small.set_index("variant").loc["lr_hi"]
    assert row["settings"] == "lr 5e-05 -> 0.0001" and row["threshold"] == pytest.approx(0.0057, abs=1e-4)
    assert "weibo" not in " ".join(small.columns).lower()
    # +0.006 (one seed: threshold 0.00566) and +0.004 over two seeds (threshold 0.004): the larger wins;
    # an unpaired seed counts in neither the difference nor n
    big = selection_table([*base, run("lr_hi", 1, 0.936, 1e-4, stopped=True), run("lr_lo", 2, 0.939, 3e-5),
                           run("lr_lo", 3, 0.935, 3e-5), run("lr_lo", 4, 0.99, 3e-5)],
                          "baseline", ["lr_lo", "lr_hi", "lr_none"]).set_index("variant")
    assert big.loc["lr_hi", "diff"] == pytest.approx(0.006) and big.loc["lr_lo", "diff"] == pytest.approx(0.004)
    assert big.loc["lr_lo", "paired seeds"] == 2 and big.loc["lr_lo", "threshold"] == pytest.approx(0.004)
    assert big.selected.tolist() == [False, False, True] and list(big.index) == ["baseline", "lr_lo", "lr_hi"]
    assert big.loc["lr_hi", "stopped early"] == 1 and big.loc["lr_lo", "seeds"] == "2 3 4"
    # one baseline seed: no sigma, nothing beats it; a candidate on no baseline seed is not compared
    lone = selection_table([base[0], run("lr_hi", 1, 0.99, 1e-4)], "baseline", ["lr_hi"]).set_index("variant")
    assert lone.selected.tolist() == [True, False] and np.isnan(lone.loc["lr_hi", "threshold"])
    apart = selection_table([*base, run("lr_hi", 7, 0.99, 1e-4)], "baseline", ["lr_hi"]).set_index("variant")
    assert apart.selected.tolist() == [True, False] and apart.loc["lr_hi", "paired seeds"] == 0
    assert np.isnan(apart.loc["lr_hi", "diff"])
    with pytest.raises(ValueError, match="no run of the reference"):
        selection_table(base[1:], "base", ["lr_hi"])
