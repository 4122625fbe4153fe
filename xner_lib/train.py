"""Training the tagger on English CoNLL-2003 (paper sections 3 and 4.2): the loop over several streams.

Each step draws from up to six streams and sums named losses (:mod:`~xner_lib.objectives`):

* English CoNLL batches (always): ``ner``, the CRF loss of eq. 11;
* Chinese renderings of CoNLL sentences with projected labels, read with a frozen teacher's features
  (``TrainConfig.transfer``): ``rendered``;
* unlabelled Chinese batches (``TrainConfig.adversarial``): ``adversarial``, the generator loss of eqs 6-7,
  after a step of the word discriminator (eqs 4-5) on the same units;
* beyond the paper, labelled Chinese sentences: gold ones of a dev split (``TrainConfig.few_shot``), the
  unlabelled text tagged by a teacher run (``TrainConfig.self_training``) or CoNLL rendered through the lexicon
  (``TrainConfig.translate_train``): ``few_shot``, ``self_training``, ``translate_train``.

Optimizer groups: the head, the encoder (with and without weight decay) and the map ``U`` of eq. 2, one
AdamW with a linear warm-up and decay; the discriminator has its own SGD (:class:`~xner_lib.objectives.Adversary`).
``U`` is snapped back to orthogonal by SVD after every step (eq. 3).

Device and precision (issue 16): ``TrainConfig.device`` places the tagger (encoder, head, layers, ``U``), the
discriminator and every batch through :func:`~xner_lib.device.to_device`; on CUDA the forward passes run under
autocast (:class:`~xner_lib.device.MixedPrecision`), the CRF and the discriminator's losses in float32. On the
CPU (the default) nothing moves and nothing is cast: the steps are bitwise those of before.

Model selection uses CoNLL-2003 dev only (strict F1, a few evaluations per epoch); no Chinese label is ever
seen. The baseline (no attention, no adversarial, no transfer) takes exactly the steps it took before the
streams existed (a test compares).

Checkpoint averaging (issue 13, beyond the paper; Schmidt et al. 2023, "Free Lunch: Robust Cross-Lingual Transfer
via Model Checkpoint Averaging"): with ``TrainConfig.average_from_epoch`` the run keeps the uniform mean of its
weights at every CoNLL-dev evaluation from that epoch on instead of the evaluation best on CoNLL dev
(:func:`accumulate_mean`); the selected best is kept aside so the same run can be scored both ways.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from .aligner import project_orthogonal_
from .batches import Prepared, label_ids, length_batches
from .config import ConfigError, did_you_mean
from .data.labels import MODEL_LABELS
from .device import (
    check_device_setting,
    check_precision_setting,
    cpu_copy,
    describe_device,
    fused_adamw,
    mixed_precision,
    resolve_device,
    seed_everything,
    to_device,
)
from .encoders import Encoder
from .evaluate import score
from .model import HeadConfig
from .objectives import (
    AdversarialConfig,
    Adversary,
    FewShotConfig,
    SelfTrainingConfig,
    TransferConfig,
    TranslateTrainConfig,
    parse_section,
    sample_units,
)
from .progress import progress as progress_bar
from .tagger import Tagger, Teacher, build_tagger, predict
from .units import UnitTagCounts


@dataclass
class TrainConfig:
    """Training settings. Defaults are the paper's Table 2 (3 epochs, batch 20, lr 4e-5, dropout 0.5);
    profiles override them (``configs/*.yaml``, keys prefixed ``train_``).

    ``lr`` is the encoder's learning rate; the head, trained from scratch, uses ``head_lr`` (the paper
    gives one rate; see docs/method.md). ``freeze_embeddings`` keeps the encoder's word-embedding table
    fixed while the rest fine-tunes (on CPU it removes most of the optimizer's work: e5-small's table
    holds 96M of its 117M parameters, and rows of pieces unseen in English get no gradient anyway).
    ``freeze_layers`` keeps the lowest transformer layers fixed, ``freeze_embedding_layer`` the whole embedding
    layer (word, position and token-type tables, LayerNorm: Wu and Dredze 2019's setting), so that the backward
    pass stops at the first trained layer.
    ``max_sentences`` keeps the first training sentences only
    (smoke). ``evals_per_epoch`` CoNLL-dev evaluations pick the kept weights.

    Convergence (issue 10): ``epochs`` is the cap (the paper's 3) and sets the length of the linear
    schedule; with ``patience`` set, training stops after that many CoNLL-dev evaluations in a row without
    a new best strict F1 (``None``: run to the cap). ``misc_class=False`` trains without a MISC class:
    CoNLL MISC spans become O (counted) and the label map holds PER, LOC and ORG only.
    ``freeze_layers`` keeps the encoder's lowest transformer layers fixed (0: none), which shortens the
    backward pass on a CPU.

    The paper's model (issue 11): ``head`` may switch on the double attention (``{"attention": "double"}``,
    :class:`~xner_lib.model.HeadConfig`); ``adversarial`` (:class:`~xner_lib.objectives.AdversarialConfig`,
    eqs 4-7 inside training) and ``transfer`` (:class:`~xner_lib.objectives.TransferConfig`, the
    reverse-attention transfer) are off when empty. A variant is a block of these settings in a profile.
    ``few_shot`` (:class:`~xner_lib.objectives.FewShotConfig`, beyond the paper) adds labelled Chinese
    sentences as a stream of their own; off when empty or of size 0. ``self_training``
    (:class:`~xner_lib.objectives.SelfTrainingConfig`, issue 13) adds the unlabelled Chinese text tagged by a
    teacher run as a stream of pseudo-labelled sentences; ``translate_train``
    (:class:`~xner_lib.objectives.TranslateTrainConfig`, issue 13) CoNLL rendered into Chinese through the
    lexicon with projected labels; each off when empty.
    ``average_from_epoch`` (issue 13): the run's weights are the mean of its weights at every CoNLL-dev
    evaluation from that epoch on (checkpoint averaging; None: off, the evaluation best is kept).

    Device (issue 16; :mod:`~xner_lib.device`): ``device`` is ``cpu`` (the default: every run before it was made
    on the CPU), ``auto`` (a CUDA GPU when there is one), ``cuda`` or ``cuda:N``; ``precision`` is ``auto``
    (off on the CPU; bf16, else fp16 with loss scaling, on CUDA), ``fp32``, ``bf16`` or ``fp16``.
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
    freeze_embedding_layer: bool = False
    misc_class: bool = True
    eval_batch_size: int = 64
    max_sentences: int | None = None
    seed: int = 1
    threads: int | None = None
    head: dict[str, Any] = field(default_factory=dict)
    adversarial: dict[str, Any] = field(default_factory=dict)
    transfer: dict[str, Any] = field(default_factory=dict)
    few_shot: dict[str, Any] = field(default_factory=dict)
    self_training: dict[str, Any] = field(default_factory=dict)
    translate_train: dict[str, Any] = field(default_factory=dict)
    average_from_epoch: float | None = None
    device: str = "cpu"
    precision: str = "auto"

    def __post_init__(self) -> None:
        check_device_setting(self.device)
        check_precision_setting(self.precision)
        if self.epochs <= 0 or self.batch_size < 1 or self.evals_per_epoch < 1:
            raise ValueError(f"epochs, batch_size and evals_per_epoch must be positive: {self}")
        head_fields = {f.name for f in fields(HeadConfig)} - {"input_dim"}  # input_dim comes from the encoder
        unknown = [k for k in self.head if k not in head_fields]
        if unknown:
            raise ConfigError([f"unknown key '{k}' in TrainConfig.head: HeadConfig has no such settable field; "
                               f"{did_you_mean(k, head_fields)}" for k in unknown])
        self.adversarial_config  # noqa: B018 (validates the section)
        self.transfer_config  # noqa: B018
        self.few_shot_config  # noqa: B018
        self.self_training_config  # noqa: B018
        if self.translate_train_config is not None and self.transfer_config is not None:
            raise ValueError("translate_train and transfer do not go together: the transfer already trains on the "
                             "rendered CoNLL sentences (transfer.rendered_weight)")
        if "teacher_dim" in self.head:
            raise ValueError("head.teacher_dim comes from the teacher (the transfer section); do not set it")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be a positive number of evaluations or None, got {self.patience}")
        if self.average_from_epoch is not None and not 0 <= self.average_from_epoch <= self.epochs:
            raise ValueError(f"average_from_epoch must lie between 0 and epochs ({self.epochs}) or be None, got "
                             f"{self.average_from_epoch}")


    @property
    def adversarial_config(self) -> AdversarialConfig | None:
        """The ``adversarial`` section as :class:`~xner_lib.objectives.AdversarialConfig` (None: off)."""
        return parse_section(AdversarialConfig, self.adversarial, "TrainConfig.adversarial")

    @property
    def transfer_config(self) -> TransferConfig | None:
        """The ``transfer`` section as :class:`~xner_lib.objectives.TransferConfig` (None: off)."""
        return parse_section(TransferConfig, self.transfer, "TrainConfig.transfer")

    @property
    def few_shot_config(self) -> FewShotConfig | None:
        """The ``few_shot`` section as :class:`~xner_lib.objectives.FewShotConfig` (None: off, or size 0)."""
        cfg = parse_section(FewShotConfig, self.few_shot, "TrainConfig.few_shot")
        return cfg if cfg is not None and cfg.size > 0 else None

    @property
    def self_training_config(self) -> SelfTrainingConfig | None:
        """The ``self_training`` section as :class:`~xner_lib.objectives.SelfTrainingConfig` (None: off)."""
        return parse_section(SelfTrainingConfig, self.self_training, "TrainConfig.self_training")

    @property
    def translate_train_config(self) -> TranslateTrainConfig | None:
        """The ``translate_train`` section as :class:`~xner_lib.objectives.TranslateTrainConfig` (None: off)."""
        return parse_section(TranslateTrainConfig, self.translate_train, "TrainConfig.translate_train")


#: Fields added to :class:`TrainConfig` after method version 2, with the value that reproduces the code before
#: them. A run key leaves such a field out while it holds that value (:func:`key_config`), so adding a field
#: does not orphan the runs made before it; any other value is part of the key.
#: ``device: cpu`` and ``precision: auto`` are how every run was made before those fields existed (issue 16).
KEY_NEUTRAL: dict[str, Any] = {"adversarial": {}, "transfer": {}, "few_shot": {}, "self_training": {},
                               "translate_train": {}, "device": "cpu", "precision": "auto",
                               "freeze_embedding_layer": False, "average_from_epoch": None}


def key_config(cfg: TrainConfig) -> dict[str, Any]:
    """``asdict(cfg)`` without the :data:`KEY_NEUTRAL` fields that hold their neutral value: the training
    config's part of a run key."""
    return {k: v for k, v in asdict(cfg).items() if not (k in KEY_NEUTRAL and v == KEY_NEUTRAL[k])}


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) generators (:func:`~xner_lib.device.seed_everything`)."""
    seed_everything(seed)


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
    #: where the run computed (:func:`~xner_lib.device.describe_device`), for ``metrics.json``
    device: dict[str, Any] = field(default_factory=dict)
    #: with ``average_from_epoch``: the steps whose weights ``tagger`` averages, their CoNLL-dev strict F1, and
    #: (step, state dict) of the evaluation best, which the average replaces (scored beside it)
    averaged_steps: list[int] = field(default_factory=list)
    averaged_dev_f1: float | None = None
    selected: tuple[int, dict[str, Tensor]] | None = None


def model_labels(cfg: TrainConfig) -> tuple[str, ...]:
    """The label map a run trains with: ``labels.MODEL_LABELS``, without MISC when ``cfg.misc_class`` is off
    (a ``labels`` entry of ``cfg.head`` wins)."""
    if "labels" in cfg.head:
        return tuple(cfg.head["labels"])
    return MODEL_LABELS if cfg.misc_class else tuple(x for x in MODEL_LABELS if not x.endswith("-MISC"))


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
    adv = cfg.adversarial_config
    if tagger.mapping is not None and adv is not None:
        groups.append({"params": list(tagger.mapping.parameters()), "lr": adv.map_lr, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, fused=fused_adamw(p for g in groups for p in g["params"]) or None)
    warmup = int(cfg.warmup_ratio * total_steps)

    def factor(step: int) -> float:  # linear warm-up, then linear decay to 0
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def optimizer_step(opt: torch.optim.Optimizer, sched: Any, amp: Any, trainable: Sequence[Tensor],
                   max_grad_norm: float) -> None:
    """After ``backward``: unscale (mixed precision), clip the gradient norm, step AdamW and the schedule."""
    amp.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    amp.step(opt)
    sched.step()


@torch.no_grad()
def accumulate_mean(mean: dict[str, Tensor] | None, state: dict[str, Tensor], n: int) -> dict[str, Tensor]:
    """The running uniform mean of ``n + 1`` state dicts: ``mean`` of the first ``n`` (None when ``n`` is 0)
    updated in place with ``state``, ``mean + (state - mean) / (n + 1)``, in float32 in host memory; a
    non-floating entry keeps the latest value. Checkpoint averaging (Schmidt et al. 2023)."""
    if mean is None:
        if n != 0:
            raise ValueError(f"no mean to update, but {n} state dicts are said to be in it")
        return {k: v.detach().to("cpu", torch.float32, copy=True) if v.is_floating_point() else cpu_copy(v)
                for k, v in state.items()}
    if set(mean) != set(state):
        raise ValueError(f"state dicts of other models: {sorted(set(mean) ^ set(state))[:5]}")
    for k, v in state.items():
        if v.is_floating_point():
            mean[k].add_(v.detach().to("cpu", torch.float32).sub(mean[k]), alpha=1.0 / (n + 1))
        else:
            mean[k] = cpu_copy(v)
    return mean


def _cycle(lengths: Sequence[int], batch_size: int, rng: random.Random) -> Iterator[list[int]]:
    """Length-bucketed batches of a secondary stream, reshuffled each time it is exhausted."""
    while True:
        yield from length_batches(lengths, batch_size, rng)


def _labels(ids: Sequence[Sequence[int]], batch: Sequence[int], shape: torch.Size) -> Tensor:
    """Label ids of the sentences ``batch`` padded to ``shape`` ``[B,U]`` (0 at padding, masked anyway)."""
    y = torch.zeros(shape, dtype=torch.long)
    for r, i in enumerate(batch):
        y[r, : len(ids[i])] = torch.tensor(ids[i])
    return y


def _stream_loss(tagger: Tagger, data: Prepared, ids: Sequence[Sequence[int]], batch: list[int], amp: Any,
                 device: torch.device) -> Tensor:
    """The CRF loss (eq. 11) of sentences ``batch`` of a labelled stream other than CoNLL train (the rendered
    pairs, the labelled Chinese streams beyond the paper), with their teacher's features when they have
    them."""
    with amp.autocast():
        feats, mask = tagger.features([data.encoded[i] for i in batch], [data.cached[i] for i in batch]
                                      if data.cached is not None else None, data.dataset.language)
        return tagger.head.loss(feats, mask, to_device(_labels(ids, batch, mask.shape), device),
                                teacher=to_device(data.batch_teacher(batch), device))


def train(cfg: TrainConfig, encoder: Encoder, train_data: Prepared, dev_data: Prepared, *,
          progress: bool = True, on_eval: Callable[[dict[str, float]], None] | None = None,
          snapshot_epoch: float | None = None, rendered: Prepared | None = None, target: Prepared | None = None,
          teacher: Teacher | None = None, mapping: Tensor | None = None,
          few_shot: Prepared | None = None, pseudo: Prepared | None = None,
          translated: Prepared | None = None) -> TrainResult:
    """Train a tagger on ``train_data`` (CoNLL train) and keep the weights with the best strict F1 on
    ``dev_data`` (CoNLL dev). Loss: the CRF negative log-likelihood (eq. 11) plus the named losses the
    config switches on (module docstring).

    The paper's model takes more inputs: with ``cfg.transfer``, the ``teacher`` (its features already in
    ``train_data.teacher``, ``dev_data.teacher`` and ``rendered.teacher``) and, when ``rendered_weight > 0``,
    ``rendered``: the Chinese renderings of CoNLL train with projected labels; with ``cfg.adversarial``,
    ``target``: unlabelled Chinese sentences (their tags are never read) and ``mapping``: the initial ``U``
    (None: the identity). With ``cfg.few_shot``, ``few_shot``: the labelled Chinese sentences it adds (with the
    teacher's features when the variant transfers). With ``cfg.self_training``, ``pseudo``: the unlabelled
    Chinese sentences with a teacher's tags as their labels; with ``cfg.translate_train``, ``translated``: CoNLL
    train rendered into Chinese with projected labels (the same checks as ``few_shot``).

    CoNLL dev is evaluated at steps ``round(k * steps_per_epoch / evals_per_epoch)`` (so epoch boundaries are
    evaluation points) and at the last step. A run trained without some CoNLL type (``misc_class=False``) is
    selected on dev gold with that type as O: the model cannot predict it.

    ``snapshot_epoch``: also keep (``TrainResult.snapshot``) the weights that selection would have kept had
    the run stopped at that epoch (the best evaluation up to it; the first evaluation when none comes before
    it), so the same run can be scored as if it had stopped there (its learning rate still follows the full
    schedule)."""
    adv, tra = cfg.adversarial_config, cfg.transfer_config
    if (adv is None) != (target is None):
        raise ValueError("unlabelled Chinese batches (target) go with the adversarial section, and only with it")
    if (tra is None) != (teacher is None):
        raise ValueError("a teacher goes with the transfer section, and only with it")
    if tra is not None:
        missing = [n for n, d in (("train_data", train_data), ("dev_data", dev_data)) if d.teacher is None]
        if (rendered is None) != (tra.rendered_weight == 0):
            raise ValueError("rendered pairs are needed exactly when transfer.rendered_weight > 0")
        if rendered is not None and rendered.teacher is None:
            missing.append("rendered")
        if missing:
            raise ValueError(f"transfer: the teacher's features are missing from {', '.join(missing)}")
    elif rendered is not None:
        raise ValueError("rendered pairs go with the transfer section")
    if mapping is not None and adv is None:
        raise ValueError("an initial map U goes with the adversarial section")
    # the labelled Chinese streams (beyond the paper): name, section, sentences
    sections = (("few_shot", cfg.few_shot_config, few_shot, "few_shot"),
                ("self_training", cfg.self_training_config, pseudo, "pseudo"),
                ("translate_train", cfg.translate_train_config, translated, "translated"))
    for n, c, d, arg in sections:
        if (c is None) != (d is None):
            raise ValueError(f"the sentences of {arg} go with the {n} section (of size > 0), and only with it")
    chinese = [(n, c, d) for n, c, d, _ in sections if c is not None and d is not None]
    for n, _, d in chinese:
        if tra is not None and d.teacher is None:
            raise ValueError(f"transfer: the teacher's features are missing from {n}")
    device = resolve_device(cfg.device)  # fails at once, with one message, for a GPU this machine lacks
    amp = mixed_precision(device, cfg.precision)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    head_cfg = HeadConfig(input_dim=encoder.hidden_size, **{**cfg.head, "labels": model_labels(cfg),
                                                            **({"teacher_dim": teacher.dim} if teacher else {})})
    init_map = None
    if adv is not None:
        init_map = mapping if mapping is not None else torch.eye(encoder.hidden_size)
    tagger = to_device(build_tagger(head_cfg, encoder, finetune=cfg.finetune, freeze_embeddings=cfg.freeze_embeddings,
                                    freeze_layers=cfg.freeze_layers, mapping=init_map,
                                    freeze_embedding_layer=cfg.freeze_embedding_layer), device)
    tagger.teacher = teacher
    adversary = Adversary(adv, encoder.hidden_size, cfg.seed, device=device) if adv is not None else None
    for name, data in (("train_data", train_data), ("rendered", rendered), ("target", target),
                       ("few_shot", few_shot), ("self_training", pseudo), ("translate_train", translated)):
        if data is None:
            continue
        if cfg.finetune and data.cached is not None:
            raise ValueError(f"fine-tuning needs encodings, not cached features ({name})")
        if not cfg.finetune and data.cached is None:
            raise ValueError(f"a frozen tagger trains on cached features: prepare(..., frozen=True) ({name})")
    labels = tagger.head.config.labels
    label_counts = UnitTagCounts()
    ids = label_ids(train_data.encoded, [s.tags for s in train_data.dataset.sentences], labels, counts=label_counts)
    rendered_counts = UnitTagCounts()
    rendered_ids = (label_ids(rendered.encoded, [s.tags for s in rendered.dataset.sentences], labels,
                              counts=rendered_counts) if rendered is not None else None)
    label_counts.update({f"rendered.{k}": v for k, v in rendered_counts.items()})
    chinese_ids: dict[str, list[list[int]]] = {}
    for n, _, d in chinese:
        stream_counts = UnitTagCounts()
        chinese_ids[n] = label_ids(d.encoded, [s.tags for s in d.dataset.sentences], labels, counts=stream_counts)
        label_counts.update({f"{n}.{k}": v for k, v in stream_counts.items()})
    lengths = [len(e.input_ids) for e in train_data.encoded]
    rng = random.Random(cfg.seed)
    rendered_batches = (_cycle([len(e.input_ids) for e in rendered.encoded], tra.rendered_batch_size,
                               random.Random(f"{cfg.seed}-rendered")) if rendered is not None and tra else None)
    chinese_batches = {n: _cycle([len(e.input_ids) for e in d.encoded], c.batch_size, random.Random(f"{cfg.seed}-{n}"))
                       for n, c, d in chinese}
    target_batches = (_cycle([len(e.input_ids) for e in target.encoded], adv.batch_size,
                             random.Random(f"{cfg.seed}-target")) if target is not None and adv else None)
    n_epochs = math.ceil(cfg.epochs)
    steps_per_epoch = math.ceil(len(lengths) / cfg.batch_size)
    total = int(round(cfg.epochs * steps_per_epoch))
    eval_steps = {min(total, round(k * steps_per_epoch / cfg.evals_per_epoch))
                  for k in range(1, math.ceil(total * cfg.evals_per_epoch / steps_per_epoch) + 1)} | {total}
    opt, sched = _optimizer(tagger, cfg, total)
    trainable = [p for p in tagger.parameters() if p.requires_grad]
    history: list[dict[str, float]] = []
    dev_history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, Tensor] | None] = (-1.0, 0, None)
    known = {t[2:] for t in labels if t != "O"}
    gold_dev = [["O" if t != "O" and t[2:] not in known else t for t in s.tags] for s in dev_data.dataset.sentences]
    start = time.perf_counter()
    step = 0
    since_best = 0  # evaluations since the last new best
    snapshot: tuple[int, dict[str, Tensor]] | None = None
    average: dict[str, Tensor] | None = None  # checkpoint averaging: the running mean and the steps in it
    averaged_steps: list[int] = []
    stopped_early = False
    bar = progress_bar(total=total, desc=f"train seed {cfg.seed}", unit="steps", disable=not progress)
    tagger.train()
    for _epoch in range(n_epochs):
        for batch in length_batches(lengths, cfg.batch_size, rng):
            if step >= total or stopped_early:
                break
            with amp.autocast():
                feats, mask = tagger.features([train_data.encoded[i] for i in batch],
                                              [train_data.cached[i] for i in batch] if train_data.cached is not None
                                              else None, train_data.dataset.language)
                y = to_device(_labels(ids, batch, mask.shape), device)
                loss = tagger.head.loss(feats, mask, y, teacher=to_device(train_data.batch_teacher(batch), device))
            row: dict[str, float] = {}
            if rendered_batches is not None and tra is not None and step % tra.every == 0:
                assert rendered is not None and rendered_ids is not None
                # Chinese renderings of CoNLL sentences, with the original's teacher
                r_loss = _stream_loss(tagger, rendered, rendered_ids, next(rendered_batches), amp, device)
                row["loss_rendered"] = float(r_loss.detach())
                loss = loss + tra.rendered_weight * r_loss
            for n, c, d in chinese:
                if step % c.every == 0:
                    c_loss = _stream_loss(tagger, d, chinese_ids[n], next(chinese_batches[n]), amp, device)
                    row[f"loss_{n}"] = float(c_loss.detach())
                    loss = loss + c.weight * c_loss
            if target_batches is not None and adversary is not None and adv is not None and step % adv.every == 0:
                assert target is not None
                tb = next(target_batches)  # unlabelled Chinese: eqs 4-5 for D, then eqs 6-7 for U and the encoder
                with amp.autocast():
                    tf, tm = tagger.features([target.encoded[i] for i in tb], [target.cached[i] for i in tb]
                                             if target.cached is not None else None, target.dataset.language)
                # D and its BCE in float32, outside autocast (which refuses binary_cross_entropy on CUDA)
                x, is_target = sample_units(feats, mask, tf, tm, adv.tokens, adversary.generator)
                x = x.float()
                row.update(adversary.discriminator_step(x, is_target))
                g_loss = adversary.generator_loss(x, is_target)
                row["loss_adversarial"] = float(g_loss.detach())
                loss = loss + adv.weight * g_loss
            opt.zero_grad(set_to_none=True)
            amp.backward(loss)
            optimizer_step(opt, sched, amp, trainable, cfg.max_grad_norm)
            if tagger.mapping is not None:
                project_orthogonal_(tagger.mapping.U)  # eq. 3
            step += 1
            loss_value = float(loss.detach())
            history.append({"step": step, "epoch": step / steps_per_epoch, "loss": loss_value,
                            "seconds": time.perf_counter() - start, **row})
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}")
            if step in eval_steps:
                t0 = time.perf_counter()
                dev = score(gold_dev, predict(tagger, dev_data, cfg.eval_batch_size, progress=False))
                evaluation = {"step": step, "epoch": step / steps_per_epoch, "dev_f1": dev["strict"]["f1"],
                              "dev_f1_conlleval": dev["conlleval"]["f1"], "eval_seconds": time.perf_counter() - t0}
                dev_history.append(evaluation)
                if on_eval:
                    on_eval(evaluation)
                if snapshot_epoch is not None and snapshot is None and evaluation["epoch"] > snapshot_epoch + 1e-9:
                    # the best up to snapshot_epoch (best[2] is never mutated), or this first evaluation
                    snapshot = (best[1], best[2]) if best[2] is not None else (
                        step, {k: cpu_copy(v) for k, v in tagger.state_dict().items()})
                if cfg.average_from_epoch is not None and evaluation["epoch"] >= cfg.average_from_epoch - 1e-9:
                    average = accumulate_mean(average, tagger.state_dict(), len(averaged_steps))
                    averaged_steps.append(step)
                if evaluation["dev_f1"] > best[0]:  # weights kept aside in host memory, not on the GPU
                    best = (evaluation["dev_f1"], step, {k: cpu_copy(v) for k, v in tagger.state_dict().items()})
                    since_best = 0
                else:
                    since_best += 1
                    stopped_early = cfg.patience is not None and since_best >= cfg.patience
    bar.close()
    assert best[2] is not None
    if snapshot_epoch is not None and snapshot is None:  # the run ended before passing snapshot_epoch
        snapshot = (best[1], best[2])
    averaged_dev_f1: float | None = None
    selected: tuple[int, dict[str, Tensor]] | None = None
    if cfg.average_from_epoch is not None:
        if average is None:  # stopped (patience) before average_from_epoch: the weights of its last evaluation
            average, averaged_steps = accumulate_mean(None, tagger.state_dict(), 0), [step]
        selected = (best[1], best[2])
        tagger.load_state_dict(average)
        if tagger.mapping is not None:  # a mean of orthogonal maps is not one: snapped back (eq. 3)
            project_orthogonal_(tagger.mapping.U)
        tagger.eval()
        dev = score(gold_dev, predict(tagger, dev_data, cfg.eval_batch_size, progress=False))
        averaged_dev_f1 = dev["strict"]["f1"]
    else:
        tagger.load_state_dict(best[2])
    tagger.eval()
    return TrainResult(tagger, history, dev_history, best[1], best[0], time.perf_counter() - start,
                       stopped_early=stopped_early, label_counts=dict(label_counts), snapshot=snapshot,
                       device=describe_device(device, amp, cfg.device), averaged_steps=averaged_steps,
                       averaged_dev_f1=averaged_dev_f1, selected=selected)
