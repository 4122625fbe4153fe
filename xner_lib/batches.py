"""Batches: a corpus encoded into units once, label ids per unit, and length-bucketed batches.

:func:`prepare` turns a read :class:`~xner_lib.data.Dataset` into a :class:`Prepared` (unit encodings from
:mod:`~xner_lib.units`, link tokens from :mod:`~xner_lib.data.links`, and, for a frozen encoder, its cached
features from :mod:`~xner_lib.features`). The training loop (:mod:`~xner_lib.train`) draws batches of
similar length from it (:func:`length_batches`); :func:`label_ids` maps token tags onto units. A
:class:`Prepared` may also carry, per sentence, what a frozen teacher computed for it (``teacher``: the
reverse-attention transfer of section 3.2, :mod:`~xner_lib.layers`).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .data import Dataset
from .data.labels import MODEL_TYPES
from .data.links import link_mask
from .encoders import Encoder
from .features import cached_unit_features
from .units import EncodedSentence, UnitTagCounts, encode_sentences, unit_tags


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
    features when the tagger is frozen. ``zh_units``: the Chinese unit scheme (:mod:`~xner_lib.units`).
    ``teacher``: per sentence, the ``[W_i, D_t]`` features a frozen English teacher computed on the
    sentence's English rendering (the transfer's input, :func:`~xner_lib.tagger.teacher_features`)."""

    dataset: Dataset
    encoded: list[EncodedSentence]
    cached: list[Tensor] | None = None
    links: list[list[bool]] | None = None
    zh_units: str = "token"
    teacher: list[Tensor] | None = None

    def batch_teacher(self, idx: Sequence[int]) -> tuple[Tensor, Tensor] | None:
        """The teacher features of sentences ``idx``, padded: ``([B, W, D_t], mask [B, W])``; None without."""
        if self.teacher is None:
            return None
        return pad_features([self.teacher[i] for i in idx])


def prepare(dataset: Dataset, encoder: Encoder, *, frozen: bool, cache_dir: str | os.PathLike[str] | None = None,
            zh_units: str = "token") -> Prepared:
    """Encode ``dataset`` into units, find its link tokens (and, frozen, read or compute its cached features)."""
    encoded = encode_sentences(encoder.tokenizer, dataset.sentences, dataset.language, zh_units=zh_units)
    cached = cached_unit_features(encoder, dataset, cache_dir=cache_dir, zh_units=zh_units) if frozen else None
    links = [link_mask(s.tokens, dataset.language) for s in dataset.sentences]
    return Prepared(dataset, encoded, cached, links, zh_units)

