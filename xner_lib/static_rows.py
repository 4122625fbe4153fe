"""Table 3's static rows, run or read back as every other run: the feature CRF and the static-vector BiLSTM-CRF.

Both rows are zero-shot like the rest of Table 3: trained on CoNLL-2003 train only, selected on CoNLL dev, and
scored on :data:`~xner_lib.experiment.EVAL_SETS` by :func:`~xner_lib.evaluate.score_dataset`, decoded by the
project's Viterbi (:class:`~xner_lib.decoding.DecodeConfig`). Each writes ``runs/<name>-seed<N>/metrics.json``
with the schema of :func:`~xner_lib.experiment.run_or_load`'s, under a run key of the same kind: the method
version, the row, its whole config, the aligned space's key (:meth:`AlignedSpace.key`: what the space is built
from, so the encoder, the tokens and 02's map are in it; the vectors' own checksum, which differs in its last bits
from one CPU to another, is recorded beside as ``extra.space_vectors``) and each set's data; a key that differs
reruns, with one log line saying what changed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .data import Dataset
from .evaluate import score_dataset, write_metrics
from .experiment import EVAL_SETS, KEY_SETS, METHOD_VERSION, Experiment, data_identity, read_cached, run_key
from .feature_crf import FeatureCrfConfig, train_feature_crf
from .feature_crf import predict as crf_predict
from .run_names import run_name
from .static_space import AlignedSpace, StaticVectorConfig, build_aligned_space
from .static_tagger import predict as static_predict
from .static_tagger import train_static_tagger
from .train import TrainConfig, key_config

logger = logging.getLogger(__name__)

#: the row names (run directories ``<name>-seed<N>``)
FEATURE_CRF = "feature_crf"
STATIC_TAGGER = "static_bilstm_crf"


def aligned_space(exp: Experiment, config: StaticVectorConfig) -> AlignedSpace:
    """Notebook 02's aligned static space of ``exp``'s profile: English types of CoNLL train, Chinese words and
    characters of the unlabelled Chinese (``exp.unlabelled``: WeiboNER train, People's Daily dev), the frozen
    encoder's occurrence vectors (feature cache), mapped by 02's ``U`` (``results/<profile>/alignment``)."""
    english = [s.tokens for s in exp.data["conll_train"].sentences]
    chinese = [s.tokens for d in exp.unlabelled for s in d.sentences]
    return build_aligned_space(exp.encoder, english, chinese, exp.out / "alignment", config, progress=exp.progress)


def _row_cache(exp: Experiment, name: str, config: Mapping[str, Any], seed: int, space: AlignedSpace
               ) -> tuple[dict[str, Any], str, Path, dict[str, Any] | None]:
    """A row's run key parts, run key, ``metrics.json`` path and the cached record when it can be read back
    (:func:`~xner_lib.experiment.read_cached`, else None)."""
    parts = {"method_version": METHOD_VERSION, "variant": name, "config": dict(config),
             "space": space.key(), "data": {k: data_identity(exp.data[k]) for k in KEY_SETS},
             "evaluation": {"decode": asdict(exp.decode)}}
    parts = json.loads(json.dumps(parts, sort_keys=True, default=str))
    key = run_key(parts)
    path = exp.out / "runs" / run_name(name, seed) / "metrics.json"
    return parts, key, path, read_cached(path, key, parts, fresh=exp.fresh)


def _score(predict, data: Mapping[str, Dataset]) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """Scores, lookup counts and seconds of ``predict(dataset) -> (tags, counts)`` on every set of EVAL_SETS."""
    scores, lookups, seconds = {}, {}, {}
    for k in EVAL_SETS:
        t0 = time.perf_counter()
        tags, counts = predict(data[k])
        seconds[f"predict_{k}"] = time.perf_counter() - t0
        scores[k] = score_dataset(data[k], tags)
        lookups[k] = dict(counts)
    return scores, lookups, seconds


def run_feature_crf(exp: Experiment, config: FeatureCrfConfig, space: AlignedSpace) -> dict[str, Any]:
    """Table 3's CRF row (:mod:`~xner_lib.feature_crf`) for ``config.seed`` (it seeds the k-means), trained or
    read back. Decoded with ``exp.decode`` under the IOB2 constraints."""
    parts, key, path, cached = _row_cache(exp, FEATURE_CRF, asdict(config), config.seed, space)
    if cached is not None:
        return cached
    model = train_feature_crf(config, space, exp.data["conll_train"])

    def predict(d: Dataset) -> tuple[list[list[str]], Any]:
        tags = crf_predict(model, d, exp.decode)
        return tags, space.lookup([s.tokens for s in d.sentences], d.language).counts

    scores, lookups, seconds = _score(predict, exp.data)
    extra = {"run_key": key, "run_key_parts": parts, "seconds": {"train": model.seconds, **seconds},
             "lookup": lookups, "summary": model.summary(), "decode": asdict(exp.decode),
             "space_vectors": space.identity()}
    return write_metrics(path, variant=FEATURE_CRF, encoder=exp.encoder_name, seed=config.seed,
                         config=asdict(config), scores=scores, extra=extra)


def run_static_tagger(exp: Experiment, cfg: TrainConfig, space: AlignedSpace) -> dict[str, Any]:
    """Table 3's static-vector BiLSTM-CRF row (:mod:`~xner_lib.static_tagger`) for ``cfg.seed``: the plain head
    on the aligned static vectors (a frozen-feature ``cfg``), CoNLL dev selecting its weights; trained or read
    back. Decoded with ``exp.decode``."""
    parts, key, path, cached = _row_cache(exp, STATIC_TAGGER, key_config(cfg), cfg.seed, space)
    if cached is not None:
        return cached
    run = train_static_tagger(cfg, space, exp.data["conll_train"], exp.data["conll_dev"], progress=exp.progress)
    scores, lookups, seconds = _score(
        lambda d: static_predict(run, space, d, exp.decode, batch_size=cfg.eval_batch_size), exp.data)
    result = run.result
    extra = {"run_key": key, "run_key_parts": parts, "seconds": {"train": result.seconds, **seconds},
             "lookup": lookups, "best_step": result.best_step, "best_dev_f1": result.best_dev_f1,
             "history": result.history, "dev_history": result.dev_history, "steps": len(result.history),
             "stopped_early": result.stopped_early, "decode": asdict(exp.decode),
             "space_vectors": space.identity()}
    return write_metrics(path, variant=STATIC_TAGGER, encoder=exp.encoder_name, seed=cfg.seed,
                         config=asdict(cfg), scores=scores, extra=extra)


def space_summary(space: AlignedSpace) -> dict[str, Any]:
    """Sizes of the aligned space, for a notebook to show beside Table 3."""
    return {"english_types": len(space.en_words), "chinese_types": len(space.zh_words), "dim": space.dim,
            "key": space.key()[:16], "vectors": space.identity()[:16]}
