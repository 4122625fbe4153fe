"""Tables and figures of the paper's experiments section, computed from files and runs.

Every table is a :class:`pandas.DataFrame` with a ``paper`` column beside ours, written as CSV and
Markdown by :func:`write_table`; figures are written as PNG by :func:`save_figure`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from .data import CORPUS_FILES, DataFile, Dataset, read_file  # noqa: E402
from .data.links import count_links  # noqa: E402
from .evaluate import primary_view, unit_ceiling  # noqa: E402
from .files import atomic_file, write_atomic  # noqa: E402
from .paper import TABLE1  # noqa: E402
from .run_names import few_shot_name  # noqa: E402
from .units import ZH_UNITS, UnitTagCounts, encode_sentences, unit_tags  # noqa: E402


def read_corpora(data_dir: Path, files: Iterable[DataFile] = CORPUS_FILES) -> list[Dataset]:
    """Read every corpus file present in ``data_dir`` (optional files that are absent are skipped,
    a missing required file raises ``FileNotFoundError`` naming it)."""
    out = []
    for f in files:
        path = data_dir / f.relpath
        if not path.is_file():
            if f.required:
                raise FileNotFoundError(f"{path}: required corpus file missing (see README, Data)")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # repairs are counted on the dataset and shown in Table 1
            out.append(read_file(path, f.format, name=f.name, split=f.split))
    return out


def table1(datasets: Iterable[Dataset]) -> pd.DataFrame:
    """Table 1 (dataset statistics) from the files: sentences, tokens, entities, per-type counts, docs and
    repaired orphan ``I-`` tags, with the paper's figure and what it counts beside ours."""
    rows = []
    for ds in datasets:
        ents = ds.entity_counts()
        paper, unit = TABLE1.get((ds.name, ds.split), (None, ""))
        rows.append({
            "dataset": ds.name,
            "split": ds.split,
            "sentences": len(ds),
            "tokens": ds.n_tokens,
            "entities": sum(ents.values()),
            "docs": ds.docs,
            "orphans_repaired": sum(ds.repaired_orphans.values()),
            "entities_per_type": ", ".join(f"{k} {v}" for k, v in sorted(ents.items())),
            "paper": paper,
            "paper_counts": unit,
        })
    return pd.DataFrame(rows)


def unit_ceiling_table(datasets: Iterable[Dataset], tokenizer, schemes: Iterable[str] = ZH_UNITS) -> pd.DataFrame:
    """Per Chinese corpus and unit scheme (:mod:`xner_lib.units`): units, entities, what :func:`unit_tags`
    did to them (``start_inside``, ``end_inside``, ``lost``) and the *unit ceiling*, the strict F1 of
    the gold tags mapped to units and back (primary view; :func:`~xner_lib.evaluate.unit_ceiling`). Also
    the links found (:mod:`xner_lib.data.links`), which are decoded as O."""
    rows = []
    for ds in datasets:
        if ds.language != "zh":
            continue
        links = count_links([s.tokens for s in ds], ds.language, [s.tags for s in ds])
        for scheme in schemes:
            encoded = encode_sentences(tokenizer, ds.sentences, ds.language, zh_units=scheme)
            counts = UnitTagCounts()
            for sent, enc in zip(ds.sentences, encoded, strict=True):
                unit_tags(sent.tags, enc.unit_spans, counts)
            view = primary_view(ds.format)
            ceiling = unit_ceiling(ds, [e.unit_spans for e in encoded])[view]["strict"]
            rows.append({"dataset": ds.name, "split": ds.split, "units": scheme,
                         "n_units": sum(e.n_units for e in encoded), "tokens": ds.n_tokens,
                         "entities": counts["entities"], "start_inside": counts["start_inside"],
                         "end_inside": counts["end_inside"], "lost": counts["lost"],
                         "ceiling_view": view, "ceiling_f1": ceiling["f1"], "ceiling_recall": ceiling["recall"],
                         "links": links.links, "link_tokens": links.tokens,
                         "gold_entity_tokens_in_links": links.gold_entity_tokens})
    return pd.DataFrame(rows)


def entity_distribution(datasets: Iterable[Dataset]) -> pd.DataFrame:
    """Entity counts per (dataset, split, type), long format."""
    rows = [{"dataset": ds.name, "split": ds.split, "type": t, "entities": n}
            for ds in datasets for t, n in sorted(ds.entity_counts().items())]
    return pd.DataFrame(rows)


def sentence_lengths(datasets: Iterable[Dataset]) -> pd.DataFrame:
    """One row per sentence: dataset, split and length in tokens (words or characters)."""
    rows = [{"dataset": ds.name, "split": ds.split, "length": len(s)} for ds in datasets for s in ds]
    return pd.DataFrame(rows)


def write_table(df: pd.DataFrame, directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``df`` as ``name.csv`` and ``name.md`` under ``directory`` (atomically); return both paths."""
    directory = Path(directory)
    csv, md = directory / f"{name}.csv", directory / f"{name}.md"
    write_atomic(csv, df.to_csv(index=False))
    write_atomic(md, df.to_markdown(index=False) + "\n")
    return csv, md


def write_html(styler, directory: str | Path, name: str) -> Path:
    """Write a pandas ``Styler`` (a coloured table) as ``name.html`` under ``directory`` (atomically)."""
    path = Path(directory) / f"{name}.html"
    write_atomic(path, styler.to_html())
    return path


def save_figure(fig: plt.Figure, directory: str | Path, name: str) -> Path:
    """Save ``fig`` as ``name.png`` under ``directory`` (atomically)."""
    path = Path(directory) / f"{name}.png"
    with atomic_file(path, binary=True) as fh:
        fig.savefig(fh, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_entity_distribution(dist: pd.DataFrame) -> plt.Figure:
    """Bar chart of entity counts per type, one panel per dataset, splits side by side."""
    names = list(dict.fromkeys(dist["dataset"]))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        sub = dist[dist["dataset"] == name].pivot(index="type", columns="split", values="entities").fillna(0)
        sub.plot.bar(ax=ax, rot=45)
        ax.set_title(name)
        ax.set_ylabel("entities")
    fig.tight_layout()
    return fig


def plot_sentence_lengths(lengths: pd.DataFrame, bins: int = 40) -> plt.Figure:
    """Histograms of sentence length (tokens) per dataset, splits overlaid."""
    names = list(dict.fromkeys(lengths["dataset"]))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        sub = lengths[lengths["dataset"] == name]
        for split, grp in sub.groupby("split", sort=False):
            ax.hist(grp["length"], bins=bins, alpha=0.5, label=str(split), density=True)
        ax.set_title(f"{name} (tokens per sentence)")
        ax.set_xlabel("length")
        ax.legend()
    fig.tight_layout()
    return fig


#: result datasets of Tables 4 and 5: (scores key, view, dataset label, paper key)
RESULT_SETS: tuple[tuple[str, str, str, str | None], ...] = (
    ("weibo_test", "weibo_nam", "WeiboNER test (NAM)", "weibo"),
    ("weibo_test", "weibo_nam_nom", "WeiboNER test (NAM+NOM)", None),
    ("peoples_daily_test", "peoples_daily", "People's Daily test", "peoples_daily"),
    ("conll_test", "conll", "CoNLL-2003 test (en)", None),
)


def runs_frame(metrics: Iterable[dict]) -> pd.DataFrame:
    """One row per (run, result set): variant, seed, strict and conlleval P/R/F1 (long format)."""
    rows = []
    for m in metrics:
        for key, view, label, _ in RESULT_SETS:
            if key not in m["scores"] or view not in m["scores"][key]:
                continue
            s = m["scores"][key][view]
            rows.append({
                "variant": m["variant"], "seed": m["seed"], "dataset": label,
                "precision": s["strict"]["precision"], "recall": s["strict"]["recall"], "f1": s["strict"]["f1"],
                "f1_conlleval": s["conlleval"]["f1"],
            })
    return pd.DataFrame(rows)


def results_table(metrics: Iterable[dict], paper: dict[str, dict[str, float]],
                  names: dict[str, str] | None = None) -> pd.DataFrame:
    """Mean and sample standard deviation over seeds of strict F1 (and conlleval F1) per variant and
    dataset, with the paper's F1 beside ours (Tables 4 and 5). ``paper`` maps variant -> {dataset: F1}."""
    runs = runs_frame(metrics)
    if runs.empty:
        raise ValueError("no run has scores to tabulate")
    paper_key = {label: key for _, _, label, key in RESULT_SETS}
    rows = []
    for (variant, dataset), grp in runs.groupby(["variant", "dataset"], sort=False):
        pk = paper_key[dataset]
        rows.append({
            "model": (names or {}).get(variant, variant),
            "dataset": dataset,
            "f1_mean": grp.f1.mean(),
            "f1_std": grp.f1.std(ddof=1) if len(grp) > 1 else float("nan"),
            "n_seeds": len(grp),
            "paper_f1": paper.get(variant, {}).get(pk) if pk else None,
            "precision_mean": grp.precision.mean(),
            "recall_mean": grp.recall.mean(),
            "f1_conlleval_mean": grp.f1_conlleval.mean(),
            "seeds": " ".join(str(s) for s in sorted(grp.seed)),
        })
    return pd.DataFrame(rows).round(4)


#: the sets of the change table: scores key, view, column label
CHANGE_SETS: tuple[tuple[str, str, str], ...] = (
    ("conll_dev", "conll", "CoNLL dev"),
    ("conll_dev", "conll_shared", "CoNLL dev (PER/LOC/ORG)"),
    ("weibo_test", "weibo_nam", "Weibo (NAM)"),
    ("peoples_daily_test", "peoples_daily", "People's Daily"),
)
#: the beyond table's sets (issue 13): the change table's, with WeiboNER's named and nominal mentions
BEYOND_SETS: tuple[tuple[str, str, str], ...] = (
    *CHANGE_SETS[:3], ("weibo_test", "weibo_nam_nom", "Weibo (NAM+NOM)"), CHANGE_SETS[3],
)


def own_selection_table(metrics: Iterable[dict], labels: Mapping[str, str],
                        sets: Sequence[tuple[str, str, str]] = BEYOND_SETS) -> pd.DataFrame:
    """Checkpoint averaging against its own runs' evaluation best (issue 13): for each variant whose runs score
    their evaluation best beside their averaged weights (``extra.variant_scores.selected``, see
    ``TrainConfig.average_from_epoch``), its :func:`change_table` with the average as the reference and the
    evaluation best of the same runs as the change (so a difference is the best minus the average, paired on
    one trajectory). ``labels`` names the variants (variant -> row label, e.g. the beyond table's rows
    inverted); the table's ``change`` column reads ``"<label>: average"`` and ``"<label>: evaluation best"``.
    Empty when no run holds the scores."""
    metrics = list(metrics)
    tables = []
    for variant in dict.fromkeys(m["variant"] for m in metrics
                                 if "selected" in m.get("extra", {}).get("variant_scores", {})):
        t = change_table(metrics, variant, {"evaluation best": ("decode", "selected")}, sets)
        label = labels.get(variant, variant)
        t["change"] = [f"{label}: average" if c == "reference" else f"{label}: {c}" for c in t["change"]]
        tables.append(t)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["change", "seeds"])


def paired_interval(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of paired per-seed differences and its two-sided ``level`` t-interval (nan bounds with one seed)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    mean = float(d.mean())
    if len(d) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return mean, mean - half, mean + half


def format_interval(low: float, high: float) -> str:
    """A paired interval as its table cell: ``"[+0.0100, +0.0300]"``, or ``"none (one pair)"`` when a single
    paired seed gives no interval (:func:`paired_interval`'s nan bounds)."""
    if np.isnan(low) or np.isnan(high):
        return "none (one pair)"
    return f"[{low:+.4f}, {high:+.4f}]"


def change_table(metrics: Iterable[dict], reference: str, changes: Mapping[str, tuple[str, str]],
                 sets: Sequence[tuple[str, str, str]] = CHANGE_SETS) -> pd.DataFrame:
    """The effect of each change against the ``reference`` variant's runs, paired by seed (issue 10).

    ``changes`` maps a row label to ``("decode", name)`` (the reference runs scored another way:
    ``extra.variant_scores[name]``, e.g. ``no_links``, ``units:token``, ``epoch1``) or ``("run", variant)``
    (other runs, e.g. trained without MISC). Per set of ``sets`` (default :data:`CHANGE_SETS`): strict F1
    mean and std over seeds, and the mean paired difference (change minus reference) with its 95%
    t-interval. A set a change does not score is left empty.
    """
    metrics = list(metrics)
    ref = {m["seed"]: m for m in metrics if m["variant"] == reference}
    if not ref:
        raise ValueError(f"no run of the reference variant {reference!r}")

    def f1(scores: dict, key: str, view: str) -> float | None:
        s = scores.get(key, {}).get(view)
        return None if s is None else s["strict"]["f1"]

    rows = []
    for label, (kind, name) in {"reference": ("ref", reference), **changes}.items():
        if kind == "run":
            runs = {m["seed"]: m["scores"] for m in metrics if m["variant"] == name}
        elif kind == "decode":
            runs = {seed: m["extra"]["variant_scores"][name] for seed, m in ref.items()
                    if name in m.get("extra", {}).get("variant_scores", {})}
        elif kind == "ref":
            runs = {seed: m["scores"] for seed, m in ref.items()}
        else:
            raise ValueError(f"change {label!r}: kind must be 'decode' or 'run', got {kind!r}")
        row: dict[str, object] = {"change": label, "seeds": " ".join(str(x) for x in sorted(runs))}
        for key, view, col in sets:
            pairs = [(f1(sc, key, view), f1(ref[seed]["scores"], key, view)) for seed, sc in sorted(runs.items())
                     if seed in ref]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if not pairs:
                continue
            vals = [a for a, _ in pairs]
            row[f"{col} F1"] = float(np.mean(vals))
            row[f"{col} std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
            if kind != "ref":
                mean, lo, hi = paired_interval([a - b for a, b in pairs])
                row[f"{col} diff"] = mean
                row[f"{col} 95% CI"] = format_interval(lo, hi)
        rows.append(row)
    return pd.DataFrame(rows).round(4)


def selection_table(metrics: Iterable[dict], reference: str, candidates: Sequence[str]) -> pd.DataFrame:
    """The learning rates and schedule, chosen on CoNLL dev only (issue 10; docs/method.md, Baseline).

    One row for the ``reference`` variant (the profile's ``train_*`` settings) and one per variant of
    ``candidates`` with runs: the settings in which it differs from the reference (fields both records hold),
    its seeds, the best CoNLL-dev F1 (the selection score) mean and std over seeds, the mean paired difference
    to the reference over the seeds both have (``paired seeds``), the step of the best evaluation, the steps
    trained, how many runs stopped early and the training minutes. No Chinese score is read.

    The rule: with sigma the reference's seed std of the score (over all its seeds), a candidate's mean paired
    difference over n seeds has a standard error of about sigma * sqrt(2 / n) when it changes nothing; the
    candidate with the largest difference is ``selected`` only when that difference exceeds twice this
    (``threshold``, the same in every row), else the reference is. With fewer than 2 reference seeds there
    is no sigma: the threshold is nan and the reference stays. A candidate with no paired seed has no
    difference and cannot be selected.
    """
    metrics = list(metrics)
    by: dict[str, dict[int, dict]] = {}
    for m in metrics:
        by.setdefault(m["variant"], {})[int(m["seed"])] = m
    ref = by.get(reference)
    if not ref:
        raise ValueError(f"no run of the reference variant {reference!r}")
    ref_config = next(iter(ref.values()))["config"]
    ref_scores = [m["extra"]["best_dev_f1"] for m in ref.values()]
    sigma = float(np.std(ref_scores, ddof=1)) if len(ref_scores) > 1 else float("nan")
    rows = []
    for name in [reference, *candidates]:
        runs = by.get(name, {})
        if not runs:
            continue
        config = next(iter(runs.values()))["config"]
        changed = {k: v for k, v in config.items()
                   if k not in ("seed", "encoder") and k in ref_config and ref_config[k] != v}
        dev = [m["extra"]["best_dev_f1"] for m in runs.values()]
        paired = [runs[s]["extra"]["best_dev_f1"] - ref[s]["extra"]["best_dev_f1"] for s in runs if s in ref]
        n = len(paired) if name != reference else 0
        rows.append({
            "variant": name,
            "settings": ", ".join(f"{k} {ref_config[k]} -> {v}" for k, v in sorted(changed.items()))
                        or ", ".join(f"{k} {ref_config.get(k)}" for k in ("lr", "head_lr", "epochs")),
            "seeds": " ".join(str(x) for x in sorted(runs)),
            "paired seeds": n,
            "CoNLL dev F1": float(np.mean(dev)),
            "CoNLL dev std": float(np.std(dev, ddof=1)) if len(dev) > 1 else float("nan"),
            "diff": float(np.mean(paired)) if n else float("nan"),
            "threshold": 2 * sigma * float(np.sqrt(2 / n)) if n else float("nan"),
            "best step": float(np.mean([m["extra"]["best_step"] for m in runs.values()])),
            "steps": float(np.mean([m["extra"]["steps"] for m in runs.values()])),
            "stopped early": sum(bool(m["extra"].get("stopped_early")) for m in runs.values()),
            "train min": float(np.mean([m["extra"]["seconds"]["train"] / 60 for m in runs.values()])),
        })
    table = pd.DataFrame(rows)
    margin = table["diff"] - table["threshold"]  # nan for the reference, an unpaired candidate, or no sigma
    best = table["diff"].where(margin.notna()).idxmax() if margin.notna().any() else None
    pick = best if best is not None and margin[best] > 0 else table.index[table["variant"] == reference][0]
    table["selected"] = table.index == pick
    table.attrs["sigma"] = sigma
    return table.round(4)


#: Table 5's sets: scores key, view, column label, the paper's key
TABLE5_SETS: tuple[tuple[str, str, str, str], ...] = (
    ("weibo_test", "weibo_nam", "Weibo (NAM)", "weibo"),
    ("peoples_daily_test", "peoples_daily", "People's Daily", "peoples_daily"),
)


def ablation_table(metrics: Iterable[dict], reference: str, rows: Mapping[str, str],
                   protocols: Mapping[str, str], paper: Mapping[str, Mapping[str, float]] | None = None
                   ) -> pd.DataFrame:
    """Table 5 (issue 12): per ablation row and protocol, strict F1 mean and std over seeds and the paired
    per-seed difference to the full model (``reference``) with its 95% t-interval, the paper's figure beside.

    ``rows`` maps a row label to a variant name (the reference's row included); ``protocols`` maps a
    protocol (``joint``, ``shared``) to the prefix its runs carry (``""``, ``"shared-"``). ``paper`` maps a
    variant to the paper's ``{"weibo", "peoples_daily"}`` F1 (``full`` for the reference). A row a
    protocol did not run is left empty."""
    metrics = list(metrics)
    out = []
    for label, variant in rows.items():
        row: dict[str, object] = {"model": label}
        ref_paper = (paper or {}).get("full" if variant == reference else variant, {})
        for _, _, col, pkey in TABLE5_SETS:
            row[f"paper {col}"] = ref_paper.get(pkey)
        for protocol, prefix in protocols.items():
            ref = {m["seed"]: m["scores"] for m in metrics if m["variant"] == prefix + reference}
            runs = {m["seed"]: m["scores"] for m in metrics if m["variant"] == prefix + variant}
            if not runs:
                continue
            row[f"{protocol} seeds"] = " ".join(str(x) for x in sorted(runs))
            for key, view, col, _ in TABLE5_SETS:
                vals = [sc[key][view]["strict"]["f1"] for sc in runs.values()]
                row[f"{protocol} {col} F1"] = float(np.mean(vals))
                row[f"{protocol} {col} std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
                if variant != reference:
                    diffs = [runs[s][key][view]["strict"]["f1"] - ref[s][key][view]["strict"]["f1"]
                             for s in sorted(runs) if s in ref]
                    if diffs:
                        mean, lo, hi = paired_interval(diffs)
                        row[f"{protocol} {col} diff"] = mean
                        row[f"{protocol} {col} 95% CI"] = format_interval(lo, hi)
        out.append(row)
    return pd.DataFrame(out).round(4)


def plot_ablation(metrics: Iterable[dict], rows: Mapping[str, str], protocols: Mapping[str, str]) -> plt.Figure:
    """Strict F1 per ablation row, each seed a dot and the mean with its 95% t-interval, one panel per
    protocol and Chinese test set (Table 5)."""
    from scipy import stats

    metrics = list(metrics)
    fig, axes = plt.subplots(len(protocols), len(TABLE5_SETS), figsize=(11, 3.2 * len(protocols)), squeeze=False)
    for r, (protocol, prefix) in enumerate(protocols.items()):
        for c, (key, view, col, _) in enumerate(TABLE5_SETS):
            ax = axes[r][c]
            for x, variant in enumerate(rows.values()):
                vals = [m["scores"][key][view]["strict"]["f1"] for m in metrics if m["variant"] == prefix + variant]
                if not vals:
                    continue
                ax.scatter([x] * len(vals), vals, s=14, alpha=0.7)
                mean = float(np.mean(vals))
                half = (float(stats.t.ppf(0.975, len(vals) - 1) * np.std(vals, ddof=1) / np.sqrt(len(vals)))
                        if len(vals) > 1 else 0.0)
                ax.errorbar([x + 0.15], [mean], yerr=[half], fmt="_", color="black", capsize=3)
            ax.set_xticks(range(len(rows)), list(rows), rotation=30, ha="right", fontsize=8)
            ax.set(title=f"{col}, {protocol}", ylabel="strict F1")
    fig.tight_layout()
    return fig


#: Table 3's sets: scores key, view, column label
TABLE3_SETS: tuple[tuple[str, str, str], ...] = (
    ("peoples_daily_test", "peoples_daily", "People's Daily"),
    ("weibo_test", "weibo_nam", "Weibo (NAM)"),
    ("conll_dev", "conll", "CoNLL dev"),
)


def table3(rows: Mapping[str, tuple[str, Sequence[dict] | str]],
           paper: Mapping[str, tuple[float, float, float]]) -> pd.DataFrame:
    """Table 3 (issue 12): per benchmark row, strict P, R and F1 (mean over seeds, F1's std beside) on each set
    of :data:`TABLE3_SETS`, with the paper's People's Daily P / R / F1 beside ours.

    ``rows`` maps a row label to ``(paper_key, runs)``: ``runs`` is the row's runs (``metrics.json`` records,
    one per seed), or a string saying why the row is not rebuilt here (its cells stay empty, the reason in
    ``note``; an empty list: "no run made yet"). ``paper`` maps ``paper_key`` to the paper's (P, R, F1)
    (:data:`~xner_lib.paper.TABLE3`)."""
    out = []
    for label, (pkey, runs) in rows.items():
        p = paper.get(pkey)
        row: dict[str, object] = {"model": label, "paper P": p[0] if p else None, "paper R": p[1] if p else None,
                                  "paper F1": p[2] if p else None}
        if isinstance(runs, str):
            row["note"] = runs
            out.append(row)
            continue
        if not runs:  # only when the notebook skips runs not made yet (missing_runs "skip")
            row["note"] = "no run made yet"
            out.append(row)
            continue
        row["seeds"] = " ".join(str(m["seed"]) for m in sorted(runs, key=lambda m: m["seed"]))
        for key, view, col in TABLE3_SETS:
            strict = [m["scores"][key][view]["strict"] for m in runs]
            row[f"{col} P"] = float(np.mean([s["precision"] for s in strict]))
            row[f"{col} R"] = float(np.mean([s["recall"] for s in strict]))
            row[f"{col} F1"] = float(np.mean([s["f1"] for s in strict]))
            row[f"{col} F1 std"] = float(np.std([s["f1"] for s in strict], ddof=1)) if len(strict) > 1 else float("nan")
        row["note"] = ""
        out.append(row)
    return pd.DataFrame(out).round(4)


def few_shot_frame(metrics: Iterable[dict], names: Mapping[str, str], sizes: Sequence[int],
                   prefix: str = "") -> pd.DataFrame:
    """The few-shot curve (issue 14) in long form: one row per (model, sentences added, seed, set) with strict
    P, R and F1 on the Chinese test sets (:data:`TABLE5_SETS`). ``names`` maps a variant to its label; runs
    are named ``<prefix><variant>-fs<size>`` (:func:`~xner_lib.experiment.few_shot_variants`)."""
    runs = {prefix + few_shot_name(variant, n): (label, int(n)) for variant, label in names.items() for n in sizes}
    rows = []
    for m in metrics:
        if m["variant"] not in runs:
            continue
        label, n = runs[m["variant"]]
        for key, view, col, _ in TABLE5_SETS:
            s = m["scores"][key][view]["strict"]
            rows.append({"model": label, "sentences": n, "seed": m["seed"], "dataset": col,
                         "precision": s["precision"], "recall": s["recall"], "f1": s["f1"]})
    return pd.DataFrame(rows, columns=["model", "sentences", "seed", "dataset", "precision", "recall", "f1"])


def few_shot_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Strict F1 mean and std over seeds per model, sentences added and Chinese test set (:func:`few_shot_frame`)."""
    if frame.empty:
        raise ValueError("no few-shot run to tabulate")
    g = frame.groupby(["model", "dataset", "sentences"], sort=False).f1
    out = pd.DataFrame({"f1_mean": g.mean(), "f1_std": g.std(ddof=1), "n_seeds": g.size()}).reset_index()
    return out.round(4)


def plot_few_shot(frame: pd.DataFrame) -> plt.Figure:
    """F1 against the labelled Chinese sentences added (symmetric-log axis), each seed a dot and the mean a
    line, one panel per Chinese test set (:func:`few_shot_frame`)."""
    sets = list(dict.fromkeys(frame.dataset))
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 3.8), squeeze=False)
    for ax, dataset in zip(axes[0], sets, strict=True):
        sub = frame[frame.dataset == dataset]
        for model, grp in sub.groupby("model", sort=False):
            mean = grp.groupby("sentences").f1.mean()
            line = ax.plot(mean.index, mean.values, marker="o", label=model)[0]
            ax.scatter(grp.sentences, grp.f1, s=12, alpha=0.5, color=line.get_color())
        ax.set_xscale("symlog", linthresh=10)
        ax.set(title=dataset, xlabel="labelled Chinese sentences added", ylabel="strict F1")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def timing_table(metrics: Iterable[dict]) -> pd.DataFrame:
    """Minutes per stage (training, then prediction per set) for every run."""
    rows = []
    for m in metrics:
        secs = m.get("extra", {}).get("seconds", {})
        rows.append({"variant": m["variant"], "seed": m["seed"],
                     **{f"{k}_min": round(v / 60, 2) for k, v in secs.items()},
                     "steps": len(m.get("extra", {}).get("history", []))})
    return pd.DataFrame(rows)


def plot_training_curves(metrics: Iterable[dict], smooth: int = 25) -> plt.Figure:
    """Training loss (moving average over ``smooth`` steps) and CoNLL-dev strict F1, one line per run."""
    fig, (ax_loss, ax_dev) = plt.subplots(1, 2, figsize=(11, 3.8))
    for m in metrics:
        label = f"{m['variant']} seed {m['seed']}"
        hist = pd.DataFrame(m["extra"]["history"])
        dev = pd.DataFrame(m["extra"]["dev_history"])
        if not hist.empty:
            ax_loss.plot(hist["epoch"], hist["loss"].rolling(smooth, min_periods=1).mean(), label=label)
        if not dev.empty:
            ax_dev.plot(dev["epoch"], dev["dev_f1"], marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="CRF loss (eq. 11)", title="training loss", yscale="log")
    ax_dev.set(xlabel="epoch", ylabel="strict F1", title="CoNLL-2003 dev (model selection)")
    ax_dev.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --- alignment (notebook 02) -------------------------------------------------------------------------

def candidates_table(candidates: list[dict]) -> pd.DataFrame:
    """One row per aligner start and restart (``AlignmentResult.candidates``) without the mapping matrices,
    best criterion marked ``chosen``."""
    df = pd.DataFrame([{k: v for k, v in c.items() if k != "mapping"} for c in candidates])
    if len(df):
        df["chosen"] = df.index == df["criterion"].idxmax()
    return df


def plot_alignment_curves(history: list[dict]) -> plt.Figure:
    """Discriminator accuracy and the unsupervised criterion per adversarial epoch / refinement round, one line
    per aligner start and restart (``start``, ``run`` columns of the history)."""
    df = pd.DataFrame(history).reset_index(drop=True)
    keys = [c for c in ("start", "run") if c in df]
    groups = list(df.groupby(keys, sort=False)) if keys else [("", df)]
    fig, (ax_acc, ax_crit) = plt.subplots(1, 2, figsize=(11, 3.6))
    for name, g in groups:
        label = " ".join(str(n) for n in (name if isinstance(name, tuple) else (name,)))
        x = range(len(g))
        if "dis_acc" in g and g["dis_acc"].notna().any():
            ax_acc.plot(x, g["dis_acc"], marker=".", label=label)
        if "criterion" in g:
            ax_crit.plot(x, g["criterion"], marker="o", label=label)
        if "stage" in g:
            stages = list(g["stage"])
            for i in range(1, len(stages)):
                if stages[i] != stages[i - 1]:
                    for ax in (ax_acc, ax_crit):
                        ax.axvline(i - 0.5, color="grey", ls="--", lw=0.8)
    ax_acc.set(xlabel="step (init, adversarial epochs, refinement rounds)", ylabel="accuracy",
               title="discriminator accuracy (eqs 4-5)")
    ax_crit.set(xlabel="step (init, adversarial epochs, refinement rounds)", ylabel="mean CSLS cosine",
                title="model-selection criterion")
    for ax in (ax_acc, ax_crit):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, title="start run" if keys else None)
    fig.tight_layout()
    return fig


def neighbour_table(queries: list[str], query_vectors, key_words: list[str], key_vectors, *, k: int = 10,
                    topk: int = 3) -> pd.DataFrame:
    """The ``topk`` CSLS nearest neighbours (with cosine) of each query among the keys."""
    from .lexicon import nearest_neighbours, unit_rows

    q, keys = unit_rows(query_vectors.float()), unit_rows(key_vectors.float())
    _, top = nearest_neighbours(q, keys, "csls", k=k, topk=topk)
    cos = (q.unsqueeze(1) * keys[top]).sum(-1)
    rows = []
    for i, w in enumerate(queries):
        rows.append({"query": w, **{f"nn{j + 1}": f"{key_words[int(top[i, j])]} ({float(cos[i, j]):.2f})"
                                    for j in range(topk)}})
    return pd.DataFrame(rows)


def plot_projection(panels: list[tuple[str, object, object]], n: int = 1500) -> plt.Figure:
    """2-D PCA of source (first ``n`` rows) and target (first ``n`` rows) spaces, one panel per
    ``(title, source, target)``; the projection is fitted on each panel's two sets together."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (title, src, tgt) in zip(axes[0], panels, strict=True):
        s, t = src[:n].float(), tgt[:n].float()
        both = torch.cat([s, t])
        mean = both.mean(0, keepdim=True)
        _, _, v = torch.pca_lowrank(both - mean, q=2, center=False)
        ps, pt = (s - mean) @ v, (t - mean) @ v
        ax.scatter(ps[:, 0], ps[:, 1], s=3, alpha=0.4, label="English (source)")
        ax.scatter(pt[:, 0], pt[:, 1], s=3, alpha=0.4, label="Chinese (target)")
        ax.set_title(title)
        ax.legend(markerscale=4, fontsize=8)
    fig.tight_layout()
    return fig


# --- case study and error analysis (notebook 05) -------------------------------------------------------

#: background colour of each entity type in the case tables and the heat maps' token labels
TYPE_COLOURS: dict[str, str] = {"PER": "#f4b6b6", "LOC": "#b6dcb6", "ORG": "#b6cbf4", "MISC": "#e0d0f0"}
#: colour of each error category (:data:`xner_lib.errors.GOLD_CATEGORIES` and ``PRED_CATEGORIES``)
CATEGORY_COLOURS: dict[str, str] = {"correct": "#4c9a4c", "type": "#e3a33b", "boundary": "#5b8fd6",
                                    "boundary_type": "#a66fc9", "missed": "#c44e52", "spurious": "#8c8c8c"}
_CJK_FONTS = ("Noto Sans CJK", "Noto Sans SC", "Source Han Sans", "WenQuanYi", "SimHei", "Microsoft YaHei",
              "PingFang", "Heiti", "AR PL", "Droid Sans Fallback", "Arial Unicode")


def cjk_font() -> str | None:
    """The name of an installed font that draws Chinese characters (matplotlib's font list), or None."""
    from matplotlib import font_manager

    for f in font_manager.fontManager.ttflist:
        if any(f.name.startswith(name) for name in _CJK_FONTS):
            return f.name
    return None


def style_case(table: pd.DataFrame, gold_row: str = "gold"):
    """Figure 4 as a coloured :class:`pandas.io.formats.style.Styler` of a :func:`~xner_lib.case_study.case_table`:
    every tag cell coloured by its entity type (:data:`TYPE_COLOURS`, ``B-`` in bold), and a model's tag that
    differs from the gold one framed in red."""
    def colour(row: pd.Series) -> list[str]:
        out = []
        for col, tag in row.items():
            css = []
            if row.name != "token" and isinstance(tag, str) and tag != "O":
                css.append(f"background-color: {TYPE_COLOURS.get(tag[2:], '#dddddd')}")
                if tag.startswith("B-"):
                    css.append("font-weight: bold")
            if row.name not in ("token", gold_row) and gold_row in table.index and tag != table.loc[gold_row, col]:
                css.append("outline: 2px solid #d62728")
            out.append("; ".join(css))
        return out

    return table.style.apply(colour, axis=1).set_table_styles(
        [{"selector": "td, th", "props": "text-align: center; padding: 2px 5px; font-size: 11px"}])


def plot_attention(maps, heads: str | int = "mean", title: str = "") -> plt.Figure:
    """Heat maps of one sentence's attention (:class:`~xner_lib.case_study.AttentionMaps`): the semantic and
    structural attention of the double attention (averaged over heads, or one head) and the transfer's reverse
    attention over the teacher's English rendering, one panel each, rows the querying units. Chinese
    characters label the axes when a CJK font is installed (:func:`cjk_font`), else unit indices do."""
    mats = maps.matrices(heads)
    font = cjk_font()
    fig, axes = plt.subplots(1, len(mats), figsize=(4.6 * len(mats), 4.4), squeeze=False)

    def labels(tokens: list[str]) -> list[str]:
        if font is None and any(ord(ch) > 0x2e7f for t in tokens for ch in t):
            return [str(i) for i in range(len(tokens))]
        return tokens

    rows = labels(maps.tokens)
    for ax, (name, m) in zip(axes[0], mats.items(), strict=True):
        im = ax.imshow(m, cmap="viridis", vmin=0.0, aspect="auto")
        cols = labels(maps.teacher_tokens or []) if name == "transfer" else rows
        small = {"fontsize": 7, **({"fontfamily": font} if font else {})}
        if len(rows) <= 80:
            ax.set_yticks(range(len(rows)), rows, **small)
        if len(cols) <= 80 and cols:
            ax.set_xticks(range(len(cols)), cols, rotation=90, **small)
        what = f"head {heads}" if heads != "mean" else "mean over heads"
        ax.set_title({"semantic": f"semantic attention ({what})", "structural": f"structural attention ({what})",
                      "transfer": "transfer R (keys: English rendering)"}[name], fontsize=9)
        ax.set_xlabel("key" if name != "transfer" else "teacher token")
        fig.colorbar(im, ax=ax, fraction=0.046)
    axes[0][0].set_ylabel("query unit")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_errors(table: pd.DataFrame) -> plt.Figure:
    """The error analysis (:func:`~xner_lib.errors.error_table`) as stacked bars: one panel per corpus; per
    entity type and model two bars, the gold entities by category (correct, type confusion, boundary,
    boundary + type, missed) and the predicted ones (the same, spurious last)."""
    from .errors import CATEGORY_NAMES, GOLD_CATEGORIES, PRED_CATEGORIES

    corpora = list(dict.fromkeys(table["corpus"]))
    models = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(1, len(corpora), figsize=(6.5 * len(corpora), 4.2), squeeze=False)
    seen: set[str] = set()
    for ax, corpus in zip(axes[0], corpora, strict=True):
        sub = table[table["corpus"] == corpus]
        types = [t for t in dict.fromkeys(sub["type"]) if t != "all"] + ["all"]
        ticks, names = [], []
        x = 0.0
        for etype in types:
            for model in models:
                row = sub[(sub["type"] == etype) & (sub["model"] == model)]
                if row.empty:
                    continue
                r = row.iloc[0]
                for offset, side, cats in ((0.0, "gold", GOLD_CATEGORIES), (0.42, "pred", PRED_CATEGORIES)):
                    bottom = 0
                    for cat in cats:
                        n = int(r[f"{side}_{cat}"])
                        label = CATEGORY_NAMES[cat] if cat not in seen else None
                        seen.add(cat)
                        ax.bar(x + offset, n, width=0.4, bottom=bottom, color=CATEGORY_COLOURS[cat], label=label)
                        bottom += n
                ticks.append(x + 0.21)
                names.append(f"{etype}\n{model}\n(gold | pred)")
                x += 1.1
            x += 0.5
        ax.set_xticks(ticks, names, fontsize=7)
        ax.set(title=corpus, ylabel="entities")
    handles, labels_ = [], []
    for ax in axes[0]:
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels_ += lab
    fig.legend(handles, labels_, loc="upper center", ncol=len(labels_), fontsize=8, bbox_to_anchor=(0.5, 1.04))
    fig.tight_layout()
    return fig
