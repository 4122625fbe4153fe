"""REPORT.md (notebook 06): tables gathered as written, the generated reading, compute per table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from xner_lib import report
from xner_lib.report_file import (
    compute_table,
    gather,
    paired_readings,
    parse_interval,
    timings,
    verdict,
    write_report,
    write_timings,
)


def _run(variant: str, seed: int, pd_f1: float, weibo_f1: float, train_s: float = 600.0) -> dict:
    def s(f1: float) -> dict:
        return {"strict": {"precision": f1, "recall": f1, "f1": f1}, "conlleval": {"f1": f1}}

    return {"variant": variant, "seed": seed, "git": {"commit": "abcdef0123"},
            "scores": {"peoples_daily_test": {"peoples_daily": s(pd_f1)}, "weibo_test": {"weibo_nam": s(weibo_f1)},
                       "conll_dev": {"conll": s(0.9)}},
            "extra": {"seconds": {"train": train_s, "predict_conll_dev": 60.0}}}


def test_interval_cells_parse_and_verdicts_need_the_whole_interval_on_one_side() -> None:
    assert parse_interval("[+0.0100, +0.0300]") == (0.01, 0.03)
    assert parse_interval("[-0.0200, +0.0050]") == (-0.02, 0.005)
    assert all(math.isnan(x) for x in parse_interval("[+nan, +nan]"))
    assert all(math.isnan(x) for x in parse_interval(float("nan")))
    assert verdict(0.001, 0.03) == "gain" and verdict(-0.03, -0.001) == "loss"
    assert verdict(-0.01, 0.02) == "no difference shown" and verdict(0.0, 0.02) == "no difference shown"
    assert verdict(math.nan, math.nan) == "no interval"


def test_readings_come_from_the_paired_table_as_written() -> None:
    runs = [_run("baseline", s, 0.50 + 0.01 * s, 0.40) for s in (1, 2, 3)]
    runs += [_run("adv_att_pos", s, 0.55 + 0.01 * s + 0.001 * s * s, 0.40 + 0.01 * (s - 2)) for s in (1, 2, 3)]
    table = report.change_table(runs, "baseline", {"full model": ("run", "adv_att_pos")})
    lines = paired_readings(table, "change")
    pd_line = next(r for r in lines if "People's Daily" in r)
    assert pd_line.startswith("full model, People's Daily: +5.") and pd_line.endswith(": gain")
    weibo_line = next(r for r in lines if "Weibo" in r)
    assert weibo_line.startswith("full model, Weibo (NAM): +0.00 points") and weibo_line.endswith("no difference shown")
    assert not any(r.startswith("reference") for r in lines)  # the reference row has no difference


def test_compute_is_charged_to_each_tables_runs() -> None:
    runs = [_run("baseline", 1, 0.5, 0.4, 600), _run("adv_att_pos", 1, 0.5, 0.4, 1200),
            _run("shared-without_attention", 1, 0.5, 0.4, 120), _run("feature_crf", 1, 0.1, 0.1, 240),
            _run("shared-adv_att_pos-fs10", 1, 0.6, 0.4, 300), _run("lr_1e-4", 1, 0.5, 0.4, 900),
            _run("something_new", 1, 0.5, 0.4, 60)]
    t = compute_table(runs).set_index("table")
    assert t.loc["Learning rates chosen on CoNLL dev (03)", "runs"] == 1
    assert t.index[-1] == "Other runs (no table above)" and t.loc["Other runs (no table above)", "runs"] == 1
    assert t.loc["Table 4 and the baseline's changes (03)", "runs"] == 2
    assert t.loc["Table 4 and the baseline's changes (03)", "minutes"] == pytest.approx((660 + 1260) / 60, abs=0.05)
    assert t.loc["Table 5, shared protocol (04)", "minutes"] == 3.0
    assert t.loc["Table 3, static rows (04)", "runs"] == 1
    assert "Table 5, joint protocol (04)" not in t.index  # no run, no row
    assert t.loc["Few-shot curve (04)", "runs"] == 1 and t.loc["Table 5, shared protocol (04)", "runs"] == 1


def test_report_shows_written_tables_names_missing_ones_and_adds_no_number(tmp_path: Path) -> None:
    runs = [_run("baseline", s, 0.50 + 0.01 * s, 0.40) for s in (1, 2)]
    for r in runs:
        path = tmp_path / "runs" / f"{r['variant']}-seed{r['seed']}" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(r))
    table = pd.DataFrame([{"model": "base", "dataset": "People's Daily test", "f1_mean": 0.515, "f1_std": 0.0071,
                           "n_seeds": 2, "paper_f1": 0.4693}])
    report.write_table(table, tmp_path / "tables", "table4")
    path = write_report(tmp_path, "toy")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# xner: toy profile report")
    assert "base, People's Daily test: ours 0.5150 ± 0.0071 (2 seeds) against the paper's 0.4693 (+4.57 points)" in text
    assert "Table 5 (table5.csv, notebook 04_ablation)" in text and "Table 3 (table3.csv" in text
    assert "## Table 4: the baseline and the paper's model, zero-shot" in text
    assert "from 2 runs (made at commits abcdef01)" in text
    g = gather(tmp_path)
    assert set(g.tables) == {"table4"} and "table4" not in g.missing and len(g.runs) == 2


def test_timings_sum_recorded_parts_and_call_a_notebook_warm_only_when_no_run_finished_during_it(
        tmp_path: Path) -> None:
    runs = [{**_run("baseline", 1, 0.5, 0.4, 600), "timestamp_utc": "2026-01-01T10:30:00Z"},
            {**_run("feature_crf", 1, 0.1, 0.1, 240), "timestamp_utc": "2026-01-01T08:00:00Z"}]
    for r in runs:
        path = tmp_path / "runs" / f"{r['variant']}-seed{r['seed']}" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(r))

    def notebook(stem: str, start: str, end: str, seconds: float) -> None:
        path = tmp_path / "notebooks" / f"{stem}.ipynb"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"cells": [], "metadata": {"papermill": {
            "start_time": start, "end_time": end, "duration": seconds}}}))

    notebook("03_training", "2026-01-01T10:00:00.5+00:00", "2026-01-01T11:00:00+00:00", 3600)
    notebook("01_data", "2026-01-01T12:00:00+00:00", "2026-01-01T12:01:00+00:00", 60)
    t = timings(gather(tmp_path))
    by_nb = {r["notebook"]: r for r in t["notebooks"]}
    assert by_nb["03_training"]["runs finished during it"] == 1 and not by_nb["03_training"]["warm"]
    assert by_nb["01_data"]["warm"] and by_nb["01_data"]["minutes"] == 1.0
    assert t["run_minutes"] == pytest.approx((660 + 300) / 60, abs=0.1)
    assert t["warm_minutes"] is None and t["cold_minutes"] is None  # 03 trained a run: no warm time yet
    notebook("03_training", "2026-01-01T13:00:00+00:00", "2026-01-01T13:02:00+00:00", 120)
    t = json.loads(write_timings(gather(tmp_path)).read_text())
    assert t["warm_minutes"] == 3.0 and t["cold_minutes"] == pytest.approx(3.0 + t["run_minutes"])
    assert "Each notebook's last execution" in write_report(tmp_path, "toy").read_text()


def test_report_says_which_notebooks_tabulated_only_the_runs_made(tmp_path: Path) -> None:
    path = tmp_path / "notebooks" / "04_ablation.ipynb"
    path.parent.mkdir()
    path.write_text(json.dumps({"cells": [], "metadata": {"papermill": {"parameters": {"missing_runs": "skip"}}}}))
    (tmp_path / "notebooks" / "03_training.ipynb").write_text(
        json.dumps({"cells": [], "metadata": {"papermill": {"parameters": {"missing_runs": "train"}}}}))
    text = write_report(tmp_path, "toy").read_text(encoding="utf-8")
    assert "Executed with `missing_runs: skip` (the profile's runs not all made yet): 04_ablation." in text


def test_selection_readings_state_each_candidate_against_the_threshold_and_the_outcome(tmp_path: Path) -> None:
    from xner_lib.report_file import selection_readings

    def run(variant: str, seed: int, dev: float, lr: float) -> dict:
        return {"variant": variant, "seed": seed, "config": {"lr": lr, "seed": seed},
                "extra": {"best_dev_f1": dev, "best_step": 300, "steps": 300, "seconds": {"train": 600.0}}}

    base = [run("baseline", s, d, 5e-5) for s, d in ((1, 0.930), (2, 0.934), (3, 0.932))]
    runs = [*base, run("lr_lo", 1, 0.925, 3e-5), run("lr_hi", 1, 0.938, 1e-4), run("lr_far", 9, 0.99, 2e-4)]
    table = report.selection_table(runs, "baseline", ["lr_lo", "lr_hi", "lr_far"])
    report.write_table(table, tmp_path, "selection")  # read back as REPORT.md reads it
    lines = selection_readings(pd.read_csv(tmp_path / "selection.csv"))
    assert lines[0] == ("Selection: lr_lo (lr 5e-05 -> 3e-05), CoNLL dev 0.9250 on 1 paired seed(s), -0.0050 against "
                        "the baseline (threshold +0.0057): not selected")
    assert lines[1].startswith("Selection: lr_hi (lr 5e-05 -> 0.0001), CoNLL dev 0.9380") and \
        lines[1].endswith("+0.0080 against the baseline (threshold +0.0057): selected")
    assert lines[2] == "Selection: lr_far (lr 5e-05 -> 0.0002) shares no seed with the baseline: not compared"
    assert lines[3] == "Selection: the profile's settings move to lr_hi's (chosen on CoNLL dev only)"
    kept = selection_readings(report.selection_table(runs[:4], "baseline", ["lr_lo"]))
    assert kept[-1] == "Selection: the profile's settings stay (chosen on CoNLL dev only)"


def test_report_puts_the_latest_bench_peer_beside_our_baseline(tmp_path: Path) -> None:
    peer = {"steps": 1130, "planned_steps": 2634, "minutes_budget": 26.5, "stopped_by_clock": True, "seconds": 1593.0,
            "steps_per_s": 0.709, "scores": {"peoples_daily_test": {"f1": 0.4123}, "weibo_test": {"f1": 0.3012}}}
    ours = {"seeds": {"4": {"train_minutes": 24.5}, "6": {"train_minutes": 28.5}},
            "mean": {"train_minutes": 26.5, "peoples_daily_f1": 0.5003, "weibo_f1": 0.4343}}
    history = [{"timestamp_utc": "old", "peer": {**peer, "steps": 200}},
               {"timestamp_utc": "new", "threads": 2, "matmul_gflops": 170.0, "peak_rss_mib": 4096.0,
                "extraction": {"tokens_per_s": 1200.0, "share_of_limit": 0.5}, "peer": peer, "ours_baseline": ours}]
    (tmp_path / "bench.json").write_text(json.dumps(history))
    text = write_report(tmp_path, "toy").read_text(encoding="utf-8")
    assert ("1130 steps in 26.6 min (stopped by the clock at 26.5 min), 0.71 steps/s; zero-shot strict F1 "
            "People's Daily 0.4123, Weibo 0.3012. Ours (the baseline, mean of seeds 4, 6; 24.5-28.5 min each): "
            "26.5 min of training, "
            "People's Daily 0.5003, Weibo 0.4343.") in text
    history.append({"timestamp_utc": "newest", "threads": 2, "matmul_gflops": 170.0, "peak_rss_mib": 4096.0,
                    "extraction": {"tokens_per_s": 1200.0, "share_of_limit": 0.5}})  # a bench without the peer
    (tmp_path / "bench.json").write_text(json.dumps(history))
    text = write_report(tmp_path, "toy").read_text(encoding="utf-8")
    assert "Bench (`bench.json`, newest, 2 threads)" in text and "Peer (bench of new) (Hugging Face" in text
    assert "1130 steps in 26.6 min" in text
    (tmp_path / "bench.json").write_text(json.dumps([history[0] | {"peer": None}, history[2]]))
    assert "Peer" not in write_report(tmp_path, "toy").read_text(encoding="utf-8")


def test_report_shows_the_shape_limit_and_the_step_profile_when_the_bench_has_them(tmp_path: Path) -> None:
    bench = {"timestamp_utc": "t", "threads": 2, "matmul_gflops": 200.0, "peak_rss_mib": 4096.0,
             "extraction": {"tokens_per_s": 1200.0, "share_of_limit": 0.4, "share_of_shape_limit": 0.8,
                            "shape_limit": {"rows": 4096, "seq_len": 30, "layer_mix_gflops": 100.0},
                            "profile": {"matmul_share": 0.55, "outside_ops_share": 0.1}},
             "step_profile": {"variant": "baseline", "steps": 10, "mean_seconds": {"step": 0.5},
                              "share": {"encoder_forward": 0.25, "encoder_backward": 0.5, "head_forward": 0.1,
                                        "head_backward": 0.1, "optimizer": 0.05}}}
    (tmp_path / "bench.json").write_text(json.dumps([bench]))
    text = write_report(tmp_path, "toy").read_text(encoding="utf-8")
    assert ("one layer's products run at 100.0 GFLOP/s; extraction reaches 80% of that. Extraction spends 55% of "
            "its wall time in dense products, 10% outside any operator") in text
    assert ("Where a `baseline` step goes (mean of 10 steps, 0.500 s): encoder forward 25%, encoder backward 50%, "
            "head forward 10%, head backward 10%, optimizer 5%.") in text
    del bench["step_profile"], bench["extraction"]["shape_limit"], bench["extraction"]["profile"]
    (tmp_path / "bench.json").write_text(json.dumps([bench]))
    text = write_report(tmp_path, "toy").read_text(encoding="utf-8")
    assert "Where a" not in text and "one layer's products" not in text and "dense products" not in text
