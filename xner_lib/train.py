"""Training the tagger on English CoNLL-2003 and tagging any corpus with it (paper sections 3 and 4.2).

A :class:`Tagger` is an encoder (section 3.1) under the BiLSTM-CRF head of :mod:`xner_lib.model`
(eqs 8-11). Two modes:

* ``finetune=True``: the encoder is trained with the head (the paper's setting, Table 2); every batch
  goes through the encoder (:func:`~xner_lib.features.unit_vectors`).
* ``finetune=False``: the encoder is frozen and its unit vectors come from the content-addressed cache
  (:func:`~xner_lib.features.cached_unit_features`); only the head trains.

Model selection uses CoNLL-2003 dev only (strict F1, a few evaluations per epoch); no Chinese label is
ever seen. A checkpoint directory holds the weights, the configs and the label map, and loads back to
identical predictions (:func:`save_checkpoint`, :func:`load_checkpoint`).

Inference on new text (issue 14): :meth:`Tagger.from_pretrained` loads a checkpoint with the Chinese unit
scheme and the decoding of the run that saved it (:class:`InferenceSettings`); :meth:`Tagger.tag` tags raw
strings (split by :mod:`xner_lib.inference`), :meth:`Tagger.predict_dataset` any read corpus file.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .config import ConfigError, did_you_mean
from .data import Dataset
from .data.labels import MODEL_LABELS, MODEL_TYPES
from .data.links import link_mask
from .decoding import DecodeConfig, allowed_matrix
from .encoders import Encoder, load_encoder
from .evaluate import score
from .features import cached_unit_features, extract_unit_features, unit_vectors
from .files import atomic_dir
from .inference import LANGUAGES, TaggedText, detect_language, split_text, text_dataset
from .model import BiLstmCrfHead, HeadConfig
from .progress import progress as progress_bar
from .units import ZH_UNITS, EncodedSentence, UnitTagCounts, encode_sentences, spread_tags, unit_tags


@dataclass
class TrainConfig:
    """Training settings. Defaults are the paper's Table 2 (3 epochs, batch 20, lr 4e-5, dropout 0.5);
    profiles override them (``configs/*.yaml``, keys prefixed ``train_``).

    ``lr`` is the encoder's learning rate; the head, trained from scratch, uses ``head_lr`` (the paper
    gives one rate; see docs/method.md). ``freeze_embeddings`` keeps the encoder's word-embedding table
    fixed while the rest fine-tunes (on CPU it removes most of the optimizer's work: e5-small's table
    holds 96M of its 117M parameters, and rows of pieces unseen in English get no gradient anyway).
    ``max_sentences`` keeps the first training sentences only
    (smoke). ``evals_per_epoch`` CoNLL-dev evaluations pick the kept weights.

    Convergence (issue 10): ``epochs`` is the cap (the paper's 3) and sets the length of the linear
    schedule; with ``patience`` set, training stops after that many CoNLL-dev evaluations in a row without
    a new best strict F1 (``None``: run to the cap). ``misc_class=False`` trains without a MISC class:
    CoNLL MISC spans become O (counted) and the label map holds PER, LOC and ORG only.
    ``freeze_layers`` keeps the encoder's lowest transformer layers fixed (0: none), which shortens the
    backward pass on a CPU.
    """

    encoder: str = "bert-base-multilingual-cased"
    finetune: bool = True
    epochs: float = 3.0
    batch_size: int = 20
    lr: float = 4e-5
    head_lr: float = 1e-3
    freeze_embeddings: bool = False
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    evals_per_epoch: int = 2
    patience: int | None = None
    freeze_layers: int = 0
    misc_class: bool = True
    eval_batch_size: int = 64
    max_sentences: int | None = None
    seed: int = 1
    threads: int | None = None
    head: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size < 1 or self.evals_per_epoch < 1:
            raise ValueError(f"epochs, batch_size and evals_per_epoch must be positive: {self}")
        head_fields = {f.name for f in fields(HeadConfig)} - {"input_dim"}  # input_dim comes from the encoder
        unknown = [k for k in self.head if k not in head_fields]
        if unknown:
            raise ConfigError([f"unknown key '{k}' in TrainConfig.head: HeadConfig has no such settable field; "
                               f"{did_you_mean(k, head_fields)}" for k in unknown])
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be a positive number of evaluations or None, got {self.patience}")


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class InferenceSettings:
    """How a tagger reads new text: the Chinese unit scheme (:mod:`~xner_lib.units`) and the decoding
    (:class:`~xner_lib.decoding.DecodeConfig`). A checkpoint records those of the run that saved it under
    ``scoring`` in ``config.json``; the defaults (``char`` units, ``DecodeConfig()``) serve when it does not."""

    zh_units: str = "char"
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def __post_init__(self) -> None:
        if self.zh_units not in ZH_UNITS:
            raise ValueError(f"zh_units must be one of {ZH_UNITS}, got {self.zh_units!r}")

    @classmethod
    def from_scoring(cls, scoring: Mapping[str, Any] | None, where: str = "config.json") -> InferenceSettings:
        """The settings recorded under a checkpoint's ``scoring`` key (``where`` names the file in errors)."""
        scoring = scoring or {}
        decode = dict(scoring.get("decode") or {})
        known = {f.name for f in fields(DecodeConfig)}
        unknown = sorted(set(decode) - known)
        if unknown:
            raise ValueError(f"{where}: scoring.decode has unknown keys {unknown}; DecodeConfig has {sorted(known)}")
        try:
            return cls(str(scoring.get("zh_units") or "char"), DecodeConfig(**decode))
        except ValueError as err:
            raise ValueError(f"{where}: scoring: {err}") from None


class Tagger(nn.Module):
    """Encoder + BiLSTM-CRF head. ``encoder`` is None in frozen mode, where features are given.

    ``text_encoder`` reads new text (:meth:`tag`, :meth:`predict_dataset`): the fine-tuned encoder, or in
    frozen mode the frozen one (:meth:`from_pretrained` sets it). ``inference``: the unit scheme and decoding
    used there."""

    def __init__(self, head: BiLstmCrfHead, encoder: Encoder | None = None, *, text_encoder: Encoder | None = None,
                 inference: InferenceSettings | None = None) -> None:
        super().__init__()
        self.head = head
        self.encoder_model = encoder.model if encoder is not None else None
        self._encoder = encoder
        self.text_encoder = text_encoder if text_encoder is not None else encoder
        self.inference = inference or InferenceSettings()

    @property
    def encoder(self) -> Encoder | None:
        return self._encoder

    def features(self, batch: Sequence[EncodedSentence], cached: Sequence[Tensor] | None = None
                 ) -> tuple[Tensor, Tensor]:
        """Unit vectors [B,U,H] and mask [B,U]: through the encoder, or padded from ``cached``."""
        if cached is not None:
            return pad_features(cached)
        if self._encoder is None:
            raise ValueError("a frozen tagger needs cached features")
        return unit_vectors(self._encoder, batch)

    # --- inference on new text -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None
                        ) -> Tagger:
        """Load a checkpoint written by :func:`save_checkpoint` (:func:`load_checkpoint`), ready to tag text:
        eval mode, its text encoder, and the unit scheme and decoding recorded under ``scoring`` in its
        ``config.json`` (:class:`InferenceSettings`). Raises ``FileNotFoundError`` or ``ValueError`` naming
        the directory or file when it is not a readable checkpoint."""
        directory = Path(directory)
        meta_path = directory / "config.json"
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no such model directory")
        if not meta_path.is_file():
            raise FileNotFoundError(f"{directory}: not a saved model (no config.json); a run keeps its model "
                                    "when its profile sets save_checkpoints: true")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{meta_path}:{err.lineno}: not valid JSON ({err.msg})") from None
        missing = [k for k in ("train", "head", "finetuned") if k not in meta] if isinstance(meta, dict) else ["{}"]
        if missing:
            raise ValueError(f"{meta_path}: not a checkpoint's config (missing {', '.join(missing)})")
        if not (directory / "head.safetensors").is_file():
            raise FileNotFoundError(f"{directory / 'head.safetensors'}: missing (an incomplete checkpoint)")
        settings = InferenceSettings.from_scoring(meta.get("scoring"), str(meta_path))
        tagger, encoder, _ = load_checkpoint(directory, cache_dir)
        tagger.text_encoder = encoder
        tagger.inference = settings
        return tagger

    def predict_dataset(self, dataset: Dataset, batch_size: int = 64, progress: bool = False) -> list[list[str]]:
        """Token-level IOB2 predictions for every sentence of ``dataset`` (any format), decoded as the
        experiments decode that format (:func:`prepare`, :func:`predict` with ``self.inference``). A frozen
        tagger's features are computed here, not written to the feature cache."""
        reader = self.text_encoder
        if reader is None:
            raise ValueError("this frozen tagger has no text encoder: load it with Tagger.from_pretrained "
                             "or set tagger.text_encoder")
        data = prepare(dataset, reader, frozen=False, zh_units=self.inference.zh_units)
        if self._encoder is None:
            data.cached = extract_unit_features(reader, data.encoded)
        return predict(self, data, batch_size, progress=progress, decode=self.inference.decode)

    def tag_tokens(self, texts: Sequence[str], language: str | None = None, batch_size: int = 64
                   ) -> list[TaggedText]:
        """Split each text (:func:`~xner_lib.inference.split_text`), tag its tokens, one IOB2 tag per token.
        ``language``: ``en``, ``zh``, or None to detect it per text (``zh`` when a CJK character is present,
        :func:`~xner_lib.inference.detect_language`). A text without tokens (empty, whitespace) gets none."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string: tag([text])")
        if language is not None and language not in LANGUAGES:
            raise ValueError(f"language must be one of {LANGUAGES} or None, got {language!r}")
        split = [split_text(t) for t in texts]
        langs = [language or detect_language(t) for t in texts]
        tags: list[list[str]] = [[] for _ in texts]
        for lang in LANGUAGES:
            idx = [i for i, (toks, _) in enumerate(split) if toks and langs[i] == lang]
            if idx:
                ds = text_dataset([split[i][0] for i in idx], lang, lines=[i + 1 for i in idx])
                for i, pred in zip(idx, self.predict_dataset(ds, batch_size), strict=True):
                    tags[i] = pred
        return [TaggedText(t, lang, toks, offs, tg)
                for t, lang, (toks, offs), tg in zip(texts, langs, split, tags, strict=True)]

    def tag(self, texts: Sequence[str], language: str | None = None, batch_size: int = 64
            ) -> list[list[dict[str, Any]]]:
        """For each text, its entities as ``{"type", "start", "end", "text"}`` with character offsets into
        the text (``text[start:end]`` is the entity's text); see :meth:`tag_tokens`."""
        return [t.entities() for t in self.tag_tokens(texts, language, batch_size)]


def pad_features(feats: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack per-sentence [U_i, H] tensors into [B, U, H] (float32, zero padded) and a contiguous mask."""
    lengths = torch.tensor([f.shape[0] for f in feats])
    out = torch.zeros(len(feats), int(lengths.max()), feats[0].shape[1])
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f.float()
    mask = torch.arange(out.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    return out, mask


def label_ids(encoded: Sequence[EncodedSentence], tags: Sequence[Sequence[str]], labels: Sequence[str], *,
              counts: Counter | None = None) -> list[list[int]]:
    """Unit label ids (:func:`~xner_lib.units.unit_tags`, whose entity counts go to ``counts``). An entity
    type the label map lacks (MISC when ``misc_class`` is off) becomes O, counted as ``as_o:<type>``
    entities; any other unknown tag is an error naming the sentence."""
    index = {t: i for i, t in enumerate(labels)}
    known_types = {t[2:] for t in labels if t != "O"}
    counts = counts if counts is not None else UnitTagCounts()
    out = []
    for k, (enc, t) in enumerate(zip(encoded, tags, strict=True)):
        ut = unit_tags(t, enc.unit_spans, counts)
        for x in ut:
            if x.startswith("B-") and x[2:] not in known_types and x[2:] in MODEL_TYPES:
                counts[f"as_o:{x[2:]}"] += 1
        ut = ["O" if x != "O" and x[2:] not in known_types and x[2:] in MODEL_TYPES else x for x in ut]
        unknown = sorted(set(ut) - set(index))
        if unknown:
            raise ValueError(f"sentence {k}: tags {unknown} are not in the model's labels {list(labels)}")
        out.append([index[x] for x in ut])
    return out


def length_batches(lengths: Sequence[int], batch_size: int, rng: random.Random, pool: int = 50) -> list[list[int]]:
    """Shuffled batches of similar-length sentences: shuffle, sort within pools of ``pool`` batches,
    cut into batches, shuffle the batches. Every index appears exactly once."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass
class Prepared:
    """A dataset encoded into units once: encodings, link tokens (:mod:`~xner_lib.data.links`), and frozen
    features when the tagger is frozen. ``zh_units``: the Chinese unit scheme (:mod:`~xner_lib.units`)."""

    dataset: Dataset
    encoded: list[EncodedSentence]
    cached: list[Tensor] | None = None
    links: list[list[bool]] | None = None
    zh_units: str = "token"


def prepare(dataset: Dataset, encoder: Encoder, *, frozen: bool, cache_dir: str | os.PathLike[str] | None = None,
            zh_units: str = "token") -> Prepared:
    """Encode ``dataset`` into units, find its link tokens (and, frozen, read or compute its cached features)."""
    encoded = encode_sentences(encoder.tokenizer, dataset.sentences, dataset.language, zh_units=zh_units)
    cached = cached_unit_features(encoder, dataset, cache_dir=cache_dir, zh_units=zh_units) if frozen else None
    links = [link_mask(s.tokens, dataset.language) for s in dataset.sentences]
    return Prepared(dataset, encoded, cached, links, zh_units)


@torch.no_grad()
def predict_many(tagger: Tagger, data: Prepared, decodes: Mapping[str, DecodeConfig], batch_size: int = 64,
                 progress: bool = True) -> dict[str, list[list[str]]]:
    """Token-level IOB2 predictions of every sentence of ``data`` under each named decoding
    (:class:`~xner_lib.decoding.DecodeConfig`): the encoder and emissions run once, Viterbi once per
    decoding. Unit tags are spread BIO-aware over the tokens each unit covers: one prediction per gold
    token, in order."""
    was = tagger.training
    tagger.eval()
    order = sorted(range(len(data.encoded)), key=lambda i: len(data.encoded[i].input_ids))
    out: dict[str, list[list[str] | None]] = {name: [None] * len(order) for name in decodes}
    labels = tagger.head.config.labels
    bar = progress_bar(total=len(order), desc=f"predict {data.dataset.name}/{data.dataset.split}", unit="sent",
                       disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        cached = [data.cached[i] for i in idx] if data.cached is not None else None
        feats, mask = tagger.features([data.encoded[i] for i in idx], cached)
        emissions = tagger.head.emissions(feats, mask)
        spans = [data.encoded[i].unit_spans for i in idx]
        links = [data.links[i] for i in idx] if data.links is not None else None
        for name, config in decodes.items():
            allowed = allowed_matrix(labels, data.dataset.format, config, spans, links, emissions.shape[1])
            for i, seq in zip(idx, tagger.head.crf_decode(emissions, mask, allowed=allowed), strict=True):
                out[name][i] = spread_tags([labels[k] for k in seq], data.encoded[i].unit_spans)
        bar.update(len(idx))
    bar.close()
    tagger.train(was)
    for preds in out.values():
        for i, (pred, sent) in enumerate(zip(preds, data.dataset.sentences, strict=True)):
            assert pred is not None and len(pred) == len(sent), f"sentence {i}: prediction does not cover the tokens"
    return out  # type: ignore[return-value]


def predict(tagger: Tagger, data: Prepared, batch_size: int = 64, progress: bool = True,
            decode: DecodeConfig | None = None) -> list[list[str]]:
    """Token-level IOB2 predictions of every sentence of ``data`` under one decoding (default:
    :class:`~xner_lib.decoding.DecodeConfig`'s defaults), see :func:`predict_many`."""
    return predict_many(tagger, data, {"_": decode or DecodeConfig()}, batch_size, progress)["_"]


@dataclass
class TrainResult:
    """What :func:`train` returns: the tagger with the selected weights and the curves."""

    tagger: Tagger
    history: list[dict[str, float]]
    dev_history: list[dict[str, float]]
    best_step: int
    best_dev_f1: float
    seconds: float
    stopped_early: bool = False
    label_counts: dict[str, int] = field(default_factory=dict)
    #: (step, state dict): the best weights up to ``snapshot_epoch`` (see :func:`train`), or None
    snapshot: tuple[int, dict[str, Tensor]] | None = None


def model_labels(cfg: TrainConfig) -> tuple[str, ...]:
    """The label map a run trains with: ``labels.MODEL_LABELS``, without MISC when ``cfg.misc_class`` is off
    (a ``labels`` entry of ``cfg.head`` wins)."""
    if "labels" in cfg.head:
        return tuple(cfg.head["labels"])
    return MODEL_LABELS if cfg.misc_class else tuple(x for x in MODEL_LABELS if not x.endswith("-MISC"))


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer layers of a BERT-like encoder (BERT, XLM-R, e5: ``model.encoder.layer``)."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__}: no encoder.layer list to freeze layers of")
    return layers


def build_tagger(cfg: TrainConfig, encoder: Encoder) -> Tagger:
    head = BiLstmCrfHead(HeadConfig(input_dim=encoder.hidden_size, **{**cfg.head, "labels": model_labels(cfg)}))
    if cfg.finetune and cfg.freeze_embeddings:
        encoder.model.get_input_embeddings().weight.requires_grad_(False)
    if cfg.finetune and cfg.freeze_layers:
        layers = encoder_layers(encoder.model)
        if cfg.freeze_layers > len(layers):
            raise ValueError(f"freeze_layers={cfg.freeze_layers} but {encoder.name} has {len(layers)} layers")
        for layer in layers[:cfg.freeze_layers]:
            layer.requires_grad_(False)
    return Tagger(head, encoder if cfg.finetune else None)


def _optimizer(tagger: Tagger, cfg: TrainConfig, total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
    groups = [{"params": list(tagger.head.parameters()), "lr": cfg.head_lr, "weight_decay": 0.0}]
    if tagger.encoder_model is not None:
        decay, no_decay = [], []
        for name, p in tagger.encoder_model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "bias" in name else decay).append(p)
        groups += [{"params": decay, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
                   {"params": no_decay, "lr": cfg.lr, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups)
    warmup = int(cfg.warmup_ratio * total_steps)

    def factor(step: int) -> float:  # linear warm-up, then linear decay to 0
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train(cfg: TrainConfig, encoder: Encoder, train_data: Prepared, dev_data: Prepared, *,
          progress: bool = True, on_eval: Callable[[dict[str, float]], None] | None = None,
          snapshot_epoch: float | None = None) -> TrainResult:
    """Train a tagger on ``train_data`` (CoNLL train) and keep the weights with the best strict F1 on
    ``dev_data`` (CoNLL dev). Loss: the CRF negative log-likelihood, eq. 11.

    CoNLL dev is evaluated at steps ``round(k * steps_per_epoch / evals_per_epoch)`` (so epoch boundaries are
    evaluation points) and at the last step. A run trained without some CoNLL type (``misc_class=False``) is
    selected on dev gold with that type as O: the model cannot predict it.

    ``snapshot_epoch``: also keep (``TrainResult.snapshot``) the weights that selection would have kept had
    the run stopped at that epoch (the best evaluation up to it; the first evaluation when none comes before
    it), so the same run can be scored as if it had stopped there (its learning rate still follows the full
    schedule)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    tagger = build_tagger(cfg, encoder)
    if cfg.finetune and train_data.cached is not None:
        raise ValueError("fine-tuning needs encodings, not cached features")
    if not cfg.finetune and train_data.cached is None:
        raise ValueError("a frozen tagger trains on cached features: prepare(..., frozen=True)")
    labels = tagger.head.config.labels
    label_counts = UnitTagCounts()
    ids = label_ids(train_data.encoded, [s.tags for s in train_data.dataset.sentences], labels, counts=label_counts)
    lengths = [len(e.input_ids) for e in train_data.encoded]
    rng = random.Random(cfg.seed)
    n_epochs = math.ceil(cfg.epochs)
    steps_per_epoch = math.ceil(len(lengths) / cfg.batch_size)
    total = int(round(cfg.epochs * steps_per_epoch))
    eval_steps = {min(total, round(k * steps_per_epoch / cfg.evals_per_epoch))
                  for k in range(1, math.ceil(total * cfg.evals_per_epoch / steps_per_epoch) + 1)} | {total}
    opt, sched = _optimizer(tagger, cfg, total)
    history: list[dict[str, float]] = []
    dev_history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, Tensor] | None] = (-1.0, 0, None)
    known = {t[2:] for t in labels if t != "O"}
    gold_dev = [["O" if t != "O" and t[2:] not in known else t for t in s.tags] for s in dev_data.dataset.sentences]
    start = time.perf_counter()
    step = 0
    since_best = 0  # evaluations since the last new best
    snapshot: tuple[int, dict[str, Tensor]] | None = None
    stopped_early = False
    bar = progress_bar(total=total, desc=f"train seed {cfg.seed}", unit="steps", disable=not progress)
    tagger.train()
    for _epoch in range(n_epochs):
        for batch in length_batches(lengths, cfg.batch_size, rng):
            if step >= total or stopped_early:
                break
            cached = [train_data.cached[i] for i in batch] if train_data.cached is not None else None
            feats, mask = tagger.features([train_data.encoded[i] for i in batch], cached)
            y = torch.zeros(mask.shape, dtype=torch.long)
            for r, i in enumerate(batch):
                y[r, : len(ids[i])] = torch.tensor(ids[i])
            loss = tagger.head.loss(feats, mask, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in tagger.parameters() if p.requires_grad], cfg.max_grad_norm)
            opt.step()
            sched.step()
            step += 1
            loss_value = float(loss.detach())
            history.append({"step": step, "epoch": step / steps_per_epoch, "loss": loss_value,
                            "seconds": time.perf_counter() - start})
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}")
            if step in eval_steps:
                t0 = time.perf_counter()
                dev = score(gold_dev, predict(tagger, dev_data, cfg.eval_batch_size, progress=False))
                row = {"step": step, "epoch": step / steps_per_epoch, "dev_f1": dev["strict"]["f1"],
                       "dev_f1_conlleval": dev["conlleval"]["f1"], "eval_seconds": time.perf_counter() - t0}
                dev_history.append(row)
                if on_eval:
                    on_eval(row)
                if snapshot_epoch is not None and snapshot is None and row["epoch"] > snapshot_epoch + 1e-9:
                    # the best up to snapshot_epoch (best[2] is never mutated), or this first evaluation
                    snapshot = (best[1], best[2]) if best[2] is not None else (
                        step, {k: v.detach().clone() for k, v in tagger.state_dict().items()})
                if row["dev_f1"] > best[0]:
                    best = (row["dev_f1"], step, {k: v.detach().clone() for k, v in tagger.state_dict().items()})
                    since_best = 0
                else:
                    since_best += 1
                    stopped_early = cfg.patience is not None and since_best >= cfg.patience
    bar.close()
    assert best[2] is not None
    if snapshot_epoch is not None and snapshot is None:  # the run ended before passing snapshot_epoch
        snapshot = (best[1], best[2])
    tagger.load_state_dict(best[2])
    tagger.eval()
    return TrainResult(tagger, history, dev_history, best[1], best[0], time.perf_counter() - start,
                       stopped_early=stopped_early, label_counts=dict(label_counts), snapshot=snapshot)


# --- checkpoints -------------------------------------------------------------------------------------

def save_checkpoint(result_or_tagger: TrainResult | Tagger, directory: str | os.PathLike[str], cfg: TrainConfig,
                    *, run_key: str | None = None, scoring: Mapping[str, Any] | None = None) -> Path:
    """Write ``directory`` (atomically: built beside it, then renamed) with ``config.json`` (train and head
    configs, the label map, the encoder's name, and ``run_key``: the key of the run that made it, see
    :func:`~xner_lib.experiment.run_or_load`; ``scoring``: how its numbers were scored, e.g. the Chinese
    unit scheme and the decoding), ``head.safetensors`` and, fine-tuned, ``encoder/`` (the HF
    model and tokenizer)."""
    tagger = result_or_tagger.tagger if isinstance(result_or_tagger, TrainResult) else result_or_tagger
    encoder = tagger.encoder
    directory = Path(directory)
    meta = {"train": asdict(cfg), "head": tagger.head.config.to_dict(), "labels": list(tagger.head.config.labels),
            "encoder": cfg.encoder, "finetuned": encoder is not None, "run_key": run_key,
            "scoring": dict(scoring or {})}
    with atomic_dir(directory) as tmp:
        if encoder is not None:
            encoder.model.save_pretrained(tmp / "encoder")
            encoder.tokenizer.save_pretrained(tmp / "encoder")
            meta["encoder_max_length"] = encoder.max_length
        save_file({k: v.contiguous() for k, v in tagger.head.state_dict().items()}, str(tmp / "head.safetensors"))
        (tmp / "config.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return directory


def load_checkpoint(directory: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None
                    ) -> tuple[Tagger, Encoder, TrainConfig]:
    """Load a checkpoint written by :func:`save_checkpoint`: the tagger (eval mode), the encoder it reads
    (the saved fine-tuned one, or the named frozen one) and its training config."""
    directory = Path(directory)
    meta = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    cfg = TrainConfig(**meta["train"])
    if meta["finetuned"]:
        encoder = load_encoder(directory / "encoder", cache_dir, max_length=meta.get("encoder_max_length"))
    else:
        encoder = load_encoder(cfg.encoder, cache_dir)
    head = BiLstmCrfHead(HeadConfig(**meta["head"]))
    head.load_state_dict(load_file(str(directory / "head.safetensors")))
    tagger = Tagger(head, encoder if meta["finetuned"] else None)
    tagger.eval()
    return tagger, encoder, cfg
