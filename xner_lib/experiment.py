"""One run of an experiment: train on CoNLL, tag the test sets, score, write ``metrics.json``.

Notebooks call :func:`run_or_load` once per (variant, seed); a run whose ``metrics.json`` already holds the
same configuration is read back instead of retrained, so an interrupted notebook resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .data.links import count_links
from .decoding import DecodeConfig, entities_in_links
from .encoders import Encoder
from .evaluate import score_dataset, write_metrics
from .train import Prepared, Tagger, TrainConfig, predict_many, save_checkpoint, train

#: the sets every run is scored on: scores key -> role
EVAL_SETS: tuple[str, ...] = ("conll_dev", "conll_test", "weibo_test", "peoples_daily_test")


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


def config_hash(cfg: TrainConfig, extra: dict[str, Any] | None = None) -> str:
    """A short hash of everything that defines a run (its config and the data sizes)."""
    blob = json.dumps({"train": asdict(cfg), "extra": extra or {}}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
    decodes = {"main": decode, **variants}
    if not decode.links:
        decodes["_links_off"] = decode
    else:
        decodes["_links_off"] = DecodeConfig(target_labels=decode.target_labels, links=False)
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
                runs_dir: Path, *, checkpoints_dir: Path | None = None, progress: bool = True,
                decode: DecodeConfig | None = None, snapshot_epoch: float | None = None) -> dict[str, Any]:
    """Train and evaluate one (variant, seed), or read its ``metrics.json`` when the config is unchanged.

    ``encoder_factory`` loads a fresh encoder (fine-tuning changes it, so each seed starts from the same
    weights). Writes ``runs_dir/<variant>-seed<seed>/metrics.json`` with the scores of every set in
    :data:`EVAL_SETS`, the training curves and the seconds each stage took, and under ``extra``
    the decoding variants (:func:`evaluate_tagger`) and, with ``snapshot_epoch``, the scores of the same run's
    weights at that epoch (variant ``epoch<snapshot_epoch>``, e.g. ``epoch1``: what stopping there gives).
    """
    decode = decode or DecodeConfig()
    sizes = {k: len(getattr(corpora, k).dataset) for k in ("conll_train", *EVAL_SETS)}
    key = config_hash(cfg, {"variant": variant, "sizes": sizes, "decode": asdict(decode),
                            "zh_units": corpora.weibo_test.zh_units, "alt_units": sorted(corpora.alt_units),
                            "snapshot_epoch": snapshot_epoch})
    run_dir = runs_dir / f"{variant}-seed{cfg.seed}"
    path = run_dir / "metrics.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("extra", {}).get("config_hash") == key:
            return old
    encoder = encoder_factory()
    result = train(cfg, encoder, corpora.conll_train, corpora.conll_dev, progress=progress,
                   snapshot_epoch=snapshot_epoch)
    scores, variant_scores, firings, predict_seconds = evaluate_tagger(
        result.tagger, corpora, decode, batch_size=cfg.eval_batch_size, progress=progress)
    seconds: dict[str, float] = {"train": result.seconds, **predict_seconds}
    if checkpoints_dir is not None:
        save_checkpoint(result, checkpoints_dir / run_dir.name, cfg)
    if result.snapshot is not None:
        result.tagger.load_state_dict(result.snapshot[1])
        snap, _, _, snap_seconds = evaluate_tagger(result.tagger, corpora, decode, variants={},
                                                   batch_size=cfg.eval_batch_size, progress=progress, alt_units=False)
        variant_scores[f"epoch{snapshot_epoch:g}"] = snap
        seconds["predict_snapshot"] = sum(snap_seconds.values())
    extra = {
        "config_hash": key, "sizes": sizes, "best_step": result.best_step, "best_dev_f1": result.best_dev_f1,
        "history": result.history, "dev_history": result.dev_history, "seconds": seconds,
        "encoder_identity": encoder.identity, "unk_counts": unk_counts(corpora),
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

