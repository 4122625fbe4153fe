"""The smoke profile of each notebook, executed through papermill as run_all.sh does."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import papermill as pm
import pytest

from xner_lib.config import REPO_ROOT, load_profile, notebook_subset


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _run(name: str, tmp_path: Path) -> Path:
    """Execute notebook ``name`` on the smoke profile as run_all.sh does (its own parameters only); check
    that papermill warned of no unknown parameter and that the executed copy holds no progress-bar text."""
    path = REPO_ROOT / "notebooks" / name
    params = notebook_subset(load_profile("smoke"), path) | {"results_root": str(tmp_path)}
    out = tmp_path / name
    records = _Records()
    logger = logging.getLogger("papermill")
    logger.addHandler(records)
    try:
        pm.execute_notebook(str(path), str(out), parameters=params, kernel_name="python3", cwd=str(REPO_ROOT),
                            progress_bar=False)
    finally:
        logger.removeHandler(records)
    assert not [m for m in records.messages if "unknown parameter" in m], records.messages
    streams = [o for c in json.loads(out.read_text())["cells"] for o in c.get("outputs", [])
               if o["output_type"] == "stream"]
    text = "".join("".join(o["text"]) if isinstance(o["text"], list) else o["text"] for o in streams)
    assert "\r" not in text and "IProgress not found" not in text and len(text) < 20_000, text[-2000:]
    return tmp_path / "results" / "smoke"


def _with_cpu_lexicon(tmp_path: Path) -> Path:
    """The smoke results' ``alignment/`` holding the committed cpu lexicon (02 runs before 03-05 in run_all.sh and
    writes its own; here the cpu one stands in for it)."""
    alignment = tmp_path / "results" / "smoke" / "alignment"
    alignment.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "results" / "cpu" / "alignment" / "lexicon.tsv", alignment / "lexicon.tsv")
    return alignment


@pytest.mark.slow
def test_01_data_smoke_writes_table1_and_figures(tmp_path: Path, data_dir: Path) -> None:
    res = _run("01_data.ipynb", tmp_path)
    t1 = pd.read_csv(res / "tables" / "table1.csv")
    assert {"dataset", "split", "sentences", "tokens", "entities", "paper"} <= set(t1.columns)
    got = {(r.dataset, r.split): r.sentences for r in t1.itertuples()}
    assert got[("conll2003", "train")] == 14041 and got[("weibo", "test")] == 270
    assert got[("peoples_daily", "test")] == 4636
    assert (res / "tables" / "table1.md").read_text().startswith("| dataset")
    for fig in ("entity_types.png", "sentence_lengths.png"):
        assert (res / "figures" / fig).stat().st_size > 5000
    ceiling = pd.read_csv(res / "tables" / "unit_ceiling.csv")
    assert set(ceiling.units) == {"token", "char"} and set(ceiling.dataset) == {"weibo", "peoples_daily"}
    assert (ceiling[ceiling.units == "char"].ceiling_f1 == 1.0).all()
    assert ceiling[(ceiling.dataset == "weibo") & (ceiling.split == "test")].links.tolist() == [52, 52]


@pytest.mark.slow
def test_03_training_smoke_writes_table4_and_metrics(tmp_path: Path, data_dir: Path) -> None:
    _with_cpu_lexicon(tmp_path)  # the transfer's lexicon
    res = _run("03_training.ipynb", tmp_path)
    t4 = pd.read_csv(res / "tables" / "table4.csv")
    assert {"model", "dataset", "f1_mean", "f1_std", "n_seeds", "paper_f1"} <= set(t4.columns)
    assert set(t4.dataset) >= {"WeiboNER test (NAM)", "People's Daily test"}
    metrics = sorted((res / "runs").glob("*/metrics.json"))
    assert [m.parent.name for m in metrics] == ["adv_att-seed1", "adv_att_pos-seed1", "baseline-seed1", "frozen-seed1",
                                                "lr_high-seed1", "no_misc_class-seed1"]
    selection = pd.read_csv(res / "tables" / "selection.csv")
    # one baseline seed in smoke: no seed std to judge by, so the train_ settings stay whatever lr_high scored
    assert selection.variant.tolist() == ["baseline", "lr_high"] and selection.selected.tolist() == [True, False]
    assert selection["paired seeds"].tolist() == [0, 1] and selection.threshold.isna().all()
    assert selection.settings.tolist()[1] == "lr 4e-05 -> 0.0001"
    paired = pd.read_csv(res / "tables" / "table4_paired.csv")
    assert paired.change.tolist()[0] == "reference" and len(paired) == 3
    assert set(t4.model.str.contains("Word-adv")) == {True, False}
    assert (res / "figures" / "training_curves.png").is_file()
    changes = pd.read_csv(res / "tables" / "baseline_changes.csv")
    assert changes.change.tolist() == ["reference", "MISC allowed on Chinese", "links not decoded as O", "neither",
                                       "token units", "stopped at epoch 0.7", "trained without a MISC class"]
    assert "Weibo (NAM) diff" in changes.columns


@pytest.mark.slow
def test_02_alignment_smoke_saves_mapping_lexicon_and_curves(tmp_path: Path, data_dir: Path) -> None:
    import json

    import numpy as np

    res = _run("02_alignment.ipynb", tmp_path)
    adir = res / "alignment"
    u = np.load(adir / "mapping.npy")
    assert u.shape[0] == u.shape[1] and np.allclose(u.T @ u, np.eye(u.shape[0]), atol=1e-3)
    lexicon = pd.read_csv(adir / "lexicon.tsv", sep="\t")
    assert list(lexicon.columns) == ["english", "chinese", "cosine"] and len(lexicon) > 0
    metrics = json.loads((adir / "metrics.json").read_text())
    assert {"criterion", "check_a", "check_b"} <= set(metrics["scores"])
    scores = metrics["scores"]
    assert [c["start"] for c in scores["candidates"]] == ["identity", "similarity"]  # configs: align_starts
    assert [c["start"] for c in scores["check_a"]["candidates"]] == ["identity", "similarity"]
    best = max(scores["candidates"], key=lambda c: c["criterion"])
    assert scores["chosen_start"] == best["start"] and best["chosen"]  # the unsupervised criterion picks
    assert scores["criterion"] == pytest.approx(best["criterion"])
    assert (adir / "curves.csv").is_file() and (res / "figures" / "alignment_curves.png").is_file()
    assert metrics["extra"]["inputs"]["encoder"] and set(metrics["extra"]["files"]) >= {"mapping.npy", "lexicon.tsv"}
    # run again: the outputs are read back (their inputs and files hold), not aligned again and rewritten
    written = {p.name: p.read_bytes() for p in adir.iterdir()}
    _run("02_alignment.ipynb", tmp_path)
    assert {p.name: p.read_bytes() for p in adir.iterdir()} == written
    outputs = [o for c in json.loads((tmp_path / "02_alignment.ipynb").read_text())["cells"]
               for o in c.get("outputs", []) if o["output_type"] == "stream"]
    printed = "".join("".join(o["text"]) for o in outputs)
    assert "alignment: read back from" in printed and "made now" not in printed and "read back [" in printed


@pytest.mark.slow
def test_04_ablation_smoke_writes_table5_under_both_protocols(tmp_path: Path, data_dir: Path) -> None:
    import numpy as np

    # 02 runs before 04 (run_all.sh): its lexicon (the committed cpu one stands in) and a map of the tiny
    # encoder's size for the "U started from 02's map" row
    alignment = _with_cpu_lexicon(tmp_path)
    from xner_lib.encoders import load_encoder

    np.save(alignment / "mapping.npy", np.eye(load_encoder("tiny-random-bert").hidden_size, dtype=np.float32))
    res = _run("04_ablation.ipynb", tmp_path)
    t5 = pd.read_csv(res / "tables" / "table5.csv")
    assert t5.model.tolist() == ["Full model", "Without attention", "Without position", "Without transfer",
                                 "Without adversarial", "U started from 02's map"]
    assert t5["paper Weibo (NAM)"].tolist()[:3] == [0.5192, 0.5012, 0.5107]
    assert t5["joint Weibo (NAM) F1"].notna().tolist() == [True, True, True, False, False, False]
    assert t5["shared People's Daily F1"].notna().all()
    runs = {m.parent.name for m in (res / "runs").glob("*/metrics.json")}
    assert {"baseline-seed1", "adv_att_pos-seed1", "shared-adv_att_pos-seed1", "shared-u_from_alignment-seed1"} <= runs
    assert (res / "figures" / "table5_ablation.png").is_file()
    t3 = pd.read_csv(res / "tables" / "table3.csv")
    assert t3.model.str.split(" ").str[0].tolist() == ["CRF,", "Pipeline", "Static", "ELMo", "tiny-random-bert",
                                                        "tiny-random-bert"]
    assert t3["paper F1"].tolist() == [0.35, 0.462, 0.329, 0.4131, 0.4693, 0.4693]
    rebuilt = t3.note.isna() | (t3.note == "")
    assert rebuilt.tolist() == [True, False, True, False, True, True]
    assert t3.loc[rebuilt, "People's Daily F1"].notna().all() and t3.loc[~rebuilt, "People's Daily F1"].isna().all()
    few = pd.read_csv(res / "tables" / "few_shot.csv")
    pairs = sorted(set(zip(few.model, few.sentences, strict=True)))
    assert pairs == [("Baseline", 0), ("Baseline", 5), ("Full model", 0), ("Full model", 5)]
    assert set(few.dataset) == {"Weibo (NAM)", "People's Daily"} and (few.n_seeds == 1).all()
    assert (res / "figures" / "few_shot.png").is_file()
    assert {"feature_crf-seed1", "static_bilstm_crf-seed1", "frozen-seed1", "shared-adv_att_pos-fs5-seed1",
            "shared-baseline-fs5-seed1", "shared-baseline-seed1"} <= {
        m.parent.name for m in (res / "runs").glob("*/metrics.json")}
    beyond = pd.read_csv(res / "tables" / "beyond.csv")
    assert beyond.change.tolist() == ["reference", "Full model", "Self-training (baseline teacher)",
                                     "Self-training (teachers of every seed, vote)", "Lower 1 layer frozen",
                                     "Translate-train (lexicon)", "Checkpoint average (epochs 0.5-1)"]
    assert beyond["Weibo (NAM+NOM) F1"].notna().all() and beyond["People's Daily diff"].notna().tolist() == [
        False, True, True, True, True, True, True]
    own = pd.read_csv(res / "tables" / "beyond_selected.csv")  # the averaged runs against their own evaluation best
    assert own.change.tolist() == ["Checkpoint average (epochs 0.5-1): average",
                                   "Checkpoint average (epochs 0.5-1): evaluation best"]
    assert own["People's Daily F1"].notna().all() and own["People's Daily diff"].notna().tolist() == [False, True]
    assert (res / "runs" / "self_training-seed1" / "metrics.json").is_file()
    assert (res / "runs" / "self_training_vote-seed1" / "metrics.json").is_file()


@pytest.mark.slow
def test_06_report_smoke_writes_report_md_from_the_tables_it_finds(tmp_path: Path) -> None:
    tables = tmp_path / "results" / "smoke" / "tables"
    tables.mkdir(parents=True)
    pd.DataFrame([{"model": "base", "dataset": "People's Daily test", "f1_mean": 0.5, "f1_std": 0.01, "n_seeds": 3,
                   "paper_f1": 0.4693}]).to_csv(tables / "table4.csv", index=False)
    res = _run("06_report.ipynb", tmp_path)
    text = (res / "REPORT.md").read_text(encoding="utf-8")
    assert "base, People's Daily test: ours 0.5000 ± 0.0100 (3 seeds) against the paper's 0.4693" in text
    assert "Not yet made in this profile: Table 1" in text
    assert json.loads((res / "timings.json").read_text(encoding="utf-8"))["runs"] == []  # no run yet, none invented


@pytest.mark.slow
def test_05_case_study_smoke_writes_figure4_heat_maps_and_error_tables(tmp_path: Path, data_dir: Path) -> None:
    _with_cpu_lexicon(tmp_path)  # the transfer's lexicon
    res = _run("05_case_study.ipynb", tmp_path)
    # Figure 4 for the first test sentence of each Chinese set and the paper's own sentence
    for name in ("weibo_test_0", "peoples_daily_test_0", "text_0"):
        case = pd.read_csv(res / "tables" / f"case_{name}.csv", keep_default_na=False)
        rows = case.row.tolist()
        assert rows == (["token", "baseline", "full model"] + ([] if name == "text_0" else ["gold"])), rows
        assert "<table" in (res / "tables" / f"case_{name}.html").read_text()
        assert (res / "figures" / f"attention_{name}.png").stat().st_size > 5000
    text = pd.read_csv(res / "tables" / "case_text_0.csv", keep_default_na=False)
    assert "".join(text.iloc[0, 1:]) == "上司会以为你不尊重他"
    weibo = pd.read_csv(res / "tables" / "case_weibo_test_0.csv", keep_default_na=False)
    assert weibo.set_index("row").loc["gold"].tolist().count("B-PER") == 1  # 李开复, NAM
    assert "background-color" in (res / "tables" / "case_weibo_test_0.html").read_text()  # its gold PER coloured
    # the error analysis: both corpora and models, each side adding up, the run's own counts
    errors = pd.read_csv(res / "tables" / "errors_by_type.csv")
    assert set(errors.corpus) == {"weibo_test (weibo_nam)", "peoples_daily_test (peoples_daily)"}
    assert set(errors.model) == {"baseline", "full model"}
    gold = errors[["gold_correct", "gold_type", "gold_boundary", "gold_boundary_type", "gold_missed"]].sum(axis=1)
    pred = errors[["pred_correct", "pred_type", "pred_boundary", "pred_boundary_type", "pred_spurious"]].sum(axis=1)
    assert (gold == errors.gold).all() and (pred == errors.pred).all()
    for (corpus, model), grp in errors.groupby(["corpus", "model"]):
        typed = grp[grp.type != "all"]
        assert grp[grp.type == "all"].gold.item() == typed.gold.sum() > 0, (corpus, model)
    runs = {(m.parent.name) for m in (res / "runs").glob("*/metrics.json")}
    assert runs == {"baseline-seed1", "adv_att_pos-seed1"}
    assert (res / "checkpoints" / "adv_att_pos-seed1" / "teacher").is_dir()
    assert (res / "tables" / "error_confusions.csv").is_file()
    agreement = pd.read_csv(res / "tables" / "error_agreement.csv")
    assert len(agreement) == 4 and agreement.same.all(), agreement  # the runs' own strict counts
    assert (res / "figures" / "errors_by_type.png").stat().st_size > 5000
    lengths = pd.read_csv(res / "tables" / "errors_by_length.csv")
    for (corpus, model), grp in lengths.groupby(["corpus", "model"]):  # every entity in one length bin
        total = errors[(errors.corpus == corpus) & (errors.model == model) & (errors.type == "all")]
        assert grp.gold.sum() == total.gold.item() and grp.pred.sum() == total.pred.item(), (corpus, model)
        assert grp.gold_correct.sum() == total.gold_correct.item()
