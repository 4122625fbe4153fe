"""``results/<profile>/REPORT.md``: every table and figure of a profile gathered, a reading generated from them,
and the compute each table cost (issue 14; notebook 06).

The report adds no number of its own: it reads the tables notebooks 01-05 wrote (``tables/*.csv``, each from
runs whose run keys those notebooks checked), the figures they saved, 02's ``alignment/metrics.json`` and the
runs' ``metrics.json`` (for minutes only), and says what it could not find. The reading is generated: each
paired difference is called a gain only when its whole 95% interval lies above zero, a loss only when it
lies below, and otherwise "no difference shown" (one seed: "no interval").
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from .evaluate import git_state
from .files import write_atomic
from .run_names import FEW_SHOT_NAME, SHARED_PREFIX

#: the tables a report shows, in order: file stem -> (title, the notebook that writes it)
TABLES: dict[str, tuple[str, str]] = {
    "table1": ("Table 1: the data sets", "01_data"),
    "unit_ceiling": ("Unit ceiling: gold labels mapped to units and back", "01_data"),
    "table4": ("Table 4: the baseline and the paper's model, zero-shot", "03_training"),
    "table4_paired": ("Table 4, paired per seed against the baseline", "03_training"),
    "baseline_changes": ("The baseline's changes, each paired against it", "03_training"),
    "selection": ("The baseline's learning rates against candidates, chosen on CoNLL dev only", "03_training"),
    "table5": ("Table 5: ablations of the full model, two protocols", "04_ablation"),
    "table3": ("Table 3: benchmark models, zero-shot", "04_ablation"),
    "few_shot": ("Beyond the paper: labelled Chinese sentences added (few-shot)", "04_ablation"),
    "beyond": ("Beyond the paper: levers on zero-shot F1, each paired against the baseline", "04_ablation"),
    "beyond_selected": ("Beyond the paper: checkpoint averaging against its own runs' evaluation best",
                        "04_ablation"),
    "errors_by_type": ("Errors by type over the Chinese test sets (one seed)", "05_case_study"),
    "errors_by_length": ("Recall and precision by entity length, Chinese test sets (one seed)", "05_case_study"),
}

_SHARED, _FEW_SHOT = re.escape(SHARED_PREFIX), FEW_SHOT_NAME.pattern
#: which runs each table's compute is charged to: table -> run-name patterns (regular expressions, each matched
#: against a whole run name)
COMPUTE: dict[str, tuple[str, ...]] = {
    "Table 4 and the baseline's changes (03)": (r"baseline", r"no_misc_class", r"frozen", r"adv_att", r"adv_att_pos"),
    "Table 5, joint protocol (04)": (r"without_[a-z_]+", r"u_from_alignment"),
    "Table 5, shared protocol (04)": (rf"{_SHARED}(?!.*{_FEW_SHOT}).+",),
    "Table 3, static rows (04)": (r"feature_crf", r"static_bilstm_crf"),
    "Few-shot curve (04)": (rf"({_SHARED})?[a-z_]+{_FEW_SHOT}",),
    "Beyond the paper (04)": (r"self_training", r"self_training_vote", r"freeze_lower", r"translate_train",
                              r"checkpoint_average"),
    "Learning rates chosen on CoNLL dev (03)": (r"lr_.+",),
}
#: the row of :func:`compute_table` for runs no group of :data:`COMPUTE` claims (so no run's minutes go unshown)
OTHER_RUNS = "Other runs (no table above)"

_CI = re.compile(r"\[\s*([+-]?(?:nan|[0-9.]+))\s*,\s*([+-]?(?:nan|[0-9.]+))\s*\]")


def parse_interval(text: Any) -> tuple[float, float]:
    """``(low, high)`` of a ``"[+0.0100, +0.0300]"`` cell written by :func:`~xner_lib.report.change_table`
    (nan for an empty cell or a one-seed interval)."""
    m = _CI.search(str(text)) if isinstance(text, str) else None
    return (float(m.group(1)), float(m.group(2))) if m else (math.nan, math.nan)


def verdict(low: float, high: float) -> str:
    """``gain`` when the whole interval lies above 0, ``loss`` below, ``no difference shown`` across it and
    ``no interval`` when there is none (one seed)."""
    if math.isnan(low) or math.isnan(high):
        return "no interval"
    return "gain" if low > 0 else "loss" if high < 0 else "no difference shown"


@dataclass
class Gathered:
    """What a profile's notebooks wrote: tables by stem, figure paths, 02's alignment scores, runs' metrics,
    and the tables not found (with the notebook that writes each)."""

    out: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    alignment: dict[str, Any] | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    notebooks: dict[str, dict[str, Any]] = field(default_factory=dict)
    bench: dict[str, Any] | None = None
    peer_bench: dict[str, Any] | None = None  # the latest bench that ran the peer (a bench may skip it)


def gather(out: str | Path) -> Gathered:
    """Read ``results/<profile>`` (``out``): the tables of :data:`TABLES`, the figures, 02's alignment metrics
    and every ``runs/*/metrics.json``. A table not there is listed in ``missing``, never invented."""
    out = Path(out)
    g = Gathered(out)
    for stem, (_, notebook) in TABLES.items():
        path = out / "tables" / f"{stem}.csv"
        if path.is_file():
            g.tables[stem] = pd.read_csv(path)
        else:
            g.missing[stem] = notebook
    g.figures = sorted((out / "figures").glob("*.png")) if (out / "figures").is_dir() else []
    align = out / "alignment" / "metrics.json"
    if align.is_file():
        g.alignment = json.loads(align.read_text(encoding="utf-8"))
    g.runs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / "runs").glob("*/metrics.json"))]
    for nb in sorted((out / "notebooks").glob("*.ipynb")) if (out / "notebooks").is_dir() else []:
        g.notebooks[nb.stem] = json.loads(nb.read_text(encoding="utf-8")).get("metadata", {}).get("papermill", {})
    bench = out / "bench.json"
    if bench.is_file():
        history = json.loads(bench.read_text(encoding="utf-8"))
        g.bench = history[-1] if history else None
        g.peer_bench = next((r for r in reversed(history) if r.get("peer")), None)
    return g


def paired_readings(table: pd.DataFrame, label: str, protocols: Sequence[str] = ("",)) -> list[str]:
    """One sentence per row and set of a paired table (:func:`~xner_lib.report.change_table` or
    :func:`~xner_lib.report.ablation_table`): the mean difference in points, its 95% interval and the
    :func:`verdict`. ``label`` is the column naming the row; ``protocols`` the column prefixes (Table 5's
    ``joint``/``shared``; ``""`` for none)."""
    out = []
    for _, row in table.iterrows():
        for protocol in protocols:
            head = f"{protocol} " if protocol else ""
            for col in table.columns:
                if not (col.startswith(head) and col.endswith(" diff")) or pd.isna(row[col]):
                    continue
                dataset = col[len(head):-len(" diff")]
                low, high = parse_interval(row.get(f"{head}{dataset} 95% CI"))
                interval = "" if math.isnan(low) else f", 95% CI [{100 * low:+.2f}, {100 * high:+.2f}]"
                out.append(f"{row[label]}{f' ({protocol})' if protocol else ''}, {dataset}: "
                           f"{100 * float(row[col]):+.2f} points{interval}: {verdict(low, high)}")
    return out


def paper_readings(table4: pd.DataFrame) -> list[str]:
    """Ours against the paper, per Table 4 row with a paper figure: mean (std, seeds) against the paper's F1."""
    out = []
    for _, row in table4.iterrows():
        if pd.isna(row.get("paper_f1")):
            continue
        std = "" if pd.isna(row["f1_std"]) else f" ± {row['f1_std']:.4f}"
        gap = 100 * (row["f1_mean"] - row["paper_f1"])
        out.append(f"{row['model']}, {row['dataset']}: ours {row['f1_mean']:.4f}{std} ({int(row['n_seeds'])} seeds) "
                   f"against the paper's {row['paper_f1']:.4f} ({gap:+.2f} points)")
    return out


def compute_table(runs: Iterable[Mapping[str, Any]], groups: Mapping[str, Sequence[str]] = COMPUTE) -> pd.DataFrame:
    """Minutes each table's runs cost (training plus scoring, summed over runs, as each run recorded them):
    one row per group of :data:`COMPUTE` that has runs, with the number of runs and the minutes of the
    median run, and a last row (:data:`OTHER_RUNS`) for the runs no group claims."""
    runs = list(runs)
    claimed: dict[str, list[Mapping[str, Any]]] = {}
    for label, patterns in groups.items():
        rx = re.compile("|".join(f"(?:{p})" for p in patterns))
        claimed[label] = [r for r in runs if rx.fullmatch(str(r["variant"]))]
    ids = {id(r) for group in claimed.values() for r in group}
    claimed[OTHER_RUNS] = [r for r in runs if id(r) not in ids]
    rows = []
    for label, group in claimed.items():
        minutes = [sum(float(v) for v in r.get("extra", {}).get("seconds", {}).values()) / 60 for r in group]
        if minutes:
            rows.append({"table": label, "runs": len(minutes), "minutes": round(sum(minutes), 1),
                         "median minutes a run": round(float(pd.Series(minutes).median()), 1)})
    return pd.DataFrame(rows, columns=["table", "runs", "minutes", "median minutes a run"])


def _utc(stamp: Any) -> datetime | None:
    """A papermill or ``metrics.json`` time stamp as an aware UTC datetime (None when absent or unreadable)."""
    try:
        t = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def notebook_times(notebooks: Mapping[str, Mapping[str, Any]], runs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Wall minutes of each executed notebook (papermill's ``duration``) and how many runs finished while it ran
    (a run's ``timestamp_utc`` inside the execution): 0 means it read every run it needed from the cache, so
    its minutes are a warm time. ``notebooks``: stem -> papermill metadata (:attr:`Gathered.notebooks`)."""
    ends = [t for t in (_utc(r.get("timestamp_utc")) for r in runs) if t is not None]
    rows = []
    for stem, meta in notebooks.items():
        start, end, duration = _utc(meta.get("start_time")), _utc(meta.get("end_time")), meta.get("duration")
        if duration is None:
            continue
        trained = sum(start <= t <= end for t in ends) if start and end else None
        rows.append({"notebook": stem, "minutes": round(float(duration) / 60, 2),
                     "executed_utc": meta.get("start_time"), "runs finished during it": trained,
                     "warm": trained == 0})
    return pd.DataFrame(rows, columns=["notebook", "minutes", "executed_utc", "runs finished during it", "warm"])


def timings(g: Gathered) -> dict[str, Any]:
    """``results/<profile>/timings.json`` (issue 15): the replication's cost stage by stage, from what was
    recorded, never estimated by hand. ``runs``: minutes per table as each run recorded them (the cold cost of
    the training, :func:`compute_table`); ``notebooks``: each notebook's last execution (:func:`notebook_times`);
    ``cold_minutes``: the runs' minutes plus every notebook's warm minutes, a sum of measured parts (null while
    a notebook has no warm execution); ``warm_minutes``: the notebooks' warm minutes summed (null likewise);
    ``peak_rss_mib``: the latest bench's peak (``bench.json``)."""
    runs, nbs = compute_table(g.runs), notebook_times(g.notebooks, g.runs)
    all_warm = not nbs.empty and bool(nbs["warm"].all())
    warm = round(float(nbs["minutes"].sum()), 1) if all_warm else None
    run_minutes = round(float(runs["minutes"].sum()), 1)
    return {"git": git_state(), "runs": runs.to_dict("records"), "run_minutes": run_minutes,
            "notebooks": nbs.to_dict("records"), "warm_minutes": warm,
            "cold_minutes": None if warm is None else round(run_minutes + warm, 1),
            "peak_rss_mib": (g.bench or {}).get("peak_rss_mib")}


def write_timings(g: Gathered) -> Path:
    """Write :func:`timings` of ``g`` (:func:`gather` of ``results/<profile>``) to ``timings.json`` there,
    atomically."""
    path = g.out / "timings.json"
    record = timings(g)
    write_atomic(path, lambda fh: json.dump(record, fh, indent=2, default=str))
    return path


def _markdown(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False)


def selection_readings(table: pd.DataFrame) -> list[str]:
    """One sentence per candidate of 03's selection table (:func:`~xner_lib.report.selection_table`): its
    change, its paired difference in best CoNLL-dev F1 against the threshold, and whether it was selected;
    then which settings the profile keeps."""
    out = []
    for _, row in table.iloc[1:].iterrows():
        if pd.isna(row["diff"]):
            out.append(f"Selection: {row['variant']} ({row['settings']}) shares no seed with the baseline: "
                       "not compared")
            continue
        bar = "no threshold (fewer than 2 baseline seeds)" if pd.isna(row["threshold"]) else \
            f"threshold {row['threshold']:+.4f}"
        out.append(f"Selection: {row['variant']} ({row['settings']}), CoNLL dev {row['CoNLL dev F1']:.4f} on "
                   f"{int(row['paired seeds'])} paired seed(s), {row['diff']:+.4f} against the baseline "
                   f"({bar}): {'selected' if bool(row['selected']) else 'not selected'}")
    chosen = table.loc[table["selected"].astype(bool), "variant"]
    if len(table) > 1 and len(chosen):
        pick = str(chosen.iloc[0])
        verb = "stay" if pick == table["variant"].iloc[0] else f"move to {pick}'s"
        out.append(f"Selection: the profile's settings {verb} (chosen on CoNLL dev only)")
    return out


def render(g: Gathered, profile: str) -> str:
    """The text of REPORT.md for ``g`` (:func:`gather`)."""
    git = git_state()
    commits = sorted({r.get("git", {}).get("commit", "")[:8] for r in g.runs} - {""})
    lines = [f"# xner: {profile} profile report", "",
             f"Written by notebook 06 at commit {str(git.get('commit', ''))[:8]}"
             f"{' (dirty tree)' if git.get('dirty') else ''}, from {len(g.runs)} runs (made at commits "
             f"{', '.join(commits) or 'none'}) and the tables notebooks 01-05 wrote. Strict entity-level F1 "
             "(seqeval, IOB2) throughout; WeiboNER on named mentions (NAM) unless said; every Chinese score is "
             "zero-shot (trained on English CoNLL-2003 only, selected on CoNLL dev).", ""]
    lines += ["## Reading", ""]
    reading: list[str] = []
    if "table4" in g.tables:
        reading += paper_readings(g.tables["table4"])
    if "table4_paired" in g.tables:
        reading += paired_readings(g.tables["table4_paired"], "change")
    if "baseline_changes" in g.tables:
        reading += paired_readings(g.tables["baseline_changes"], "change")
    if "selection" in g.tables:
        reading += selection_readings(g.tables["selection"])
    if "table5" in g.tables:
        reading += paired_readings(g.tables["table5"], "model", ("joint", "shared"))
    if "beyond" in g.tables:
        reading += paired_readings(g.tables["beyond"], "change")
    if "beyond_selected" in g.tables:
        reading += paired_readings(g.tables["beyond_selected"], "change")
    lines += [f"- {r}" for r in reading] or ["- No table with results yet."]
    lines += ["", "A paired difference is a gain or a loss only when its whole 95% t-interval over seeds lies on one "
              "side of zero."]
    partial = [nb for nb, meta in g.notebooks.items() if meta.get("parameters", {}).get("missing_runs") == "skip"]
    if partial:
        lines += ["", "Executed with `missing_runs: skip` (the profile's runs not all made yet): "
                  f"{', '.join(partial)}. Their tables hold the runs made so far; each row lists its seeds."]
    if g.missing:
        lines += ["", "Not yet made in this profile: " + "; ".join(
            f"{TABLES[s][0].split(':')[0]} ({s}.csv, notebook {nb})" for s, nb in g.missing.items()) + "."]
    for stem, df in g.tables.items():
        lines += ["", f"## {TABLES[stem][0]}", "", _markdown(df)]
    if g.alignment is not None:
        sc = g.alignment.get("scores", {})
        lines += ["", "## Word-level alignment (02)", "",
                  f"Start chosen by the unsupervised criterion: {sc.get('chosen_start')} (criterion "
                  f"{sc.get('criterion', float('nan')):.4f}); lexicon pairs: {sc.get('lexicon_pairs')}."]
        after = (sc.get("precision") or {}).get("after")
        if after:
            lines += ["", "Translation precision on the sample dictionary after alignment:", "",
                      _markdown(pd.DataFrame(after))]
    compute = compute_table(g.runs)
    if not compute.empty:
        lines += ["", "## Compute", "", "Minutes as each run recorded them (training and scoring), on this "
                  "profile's machine.", "", _markdown(compute)]
    nbs = notebook_times(g.notebooks, g.runs)
    if not nbs.empty:
        lines += ["", "Each notebook's last execution (papermill's wall time; warm when no run finished during it, "
                  "so every run came from the cache):", "", _markdown(nbs)]
    if g.bench is not None:
        b = g.bench
        ex = b.get("extraction", {})
        lines += ["", f"Bench (`bench.json`, {b.get('timestamp_utc')}, {b.get('threads')} threads): fp32 matmul "
                  f"{b.get('matmul_gflops', math.nan):.1f} GFLOP/s; feature extraction "
                  f"{ex.get('tokens_per_s', math.nan):.0f} tokens/s, "
                  f"{100 * ex.get('share_of_limit', math.nan):.0f}% of it; peak memory "
                  f"{b.get('peak_rss_mib', math.nan) / 1024:.1f} GiB."]
        shape = ex.get("shape_limit")
        if shape:
            lines[-1] += (f" At the encoder's own shapes ({shape['rows']} pieces a forward, sequences of "
                          f"{shape['seq_len']}) one layer's products run at {shape['layer_mix_gflops']:.1f} GFLOP/s; "
                          f"extraction reaches {100 * ex['share_of_shape_limit']:.0f}% of that.")
        if ex.get("profile"):
            lines[-1] += (f" Extraction spends {100 * ex['profile']['matmul_share']:.0f}% of its wall time in dense "
                          f"products, {100 * ex['profile']['outside_ops_share']:.0f}% outside any operator "
                          "(tokenising, windowing, Python).")
        prof = b.get("step_profile")
        if prof:
            lines += ["", f"Where a `{prof['variant']}` step goes (mean of {prof['steps']} steps, "
                      f"{prof['mean_seconds']['step']:.3f} s): " + ", ".join(
                          f"{k.replace('_', ' ')} {100 * v:.0f}%" for k, v in prof["share"].items()) + "."]
        steps = pd.DataFrame(b.get("training", []))
        if not steps.empty:
            lines += ["", _markdown(steps[[c for c in ("variant", "seconds_per_step", "sentences_per_s",
                                                       "ratio_to_first") if c in steps]].round(3))]
    if g.peer_bench is not None:
        when = "" if g.peer_bench is g.bench else f" (bench of {g.peer_bench.get('timestamp_utc')})"
        lines += _peer_lines(g.peer_bench, when)
    if g.figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{p.stem}](figures/{p.name})" for p in g.figures]
    return "\n".join(lines) + "\n"


def _peer_lines(bench: dict[str, Any], when: str = "") -> list[str]:
    """The bench's Hugging Face peer beside our baseline (issue 15): steps, minutes and zero-shot strict F1 of
    each; nothing when the bench ran no peer."""
    peer = bench.get("peer")
    if not peer:
        return []
    scores = peer.get("scores", {})
    how = (f"stopped by the clock at {peer['minutes_budget']:.1f} min" if peer.get("stopped_by_clock")
           else f"all {peer.get('planned_steps', peer['steps'])} planned steps")
    text = (f"Peer{when} (Hugging Face `Trainer`, `BertForTokenClassification` over the same encoder): {peer['steps']} "
            f"steps in {peer['seconds'] / 60:.1f} min ({how}), {peer['steps_per_s']:.2f} steps/s; zero-shot strict F1 "
            f"People's Daily {scores.get('peoples_daily_test', {}).get('f1', math.nan):.4f}, "
            f"Weibo {scores.get('weibo_test', {}).get('f1', math.nan):.4f}.")
    ours = bench.get("ours_baseline") or {}
    mean = ours.get("mean")
    if mean:
        minutes = [float(r["train_minutes"]) for r in ours["seeds"].values()]
        text += (f" Ours (the baseline, mean of seeds {', '.join(str(s) for s in ours['seeds'])}; "
                 f"{min(minutes):.1f}-{max(minutes):.1f} min each): "
                 f"{mean['train_minutes']:.1f} min of training, People's Daily {mean['peoples_daily_f1']:.4f}, "
                 f"Weibo {mean['weibo_f1']:.4f}.")
    return ["", text]


def write_report(out: str | Path, profile: str) -> Path:
    """Gather ``out`` and write ``out/REPORT.md`` atomically; returns its path."""
    g = gather(out)
    path = Path(out) / "REPORT.md"
    text = render(g, profile)
    write_atomic(path, lambda fh: fh.write(text))
    return path
