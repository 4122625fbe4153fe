"""What a tagger may predict where (DESIGN.md, Data; docs/method.md, "Decoding"): the target's label set and
links.

* ``target_labels``: a Chinese corpus is decoded over the labels its gold can hold (``labels.TARGET_TYPES``:
  PER, LOC, ORG), so a CoNLL-trained CRF cannot spend a span on MISC, which the scorer would count as O.
  The label set is known before any Chinese text is seen; no Chinese label is used.
* ``links``: a unit holding a link character (:mod:`xner_lib.data.links`) is decoded as O, in every corpus.

Both act on the CRF's emissions before Viterbi (:meth:`~xner_lib.model.BiLstmCrfHead.crf_decode`), so the
rest of the sentence is decoded consistently around them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .data.labels import TARGET_TYPES


@dataclass(frozen=True)
class DecodeConfig:
    """Decoding constraints (profiles: keys prefixed ``decode_``)."""

    target_labels: bool = True
    links: bool = True


def allowed_labels(labels: Sequence[str], fmt: str, target_labels: bool) -> Tensor:
    """Bool ``[L]``: the labels a model may predict on a corpus of format ``fmt``."""
    if fmt not in TARGET_TYPES:
        raise ValueError(f"unknown corpus format {fmt!r}; expected one of {', '.join(TARGET_TYPES)}")
    types = TARGET_TYPES[fmt] if target_labels else None
    return torch.tensor([x == "O" or types is None or x[2:] in types for x in labels])


def allowed_matrix(labels: Sequence[str], fmt: str, config: DecodeConfig,
                   unit_spans: Sequence[Sequence[tuple[int, int]]], link_tokens: Sequence[Sequence[bool]] | None,
                   n_units: int) -> Tensor:
    """Bool ``[B, n_units, L]`` for a batch: the target's labels everywhere, and only O on a unit that
    holds a link token (``link_tokens[b][t]``) when ``config.links``. Padding positions allow every label."""
    row = allowed_labels(labels, fmt, config.target_labels)
    out = row.expand(len(unit_spans), n_units, len(labels)).clone()
    if config.links and link_tokens is not None:
        o_only = torch.tensor([x == "O" for x in labels])
        for b, (spans, links) in enumerate(zip(unit_spans, link_tokens, strict=True)):
            for u, (a, e) in enumerate(spans):
                if any(links[a:e]):
                    out[b, u] = o_only
    return out


def entities_in_links(preds: Sequence[Sequence[str]], link_tokens: Sequence[Sequence[bool]]) -> int:
    """Predicted entities (strict IOB2 chunks) with a token inside a link: what the link rule removes when it
    is on. ``link_tokens`` may be empty (no links known): 0."""
    if not link_tokens:
        return 0
    n = 0
    for tags, links in zip(preds, link_tokens, strict=True):
        t = 0
        while t < len(tags):
            if tags[t].startswith("B-"):
                e = t + 1
                while e < len(tags) and tags[e] == f"I-{tags[t][2:]}":
                    e += 1
                n += any(links[t:e])
                t = e
            else:
                t += 1
    return n
