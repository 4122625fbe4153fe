"""One run of an experiment: train on CoNLL, tag the test sets, score, write ``metrics.json``.

Notebooks call :func:`run_or_load` once per (variant, seed); a run whose ``metrics.json`` already holds the
same configuration is read back instead of retrained, so an interrupted notebook resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .encoders import Encoder
from .evaluate import score_dataset, write_metrics
from .train import Prepared, TrainConfig, predict, save_checkpoint, train

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


def config_hash(cfg: TrainConfig, extra: dict[str, Any] | None = None) -> str:
    """A short hash of everything that defines a run (its config and the data sizes)."""
    blob = json.dumps({"train": asdict(cfg), "extra": extra or {}}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_or_load(variant: str, cfg: TrainConfig, encoder_factory: Callable[[], Encoder], corpora: Corpora,
                runs_dir: Path, *, checkpoints_dir: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Train and evaluate one (variant, seed), or read its ``metrics.json`` when the config is unchanged.

    ``encoder_factory`` loads a fresh encoder (fine-tuning changes it, so each seed starts from the same
    weights). Writes ``runs_dir/<variant>-seed<seed>/metrics.json`` with the scores of every set in
    :data:`EVAL_SETS`, the training curves and the seconds each stage took.
    """
    sizes = {k: len(getattr(corpora, k).dataset) for k in ("conll_train", *EVAL_SETS)}
    key = config_hash(cfg, {"variant": variant, "sizes": sizes})
    run_dir = runs_dir / f"{variant}-seed{cfg.seed}"
    path = run_dir / "metrics.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("extra", {}).get("config_hash") == key:
            return old
    encoder = encoder_factory()
    result = train(cfg, encoder, corpora.conll_train, corpora.conll_dev, progress=progress)
    scores: dict[str, Any] = {}
    seconds: dict[str, float] = {"train": result.seconds}
    for name in EVAL_SETS:
        data: Prepared = getattr(corpora, name)
        t0 = time.perf_counter()
        pred = predict(result.tagger, data, cfg.eval_batch_size, progress=progress)
        seconds[f"predict_{name}"] = time.perf_counter() - t0
        scores[name] = score_dataset(data.dataset, pred)
    if checkpoints_dir is not None:
        save_checkpoint(result, checkpoints_dir / run_dir.name, cfg)
    extra = {
        "config_hash": key, "sizes": sizes, "best_step": result.best_step, "best_dev_f1": result.best_dev_f1,
        "history": result.history, "dev_history": result.dev_history, "seconds": seconds,
        "encoder_identity": encoder.identity, "unk_counts": unk_counts(corpora),
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

