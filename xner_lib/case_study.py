"""The case study of section 4.4 (Figure 4), attention maps and the error analysis (issue 14, point 1).

Notebook 05 calls these on two saved models of one seed, the baseline and the full model (``adv_att_pos``):

* :func:`load_models` runs or reads back those runs through :class:`~xner_lib.experiment.Experiment` with
  their checkpoints kept (run keys as notebook 03's, so 03's runs are read back), then loads the checkpoints
  (:meth:`~xner_lib.tagger.Tagger.from_pretrained`: the unit scheme and decoding the runs were scored with);
* :func:`case_sentences` picks the sentences to show: test sentences by index and raw texts, each as a
  one-sentence :class:`~xner_lib.data.Dataset`;
* :func:`case_table` is the paper's Figure 4 as a table: tokens, each model's tags and the gold tags
  (:func:`xner_lib.report.style_case` colours it);
* :func:`attention_maps` returns, for one sentence, the semantic and structural attention of the double
  attention (per head) and the transfer's reverse attention ``R`` over the teacher's English rendering
  (:func:`xner_lib.report.plot_attention` draws them); None for a model with neither (the baseline);
* :func:`predict_sets` and :func:`error_analysis` tag whole test sets and count errors by type
  (:mod:`xner_lib.errors`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .batches import pad_features, prepare
from .data import Dataset, harmonise
from .device import to_device
from .errors import confusions, error_counts, error_table, length_counts
from .evaluate import harmonised, primary_view
from .features import extract_unit_features
from .inference import detect_language, split_text, text_dataset
from .tagger import Tagger

#: the test sets of the case study and the error analysis (``Experiment.data`` keys)
CASE_SETS: tuple[str, ...] = ("weibo_test", "peoples_daily_test")


# --- models ------------------------------------------------------------------------------------------------
@dataclass
class CaseModels:
    """What :func:`load_models` gives: the experiment, and per display label the loaded tagger and the
    ``metrics.json`` of its run."""

    experiment: Any
    taggers: dict[str, Tagger]
    metrics: dict[str, dict[str, Any]]


def load_models(params: Mapping[str, Any], names: Mapping[str, str], seed: int) -> CaseModels:
    """The :class:`~xner_lib.experiment.Experiment` of a notebook's ``params`` (as 03 builds it) and, per
    display label of ``names`` (label -> variant of ``params["variants"]``), the tagger of that variant's run
    of ``seed``: run, or read back when cached, with its checkpoint kept (a transfer variant's teacher first),
    then loaded from ``results/<profile>/checkpoints/<variant>-seed<seed>`` on ``train_device``. The run keys
    are 03's when ``params`` holds 03's settings, so 03's runs (and checkpoints) are read back."""
    from .config import from_params
    from .experiment import experiment_from_params, resolve_variants
    from .run_names import run_name
    from .train import TrainConfig

    exp = experiment_from_params(params)
    runs = resolve_variants(from_params(TrainConfig, params, "train_"), params["variants"])
    models: dict[str, Tagger] = {}
    metrics: dict[str, dict[str, Any]] = {}
    for label, variant in names.items():
        target = runs.get(variant)
        if target is None:
            raise ValueError(f"{label}: no variant {variant!r} in variants ({', '.join(runs)})")
        source = target if isinstance(target, str) else variant  # a variant sharing another's runs
        cfg = runs[source]
        assert not isinstance(cfg, str)
        m = exp.run(source, cfg, seed, runs, keep_checkpoint=True)
        if m is None:
            raise FileNotFoundError(f"{label}: the run {source} seed {seed} is not made and missing_runs is 'skip': "
                                    "make it (python -m xner_lib runs) or set missing_runs to 'train'")
        metrics[label] = m
        models[label] = Tagger.from_pretrained(exp.out / "checkpoints" / run_name(source, seed),
                                               device=str(params.get("train_device", "cpu")))
    return CaseModels(exp, models, metrics)


def slug(label: str) -> str:
    """A file-name form of a case label: ``weibo_test[0]`` -> ``weibo_test_0``."""
    return re.sub(r"[^0-9A-Za-z_]+", "_", label).strip("_")


# --- sentences ---------------------------------------------------------------------------------------------
def sentence_dataset(dataset: Dataset, index: int) -> Dataset:
    """Sentence ``index`` of ``dataset`` as a dataset of its own (same name, split, format and file)."""
    if not -len(dataset) <= index < len(dataset):
        raise IndexError(f"{dataset.name}/{dataset.split} has {len(dataset)} sentences, no sentence {index}")
    return Dataset(dataset.name, dataset.split, dataset.format, dataset.path, [dataset.sentences[index]])


def text_sentence(text: str, language: str | None = None) -> Dataset:
    """A raw text as a one-sentence dataset without gold (every tag ``O``): split as ``predict`` splits it
    (:func:`~xner_lib.inference.split_text`), Chinese when it holds a CJK character unless ``language`` says."""
    tokens, _ = split_text(text)
    if not tokens:
        raise ValueError(f"the text {text!r} has no token")
    return text_dataset([tokens], language or detect_language(text), name="text")


def case_sentences(datasets: Mapping[str, Dataset], indices: Mapping[str, Sequence[int]],
                   texts: Sequence[str] = ()) -> dict[str, Dataset]:
    """The sentences of the case study, label -> one-sentence dataset: sentence ``i`` of ``datasets[name]``
    for each ``i`` of ``indices[name]`` (labelled ``name[i]``, with gold), then each raw text (``text[k]``,
    without gold)."""
    out: dict[str, Dataset] = {}
    for name, idx in indices.items():
        if name not in datasets:
            raise ValueError(f"case_indices names {name!r}; the test sets are {', '.join(datasets)}")
        for i in idx:
            out[f"{name}[{i}]"] = sentence_dataset(datasets[name], int(i))
    for k, text in enumerate(texts):
        out[f"text[{k}]"] = text_sentence(text)
    return out


def has_gold(sentence: Dataset) -> bool:
    """False for a raw text (:func:`text_sentence`), whose tags are not gold."""
    return sentence.split != "text"


# --- Figure 4 ----------------------------------------------------------------------------------------------
def case_table(sentence: Dataset, models: Mapping[str, Tagger]) -> pd.DataFrame:
    """The paper's Figure 4 for one sentence: one column per token, rows ``token``, each model's tags (by
    label, in order) and ``gold`` (absent for a raw text). Tags as the primary view scores them
    (:func:`~xner_lib.evaluate.harmonised`: Weibo NAM only, GPE as LOC; MISC predictions on Chinese as O)."""
    if len(sentence) != 1:
        raise ValueError(f"case_table takes a one-sentence dataset, got {len(sentence)} sentences")
    sent = sentence.sentences[0]
    rows: dict[str, list[str]] = {"token": list(sent.tokens)}
    gold = [sent.tags]
    for label, tagger in models.items():
        _, pred_h = harmonised(gold, tagger.predict_dataset(sentence), sentence.format)
        rows[label] = pred_h[0]
    if has_gold(sentence):
        rows["gold"] = harmonise(sent.tags, primary_view(sentence.format))
    return pd.DataFrame.from_dict(rows, orient="index")


# --- attention maps ----------------------------------------------------------------------------------------
@dataclass
class AttentionMaps:
    """The attention weights of one sentence (section 3.2), before dropout. ``tokens``: the label of each
    unit the model attends with (its characters or word); ``semantic``, ``structural``: ``[heads, U, U]``
    (query, key) or None without the double attention; ``transfer``: ``[U, W]`` over the teacher's
    ``teacher_tokens`` (its English rendering) or None without the transfer. Every row sums to 1."""

    tokens: list[str]
    semantic: np.ndarray | None = None
    structural: np.ndarray | None = None
    transfer: np.ndarray | None = None
    teacher_tokens: list[str] | None = None

    def matrices(self, heads: str | int = "mean") -> dict[str, np.ndarray]:
        """The maps present as 2-D arrays: the double attention's averaged over heads (``"mean"``) or of one
        head (an index), the transfer's as it is."""
        out = {}
        for name in ("semantic", "structural"):
            m = getattr(self, name)
            if m is not None:
                out[name] = m.mean(axis=0) if heads == "mean" else m[int(heads)]
        if self.transfer is not None:
            out["transfer"] = self.transfer
        return out


def attention_maps(tagger: Tagger, sentence: Dataset | str) -> AttentionMaps | None:
    """The attention maps of ``tagger`` on one sentence (a one-sentence dataset, or a raw text), computed
    as prediction computes them (eval mode, the tagger's unit scheme; the teacher reads the sentence's
    English rendering, :meth:`~xner_lib.tagger.Teacher.english`). None when the model has neither the double
    attention nor the transfer (the baseline)."""
    ds = text_sentence(sentence) if isinstance(sentence, str) else sentence
    if len(ds) != 1:
        raise ValueError(f"attention_maps takes one sentence, got {len(ds)}")
    head = tagger.head
    if head.attention is None and head.transfer is None:
        return None
    reader = tagger.text_encoder
    if reader is None:
        raise ValueError("this tagger has no text encoder: load it with Tagger.from_pretrained")
    data = prepare(ds, reader, frozen=False, zh_units=tagger.inference.zh_units)
    cached = extract_unit_features(reader, data.encoded) if tagger.encoder is None else None
    was = tagger.training
    tagger.eval()
    try:
        feats, mask = tagger.features(data.encoded, cached, ds.language)
        teacher, english = None, None
        if head.transfer is not None:
            if tagger.teacher is None:
                raise ValueError("this tagger's head transfers from a teacher, but it has none")
            english = tagger.teacher.english(ds)[0]
            teacher = to_device(pad_features(tagger.teacher.read([english])), tagger.device)
        maps = {k: v[0].detach().cpu().numpy() for k, v in head.attention_maps(feats, mask, teacher).items()}
    finally:
        tagger.train(was)
    toks = ds.sentences[0].tokens
    sep = " " if ds.language == "en" else ""
    units = [sep.join(toks[a:b]) for a, b in data.encoded[0].unit_spans]
    if english is not None and maps["transfer"].shape[1] != len(english):  # one English unit per word
        english = [f"#{i}" for i in range(maps["transfer"].shape[1])]
    return AttentionMaps(units, maps.get("semantic"), maps.get("structural"), maps.get("transfer"), english)


# --- whole test sets ---------------------------------------------------------------------------------------
def predict_sets(models: Mapping[str, Tagger], datasets: Mapping[str, Dataset], batch_size: int = 64
                 ) -> dict[tuple[str, str], list[list[str]]]:
    """Token-level predictions of each model on each dataset, ``(dataset key, model label) -> tags``, decoded
    as the runs were scored (:meth:`~xner_lib.tagger.Tagger.predict_dataset`)."""
    return {(name, label): tagger.predict_dataset(ds, batch_size)
            for name, ds in datasets.items() for label, tagger in models.items()}


def corpus_label(name: str, dataset: Dataset) -> str:
    """How the error tables name a test set: ``<name> (<its primary view>)``, e.g. ``weibo_test (weibo_nam)``."""
    return f"{name} ({primary_view(dataset.format)})"


def error_analysis(datasets: Mapping[str, Dataset], predictions: Mapping[tuple[str, str], Sequence[Sequence[str]]]
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The error analysis of :mod:`xner_lib.errors` over whole test sets, in each corpus's primary view:
    ``(counts, confusions)``. ``counts``: :func:`~xner_lib.errors.error_table`, one row per (corpus, model,
    type) and ``all``; ``confusions``: per (corpus, model), gold type -> predicted type of the type confusions
    and boundary + type errors, long format (``corpus``, ``model``, ``gold``, ``predicted``, ``count``)."""
    counts, conf = {}, []
    for (name, label), pred in predictions.items():
        ds = datasets[name]
        gold = [s.tags for s in ds.sentences]
        corpus = corpus_label(name, ds)
        counts[(corpus, label)] = error_counts(gold, pred, ds.format)
        c = confusions(gold, pred, ds.format)
        if not c.empty:
            long = c.stack().rename("count").reset_index()
            conf.append(long[long["count"] > 0].assign(corpus=corpus, model=label))
    conf_df = (pd.concat(conf, ignore_index=True)[["corpus", "model", "gold", "predicted", "count"]] if conf
               else pd.DataFrame(columns=["corpus", "model", "gold", "predicted", "count"]))
    return error_table(counts), conf_df


def length_analysis(datasets: Mapping[str, Dataset], predictions: Mapping[tuple[str, str], Sequence[Sequence[str]]]
                    ) -> pd.DataFrame:
    """:func:`~xner_lib.errors.length_counts` of each (corpus, model) in the corpus's primary view, as one
    table: ``corpus``, ``model``, then the length bins' counts, recall and precision."""
    frames = []
    for (name, label), pred in predictions.items():
        ds = datasets[name]
        frames.append(length_counts([s.tags for s in ds.sentences], pred, ds.format)
                      .assign(corpus=corpus_label(name, ds), model=label))
    out = pd.concat(frames, ignore_index=True)
    return out[["corpus", "model", *[c for c in out.columns if c not in ("corpus", "model")]]]


def agreement_with_runs(counts: pd.DataFrame, metrics: Mapping[str, Mapping[str, Any]],
                        datasets: Mapping[str, Dataset]) -> pd.DataFrame:
    """Whether the error analysis tagged the test sets as the runs scored them: per corpus and model, the
    gold, predicted and correct entities of ``counts`` (:func:`error_analysis`, ``all`` rows) beside the
    strict ``support``, ``n_pred`` and ``n_correct`` of the run's ``metrics.json`` (primary view), and
    ``same`` when all three agree."""
    rows = []
    for name, ds in datasets.items():
        view, corpus = primary_view(ds.format), corpus_label(name, ds)
        for label, m in metrics.items():
            sub = counts[(counts.corpus == corpus) & (counts.model == label) & (counts.type == "all")]
            if sub.empty:
                continue
            r, s = sub.iloc[0], m["scores"][name][view]["strict"]
            ours = (int(r.gold), int(r.pred), int(r.gold_correct))
            run = (int(s["support"]), int(s["n_pred"]), int(s["n_correct"]))
            rows.append({"corpus": corpus, "model": label, "gold": ours[0], "pred": ours[1], "correct": ours[2],
                         "run_gold": run[0], "run_pred": run[1], "run_correct": run[2], "same": ours == run})
    return pd.DataFrame(rows)
