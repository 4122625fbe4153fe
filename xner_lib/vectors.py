"""Static word vectors from a contextual encoder: the monolingual spaces V_s and V_t of section 3.3.

The paper aligns "pre-trained monolingual word vectors" (eq. 2). We build them from the encoder itself:
a word type's vector is the mean of its contextual vectors (first sub-word, last layer, frozen encoder)
over its occurrences in a corpus, with the number of occurrences kept.

* English types: the words of CoNLL-2003 train (lower-cased by default).
* Chinese types: the words of a ``jieba`` segmentation of unlabelled Chinese text (WeiboNER train and
  People's Daily dev: their labels are never read), plus every single character. Words are fed to the
  encoder as pre-split words, characters as single-character words, so each occurrence has exactly one
  first sub-word (a bare SentencePiece ``▁`` is skipped, see :mod:`xner_lib.units`).

Occurrence vectors come through the content-addressed feature cache, so a rerun costs nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .encoders import Encoder
from .features import cached_unit_features


@dataclass
class StaticVectors:
    """Word types with one vector each (``vectors[i]`` is the mean over ``counts[i]`` occurrences)."""

    words: list[str]
    vectors: Tensor  # [N, H] float32
    counts: list[int]

    def __post_init__(self) -> None:
        if self.vectors.shape[0] != len(self.words) or len(self.counts) != len(self.words):
            raise ValueError(f"{len(self.words)} words, {len(self.counts)} counts, vectors {tuple(self.vectors.shape)}")

    def __len__(self) -> int:
        return len(self.words)

    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    def subset(self, words: Sequence[str]) -> StaticVectors:
        """The rows of ``words`` (each must be present), in that order."""
        idx = self.index()
        rows = [idx[w] for w in words]
        return StaticVectors(list(words), self.vectors[rows], [self.counts[i] for i in rows])


def segment_chinese(sentences: Sequence[Sequence[str]]) -> list[list[str]]:
    """``jieba`` words of each character sequence (its bundled dictionary, HMM on); the words of a sentence
    concatenate back to its characters exactly."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    out = []
    for chars in sentences:
        text = "".join(chars)
        words = [w for w in jieba.lcut(text) if w]
        assert "".join(words) == text, "jieba changed the text"
        out.append(words)
    return out


def occurrence_vectors(encoder: Encoder, token_lists: Sequence[Sequence[str]],
                       cache_dir: str | os.PathLike[str] | None = None, progress: bool = True) -> list[Tensor]:
    """One float16 [len(tokens), H] tensor per sentence: each token's first-sub-word vector in context
    (tokens fed as pre-split words; cached)."""
    feats = cached_unit_features(encoder, [list(t) for t in token_lists], "en", cache_dir, progress=progress)
    for k, (f, toks) in enumerate(zip(feats, token_lists, strict=True)):
        if f.shape[0] != len(toks):
            raise AssertionError(f"sentence {k}: {f.shape[0]} vectors for {len(toks)} words")
    return feats


def type_vectors(token_lists: Sequence[Sequence[str]], feats: Sequence[Tensor], *, min_count: int = 1,
                 max_types: int | None = None, lowercase: bool = False, part: int | None = None) -> StaticVectors:
    """Average occurrence vectors per word type.

    Types seen fewer than ``min_count`` times are left out; the ``max_types`` most frequent are kept
    (ties broken by first occurrence). ``part`` 0 or 1 averages only the even or odd occurrences of each
    type (its counts then count those): two independent estimates of the same vocabulary, the basis of
    the rotation-recovery check.
    """
    if part not in (None, 0, 1):
        raise ValueError(f"part must be None, 0 or 1, got {part}")
    hidden = feats[0].shape[1]
    sums: dict[str, Tensor] = {}
    seen: dict[str, int] = {}
    used: dict[str, int] = {}
    for toks, f in zip(token_lists, feats, strict=True):
        for tok, vec in zip(toks, f, strict=True):
            w = tok.lower() if lowercase else tok
            k = seen.get(w, 0)
            seen[w] = k + 1
            if part is not None and k % 2 != part:
                continue
            if w not in sums:
                sums[w] = torch.zeros(hidden, dtype=torch.float64)
            sums[w] += vec.double()
            used[w] = used.get(w, 0) + 1
    order = [w for w in seen if seen[w] >= min_count and used.get(w, 0) > 0 and w.strip()]
    order.sort(key=lambda w: -seen[w])  # stable: first occurrence breaks ties
    if max_types is not None:
        order = order[:max_types]
    vectors = torch.stack([sums[w] / used[w] for w in order]).float() if order else torch.zeros(0, hidden)
    return StaticVectors(order, vectors, [used[w] for w in order])


def merge(primary: StaticVectors, extra: StaticVectors) -> StaticVectors:
    """``primary`` followed by the types of ``extra`` it lacks (e.g. Chinese words, then characters)."""
    have = set(primary.words)
    keep = [i for i, w in enumerate(extra.words) if w not in have]
    return StaticVectors(primary.words + [extra.words[i] for i in keep],
                         torch.cat([primary.vectors, extra.vectors[keep]]),
                         primary.counts + [extra.counts[i] for i in keep])
