"""Table 3's CRF row, rebuilt zero-shot: a linear-chain CRF on language-independent features (``sklearn-crfsuite``).

The paper's first row cites Peng and Dredze (2015), a CRF trained on Chinese; here, as every Table 3 row of this
project, the CRF is trained on English CoNLL-2003 train only and tags Chinese per character. Its features must
therefore mean the same in both languages (issue 12). Per token (an English word, a Chinese character), in groups
(``FeatureCrfConfig.groups``, all on by default; ``bias`` always):

* ``shape``: the token's characters as classes (``X`` upper, ``x`` lower, ``d`` digit, ``L`` a letter without case
  such as a Chinese character, ``p`` punctuation or symbol, ``o`` other), repeats collapsed, at most 6; and the
  shapes of the ``window`` tokens on each side;
* ``length``: the length in characters (bucketed) of the unit whose static vector the token took
  (:meth:`~xner_lib.static_space.AlignedSpace.lookup`: the English word; the ``jieba`` word holding a Chinese
  character, or the character), so a Chinese character reads the length of its word as an English word does;
* ``position`` in the sentence: ``first``, ``last``, ``relpos`` (quarter of the sentence);
* ``digit``: every character a digit, ``hasdigit``, ``punct`` (every character punctuation or a symbol);
* ``clusters``: cluster ids of the tokens' aligned static vectors
  (:meth:`~xner_lib.static_space.AlignedSpace.clusters`) at each granularity of ``FeatureCrfConfig.clusters``,
  for the token and the ``window`` tokens on each side (``unk``: no vector; ``pad``: beyond the sentence). A
  cluster id is the same centroid in both languages. Neighbours are tokens, not words: the characters of one
  Chinese word share its cluster, so a character after another of the same word looks like the second word of an
  English name whose words share a cluster.

Training is crfsuite's L-BFGS with elastic-net regularisation (``c1``, ``c2``). Decoding is the project's
(:mod:`~xner_lib.decoding`): the learnt weights are read back into emission scores and a transition matrix
(crfsuite's first-order CRF has no start or end scores), and :func:`~xner_lib.model.viterbi_decode` runs with
the IOB2 constraints, the target's label set (a Chinese corpus is decoded over PER, LOC, ORG: MISC forbidden) and
links as O, exactly as the neural rows decode. Scores come from :func:`~xner_lib.evaluate.score_dataset`.
"""

from __future__ import annotations

import time
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import sklearn_crfsuite
import torch
from torch import Tensor

from .data import Dataset
from .data.links import link_mask
from .decoding import DecodeConfig, allowed_matrix
from .model import bio_allowed_transitions, viterbi_decode
from .static_space import CLUSTER_FITS, AlignedSpace, Clusters, Lookup

_LENGTH_BUCKETS = ((1, "1"), (2, "2"), (3, "3"), (4, "4"), (6, "5-6"), (9, "7-9"))
#: the feature groups (module docstring); ``bias`` is always on
FEATURE_GROUPS: tuple[str, ...] = ("shape", "length", "position", "digit", "clusters")


@dataclass
class FeatureCrfConfig:
    """Settings of the feature CRF.

    ``clusters``: k of each k-means over the aligned space (one cluster feature per k); ``cluster_fit``: where
    the centroids are fitted (``en`` or ``joint``, :meth:`~xner_lib.static_space.AlignedSpace.clusters`), with
    ``kmeans_restarts`` seeded runs of at most ``kmeans_iterations`` Lloyd steps each;
    ``window``: neighbouring tokens whose cluster and shape are features; ``groups``: the feature groups on
    (module docstring). ``c1``, ``c2``, ``max_iterations``,
    ``min_freq``: crfsuite's L-BFGS training (L1, L2, iterations, minimum attribute frequency). ``seed`` seeds
    the k-means (crfsuite's L-BFGS has no randomness)."""

    clusters: tuple[int, ...] = (64, 256)
    cluster_fit: str = "en"
    kmeans_iterations: int = 50
    kmeans_restarts: int = 3
    window: int = 1
    groups: tuple[str, ...] = FEATURE_GROUPS
    c1: float = 0.1
    c2: float = 0.1
    max_iterations: int = 100
    min_freq: int = 0
    seed: int = 1

    def __post_init__(self) -> None:
        self.clusters = tuple(int(k) for k in self.clusters)  # a YAML list becomes a tuple
        self.groups = tuple(self.groups)
        unknown = sorted(set(self.groups) - set(FEATURE_GROUPS))
        if unknown:
            raise ValueError(f"unknown feature groups {unknown}; expected some of {FEATURE_GROUPS}")
        if any(k < 1 for k in self.clusters):
            raise ValueError(f"every cluster count must be >= 1, got {self.clusters}")
        if self.cluster_fit not in CLUSTER_FITS:
            raise ValueError(f"cluster_fit must be one of {CLUSTER_FITS}, got {self.cluster_fit!r}")
        if self.window < 0 or self.max_iterations < 1 or self.c1 < 0 or self.c2 < 0:
            raise ValueError(f"window >= 0, max_iterations >= 1, c1 >= 0 and c2 >= 0 are required: {self}")


@dataclass
class FeatureCrf:
    """A trained feature CRF: its config, the aligned space and clusters its features read, the crfsuite model,
    and the weights read back for decoding: ``weights [A, L]`` (attribute x label), ``transitions [L, L]`` (from
    row label to column label), ``labels`` (crfsuite's label order), ``attributes`` (name -> row)."""

    config: FeatureCrfConfig
    space: AlignedSpace
    clusters: list[Clusters]
    crf: sklearn_crfsuite.CRF
    labels: tuple[str, ...]
    attributes: dict[str, int]
    weights: Tensor
    transitions: Tensor
    seconds: float = 0.0
    train_counts: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        """What a run records: config, training seconds, feature and label counts, the training corpus's lookup
        counts, and how far each clustering is shared by the two languages."""
        return {"config": asdict(self.config), "seconds": self.seconds, "labels": list(self.labels),
                "attributes": len(self.attributes), "train_lookup": dict(self.train_counts),
                "clusters": [c.shared() for c in self.clusters]}


def char_class(c: str) -> str:
    """The shape class of one character (module docstring)."""
    if c.isupper():
        return "X"
    if c.islower():
        return "x"
    if c.isdigit():
        return "d"
    cat = unicodedata.category(c)
    if cat.startswith("L"):
        return "L"
    if cat[0] in "PS":
        return "p"
    return "o"


def shape(token: str, limit: int = 6) -> str:
    """The token's character classes with repeats collapsed, at most ``limit`` (``"Mr."`` -> ``"Xxp"``)."""
    out: list[str] = []
    for c in token:
        k = char_class(c)
        if not out or out[-1] != k:
            out.append(k)
    return "".join(out[:limit])


def _length(n: int) -> str:
    for top, name in _LENGTH_BUCKETS:
        if n <= top:
            return name
    return "10+"


def sentence_features(tokens: Sequence[str], rows: Sequence[int], spans: Sequence[tuple[int, int]],
                      cluster_ids: Sequence[Tensor], window: int,
                      groups: Sequence[str] = FEATURE_GROUPS) -> list[dict[str, float]]:
    """One crfsuite feature dict (attribute -> 1.0) per token (module docstring), from the feature ``groups``
    asked for (``bias`` always). ``rows``, ``spans``: the sentence's lookup
    (:class:`~xner_lib.static_space.Lookup`); ``cluster_ids``: per clustering, the id of every row of the
    sentence's language."""
    n = len(tokens)
    use = set(groups)
    clusters = [["unk" if row < 0 else str(int(ids[row])) for row in rows] for ids in cluster_ids]
    shapes = [shape(tok) for tok in tokens]
    out: list[dict[str, float]] = []
    for t, tok in enumerate(tokens):
        f = {"bias": 1.0}
        if "shape" in use:
            f[f"shape={shapes[t]}"] = 1.0
        if "length" in use:
            a, e = spans[t]
            f[f"len={_length(sum(len(x) for x in tokens[a:e]))}"] = 1.0
        if "position" in use:
            f[f"relpos={min(3, 4 * t // n)}"] = 1.0
            if t == 0:
                f["first"] = 1.0
            if t == n - 1:
                f["last"] = 1.0
        if "digit" in use:
            if tok.isdigit():
                f["digit"] = 1.0
            if any(c.isdigit() for c in tok):
                f["hasdigit"] = 1.0
            if tok and all(unicodedata.category(c)[0] in "PS" for c in tok):
                f["punct"] = 1.0
        for o in range(-window, window + 1):
            v = t + o
            inside = 0 <= v < n
            if "clusters" in use:
                for k, ids in enumerate(clusters):
                    f[f"c{k}[{o}]={ids[v] if inside else 'pad'}"] = 1.0
            if o and "shape" in use:
                f[f"shape[{o}]={shapes[v] if inside else 'pad'}"] = 1.0
        out.append(f)
    return out


def _features(space: AlignedSpace, clusters: Sequence[Clusters], sentences: Sequence[Sequence[str]], language: str,
              window: int, groups: Sequence[str]) -> tuple[list[list[dict[str, float]]], Lookup]:
    lookup = space.lookup(sentences, language)
    ids = [c.ids(language) for c in clusters]
    feats = [sentence_features(toks, r, sp, ids, window, groups)
             for toks, r, sp in zip(sentences, lookup.rows, lookup.spans, strict=True)]
    return feats, lookup


def features(model: FeatureCrf, sentences: Sequence[Sequence[str]], language: str) -> list[list[dict[str, float]]]:
    """The feature dicts of token lists in ``language`` (``en``/``zh``), as the model was trained on."""
    return _features(model.space, model.clusters, sentences, language, model.config.window, model.config.groups)[0]


def train_feature_crf(config: FeatureCrfConfig, space: AlignedSpace, train: Dataset) -> FeatureCrf:
    """Cluster the aligned space (seeded), build the features of ``train`` (CoNLL-2003 train, tags as read, MISC
    included) and train the CRF with crfsuite's L-BFGS. Deterministic for a config."""
    if train.language != "en":
        raise ValueError(f"the feature CRF trains on English CoNLL only, got {train.name}/{train.split}")
    start = time.perf_counter()
    clusters = [space.clusters(k, seed=config.seed + i, fit_on=config.cluster_fit, iterations=config.kmeans_iterations,
                               restarts=config.kmeans_restarts) for i, k in enumerate(config.clusters)]
    x, lookup = _features(space, clusters, [s.tokens for s in train.sentences], "en", config.window, config.groups)
    crf = sklearn_crfsuite.CRF(algorithm="lbfgs", c1=config.c1, c2=config.c2, max_iterations=config.max_iterations,
                               min_freq=config.min_freq, all_possible_transitions=True)
    crf.fit(x, [list(s.tags) for s in train.sentences])
    labels = tuple(crf.classes_)
    lab = {y: j for j, y in enumerate(labels)}
    attributes: dict[str, int] = {}
    for attr, _y in crf.state_features_:
        attributes.setdefault(attr, len(attributes))
    weights = torch.zeros(len(attributes), len(labels), dtype=torch.float64)
    for (attr, y), w in crf.state_features_.items():
        weights[attributes[attr], lab[y]] = w
    transitions = torch.zeros(len(labels), len(labels), dtype=torch.float64)
    for (a, b), w in crf.transition_features_.items():
        transitions[lab[a], lab[b]] = w
    return FeatureCrf(config, space, clusters, crf, labels, attributes, weights, transitions,
                      time.perf_counter() - start, lookup.counts)


def emissions(model: FeatureCrf, feats: Sequence[dict[str, float]]) -> Tensor:
    """Emission scores ``[T, L]`` of one sentence's feature dicts: the sum of each present attribute's weights
    times its value (an attribute unseen in training weighs nothing)."""
    tokens, rows, values = [], [], []
    for t, f in enumerate(feats):
        for attr, value in f.items():
            row = model.attributes.get(attr)
            if row is not None:
                tokens.append(t), rows.append(row), values.append(value)
    out = torch.zeros(len(feats), len(model.labels), dtype=torch.float64)
    if rows:
        contrib = model.weights[torch.tensor(rows)] * torch.tensor(values, dtype=torch.float64).unsqueeze(1)
        out.index_add_(0, torch.tensor(tokens), contrib)
    return out


def predict(model: FeatureCrf, dataset: Dataset, decode: DecodeConfig | None = None, *, constrained: bool = True,
            batch_size: int = 256) -> list[list[str]]:
    """One IOB2 tag per token of every sentence of ``dataset``, decoded as the project decodes
    (:class:`~xner_lib.decoding.DecodeConfig`, default: the target's label set and links as O) with the IOB2
    constraints (``constrained=False`` and ``DecodeConfig(False, False)``: crfsuite's own unconstrained argmax)."""
    decode = decode or DecodeConfig()
    sentences = [list(s.tokens) for s in dataset.sentences]
    feats = features(model, sentences, dataset.language)
    labels = model.labels
    n_labels = len(labels)
    start_ok, trans_ok = bio_allowed_transitions(labels)
    neg = torch.tensor(float("-inf"), dtype=torch.float64)
    zeros = torch.zeros(n_labels, dtype=torch.float64)
    start = torch.where(start_ok, zeros, neg) if constrained else zeros
    trans = torch.where(trans_ok, model.transitions, neg) if constrained else model.transitions
    out: list[list[str] | None] = [None] * len(sentences)
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    for b0 in range(0, len(order), batch_size):
        idx = order[b0:b0 + batch_size]
        length = max(len(sentences[i]) for i in idx)
        em = torch.zeros(len(idx), length, n_labels, dtype=torch.float64)
        mask = torch.zeros(len(idx), length, dtype=torch.bool)
        for r, i in enumerate(idx):
            em[r, : len(sentences[i])] = emissions(model, feats[i])
            mask[r, : len(sentences[i])] = True
        spans = [[(t, t + 1) for t in range(len(sentences[i]))] for i in idx]
        links = [link_mask(sentences[i], dataset.language) for i in idx]
        allowed = allowed_matrix(labels, dataset.format, decode, spans, links, length)
        em = em.masked_fill(~allowed, float("-inf"))
        for r, path in enumerate(viterbi_decode(em, mask, start, trans, zeros)):
            out[idx[r]] = [labels[k] for k in path]
    for i, (pred, toks) in enumerate(zip(out, sentences, strict=True)):
        assert pred is not None and len(pred) == len(toks), f"sentence {i}: prediction does not cover the tokens"
    return out  # type: ignore[return-value]
