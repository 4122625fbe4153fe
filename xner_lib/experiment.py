"""One run of an experiment: train on CoNLL, tag the test sets, score, write ``metrics.json``.

Notebooks call :func:`run_or_load` once per (variant, seed). A run is cached under a *run key*
(:func:`run_key_parts`): the method version, the variant, the whole training config, the encoder's
identity and the data files' checksums and sentence counts. A ``metrics.json`` whose key matches is read
back instead of retrained, so an interrupted notebook resumes where it stopped; any other is rerun, with
one log line naming what changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .batches import Prepared, prepare
from .data import Dataset, Sentence
from .data.links import count_links
from .data.sources import sha256_cached
from .decoding import DecodeConfig, entities_in_links
from .device import mixed_precision, placed, resolve_device
from .encoders import Encoder, load_encoder
from .evaluate import git_state, package_versions, score_dataset, write_metrics
from .files import write_bytes_atomic
from .objectives import FewShotConfig, majority_tags
from .run_names import SHARED_PREFIX, few_shot_name, is_few_shot, run_name
from .tagger import (
    InferenceSettings,
    Tagger,
    Teacher,
    checkpoint_problems,
    load_checkpoint,
    predict_many,
    save_checkpoint,
)
from .train import TrainConfig, key_config, train

logger = logging.getLogger(__name__)

#: The version of the method. Bump it whenever training or scoring code changes what a run produces (its
#: numbers or the fields of its metrics.json): it is part of every run key, so each cached run made under
#: another value is rerun. This is the one place it is defined.
METHOD_VERSION = 2  # 2: unit_tags keeps entities that begin inside a unit; decoding constraints

#: the sets every run is scored on: scores key -> role
EVAL_SETS: tuple[str, ...] = ("conll_dev", "conll_test", "weibo_test", "peoples_daily_test")
#: the sets whose data is part of the run key
KEY_SETS: tuple[str, ...] = ("conll_train", *EVAL_SETS)


@dataclass
class Corpora:
    """The prepared splits a run needs: CoNLL train/dev/test and the Chinese test sets."""

    conll_train: Prepared
    conll_dev: Prepared
    conll_test: Prepared
    weibo_test: Prepared
    peoples_daily_test: Prepared
    #: the Chinese sets under another unit scheme (``zh_units``), scored beside the main ones (issue 10)
    alt_units: dict[str, Prepared] = field(default_factory=dict)


@dataclass
class Streams:
    """What a run of the paper's model reads besides :class:`Corpora` (all None for the baseline): the frozen
    ``teacher`` and the ``rendered`` CoNLL pairs of the transfer, the unlabelled Chinese ``target`` and the
    initial ``mapping`` ``U`` of the adversarial loss; beyond the paper, the labelled Chinese ``few_shot``
    sentences, the ``pseudo``-labelled ones of self-training and CoNLL ``translated`` through the lexicon.
    ``inputs`` joins the run key (:func:`run_key_parts`); ``summary`` (coverage, sizes) goes to
    ``metrics.json``."""

    teacher: Teacher | None = None
    rendered: Prepared | None = None
    target: Prepared | None = None
    mapping: Tensor | None = None
    few_shot: Prepared | None = None
    pseudo: Prepared | None = None
    translated: Prepared | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def data_identity(dataset: Dataset) -> dict[str, Any]:
    """What of a dataset changes a run: the sha256 of its file (cached per path, size and modification time)
    and the number of sentences it holds (the sentence limit, ``max_sentences``, applied). A dataset not read
    from a file gets the sha256 of its sentences' tokens and tags instead, under ``content_sha256``."""
    path = Path(dataset.path)
    if path.is_file():
        return {"file": f"{path.parent.name}/{path.name}", "sha256": sha256_cached(path), "sentences": len(dataset)}
    h = hashlib.sha256()
    for s in dataset.sentences:
        h.update(json.dumps([s.tokens, s.tags], ensure_ascii=False).encode())
    return {"file": None, "content_sha256": h.hexdigest(), "sentences": len(dataset)}


def encoder_key(encoder: Encoder) -> dict[str, Any]:
    """The encoder's part of a run key: its name, identity (sha256 of weights and tokenizer) and window."""
    return {"name": encoder.name, "identity": encoder.identity, "max_length": encoder.max_length}


def checkpoint_weights(directory: Path) -> list[str | None]:
    """The sha256 of a saved tagger's weights (head, fine-tuned encoder; None for a file it lacks): what keys
    the files derived from a checkpoint (teacher features, pseudo-labels), so a retrained one is never read
    from a stale file."""
    return [sha256_cached(w) if w.is_file() else None
            for w in (directory / "head.safetensors", directory / "encoder" / "model.safetensors")]


def portable_name(name: str) -> str:
    """An encoder name as it enters a run key. A saved tagger's encoder, ``.../<profile>/checkpoints/<run>/
    encoder`` (the shared protocol's fine-tuned baseline), is named from ``<profile>/`` on
    (``cpu/checkpoints/baseline-seed1/encoder``), so a run's key does not depend on where the repository is
    checked out (a clone, a worktree, CI); the encoder's weights are keyed by their sha256 (:func:`encoder_key`)
    all the same. Any other name is kept as it is."""
    parts = Path(name).parts
    tagger_encoder = len(parts) >= 5 and parts[-3] == "checkpoints" and parts[-1] == "encoder"
    if Path(name).is_absolute() and tagger_encoder:
        return Path(*parts[-4:]).as_posix()
    return name


def portable_encoder_names(parts: dict[str, Any]) -> dict[str, Any]:
    """``parts`` (a run key's parts, changed in place and returned) with the encoder names it holds
    (``config.encoder``, ``encoder.name``; a run keyed without an encoder, Table 3's CRF, has neither) made
    :func:`portable_name`'s."""
    for section, name in (("config", "encoder"), ("encoder", "name")):
        if name in parts.get(section, {}):
            parts[section][name] = portable_name(str(parts[section][name]))
    return parts


def run_key_parts(variant: str, cfg: TrainConfig, encoder: Encoder, corpora: Corpora,
                  evaluation: Mapping[str, Any] | None = None, inputs: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Everything that changes the numbers of a run, as plain JSON values: :data:`METHOD_VERSION`, the
    variant, the whole :class:`~xner_lib.train.TrainConfig` (its ``head`` dict included), the encoder
    (:func:`encoder_key`), each set's data (:func:`data_identity`) and how the run is scored (``evaluation``:
    decoding, unit schemes, snapshot) and, for the paper's variants, what else they read (``inputs``: the
    teacher's run key, the lexicon's and the initial map's checksums, the unlabelled Chinese sets; absent
    when empty, so the baseline's key is what it was before those existed). Package versions are not part of it
    (:func:`run_or_load` warns about them instead). A code default that changes (e.g. a head size not set in
    the config) is covered by bumping :data:`METHOD_VERSION`. Encoder names are :func:`portable_name`'s."""
    parts = {
        "method_version": METHOD_VERSION,
        "variant": variant,
        "config": key_config(cfg),
        "encoder": encoder_key(encoder),
        "data": {k: data_identity(getattr(corpora, k).dataset) for k in KEY_SETS},
        "evaluation": dict(evaluation or {}),
    }
    if inputs:
        parts["inputs"] = dict(inputs)
    portable_encoder_names(parts)
    return json.loads(json.dumps(parts, sort_keys=True, default=str))  # the form metrics.json reads back


def run_key(parts: Mapping[str, Any]) -> str:
    """A short hash of :func:`run_key_parts`."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _leaves(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted.path, value)`` of every leaf of nested dicts."""
    if isinstance(obj, Mapping) and obj:
        for k in sorted(obj):
            yield from _leaves(obj[k], f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, obj


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= 24 else text[:12] + "..."


def key_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The components of two run keys that differ, as ``path: old -> new`` (``missing`` where absent)."""
    a, b = dict(_leaves(old)), dict(_leaves(new))
    missing = object()
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, missing), b.get(k, missing)
        if va != vb:
            out.append(f"{k}: {'missing' if va is missing else _short(va)} -> "
                       f"{'missing' if vb is missing else _short(vb)}")
    return out


def _stale_reason(old: Mapping[str, Any], key: str, parts: Mapping[str, Any], checkpoint: Path | None
                  ) -> str | None:
    """Why a cached run cannot be read back (None: it can)."""
    extra = old.get("extra", {})
    if extra.get("run_key") != key:
        old_parts = extra.get("run_key_parts")
        if not isinstance(old_parts, Mapping):
            return "it records no run key (made by older code)"
        diffs = key_differences(old_parts, parts) or ["run key hash"]
        more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
        return "its run key differs: " + "; ".join(diffs[:3]) + more
    if checkpoint is not None:
        meta = checkpoint / "config.json"
        if not meta.is_file():
            return f"no checkpoint at {checkpoint}, and checkpoints are asked for"
        try:
            ckpt_key = json.loads(meta.read_text(encoding="utf-8")).get("run_key")
        except ValueError:
            ckpt_key = None
        if ckpt_key != key:
            return f"the checkpoint at {checkpoint} was made by another run (run key {ckpt_key} != {key})"
        problems = checkpoint_problems(checkpoint, checksums=False)  # sizes only: cheap, and catches truncation
        if problems:
            return f"the checkpoint at {checkpoint} is incomplete: {'; '.join(problems)}"
    return None


def _read_metrics(path: Path) -> dict[str, Any] | None:
    """A cached run's ``metrics.json``, or None when it is not a JSON object (truncated, corrupt)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None
    return record if isinstance(record, dict) else None


def version_differences(old_versions: Mapping[str, Any], new_versions: Mapping[str, Any]) -> list[str]:
    """``package old -> new`` for every package whose recorded version differs (``not recorded`` where the
    old record lacks it)."""
    return [f"{name} {old_versions.get(name, 'not recorded')} -> {v}" for name, v in sorted(new_versions.items())
            if old_versions.get(name, "not recorded") != v]


def read_cached(path: Path, key: str, parts: Mapping[str, Any], *, fresh: bool = False,
                checkpoint: Path | None = None, read_only: bool = False) -> dict[str, Any] | None:
    """The cached ``metrics.json`` at ``path`` when it can be read back (its run key is ``key`` and, with
    ``checkpoint``, a checkpoint of that run is there), else None: absent, ``fresh``, or stale, which one
    warning-level log line explains (:func:`key_differences`; with ``read_only`` it says the run is left out,
    not rerun). A run read back that was made under other
    package versions (:data:`~xner_lib.evaluate.VERSIONED_PACKAGES`, Python) is *not* rerun for that alone:
    a ``warnings.warn`` names each package and both versions (``fresh=True`` reruns it)."""
    if not path.is_file():
        return None
    old = _read_metrics(path)
    reason = ("fresh=True" if fresh else f"{path} is unreadable (truncated or corrupt JSON)" if old is None
              else _stale_reason(old, key, parts, checkpoint))
    if reason is None:
        assert old is not None
        diffs = version_differences(old.get("versions", {}), package_versions())
        if diffs:
            warnings.warn(f"{path}: read back a run made under other package versions ({'; '.join(diffs)}); "
                          "it is not rerun for versions alone (fresh=True reruns it)", stacklevel=3)
        return old
    logger.warning("%s: %s: %s", path.parent.name,
                   "not read back, left out (read only)" if read_only else "rerunning the cached run", reason)
    return None


#: decodings scored beside the main one in every run (each switches one constraint off), for the change table
DECODE_VARIANTS: dict[str, DecodeConfig] = {
    "no_target_labels": DecodeConfig(target_labels=False, links=True),
    "no_links": DecodeConfig(target_labels=True, links=False),
    "neither": DecodeConfig(target_labels=False, links=False),
}


def evaluate_tagger(tagger: Tagger, corpora: Corpora, decode: DecodeConfig, *,
                    variants: dict[str, DecodeConfig] | None = None, batch_size: int = 64, progress: bool = True,
                    alt_units: bool = True) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, float]]:
    """Score ``tagger`` on every set of :data:`EVAL_SETS` under ``decode`` (the scores), under each of
    ``variants`` (default :data:`DECODE_VARIANTS`) and, for the Chinese sets in ``corpora.alt_units``, under
    the other unit scheme. Returns ``(scores, variant_scores, link_firings, seconds)``: ``variant_scores``
    is ``{variant: {set: scores}}`` (unit variants named ``units:<scheme>``); ``link_firings[set]`` counts
    the entities the links-off decoding predicts on link tokens, i.e. what the link rule removed."""
    variants = DECODE_VARIANTS if variants is None else variants
    decodes = {"main": decode, **variants, "_links_off": replace(decode, links=False)}
    scores: dict[str, Any] = {}
    variant_scores: dict[str, Any] = {name: {} for name in variants}
    firings: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for name in EVAL_SETS:
        data: Prepared = getattr(corpora, name)
        t0 = time.perf_counter()
        preds = predict_many(tagger, data, decodes, batch_size, progress=progress)
        seconds[f"predict_{name}"] = time.perf_counter() - t0
        scores[name] = score_dataset(data.dataset, preds["main"])
        for v in variants:
            variant_scores[v][name] = score_dataset(data.dataset, preds[v])
        firings[name] = {"entities_in_links": entities_in_links(preds["_links_off"], data.links or []),
                         **asdict(count_links([s.tokens for s in data.dataset], data.dataset.language))}
    for name, data in (corpora.alt_units if alt_units else {}).items():
        pred = predict_many(tagger, data, {"main": decode}, batch_size, progress=progress)["main"]
        variant_scores.setdefault(f"units:{data.zh_units}", {})[name] = score_dataset(data.dataset, pred)
    return scores, variant_scores, firings, seconds


def run_or_load(variant: str, cfg: TrainConfig, encoder_factory: Callable[[], Encoder], corpora: Corpora,
                runs_dir: Path, *, checkpoints_dir: Path | None = None, progress: bool = True, fresh: bool = False,
                encoder: Encoder | None = None, decode: DecodeConfig | None = None,
                snapshot_epoch: float | None = None, streams: Streams | None = None,
                complete: Callable[[], tuple[Corpora, Streams]] | None = None,
                read_only: bool = False, code_git: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Train and evaluate one (variant, seed), or read back its ``metrics.json`` when its run key matches.

    ``encoder_factory`` loads a fresh encoder (fine-tuning changes it, so each seed starts from the same
    weights). ``encoder`` is the encoder the corpora were prepared with: its identity keys the run without
    another load (default: the factory is called once and its encoder keys the run and trains). Writes
    ``runs_dir/<variant>-seed<seed>/metrics.json`` with the scores of every set in :data:`EVAL_SETS`, the
    training curves, the seconds each stage took and, under ``extra``, ``run_key`` and ``run_key_parts``
    (:func:`run_key_parts`), the decoding variants (:func:`evaluate_tagger`) and, with ``snapshot_epoch``,
    the scores of the same run's weights at that epoch (variant ``epoch<snapshot_epoch>``, e.g. ``epoch1``:
    what stopping there gives). A run with ``cfg.average_from_epoch`` (checkpoint averaging) is scored with its
    averaged weights, and its evaluation best under variant ``selected``; ``extra`` names the steps averaged
    (``averaged_steps``) and the average's CoNLL-dev F1 (``averaged_dev_f1``; ``best_dev_f1`` stays the best's).

    ``streams``: what the paper's variants read besides the corpora (:class:`Streams`: the teacher, the
    rendered pairs, the unlabelled Chinese, the initial map); its ``inputs`` join the run key. ``complete``
    builds them (and the corpora with the teacher's features) only when the run must train, so reading a
    cached run back costs no teacher, rendering or feature pass (:meth:`Experiment.streams`).

    A cached run is read back only when its ``metrics.json`` reads as JSON, its run key equals this one and,
    with ``checkpoints_dir``, a complete checkpoint (every file at the size it was saved with) of that same run
    key is there; otherwise it is rerun, and one log line (warning level) names what differed. ``fresh=True``
    ignores any cached run. A run read back that was made under other package versions
    (:data:`~xner_lib.evaluate.VERSIONED_PACKAGES`, Python) is *not* rerun for that alone: a ``warnings.warn``
    names each package and both versions (pass ``fresh=True`` to rerun it). ``read_only``: a run that would
    have to train returns None instead (the log line still says why a stale one is not read back). A run made
    again under the run key of the record it replaces (its checkpoint was missing, or ``fresh``) records
    under ``extra.rerun_of`` whether it reproduced that record's scores (:func:`rerun_record`).

    ``code_git``: the git state of the code that runs (default: the checkout's now; an
    :class:`Experiment` passes the state when it was made, i.e. when its process imported the code). A
    record names the checkout's commit when it is written; when that is not ``code_git`` (the checkout moved
    while the run trained), ``extra.code_git`` keeps the code's and a warning says so.
    """
    run_dir = runs_dir / run_name(variant, cfg.seed)
    path = run_dir / "metrics.json"
    checkpoint = checkpoints_dir / run_dir.name if checkpoints_dir is not None else None
    loaded = encoder_factory() if encoder is None else None
    reference = encoder if encoder is not None else loaded
    assert reference is not None
    decode = decode or DecodeConfig()
    evaluation = {"decode": asdict(decode), "zh_units": corpora.weibo_test.zh_units,
                  "alt_units": {k: v.zh_units for k, v in sorted(corpora.alt_units.items())},
                  "snapshot_epoch": snapshot_epoch}
    streams = streams or Streams()
    parts = run_key_parts(variant, cfg, reference, corpora, evaluation, streams.inputs)
    key = run_key(parts)
    cached = read_cached(path, key, parts, fresh=fresh, checkpoint=checkpoint, read_only=read_only)
    if cached is not None or read_only:
        return cached
    code_git = dict(code_git) if code_git is not None else git_state()  # only a run that trains is written
    previous = _read_metrics(path) if path.is_file() else None  # the same run made before (checkpoint lost, fresh)
    if previous is not None and previous.get("extra", {}).get("run_key") != key:
        previous = None
    if complete is not None:
        corpora, built = complete()
        if built.inputs != streams.inputs:
            raise ValueError(f"{run_dir.name}: the streams built ({built.inputs}) are not those keyed "
                             f"({streams.inputs})")
        streams = built
    if loaded is None:
        loaded = encoder_factory()
        if loaded.identity != reference.identity:
            raise ValueError(f"encoder_factory loaded {loaded.name!r} with identity {loaded.identity[:16]}, but the "
                             f"run is keyed by {reference.name!r} with identity {reference.identity[:16]} (the "
                             "encoder the corpora were prepared with): load the same encoder in both")
    result = train(cfg, loaded, corpora.conll_train, corpora.conll_dev, progress=progress,
                   snapshot_epoch=snapshot_epoch, rendered=streams.rendered, target=streams.target,
                   teacher=streams.teacher, mapping=streams.mapping, few_shot=streams.few_shot,
                   pseudo=streams.pseudo, translated=streams.translated)
    scores, variant_scores, firings, predict_seconds = evaluate_tagger(
        result.tagger, corpora, decode, batch_size=cfg.eval_batch_size, progress=progress)
    seconds: dict[str, float] = {"train": result.seconds, **predict_seconds}
    saved_identity = None
    if checkpoint is not None:
        save_checkpoint(result.tagger, checkpoint, asdict(cfg), run_key=key, scoring=evaluation)
        tuned = result.tagger.encoder
        if tuned is not None:  # what a run over the saved encoder is keyed by (the shared protocol): as reloaded
            saved_identity = load_encoder(checkpoint / "encoder", max_length=tuned.max_length).identity
    if result.snapshot is not None:
        result.tagger.load_state_dict(result.snapshot[1])
        snap, _, _, snap_seconds = evaluate_tagger(result.tagger, corpora, decode, variants={},
                                                   batch_size=cfg.eval_batch_size, progress=progress, alt_units=False)
        variant_scores[f"epoch{snapshot_epoch:g}"] = snap
        seconds["predict_snapshot"] = sum(snap_seconds.values())
    if result.selected is not None:  # checkpoint averaging: the evaluation best it replaced, scored beside it
        result.tagger.load_state_dict(result.selected[1])
        sel, _, _, sel_seconds = evaluate_tagger(result.tagger, corpora, decode, variants={},
                                                 batch_size=cfg.eval_batch_size, progress=progress, alt_units=False)
        variant_scores["selected"] = sel
        seconds["predict_selected"] = sum(sel_seconds.values())
    sizes = {k: v["sentences"] for k, v in parts["data"].items()}
    extra = {
        "run_key": key, "run_key_parts": parts, "sizes": sizes, "best_step": result.best_step,
        "best_dev_f1": result.best_dev_f1, "history": result.history, "dev_history": result.dev_history,
        "seconds": seconds, "encoder_identity": reference.identity, "unk_counts": unk_counts(corpora),
        "checkpoint_saved": checkpoint is not None,
        **({"saved_encoder_identity": saved_identity} if saved_identity is not None else {}),
        "decode": asdict(decode), "zh_units": corpora.weibo_test.zh_units, "variant_scores": variant_scores,
        "link_firings": firings, "stopped_early": result.stopped_early, "label_counts": result.label_counts,
        "steps": len(result.history), "snapshot_step": result.snapshot[0] if result.snapshot else None,
        "device": result.device,
        **({"averaged_steps": result.averaged_steps, "averaged_dev_f1": result.averaged_dev_f1}
           if cfg.average_from_epoch is not None else {}),
        **({"streams": streams.summary} if streams.summary else {}),
        **({"rerun_of": rerun_record(previous, scores, run_dir.name)} if previous is not None else {}),
    }
    checkout = git_state()
    if checkout != code_git:
        extra["code_git"] = code_git
        logger.warning("%s: the checkout moved while it ran (code at %s, checkout now at %s): the record keeps "
                       "both", run_dir.name, code_git.get("commit"), checkout.get("commit"))
    return write_metrics(path, variant=variant, encoder=cfg.encoder, seed=cfg.seed, config=asdict(cfg),
                         scores=scores, extra=extra)


def rerun_record(previous: Mapping[str, Any], scores: Mapping[str, Any], name: str) -> dict[str, Any]:
    """What a rerun of a run already made under the same run key (its checkpoint was missing, or ``fresh``)
    says about reproducibility: the earlier record's commit and time, whether every number of ``scores``
    (P/R/F1 and counts of every set and view) is the same, the largest difference and where (its dotted
    path, as :func:`key_differences` names a key part), and each strict F1 that moved as ``[old, new]``
    (``strict_f1_changed``). A difference
    is logged at warning level: the same key, code and data gave other numbers."""
    old, new = ({k: float(v) for k, v in _leaves(tree) if isinstance(v, int | float) and not isinstance(v, bool)}
                for tree in (previous.get("scores", {}), scores))
    diffs = {k: abs(new[k] - old[k]) for k in old.keys() & new.keys()}
    worst = max(diffs, key=lambda k: diffs[k], default=None)
    same = old.keys() == new.keys() and all(d == 0 for d in diffs.values())
    strict_f1 = {k: [old[k], new[k]] for k in sorted(diffs) if k.endswith(".strict.f1") and diffs[k] != 0}
    record = {"timestamp_utc": previous.get("timestamp_utc"), "commit": previous.get("git", {}).get("commit"),
              "same_scores": same, "max_difference": diffs[worst] if worst else 0.0, "where": worst,
              "numbers_compared": len(diffs), "numbers_only_in_one": len(old.keys() ^ new.keys()),
              "strict_f1_changed": strict_f1}
    if not same:
        moved = "; ".join(f"{k.removesuffix('.strict.f1')} {a:.4f} -> {b:.4f}" for k, (a, b) in strict_f1.items())
        logger.warning("%s: the rerun under the same run key gives other scores than the run of %s (largest "
                       "difference %.4g at %s; %d numbers in one record only; strict F1: %s)", name,
                       record["timestamp_utc"], record["max_difference"], worst, record["numbers_only_in_one"],
                       moved or "unchanged")
    return record


def unk_counts(corpora: Corpora) -> dict[str, dict[str, int]]:
    """Per set: tokens, units, tokens mapped to the unknown piece and tokens covered by no piece."""
    out = {}
    for name in ("conll_train", *EVAL_SETS):
        data: Prepared = getattr(corpora, name)
        out[name] = {
            "tokens": data.dataset.n_tokens,
            "units": sum(len(e.unit_spans) for e in data.encoded),
            "unk": sum(e.n_unk for e in data.encoded),
            "no_piece": sum(e.n_nopiece for e in data.encoded),
        }
    return out



# --- the experiment driver: variants x seeds ------------------------------------------------------------

#: the corpus files every run reads, by role
SPLITS: dict[str, str] = {"conll_train": "conll2003/train.txt", "conll_dev": "conll2003/dev.txt",
                          "conll_test": "conll2003/test.txt", "weibo_test": "weibo/test.txt",
                          "peoples_daily_test": "peoples_daily/test.txt"}
#: the unlabelled Chinese text of the adversarial loss (their tags are never read; never a test split)
UNLABELLED_SETS: tuple[str, ...] = ("weibo/train.txt", "peoples_daily/dev.txt")
#: the keys of :class:`~xner_lib.train.TrainConfig` whose dict values a variant block merges key by key
MERGED_FIELDS: tuple[str, ...] = ("head", "adversarial", "transfer", "self_training", "translate_train")


def resolve_variants(base: TrainConfig, blocks: Mapping[str, Mapping[str, Any] | str | None]
                     ) -> dict[str, TrainConfig | str]:
    """Each variant's :class:`~xner_lib.train.TrainConfig` from its block in a profile (``variants:``): the
    block's fields over ``base``, the dict fields of :data:`MERGED_FIELDS` merged key by key (``{}`` or
    ``null`` switches the base's section off). A block that is a string names another variant whose runs it
    shares (e.g. ``without_position: adv_att``); it stays a string. Unknown fields
    raise :class:`~xner_lib.config.ConfigError`."""
    from .config import ConfigError, did_you_mean

    known = {f for f in asdict(base)}
    out: dict[str, TrainConfig | str] = {}
    problems: list[str] = []
    for name, block in blocks.items():
        if isinstance(block, str):
            if block not in blocks or isinstance(blocks[block], str):
                problems.append(f"variant '{name}': '{block}' is not a variant with its own block")
            out[name] = block
            continue
        block = dict(block or {})
        bad = [k for k in block if k not in known]
        problems += [f"variant '{name}': unknown key '{k}'; {did_you_mean(k, known)}" for k in bad]
        if bad:
            continue
        # a merged section given as {} or null switches the base's section off
        values = {k: ({**getattr(base, k), **v} if k in MERGED_FIELDS and v else {} if k in MERGED_FIELDS else v)
                  for k, v in block.items()}
        try:
            out[name] = replace(base, **values)
        except (ValueError, TypeError) as err:
            problems.append(f"variant '{name}': {err}")
    if problems:
        raise ConfigError(problems)
    return out


def few_shot_sample(dataset: Dataset, size: int, seed: int) -> Dataset:
    """The first ``size`` sentences of a fixed permutation (``random.Random(seed)``) of ``dataset``, in that
    order: a larger sample holds every smaller one, so a few-shot curve adds sentences rather than redrawing.
    Its path is not a file, so its run-key identity is its content (:func:`data_identity`)."""
    if not 0 <= size <= len(dataset):
        raise ValueError(f"few_shot: size {size} outside 0..{len(dataset)} ({dataset.path})")
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    sentences = [dataset.sentences[i] for i in order[:size]]
    return Dataset(dataset.name, dataset.split, dataset.format, Path(f"{dataset.path}#few_shot-{size}-{seed}"),
                   sentences)


def few_shot_variants(variants: Mapping[str, TrainConfig | str], names: Sequence[str], sizes: Sequence[int],
                      section: Mapping[str, Any]) -> dict[str, TrainConfig | str]:
    """The few-shot curve's variants (issue 14): for each of ``names`` (variants of ``variants`` with their own
    block) and each size of ``sizes``, ``<name>-fs<size>``: that variant with the ``few_shot`` section
    ``section`` of that size. Size 0 names the variant itself (its runs are shared, relabelled). The
    variants themselves are included, so the aliases resolve."""
    out: dict[str, TrainConfig | str] = {}
    for name in names:
        cfg = variants.get(name)
        if not isinstance(cfg, TrainConfig):
            raise ValueError(f"few-shot variant {name!r} is not a variant with its own block")
        out[name] = cfg
        for n in sizes:
            out[few_shot_name(name, n)] = name if n == 0 else replace(cfg, few_shot={**section, "size": int(n)})
    return out


def config_on_features(params: Mapping[str, Any], prefix: str, exclude: Sequence[str] = ()) -> TrainConfig:
    """A frozen-feature :class:`~xner_lib.train.TrainConfig` from the notebook parameters with ``prefix``
    (``frozen_``: 03's frozen row and Table 3's static row; ``shared_``: Table 5's shared protocol), trained
    where the fine-tuned runs train (``train_device``, ``train_precision``)."""
    from .config import from_params

    cfg = from_params(TrainConfig, params, prefix, exclude=list(exclude))
    return replace(cfg, finetune=False, device=str(params.get("train_device", "cpu")),
                   precision=str(params.get("train_precision", "auto")))


def profile_runs(params: Mapping[str, Any]) -> dict[str, TrainConfig | str]:
    """Every fine-tuned or frozen run a profile names, as notebook 03 trains them: the ``variants`` over the
    ``train_*`` settings (:func:`resolve_variants`), with ``no_misc_class`` (the baseline without a MISC class)
    when ``nomisc_row``, ``frozen`` (the ``frozen_*`` settings, :func:`config_on_features`) when
    ``frozen_row``, and the ``selection_candidates`` (blocks over the ``train_*`` settings like the variants':
    the learning rates and schedules the baseline's are chosen against on CoNLL dev, issue 10). Notebooks 03
    and 04 and ``python -m xner_lib runs`` build their runs here (and the shared protocol's in
    :func:`profile_shared_runs`), so a run made by one is read back by the others."""
    from .config import ConfigError, from_params
    from .static_rows import FEATURE_CRF, STATIC_TAGGER

    base = from_params(TrainConfig, params, "train_")
    runs = resolve_variants(base, params.get("variants") or {"baseline": {}})
    candidates = params.get("selection_candidates") or {}
    taken = {*runs, "no_misc_class", "frozen", FEATURE_CRF, STATIC_TAGGER}
    problems = [f"selection_candidates: '{k}' must be a new run name (not a variant, a Table 3 row, shared-* "
                "or *-fs<n>) with its own block" for k, b in candidates.items()
                if k in taken or isinstance(b, str) or k.startswith(SHARED_PREFIX) or is_few_shot(k)]
    if problems:
        raise ConfigError(problems)
    resolved = resolve_variants(base, candidates)
    same = [k for k, cfg in resolved.items() if cfg == base]
    if same:
        raise ConfigError([f"selection_candidates: '{k}' changes nothing in the train_ settings (it would train "
                           "the baseline again under another name)" for k in same])
    runs.update(resolved)
    if params.get("nomisc_row"):
        runs["no_misc_class"] = replace(base, misc_class=False)
    if params.get("frozen_row"):
        runs["frozen"] = config_on_features(params, "frozen_", exclude=["frozen_row"])
    return runs


def profile_shared_runs(params: Mapping[str, Any], baseline: bool = False) -> dict[str, TrainConfig | str]:
    """The runs of Table 5's shared protocol (:meth:`Experiment.shared`), as notebook 04 trains them: the
    profile's ``variants`` (without ``baseline`` unless asked: the shared protocol's reference is the full
    model) over the ``shared_*`` settings (:func:`config_on_features`)."""
    base = config_on_features(params, "shared_", exclude=["shared_seeds"])
    blocks = params.get("variants") or {}
    return resolve_variants(base, {k: v for k, v in blocks.items() if baseline or k != "baseline"})


#: the protocols the few-shot curve can be trained under (``few_shot_protocol``)
FEW_SHOT_PROTOCOLS: tuple[str, ...] = ("shared", "joint")


def profile_few_shot_runs(params: Mapping[str, Any]) -> dict[str, TrainConfig | str]:
    """The few-shot curve's runs (issue 14), as notebook 04 and ``python -m xner_lib runs`` build them:
    :func:`few_shot_variants` of the ``few_shot_models`` at the ``few_shot_sizes`` with the ``few_shot``
    section, over the shared protocol's runs (the baseline included; run names ``shared-<variant>-fs<n>``)
    when ``few_shot_protocol`` is ``shared``, else over the fine-tuned runs (:func:`profile_runs`). Empty
    when the profile names no few-shot model."""
    protocol = params.get("few_shot_protocol", "shared")
    if protocol not in FEW_SHOT_PROTOCOLS:
        raise ValueError(f"few_shot_protocol must be shared or joint, got {protocol!r}")
    models = list((params.get("few_shot_models") or {}).values())
    if not models:
        return {}
    base = profile_shared_runs(params, baseline=True) if protocol == "shared" else profile_runs(params)
    return few_shot_variants(base, models, params["few_shot_sizes"], params["few_shot"])


def profile_all_runs(params: Mapping[str, Any]) -> tuple[dict[str, TrainConfig | str], dict[str, TrainConfig | str]]:
    """Every run a profile's notebooks make, by protocol: the fine-tuned runs (:func:`profile_runs`) and the
    shared protocol's (:func:`profile_shared_runs`), the few-shot curve's (:func:`profile_few_shot_runs`) joined
    to the protocol it is trained under (``few_shot_protocol``), so that ``python -m xner_lib runs`` names each
    run as 03 and 04 do."""
    runs, shared = profile_runs(params), profile_shared_runs(params)
    few_shot = profile_few_shot_runs(params)
    if params.get("few_shot_protocol", "shared") == "shared":
        return runs, {**shared, **few_shot}
    return {**few_shot, **runs}, shared


def text_only(datasets: Sequence[Dataset], name: str = "unlabelled") -> Dataset:
    """The sentences of ``datasets`` with every tag replaced by ``O``: unlabelled Chinese text, so that no
    label of it can reach training."""
    sentences = [Sentence(list(s.tokens), ["O"] * len(s), list(s.lines), s.source)
                 for d in datasets for s in d.sentences]
    return Dataset(name, "train", "peoples_daily", Path("+".join(str(d.path) for d in datasets)), sentences)


@dataclass
class Experiment:
    """Runs variants x seeds of one profile, resumable run by run (:func:`run_or_load` caches each).

    ``data``: the :data:`SPLITS` read; ``encoder``: the encoder they are prepared with (``encoder_name``
    loads a fresh copy for each fine-tuned run); ``out``: ``results/<profile>`` (runs, checkpoints, caches,
    and notebook 02's ``alignment/`` lexicon and map). The baseline alone is scored under the other Chinese
    unit scheme (``compare_units``) and at ``snapshot_epoch``. A variant that is some other variant's
    teacher always keeps its checkpoint. ``unlabelled``: the Chinese text of the adversarial loss
    (:data:`UNLABELLED_SETS`). ``device`` (a device setting, :mod:`~xner_lib.device`): where frozen features
    and the teacher's features are computed (each run trains where its ``TrainConfig.device`` says).

    The ``shared`` protocol of Table 5 (issue 12) is an experiment over the same seed's fine-tuned baseline
    encoder, frozen: its runs are named ``prefix + variant`` (e.g. ``shared-adv_att_pos``), and its
    transfer variants take their teacher from ``teachers = (experiment, variants)`` (the joint protocol's
    baseline of the same seed) instead of from their own variants.

    ``missing``: what a run that is not made yet (no ``metrics.json``, a stale one, or a teacher not made)
    does: ``train`` (the default) trains it; ``skip`` leaves it out of what :meth:`run_all` and
    :meth:`run_shared` return and names it in :attr:`skipped`, so a notebook executed before a long profile
    is finished tabulates the runs made so far, each row with its seeds (``./run_all.sh --made-only``;
    README, What lands in ``results/<profile>/``). It reads a run back from its ``metrics.json`` alone: a
    checkpoint is needed only where one is loaded (the case study). A shared-protocol run whose seed's
    fine-tuned baseline encoder is not on this machine (a fresh clone) is keyed by that encoder's identity
    as the baseline's record saved it; a baseline record made before records did so leaves every part of the
    run key checked but the encoder's checksum (``unverified_encoder``; each such run is named
    in :attr:`unverified` and in :meth:`skipped_summary`)."""

    data: Mapping[str, Dataset]
    encoder: Encoder
    encoder_name: str
    out: Path
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    zh_units: str = "char"
    compare_units: bool = False
    snapshot_epoch: float | None = None
    save_checkpoints: bool = False
    fresh: bool = False
    unlabelled: Sequence[Dataset] = ()
    progress: bool = True
    prefix: str = ""
    teachers: tuple[Experiment, Mapping[str, TrainConfig | str]] | None = None
    device: str = "cpu"
    missing: str = "train"
    unverified_encoder: bool = False
    not_before: str | None = None
    code_git: dict[str, Any] = field(default_factory=git_state, repr=False)
    skipped: list[str] = field(default_factory=list, init=False, repr=False)
    unverified: list[str] = field(default_factory=list, init=False, repr=False)
    _prepared: dict[Any, Any] = field(default_factory=dict, init=False, repr=False)
    _done: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict, init=False, repr=False)
    _running: set[tuple[str, int]] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.missing not in MISSING_RUNS:
            raise ValueError(f"missing_runs must be one of {', '.join(MISSING_RUNS)}, got {self.missing!r}")
        if self.missing == "skip" and self.fresh:
            raise ValueError("missing_runs 'skip' reads runs back and fresh reruns them: set one of the two")

    def _skip(self, name: str, seed: int, why: str) -> None:
        entry = f"{self.prefix}{name} seed {seed}: {why}"
        if entry not in self.skipped:
            self.skipped.append(entry)

    def skipped_summary(self) -> str:
        """For a notebook to print: every run made, or how many were skipped (``missing='skip'``) and which;
        then the runs read back without their encoder's checksum checked (:attr:`unverified`), if any."""
        left_out = (f"{len(self.skipped)} runs not made yet, left out (missing_runs 'skip'):\n  "
                    + "\n  ".join(self.skipped))
        lines = [left_out if self.skipped else "every run asked for is made"]
        if self.unverified:
            lines.append(f"{len(self.unverified)} runs read back with their encoder's checksum unchecked (the seed's "
                         "fine-tuned baseline encoder is not on this machine; every other part of the run key "
                         "matches):\n  " + "\n  ".join(self.unverified))
        return "\n".join(lines)

    # -- inputs, prepared once ------------------------------------------------------------------------
    def _prepare(self, key: str, dataset: Dataset, frozen: bool, zh_units: str | None = None) -> Prepared:
        k = (key, frozen, zh_units or self.zh_units)
        if k not in self._prepared:
            if frozen:  # features extracted on the device, the encoder then back where it was
                with placed(self.encoder.model, resolve_device(self.device)):
                    self._prepared[k] = prepare(dataset, self.encoder, frozen=True, zh_units=zh_units or self.zh_units)
            else:
                self._prepared[k] = prepare(dataset, self.encoder, frozen=False, zh_units=zh_units or self.zh_units)
        return self._prepared[k]

    def corpora(self, frozen: bool, alt_units: bool = False) -> Corpora:
        """The prepared :data:`SPLITS` (and, with ``alt_units``, the Chinese tests under the other scheme)."""
        other = {"char": "token", "token": "char"}[self.zh_units]
        alt = ({k: self._prepare(k, self.data[k], frozen, other) for k in ("weibo_test", "peoples_daily_test")}
               if alt_units else {})
        return Corpora(**{k: self._prepare(k, self.data[k], frozen) for k in SPLITS}, alt_units=alt)

    def lexicon_path(self, name: str) -> Path:
        """``alignment``: notebook 02's lexicon of this profile; anything else: a path."""
        return self.out / "alignment" / "lexicon.tsv" if name == "alignment" else Path(name)

    def lexicon_file(self, name: str, why: str) -> Path:
        """:meth:`lexicon_path`, which must exist (``why`` names what reads it)."""
        path = self.lexicon_path(name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no lexicon for {why} (notebook 02 writes it)")
        return path

    def _teacher_features(self, teacher: Teacher, name: str, dataset: Dataset) -> list[Tensor]:
        """The teacher's features of ``dataset`` (rounded to fp16 precision, :meth:`Teacher.read`), cached on
        disk by the teacher's weights (its head's and encoder's checksums), the data, the lexicon, the casing
        map, the rendering code's version and jieba's version: a retrained teacher or another rendering is
        never read from a stale file."""
        from importlib.metadata import version

        from .rendering import RENDERING_VERSION

        assert teacher.directory is not None
        ident = {"weights": checkpoint_weights(teacher.directory),
                 "data": data_identity(dataset), "rendering": RENDERING_VERSION, "jieba": version("jieba"),
                 "casing": hashlib.sha256(json.dumps(teacher.casing, sort_keys=True).encode()).hexdigest(),
                 "lexicon": sha256_cached(teacher.lexicon_path) if teacher.lexicon_path else None}
        path = self._cache_file("teacher", name, ident, ".pt")
        expected = [len(s) for s in dataset.sentences] if dataset.language == "en" else None
        if path.is_file():
            try:
                feats = [f.float() for f in torch.load(path, weights_only=True)]
                if len(feats) == len(dataset) and (expected is None or [f.shape[0] for f in feats] == expected):
                    return feats
                logger.warning("%s: teacher features do not match the data, recomputing", path)
            except (RuntimeError, EOFError, ValueError):
                logger.warning("%s: unreadable teacher features, recomputing", path)
        feats = teacher.features(dataset)
        write_bytes_atomic(path, lambda fh: torch.save([f.half() for f in feats], fh))
        return feats

    def _teacher_run(self, name: str, cfg: TrainConfig, variants: Mapping[str, TrainConfig | str],
                     section: str = "transfer", seed: int | None = None
                     ) -> tuple[Path, dict[str, Any] | None] | None:
        """The checkpoint directory and metrics of the run that is the teacher of ``cfg``'s ``section``
        (run or read back first), or None when that section is off: ``transfer``, the frozen English teacher
        (a variant with its own block and no transfer); ``self_training``, the run whose tags are the
        pseudo-labels (any variant with its own block but ``name`` itself). The teacher's run of ``seed``
        (default: ``cfg``'s). The shared protocol takes both from the joint experiment (``teachers``), so its
        students learn from the same runs as the joint ones. The metrics are None when the teacher's run is
        skipped (``missing``)."""
        sec = cfg.transfer_config if section == "transfer" else cfg.self_training_config
        if sec is None:
            return None
        source, tvariants = self.teachers if self.teachers is not None else (self, variants)
        tcfg = tvariants.get(sec.teacher)
        if section == "transfer" and (not isinstance(tcfg, TrainConfig) or tcfg.transfer):
            raise ValueError(f"variant '{name}': its teacher '{sec.teacher}' must be a variant with its own "
                             "block and no transfer")
        if not isinstance(tcfg, TrainConfig) or (source is self and sec.teacher == name):
            raise ValueError(f"variant '{name}': its self-training teacher '{sec.teacher}' must be another variant "
                             "with its own block")
        seed = cfg.seed if seed is None else seed
        tmetrics = source.run(sec.teacher, tcfg, seed, tvariants, keep_checkpoint=True)
        return source.out / "checkpoints" / run_name(source.prefix + sec.teacher, seed), tmetrics

    def _labellers(self, name: str, cfg: TrainConfig, variants: Mapping[str, TrainConfig | str]
                   ) -> list[tuple[Path, dict[str, Any] | None]] | None:
        """The runs whose tags are ``cfg``'s pseudo-labels (:meth:`pseudo_labelled`): the self-training
        teacher's run of each of ``teacher_seeds``, or of ``cfg``'s own seed; None without self-training."""
        st = cfg.self_training_config
        if st is None:
            return None
        runs = [self._teacher_run(name, cfg, variants, "self_training", seed) for seed in st.teacher_seeds or (None,)]
        return [r for r in runs if r is not None]

    def _cache_file(self, kind: str, name: str, ident: Mapping[str, Any], suffix: str) -> Path:
        """``cache/<kind>/<name>-<digest><suffix>``: a derived file named by the hash of what it is made from."""
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]
        return self.out / "cache" / kind / f"{name}-{digest}{suffix}"

    def pseudo_labelled(self, labellers: Sequence[tuple[Path, dict[str, Any]]], device: str = "cpu") -> Dataset:
        """The unlabelled Chinese text (:data:`UNLABELLED_SETS`) tagged by the ``labellers`` runs' checkpoints
        under this experiment's decoding and units (self-training, issue 13): one tag per token, the gold tags
        never read. One labeller's tags are its own; several vote (:func:`~xner_lib.objectives.majority_tags`:
        an entity stays when more than half of them predict it). Each labeller's tags are cached on disk
        (``cache/pseudo``) by its run key and weights (a retrained labeller is never read from a stale file),
        the text, the decoding and the units."""
        if not labellers:
            raise ValueError("pseudo_labelled needs at least one labeller run")
        text = text_only(self.unlabelled, "pseudo")
        tagged = [self._labeller_tags(labeller, text, device) for labeller in labellers]
        if len(tagged) == 1:
            tags, stem = tagged[0]
        else:
            tags = [majority_tags(votes) for votes in zip(*(t for t, _ in tagged), strict=True)]
            stem = "vote-" + hashlib.sha256(" ".join(s for _, s in tagged).encode()).hexdigest()[:20]
        sentences = [Sentence(list(s.tokens), list(t), list(s.lines), s.source)
                     for s, t in zip(text.sentences, tags, strict=True)]
        return Dataset("pseudo", "train", text.format, Path(f"{text.path}#{stem}"), sentences)

    def pseudo_label_scores(self, pseudo: Dataset) -> dict[str, Any]:
        """Strict P/R/F1 of ``pseudo``'s tags (:meth:`pseudo_labelled`) against the gold tags of the unlabelled
        sets they were made from, per set and view: how clean the pseudo-labels are, recorded for information
        in the run's ``extra.streams``. Never used to choose anything (no threshold, round or run); the sets are
        Weibo train and People's Daily dev, never a test split."""
        out: dict[str, Any] = {}
        start = 0
        for d in self.unlabelled:
            pred = [s.tags for s in pseudo.sentences[start:start + len(d)]]
            start += len(d)
            out[f"{d.name}_{d.split}"] = {view: score["strict"] for view, score in score_dataset(d, pred).items()}
        if start != len(pseudo):
            raise ValueError(f"{len(pseudo)} pseudo-labelled sentences for {start} unlabelled ones")
        return out

    def _labeller_tags(self, labeller: tuple[Path, dict[str, Any]], text: Dataset,
                       device: str) -> tuple[list[list[str]], str]:
        """One labeller's tags of ``text`` (read from or written to its cache file) and that file's stem."""
        ident = {"labeller": labeller[1]["extra"]["run_key"], "weights": checkpoint_weights(labeller[0]),
                 "text": data_identity(text), "decode": asdict(self.decode), "zh_units": self.zh_units}
        path = self._cache_file("pseudo", "unlabelled", ident, ".json")
        tags = None
        if path.is_file():
            try:
                tags = json.loads(path.read_text(encoding="utf-8"))["tags"]
            except (ValueError, KeyError, TypeError, OSError):
                tags = None
            if not (isinstance(tags, list) and [len(t) for t in tags] == [len(s) for s in text.sentences]):
                logger.warning("%s: unreadable or mismatched pseudo-labels, recomputing", path)
                tags = None
        if tags is None:
            tagger = Tagger.from_pretrained(labeller[0], device=device)
            tagger.inference = InferenceSettings(self.zh_units, self.decode)
            tags = tagger.predict_dataset(text, progress=self.progress)
            write_bytes_atomic(path, lambda fh: fh.write(json.dumps({"identity": ident, "tags": tags}).encode()))
        return tags, path.stem

    def unlabelled_identity(self, why: str) -> list[dict[str, Any]]:
        """:func:`data_identity` of each unlabelled Chinese set (``why`` names what needs them when there are
        none)."""
        if not self.unlabelled:
            raise ValueError(f"{why} needs unlabelled Chinese text (Experiment.unlabelled)")
        return [data_identity(d) for d in self.unlabelled]

    def inputs(self, cfg: TrainConfig, teacher: tuple[Path, dict[str, Any]] | None,
               labellers: Sequence[tuple[Path, dict[str, Any]]] | None = None) -> dict[str, Any]:
        """What a run reads besides the corpora, as it enters the run key (cheap: checksums and run keys).
        ``teacher``: the transfer's teacher run; ``labellers``: the self-training teacher runs
        (:meth:`_labellers`)."""
        tra, adv = cfg.transfer_config, cfg.adversarial_config
        out: dict[str, Any] = {}
        if tra is not None and teacher is not None:
            out.update({"teacher": teacher[1]["extra"]["run_key"],
                        "lexicon": sha256_cached(self.lexicon_file(tra.lexicon, "the transfer"))})
        tt = cfg.translate_train_config
        if tt is not None:
            out["translate_train"] = {"lexicon": sha256_cached(self.lexicon_file(tt.lexicon, "translate-train"))}
        if adv is not None:
            out["unlabelled"] = self.unlabelled_identity("the adversarial loss")
            if adv.map_init == "alignment":
                path = self.out / "alignment" / "mapping.npy"
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: no map to start U from (notebook 02 writes it)")
                out["mapping"] = sha256_cached(path)
        fs = cfg.few_shot_config
        if fs is not None:
            out["few_shot"] = data_identity(self.few_shot_sample(fs))
        st = cfg.self_training_config
        if st is not None:
            if not labellers:
                raise ValueError("self-training needs its teacher runs (Experiment._labellers)")
            # the decoding that made the pseudo-labels is the run's own, already in its key (evaluation)
            keys = [lab[1]["extra"]["run_key"] for lab in labellers]
            out["self_training"] = {**({"teachers": keys} if st.teacher_seeds else {"teacher": keys[0]}),
                                    "unlabelled": self.unlabelled_identity("self-training")}
        return out

    def few_shot_sample(self, fs: FewShotConfig) -> Dataset:
        """The labelled Chinese sentences of ``fs`` (:func:`few_shot_sample` of its ``source``, which must be one
        of the sets this experiment reads as unlabelled text, :data:`UNLABELLED_SETS`: their labels are read
        here and nowhere else)."""
        for d in self.unlabelled:
            if Path(d.path).as_posix().endswith(fs.source):
                return few_shot_sample(d, fs.size, fs.sample_seed)
        raise ValueError(f"few_shot.source {fs.source!r} is none of the sets this experiment reads "
                         f"({', '.join(UNLABELLED_SETS)})")

    def streams(self, cfg: TrainConfig, corpora: Corpora, teacher: tuple[Path, dict[str, Any]] | None,
                frozen: bool, labellers: Sequence[tuple[Path, dict[str, Any]]] | None = None
                ) -> tuple[Corpora, Streams]:
        """The corpora with the teacher's features (when the variant transfers) and the :class:`Streams` of
        one run: built only when the run trains (:func:`run_or_load`'s ``complete``)."""
        streams = Streams(inputs=self.inputs(cfg, teacher, labellers))
        tra, adv = cfg.transfer_config, cfg.adversarial_config
        if tra is not None and teacher is not None:
            from .rendering import Lexicon, render_dataset_zh, surface_forms

            tdir = teacher[0]
            lexicon = self.lexicon_file(tra.lexicon, "the transfer")
            casing = surface_forms([s.tokens for s in self.data["conll_train"].sentences])
            tmodel = Teacher(load_checkpoint(tdir, device=cfg.device)[0], lexicon, tdir, casing)
            with_teacher = {k: replace(getattr(corpora, k), teacher=self._teacher_features(tmodel, k, self.data[k]))
                            for k in SPLITS}
            corpora = Corpora(**with_teacher, alt_units={})
            lex = Lexicon.from_tsv(lexicon)
            coverage = {k: render_dataset_zh(self.data[k], lex, casing=casing)[1].as_dict()
                        for k in ("weibo_test", "peoples_daily_test")}
            if tra.rendered_weight > 0:
                name, rds, coverage["conll_train_rendered"] = self._rendered_conll(lexicon, lex)
                streams.rendered = replace(self._prepare(name, rds, frozen),
                                           teacher=with_teacher["conll_train"].teacher)
            streams.teacher = tmodel
            streams.summary["coverage"] = coverage
        if adv is not None:
            streams.target = self._prepare("unlabelled", text_only(self.unlabelled), frozen)
            if adv.map_init == "alignment":
                streams.mapping = torch.from_numpy(np.load(self.out / "alignment" / "mapping.npy")).float()
            streams.summary["unlabelled_sentences"] = len(streams.target.encoded)
        fs = cfg.few_shot_config
        if fs is not None:
            # the sample is fixed by its size, its seed and its source
            streams.few_shot = self._labelled_stream(streams, "few_shot", f"few_shot-{fs.size}-{fs.sample_seed}",
                                                     self.few_shot_sample(fs), frozen, fs.source)
        if cfg.self_training_config is not None:
            assert labellers
            pseudo = self.pseudo_labelled(labellers, cfg.device)
            streams.pseudo = self._labelled_stream(streams, "self_training", Path(pseudo.path).name, pseudo, frozen)
            streams.summary["self_training"]["pseudo_label_scores"] = self.pseudo_label_scores(pseudo)
        tt = cfg.translate_train_config
        if tt is not None:
            from .rendering import Lexicon

            lexicon = self.lexicon_file(tt.lexicon, "translate-train")
            name, rds, coverage = self._rendered_conll(lexicon, Lexicon.from_tsv(lexicon))
            streams.translated = self._labelled_stream(streams, "translate_train", name, rds, frozen)
            streams.summary["translate_train"]["coverage"] = coverage
        return corpora, streams

    def _rendered_conll(self, lexicon: Path, lex: Any) -> tuple[str, Dataset, dict[str, Any]]:
        """CoNLL train rendered into Chinese through ``lex`` (read from ``lexicon``) with projected labels
        (:func:`~xner_lib.rendering.render_dataset_en`): the name it is prepared under (the same for the
        transfer's rendered pairs and translate-train), the renderings and their coverage."""
        from .rendering import render_dataset_en

        rds, cov = render_dataset_en(self.data["conll_train"], lex)
        return f"conll_train-rendered-{sha256_cached(lexicon)}", rds, cov.as_dict()

    def _labelled_stream(self, streams: Streams, role: str, name: str, dataset: Dataset, frozen: bool,
                         source: str = "") -> Prepared:
        """A labelled Chinese stream (few-shot gold, self-training pseudo-labels, translate-train renderings)
        prepared for training, with the transfer teacher's features when the run transfers, its size in
        ``streams.summary[role]``."""
        prepared = self._prepare(f"{name}-{source}" if source else name, dataset, frozen)
        if streams.teacher is not None:
            prepared = replace(prepared, teacher=self._teacher_features(streams.teacher, name, dataset))
        ents = dataset.entity_counts()
        streams.summary[role] = {"sentences": len(dataset), "tokens": dataset.n_tokens,
                                 "entities": sum(ents.values()), "entity_types": dict(sorted(ents.items()))}
        return prepared

    # -- runs ----------------------------------------------------------------------------------------------
    def run(self, name: str, vcfg: TrainConfig, seed: int, variants: Mapping[str, TrainConfig | str], *,
            keep_checkpoint: bool = False) -> dict[str, Any] | None:
        """One (variant, seed): read back or trained (:func:`run_or_load`); its teacher first. A run done in
        this session is not redone (``fresh`` retrains each run once, not once per student). Its checkpoint
        is kept with ``save_checkpoints``, ``keep_checkpoint``, or when a variant of ``variants`` transfers or
        self-trains from it. None, and the run named in :attr:`skipped`, when ``missing`` is ``skip`` and the
        run (or a teacher of it) would have to train."""
        teachers = {c.teacher for v in variants.values() if isinstance(v, TrainConfig)
                    for c in (v.transfer_config, v.self_training_config) if c is not None} if self.teachers is None \
            else set()
        keep = self.save_checkpoints or keep_checkpoint or name in teachers
        checkpoint = self.out / "checkpoints" / run_name(self.prefix + name, seed) / "config.json"
        if (name, seed) in self._done and (not keep or checkpoint.is_file()):
            return self._done[(name, seed)]
        skip = self.missing == "skip"
        if skip and not (self.out / "runs" / run_name(self.prefix + name, seed) / "metrics.json").is_file():
            self._skip(name, seed, "no metrics.json")
            return None
        cfg = replace(vcfg, encoder=self.encoder_name, seed=seed)
        frozen = not cfg.finetune
        if (name, seed) in self._running:
            raise ValueError(f"variant '{name}' is its own teacher's teacher (a cycle of teacher sections)")
        self._running.add((name, seed))
        try:
            teacher = self._teacher_run(name, cfg, variants)
            labellers = self._labellers(name, cfg, variants)
        finally:
            self._running.discard((name, seed))
        if any(t[1] is None for t in [*([teacher] if teacher else []), *(labellers or [])]):
            self._skip(name, seed, "a teacher's run is not made")
            return None
        # read only, the key needs the sets and their units, not features: no feature pass to read a run back
        corpora = self.corpora(frozen and not skip, alt_units=self.compare_units and name == "baseline")
        encoder = self.encoder
        if self.unverified_encoder:  # the identity of weights not on this machine: the record's own
            identity, made_utc = self._recorded(name, seed)
            if self.not_before is not None and made_utc < self.not_before:
                self._skip(name, seed, f"made ({made_utc}) before its seed's baseline record ({self.not_before}): "
                                       "over an encoder since replaced")
                return None
            encoder = replace(encoder, identity=identity)
        m = run_or_load(self.prefix + name, cfg, lambda: load_encoder(self.encoder_name), corpora, self.out / "runs",
                        checkpoints_dir=self.out / "checkpoints" if keep and not skip else None, progress=self.progress,
                        fresh=self.fresh, encoder=encoder, decode=self.decode,
                        snapshot_epoch=self.snapshot_epoch if name == "baseline" else None,
                        streams=Streams(inputs=self.inputs(cfg, teacher, labellers)),
                        complete=lambda: self.streams(cfg, corpora, teacher, frozen, labellers), read_only=skip,
                        code_git=self.code_git)
        if m is None:
            self._skip(name, seed, "its metrics.json is stale (the log line says what differs)")
            return None
        if self.unverified_encoder:
            self.unverified.append(f"{self.prefix}{name} seed {seed}: encoder {encoder.identity[:16]} as recorded")
        self._done[(name, seed)] = m
        return m

    def _recorded(self, name: str, seed: int) -> tuple[str, str]:
        """The encoder identity a run's ``metrics.json`` was keyed with and its UTC time ('' for either it
        lacks)."""
        record = _read_metrics(self.out / "runs" / run_name(self.prefix + name, seed) / "metrics.json") or {}
        encoder = record.get("extra", {}).get("run_key_parts", {}).get("encoder", {})
        identity = str(encoder.get("identity", "")) if isinstance(encoder, Mapping) else ""
        return identity, str(record.get("timestamp_utc", ""))

    def run_all(self, variants: Mapping[str, TrainConfig | str], seeds: Sequence[int],
                only: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Every (variant, seed) of ``only`` (default: all) variants, variant by variant, each read back when
        cached. A variant that names another (a string) gets that variant's runs, relabelled, with
        ``extra.same_as`` set. Prints one line per run; a run skipped (``missing``) is left out."""
        out: list[dict[str, Any]] = []
        for name in (only if only is not None else list(variants)):
            target = variants[name]
            source = target if isinstance(target, str) else name
            vcfg = variants[source]
            assert isinstance(vcfg, TrainConfig)
            for seed in seeds:
                m = self.run(source, vcfg, seed, variants)
                if m is None:
                    print(self.prefix + name, "seed", seed, "not made yet: left out (missing_runs 'skip')")
                    continue
                if source != name:
                    m = {**m, "variant": self.prefix + name, "extra": {**m["extra"], "same_as": self.prefix + source}}
                out.append(m)
                f1 = {k: round(v[next(iter(v))]["strict"]["f1"], 4) for k, v in m["scores"].items()}
                print(self.prefix + name, "seed", seed, f1, f"train {m['extra']['seconds']['train'] / 60:.1f} min, "
                      f"{m['extra']['steps']} steps")
        return out

    def shared(self, seed: int, variants: Mapping[str, TrainConfig | str]) -> Experiment | None:
        """The ``shared`` protocol's experiment for ``seed`` (Table 5, issue 12): the fine-tuned encoder of
        this experiment's ``baseline`` run of that seed (run or read back first, its checkpoint kept),
        frozen, with its features cached; runs named ``shared-<variant>``; the teacher of its transfer
        variants is this experiment's baseline of the same seed. None when that baseline is not made and
        ``missing`` is ``skip``. With ``skip`` and the baseline's record there but not its fine-tuned encoder
        (a fresh clone: checkpoints stay outside git), the experiment reads its runs back, training nothing:
        keyed by the saved encoder's identity as the baseline's record gives it (``extra.saved_encoder_identity``)
        or, for a record made before records gave it, by each run's own (``unverified_encoder``), a run older
        than the baseline's record left out (``not_before``: it was made over an encoder since replaced)."""
        base = variants.get("baseline")
        if not isinstance(base, TrainConfig):
            raise ValueError("the shared protocol needs a 'baseline' variant with its own block")
        tagger_dir = self.out / "checkpoints" / run_name(self.prefix + "baseline", seed)
        made = self.run("baseline", base, seed, variants, keep_checkpoint=True)
        if made is None:
            return None
        # the saved encoder's identity as the baseline's record gives it (records made before it did: none)
        saved = made["extra"].get("saved_encoder_identity")
        if self.missing == "skip" and not (tagger_dir / "encoder").is_dir():
            stand_in = replace(self.encoder, name=str(tagger_dir / "encoder"), identity=saved or "")  # tokenizes only
            return replace(self, encoder=stand_in, encoder_name=stand_in.name, prefix=SHARED_PREFIX,
                           teachers=(self, variants), compare_units=False, snapshot_epoch=None, save_checkpoints=False,
                           unverified_encoder=saved is None, not_before=made.get("timestamp_utc"))
        if not (tagger_dir / "encoder").is_dir():
            raise FileNotFoundError(f"{tagger_dir}: the baseline's fine-tuned encoder was not kept")
        encoder = load_checkpoint(tagger_dir)[1]
        if saved is not None and saved != encoder.identity:
            logger.warning("%s: its encoder (identity %s) is not the one the baseline's record saved (%s): the "
                           "shared runs are keyed by the checkpoint's", tagger_dir, encoder.identity[:16], saved[:16])
        return replace(self, encoder=encoder, encoder_name=str(tagger_dir / "encoder"), prefix=SHARED_PREFIX,
                       teachers=(self, variants), compare_units=False, snapshot_epoch=None, save_checkpoints=False)

    def run_shared(self, variants: Mapping[str, TrainConfig | str], shared: Mapping[str, TrainConfig | str],
                   seeds: Sequence[int], only: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The ``shared`` protocol over ``seeds``: for each, :meth:`shared`'s experiment (``variants`` give
        the baseline and the teachers) runs ``only`` of ``shared`` (the variants over the frozen-feature
        training settings)."""
        out: list[dict[str, Any]] = []
        for seed in seeds:
            over = self.shared(seed, variants)
            if over is None:
                print("shared protocol, seed", seed, "left out: its baseline is not made (missing_runs 'skip')")
                for name in only if only is not None else list(shared):
                    self._skip(SHARED_PREFIX + name, seed, "the seed's fine-tuned baseline is not made")
                continue
            out += over.run_all(shared, [seed], only=only)
            self.skipped += [s for s in over.skipped if s not in self.skipped]
            self.unverified += [s for s in over.unverified if s not in self.unverified]
        return out

    def describe(self) -> dict[str, str]:
        """Sentences and tokens of every set read, for a notebook to show."""
        return ({k: f"{len(v)} sentences, {v.n_tokens} tokens" for k, v in self.data.items()}
                | {f"unlabelled {d.name}/{d.split}": f"{len(d)} sentences (text only)" for d in self.unlabelled})


def link_best_model(metrics: Iterable[Mapping[str, Any]], variant: str, out: Path) -> Path | None:
    """Point ``out/model`` at the saved checkpoint of ``variant``'s run with the best CoNLL-dev F1 (the
    selection score; no Chinese label chooses) among its runs in ``metrics`` whose checkpoint is under
    ``out/checkpoints``: the model ``python -m xner_lib predict --model results/<profile>/model`` reads. A
    relative symbolic link, replaced atomically; None (and nothing changed) when no such checkpoint exists."""
    from .files import symlink_atomic

    runs = [m for m in metrics if m["variant"] == variant
            and (out / "checkpoints" / run_name(variant, m["seed"]) / "config.json").is_file()]
    if not runs:
        return None
    best = max(runs, key=lambda m: (m["extra"]["best_dev_f1"], -int(m["seed"])))
    return symlink_atomic(Path("checkpoints") / run_name(variant, best["seed"]), out / "model")


#: what an :class:`Experiment` does with a run not made yet (``missing_runs``): train it, or leave it out
MISSING_RUNS: tuple[str, ...] = ("train", "skip")

#: the notebook parameters :func:`experiment_from_params` reads (besides every ``decode_*``): notebooks that
#: build an :class:`Experiment` declare them all, so that each builds the same one and reads back the
#: others' runs instead of retraining them under another key (tests/test_config.py holds every profile to it)
EXPERIMENT_PARAMS: tuple[str, ...] = ("profile", "data_dir", "results_root", "max_sentences", "encoder", "zh_units",
                                      "compare_units", "snapshot_epoch", "save_checkpoints", "fresh",
                                      "train_device", "train_precision", "missing_runs")


def experiment_from_params(params: Mapping[str, Any]) -> Experiment:
    """The notebooks' :class:`Experiment` from their parameters (03 and 04 share it): the :data:`SPLITS` and
    :data:`UNLABELLED_SETS` read from ``data_dir`` (first ``max_sentences``), the ``encoder``, decoding from
    the ``decode_*`` parameters, ``zh_units``, ``compare_units``, ``snapshot_epoch``, ``save_checkpoints`` and
    ``fresh``, ``missing_runs`` (:attr:`Experiment.missing`); results under ``results/<profile>``
    (``results_root``). The device (``train_device``, default
    ``cpu``) and its precision (``train_precision``) are checked first and the encoder loaded next, so a GPU
    or an encoder this machine lacks stops the notebook at once, with one message, before any data is read."""
    from .config import from_params, results_dir
    from .data import load

    p = dict(params)
    device = str(p.get("train_device", "cpu"))
    mixed_precision(resolve_device(device), str(p.get("train_precision", "auto")))
    encoder = load_encoder(p["encoder"])
    data = {k: load(path, p.get("data_dir"), max_sentences=p.get("max_sentences")) for k, path in SPLITS.items()}
    unlabelled = [load(path, p.get("data_dir"), max_sentences=p.get("max_sentences")) for path in UNLABELLED_SETS]
    decode = from_params(DecodeConfig, {k: v for k, v in p.items() if k.startswith("decode_")}, "decode_")
    return Experiment(data, encoder, p["encoder"], results_dir(p["profile"], p.get("results_root")),
                      decode, zh_units=p.get("zh_units", "char"), compare_units=bool(p.get("compare_units", False)),
                      snapshot_epoch=p.get("snapshot_epoch"), save_checkpoints=bool(p.get("save_checkpoints", False)),
                      fresh=bool(p.get("fresh", False)), unlabelled=unlabelled, device=device,
                      missing=str(p.get("missing_runs", "train")))
