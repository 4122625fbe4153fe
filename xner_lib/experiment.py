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
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .batches import Prepared
from .data import Dataset
from .data.links import count_links
from .data.sources import sha256_cached
from .decoding import DecodeConfig, entities_in_links
from .encoders import Encoder
from .evaluate import package_versions, score_dataset, write_metrics
from .tagger import Tagger, predict_many, save_checkpoint
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


def run_key_parts(variant: str, cfg: TrainConfig, encoder: Encoder, corpora: Corpora,
                  evaluation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything that changes the numbers of a run, as plain JSON values: :data:`METHOD_VERSION`, the
    variant, the whole :class:`~xner_lib.train.TrainConfig` (its ``head`` dict included), the encoder
    (:func:`encoder_key`), each set's data (:func:`data_identity`) and how the run is scored (``evaluation``:
    decoding, unit schemes, snapshot). Package versions are not part of it
    (:func:`run_or_load` warns about them instead). A code default that changes (e.g. a head size not set in
    the config) is covered by bumping :data:`METHOD_VERSION`."""
    parts = {
        "method_version": METHOD_VERSION,
        "variant": variant,
        "config": key_config(cfg),
        "encoder": encoder_key(encoder),
        "data": {k: data_identity(getattr(corpora, k).dataset) for k in KEY_SETS},
        "evaluation": dict(evaluation or {}),
    }
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
    return None


def version_differences(old_versions: Mapping[str, Any], new_versions: Mapping[str, Any]) -> list[str]:
    """``package old -> new`` for every package whose recorded version differs (``not recorded`` where the
    old record lacks it)."""
    return [f"{name} {old_versions.get(name, 'not recorded')} -> {v}" for name, v in sorted(new_versions.items())
            if old_versions.get(name, "not recorded") != v]


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
                snapshot_epoch: float | None = None) -> dict[str, Any]:
    """Train and evaluate one (variant, seed), or read back its ``metrics.json`` when its run key matches.

    ``encoder_factory`` loads a fresh encoder (fine-tuning changes it, so each seed starts from the same
    weights). ``encoder`` is the encoder the corpora were prepared with: its identity keys the run without
    another load (default: the factory is called once and its encoder keys the run and trains). Writes
    ``runs_dir/<variant>-seed<seed>/metrics.json`` with the scores of every set in :data:`EVAL_SETS`, the
    training curves, the seconds each stage took and, under ``extra``, ``run_key`` and ``run_key_parts``
    (:func:`run_key_parts`), the decoding variants (:func:`evaluate_tagger`) and, with ``snapshot_epoch``,
    the scores of the same run's weights at that epoch (variant ``epoch<snapshot_epoch>``, e.g. ``epoch1``:
    what stopping there gives).

    A cached run is read back only when its run key equals this one and, with ``checkpoints_dir``, a
    checkpoint of that same run key is there; otherwise it is rerun, and one log line (warning level)
    names what differed. ``fresh=True`` ignores any cached run. A run read back that was made under other
    package versions (:data:`~xner_lib.evaluate.VERSIONED_PACKAGES`, Python) is *not* rerun for that alone:
    a ``warnings.warn`` names each package and both versions (pass ``fresh=True`` to rerun it).
    """
    run_dir = runs_dir / f"{variant}-seed{cfg.seed}"
    path = run_dir / "metrics.json"
    checkpoint = checkpoints_dir / run_dir.name if checkpoints_dir is not None else None
    loaded = encoder_factory() if encoder is None else None
    reference = encoder if encoder is not None else loaded
    assert reference is not None
    decode = decode or DecodeConfig()
    evaluation = {"decode": asdict(decode), "zh_units": corpora.weibo_test.zh_units,
                  "alt_units": {k: v.zh_units for k, v in sorted(corpora.alt_units.items())},
                  "snapshot_epoch": snapshot_epoch}
    parts = run_key_parts(variant, cfg, reference, corpora, evaluation)
    key = run_key(parts)
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        reason = "fresh=True" if fresh else _stale_reason(old, key, parts, checkpoint)
        if reason is None:
            diffs = version_differences(old.get("versions", {}), package_versions())
            if diffs:
                warnings.warn(f"{path}: read back a run made under other package versions ({'; '.join(diffs)}); "
                              "it is not rerun for versions alone (fresh=True reruns it)", stacklevel=2)
            return old
        logger.warning("%s: rerunning the cached run: %s", run_dir.name, reason)
    if loaded is None:
        loaded = encoder_factory()
        if loaded.identity != reference.identity:
            raise ValueError(f"encoder_factory loaded {loaded.name!r} with identity {loaded.identity[:16]}, but the "
                             f"run is keyed by {reference.name!r} with identity {reference.identity[:16]} (the "
                             "encoder the corpora were prepared with): load the same encoder in both")
    result = train(cfg, loaded, corpora.conll_train, corpora.conll_dev, progress=progress,
                   snapshot_epoch=snapshot_epoch)
    scores, variant_scores, firings, predict_seconds = evaluate_tagger(
        result.tagger, corpora, decode, batch_size=cfg.eval_batch_size, progress=progress)
    seconds: dict[str, float] = {"train": result.seconds, **predict_seconds}
    if checkpoint is not None:
        save_checkpoint(result.tagger, checkpoint, asdict(cfg), run_key=key, scoring=evaluation)
    if result.snapshot is not None:
        result.tagger.load_state_dict(result.snapshot[1])
        snap, _, _, snap_seconds = evaluate_tagger(result.tagger, corpora, decode, variants={},
                                                   batch_size=cfg.eval_batch_size, progress=progress, alt_units=False)
        variant_scores[f"epoch{snapshot_epoch:g}"] = snap
        seconds["predict_snapshot"] = sum(snap_seconds.values())
    sizes = {k: v["sentences"] for k, v in parts["data"].items()}
    extra = {
        "run_key": key, "run_key_parts": parts, "sizes": sizes, "best_step": result.best_step,
        "best_dev_f1": result.best_dev_f1, "history": result.history, "dev_history": result.dev_history,
        "seconds": seconds, "encoder_identity": reference.identity, "unk_counts": unk_counts(corpora),
        "checkpoint_saved": checkpoint is not None,
        "decode": asdict(decode), "zh_units": corpora.weibo_test.zh_units, "variant_scores": variant_scores,
        "link_firings": firings, "stopped_early": result.stopped_early, "label_counts": result.label_counts,
        "steps": len(result.history), "snapshot_step": result.snapshot[0] if result.snapshot else None,
    }
    return write_metrics(path, variant=variant, encoder=cfg.encoder, seed=cfg.seed, config=asdict(cfg),
                         scores=scores, extra=extra)


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

