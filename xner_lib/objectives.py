"""Named training losses beyond the CRF's: the word-level adversarial alignment inside NER training
(paper section 3.3, eqs 4-7) and the rendered-pairs loss of the reverse-attention transfer (section 3.2).

The training loop (:mod:`~xner_lib.train`) sums named losses with weights from the config:

* ``ner``: the CRF negative log-likelihood on English CoNLL batches, ``L_ner = -log p(y|X)`` (eq. 11);
* ``rendered``: the same loss on the word-by-word Chinese renderings of CoNLL sentences, read with the
  teacher's features of the original English (:class:`TransferConfig`, DESIGN.md Model 5);
* ``few_shot``, ``self_training`` and ``translate_train`` (beyond the paper): the CRF loss on labelled Chinese
  sentences: gold (:class:`FewShotConfig`), a teacher's pseudo-labels (:class:`SelfTrainingConfig`), or CoNLL
  rendered through the lexicon with projected labels (:class:`TranslateTrainConfig`);
* ``adversarial``: the generator loss of eqs 6-7 on flipped, smoothed labels, weight ``lambda``
  (:class:`AdversarialConfig`): English unit vectors mapped by ``U`` (eq. 2) against Chinese unit vectors
  of an unlabelled batch; its gradient reaches ``U`` and, fine-tuned, the encoder.

The discriminator ``D`` (eqs 4-5) is trained by its own optimizer in :class:`Adversary`, never by the
summed loss. The equations themselves live in :mod:`~xner_lib.aligner` (one place for eqs 2-7), shared
with the static-vector aligner of notebook 02.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from .aligner import AlignConfig, Discriminator, discriminator_loss, mapping_loss
from .config import ConfigError, did_you_mean
from .device import to_device

#: where the initial ``U`` can come from (``AdversarialConfig.map_init``)
MAP_INITS: tuple[str, ...] = ("identity", "alignment")


@dataclass
class AdversarialConfig:
    """The adversarial loss inside NER training (section 3.3; ``TrainConfig.adversarial``).

    ``weight`` is ``lambda``, the generator loss's weight beside the CRF loss. ``map_init``: ``U`` starts
    from the identity (the paper's eq. 2 start) or from notebook 02's map (``alignment``). ``U`` trains in
    its own optimizer group (AdamW, ``map_lr``, no weight decay) and after every step is snapped to the
    nearest orthogonal matrix by SVD (eq. 3; MUSE's gentler ``(1+b)U - bUU^TU`` pull cannot hold U
    orthogonal under Adam, whose steps move every entry by about the learning rate). Each step (every
    ``every``-th) takes ``batch_size`` unlabelled Chinese sentences; ``tokens`` units per language are
    sampled from the two batches for ``D``. ``D`` is MUSE's MLP (``dis_*``, eqs 4-5, SGD at ``dis_lr``,
    ``dis_steps`` steps per training step, label smoothing ``dis_smooth``)."""

    weight: float = 0.1
    map_init: str = "identity"
    map_lr: float = 1e-3
    batch_size: int = 8
    every: int = 1
    tokens: int = 256
    dis_hidden: int = 512
    dis_layers: int = 2
    dis_input_dropout: float = 0.1
    dis_dropout: float = 0.0
    dis_lr: float = 0.1
    dis_steps: int = 1
    dis_smooth: float = 0.1

    def __post_init__(self) -> None:
        if self.map_init not in MAP_INITS:
            raise ValueError(f"adversarial.map_init must be one of {MAP_INITS}, got {self.map_init!r}")
        if self.weight < 0 or self.batch_size < 1 or self.every < 1 or self.tokens < 1 or self.dis_steps < 1:
            raise ValueError(f"adversarial: weight >= 0, batch_size, every, tokens and dis_steps >= 1 required: {self}")

    def align_config(self) -> AlignConfig:
        """The discriminator's settings in the aligner's terms (:class:`~xner_lib.aligner.AlignConfig`)."""
        return AlignConfig(dis_hidden=self.dis_hidden, dis_layers=self.dis_layers,
                           dis_input_dropout=self.dis_input_dropout, dis_dropout=self.dis_dropout,
                           dis_lr=self.dis_lr, dis_smooth=self.dis_smooth)


@dataclass
class TransferConfig:
    """The reverse-attention transfer (section 3.2; ``TrainConfig.transfer``; DESIGN.md Model 5).

    ``teacher``: the variant whose same-seed run is the frozen English teacher. ``lexicon``: ``alignment``
    (notebook 02's ``results/<profile>/alignment/lexicon.tsv``) or a path to a ``english<TAB>chinese<TAB>
    cosine`` file. ``rendered_weight``: the weight of the CRF loss on the Chinese renderings of CoNLL
    sentences (0: no rendered stream), ``rendered_batch_size`` sentences every ``every``-th step."""

    teacher: str = "baseline"
    lexicon: str = "alignment"
    rendered_weight: float = 1.0
    rendered_batch_size: int = 16
    every: int = 1

    def __post_init__(self) -> None:
        if self.rendered_weight < 0 or self.rendered_batch_size < 1 or self.every < 1:
            raise ValueError(f"transfer: rendered_weight >= 0, rendered_batch_size and every >= 1 required: {self}")


@dataclass
class LabelledStreamConfig:
    """How a stream of labelled Chinese sentences joins training (the sections beyond the paper below):
    ``batch_size`` of them every ``every``-th step, their CRF loss (eq. 11) added with ``weight``."""

    section: ClassVar[str] = ""  # the TrainConfig field, named in errors

    batch_size: int = 8
    every: int = 1
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.every < 1 or self.weight < 0:
            raise ValueError(f"{self.section}: batch_size and every >= 1, weight >= 0 required: {self}")


@dataclass
class FewShotConfig(LabelledStreamConfig):
    """Labelled Chinese sentences added to training (issue 14, beyond the paper; ``TrainConfig.few_shot``).

    The first ``size`` sentences of a fixed permutation (``sample_seed``) of ``source`` (a labelled corpus file
    that is never a test split; default People's Daily dev), so a larger sample holds every smaller one. They
    form a stream of their own (:class:`LabelledStreamConfig`). Selection stays on CoNLL dev: no Chinese label
    chooses anything."""

    section: ClassVar[str] = "few_shot"

    size: int = 0
    source: str = "peoples_daily/dev.txt"
    sample_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.size < 0:
            raise ValueError(f"few_shot: size >= 0 required: {self}")
        if self.source.replace("\\", "/").rsplit("/", 1)[-1].startswith("test"):
            raise ValueError(f"few_shot: the labelled sentences must not come from a test split, got {self.source!r}")


@dataclass
class SelfTrainingConfig(LabelledStreamConfig):
    """Teacher-student self-training on unlabelled Chinese text (issue 13, beyond the paper;
    ``TrainConfig.self_training``; Wu et al., ACL 2020, "Single-/Multi-Source Cross-Lingual NER via
    Teacher-Student Learning on Unlabeled Data in Target Language").

    The ``teacher`` variant's run of the same seed (trained on English only) tags the unlabelled Chinese text
    of the experiment (Weibo train and People's Daily dev, never a test split) with the profile's decoding
    (the target's labels, the link rule); its tags are *hard* pseudo-labels. A student, started like every
    run from the pretrained encoder, trains on CoNLL as usual plus a stream of the pseudo-labelled sentences
    (:class:`LabelledStreamConfig`). Selection stays on
    CoNLL dev. Wu et al. distil soft token distributions into a student trained on the target text alone; a
    CRF's hard labels and the English stream kept beside them are our choices (docs/method.md, Self-training)."""

    section: ClassVar[str] = "self_training"

    teacher: str = "baseline"
    #: the seeds of ``teacher`` whose tags vote (:func:`majority_tags`): an ensemble of teachers; empty, the
    #: student's own seed alone
    teacher_seeds: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        self.teacher_seeds = tuple(int(s) for s in self.teacher_seeds)
        if len(set(self.teacher_seeds)) != len(self.teacher_seeds):
            raise ValueError(f"self_training: teacher_seeds repeat a seed: {list(self.teacher_seeds)}")


def majority_tags(votes: Sequence[Sequence[str]]) -> list[str]:
    """The pseudo-labels of an ensemble of teachers for one sentence (``SelfTrainingConfig.teacher_seeds``):
    the IOB2 tags of every entity (type and span, strict) that more than half of ``votes`` predict, each vote
    one teacher's IOB2 tags. No two such entities overlap: each teacher's entities are disjoint, so two
    overlapping ones would share a voter. One vote keeps all its entities."""
    from seqeval.metrics.sequence_labeling import get_entities

    n = len(votes[0]) if votes else 0
    if not votes or any(len(v) != n for v in votes):
        raise ValueError(f"majority_tags: one tag sequence per teacher, all of one length: {[len(v) for v in votes]}")
    counts = Counter(e for v in votes for e in set(get_entities(list(v))))
    out = ["O"] * n
    for (etype, start, end), c in sorted(counts.items(), key=lambda x: x[0][1]):
        if 2 * c > len(votes):
            assert all(t == "O" for t in out[start:end + 1]), "majority entities overlap"
            out[start:end + 1] = [f"B-{etype}"] + [f"I-{etype}"] * (end - start)
    return out


@dataclass
class TranslateTrainConfig(LabelledStreamConfig):
    """Translate-train through the lexicon (issue 13, beyond the paper; ``TrainConfig.translate_train``; Xie et
    al., EMNLP 2018, "Neural Cross-Lingual Named Entity Recognition with Minimal Resources").

    CoNLL train rendered word by word into Chinese with notebook 02's ``lexicon`` (``alignment``) or a
    ``english<TAB>chinese<TAB>cosine`` file, its labels projected through the word alignment
    (:func:`~xner_lib.rendering.render_dataset_en`, the rendered pairs of the transfer), trained on directly as
    a stream of their own (:class:`LabelledStreamConfig`). The transfer
    already trains on these renderings (with its teacher), so the two sections do not go together."""

    section: ClassVar[str] = "translate_train"

    lexicon: str = "alignment"


def parse_section(cls: type, values: dict[str, Any] | None, where: str) -> Any:
    """A config section (``TrainConfig.adversarial``, ``.transfer``, ``.few_shot``, ``.self_training``,
    ``.translate_train``) as its dataclass; None when empty (the section is off). Unknown keys raise
    :class:`~xner_lib.config.ConfigError` with a suggestion."""
    if not values:
        return None
    known = {f.name for f in fields(cls)}
    unknown = [k for k in values if k not in known]
    if unknown:
        raise ConfigError([f"unknown key '{k}' in {where}: {cls.__name__} has no such field; "
                           f"{did_you_mean(k, known)}" for k in unknown])
    return cls(**values)


def sample_units(source: Tensor, source_mask: Tensor, target: Tensor, target_mask: Tensor, n: int,
                 generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A discriminator batch of eq. 4: up to ``n`` real units drawn (without replacement) from the mapped
    English ``source [B,U,H]`` and as many from the Chinese ``target [B',U',H]`` (masks ``[B,U]``, ``[B',U']``).
    Returns ``(x [n_s + n_t, H], is_target [n_s + n_t])``, English rows first; differentiable in both, on
    ``source``'s device. ``generator`` is a CPU generator: the units drawn do not depend on the device."""
    src = source[source_mask.bool()]
    tgt = target[target_mask.bool()]
    k = min(n, src.shape[0], tgt.shape[0])
    src = src[to_device(torch.randperm(src.shape[0], generator=generator)[:k], src.device)]
    tgt = tgt[to_device(torch.randperm(tgt.shape[0], generator=generator)[:k], tgt.device)]
    is_target = torch.cat([torch.zeros(k, dtype=torch.bool), torch.ones(k, dtype=torch.bool)])
    return torch.cat([src, tgt]), to_device(is_target, src.device)


class Adversary:
    """The word discriminator ``D`` of eqs 4-5 with its own SGD optimizer, and the generator loss of eqs
    6-7 it gives the tagger. ``dim``: the encoder's hidden size ``H`` (``D`` reads unit vectors). ``D`` lives on
    ``device`` (:func:`~xner_lib.device.to_device`) and computes in float32: the training loop calls it outside
    autocast."""

    def __init__(self, config: AdversarialConfig, dim: int, seed: int, device: str | torch.device = "cpu") -> None:
        self.config = config
        self.discriminator = to_device(Discriminator(dim, config.align_config()), device)
        self.optimizer = torch.optim.SGD(self.discriminator.parameters(), lr=config.dis_lr)
        self.generator = torch.Generator().manual_seed(seed)

    def discriminator_step(self, x: Tensor, is_target: Tensor) -> dict[str, float]:
        """``dis_steps`` SGD steps of ``D`` on ``x`` (detached: the tagger is not touched), eqs 4-5. Returns
        the last loss and ``D``'s accuracy on the batch before the steps (>0.5 means "Chinese")."""
        x = x.detach()
        self.discriminator.train().requires_grad_(True)
        loss = torch.tensor(0.0)
        accuracy = 0.0
        for k in range(self.config.dis_steps):
            preds = self.discriminator(x)
            if k == 0:
                accuracy = float(((preds > 0.5) == is_target).float().mean())
            loss = discriminator_loss(preds, is_target, self.config.dis_smooth)
            if not torch.isfinite(loss):
                raise FloatingPointError("discriminator loss is not finite")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return {"dis_loss": float(loss.detach()), "dis_accuracy": accuracy}

    def generator_loss(self, x: Tensor, is_target: Tensor) -> Tensor:
        """The generator loss of eqs 6-7 (flipped smoothed labels) on ``x``, ``D`` in eval mode; its gradient
        goes to whatever made ``x`` (``U``, the encoder), never to ``D``."""
        self.discriminator.eval().requires_grad_(False)
        return mapping_loss(self.discriminator(x), is_target, self.config.dis_smooth)
