"""English and Chinese static word vectors in one aligned space, looked up per token, and clustered (Table 3).

Table 3's static rows (the feature CRF, :mod:`~xner_lib.feature_crf`; the static-vector BiLSTM-CRF,
:mod:`~xner_lib.static_tagger`) read notebook 02's spaces instead of the contextual encoder:

* the vectors are 02's (:mod:`~xner_lib.vectors`, :func:`build_static_vectors`: the mean contextual vector of
  each word type, English from CoNLL-2003 train lower-cased, Chinese from the ``jieba`` words and characters of
  unlabelled WeiboNER train and People's Daily dev, the same counts and caps);
* English rows are preprocessed as 02 preprocessed them (``renorm,center,renorm`` with 02's saved
  ``source_mean``) and mapped by 02's ``U`` (eq. 2, ``mapping.npy``); Chinese rows are preprocessed the same way
  with their own mean (as 02 did; 02 does not save it, so it is recomputed from the same vocabulary). Both are
  then unit rows of one space (:class:`AlignedSpace`).

A token's vector (:meth:`AlignedSpace.lookup`): an English word's lower-cased type; a Chinese character takes the
vector of the ``jieba`` word that contains it (``zh_lookup="word"``, the unit 02 aligned with English words),
falling back to the character's own vector when that word is not in the vocabulary, or always its own
(``zh_lookup="char"``). A token with no vector gets row ``-1`` (a zero vector, cluster ``unk``): counted, never
dropped (:class:`Lookup`).

Clusters (:func:`spherical_kmeans`, :meth:`AlignedSpace.clusters`): k-means on cosine over the aligned rows,
seeded. ``fit_on="en"`` (default) fits the centroids on mapped English rows and assigns every Chinese row to its
nearest centroid, so every cluster id a Chinese token can take is one an English-trained model has weights for;
``fit_on="joint"`` fits on both languages' rows.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .encoders import Encoder
from .lexicon import normalize_embeddings, unit_rows
from .vectors import StaticVectors, merge, occurrence_vectors, segment_chinese, type_vectors

#: how a Chinese character finds its vector (module docstring)
ZH_LOOKUPS: tuple[str, ...] = ("word", "char")
#: bump when the code that makes a space's vectors from its inputs changes (:func:`build_static_vectors`,
#: :func:`aligned_space`, the type vectors and preprocessing they call): it keys Table 3's static rows
STATIC_SPACE_VERSION = "static-space-v1"
#: where the cluster centroids are fitted (module docstring)
CLUSTER_FITS: tuple[str, ...] = ("en", "joint")


@dataclass(frozen=True)
class StaticVectorConfig:
    """How the static spaces are built and read. Defaults are the cpu profile's notebook 02 settings
    (``vec_min_count``, ``vec_max_types``, ``vec_lowercase_en``, ``align_normalize``), so the English rows are the
    ones 02's ``U`` and ``source_mean`` were learnt on."""

    min_count: int = 3
    max_types: int | None = 20000
    lowercase_en: bool = True
    normalize: str = "renorm,center,renorm"
    zh_lookup: str = "word"

    def __post_init__(self) -> None:
        if self.zh_lookup not in ZH_LOOKUPS:
            raise ValueError(f"zh_lookup must be one of {ZH_LOOKUPS}, got {self.zh_lookup!r}")
        if self.min_count < 1 or (self.max_types is not None and self.max_types < 1):
            raise ValueError(f"min_count and max_types must be >= 1, got {self.min_count}, {self.max_types}")


@dataclass
class Lookup:
    """Where each token of some sentences finds its vector.

    ``rows[k][t]``: the row of token ``t`` of sentence ``k`` in its language's matrix, ``-1`` when it has none.
    ``spans[k][t]``: the ``[start, end)`` tokens of the unit whose vector it took (its English word; its ``jieba``
    word, or the character itself when the character's own vector was used or none was found).
    ``counts``: ``tokens``, ``unknown`` (row ``-1``) and, for Chinese, ``word`` / ``char`` (which vector a character
    took)."""

    language: str
    rows: list[list[int]]
    spans: list[list[tuple[int, int]]]
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def unknown_rate(self) -> float:
        return self.counts["unknown"] / self.counts["tokens"] if self.counts["tokens"] else 0.0


@dataclass
class Clusters:
    """Cluster ids of every row of an :class:`AlignedSpace` for one k-means (``k`` centroids, unit rows)."""

    k: int
    centroids: Tensor  # [k, H]
    en: Tensor  # [N_en] long
    zh: Tensor  # [N_zh] long

    def ids(self, language: str) -> Tensor:
        return self.en if language == "en" else self.zh

    def shared(self) -> dict[str, float]:
        """How far a cluster id means the same thing in both languages: the share of clusters holding rows of
        both, and the share of Chinese rows whose cluster holds English rows."""
        en, zh = set(self.en.tolist()), set(self.zh.tolist())
        in_en = float(np.isin(self.zh.numpy(), list(en)).mean()) if len(self.zh) else 0.0
        return {"k": self.k, "clusters_used": len(en | zh), "clusters_both": len(en & zh),
                "zh_rows_in_english_clusters": in_en}


def _kmeans_run(x: Tensor, k: int, g: torch.Generator, iterations: int) -> tuple[Tensor, float]:
    """One k-means++-seeded run of Lloyd steps on unit rows ``x``: centroids and the summed cosine of every row
    to its centroid."""
    n = x.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=g))]
    dist = (1.0 - x @ x[chosen[0]]).clamp_min(0.0)
    for _ in range(1, k):
        weights = dist ** 2
        total = float(weights.sum())
        nxt = (int(torch.multinomial(weights / total, 1, generator=g)) if total > 0
               else int(torch.randint(n, (1,), generator=g)))
        chosen.append(nxt)
        dist = torch.minimum(dist, (1.0 - x @ x[nxt]).clamp_min(0.0))
    centroids = x[chosen].clone()
    assign = torch.full((n,), -1, dtype=torch.long)
    for _ in range(iterations):
        new = (x @ centroids.T).argmax(dim=1)
        if torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        filled = torch.bincount(assign, minlength=k) > 0
        centroids[filled] = unit_rows(sums[filled])
    return centroids, float((x @ centroids.T).max(dim=1).values.sum())


def spherical_kmeans(x: Tensor, k: int, *, seed: int = 0, iterations: int = 50, restarts: int = 3) -> Tensor:
    """Centroids ``[k', H]`` (unit rows, ``k' = min(k, N)``) of k-means on cosine over the rows of ``x [N, H]``:
    ``restarts`` runs, each k-means++ seeding then Lloyd steps (assign each row to its most similar centroid,
    centroid = normalised mean of its rows; an empty cluster keeps its centroid) until the assignment stops
    changing or ``iterations`` run out; the run of the highest summed cosine is kept. One
    ``torch.Generator(seed)`` drives every run: deterministic for a seed."""
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty [N, H] matrix, got shape {tuple(x.shape)}")
    if k < 1 or restarts < 1:
        raise ValueError(f"k and restarts must be >= 1, got {k}, {restarts}")
    x = unit_rows(x.float())
    g = torch.Generator().manual_seed(seed)
    runs = [_kmeans_run(x, min(k, x.shape[0]), g, iterations) for _ in range(restarts)]
    return max(runs, key=lambda r: r[1])[0]


def assign_clusters(x: Tensor, centroids: Tensor) -> Tensor:
    """The most similar centroid (cosine) of each row of ``x [N, H]``: ``[N]`` long."""
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long)
    return (unit_rows(x.float()) @ centroids.T).argmax(dim=1)


def word_spans(tokens: Sequence[str], words: Sequence[str]) -> list[tuple[int, int]]:
    """Per token, the ``[start, end)`` tokens of the ``jieba`` word holding its first character (``words``
    concatenate to the tokens' text; a token of several characters that a word boundary splits joins the word
    of its first character)."""
    char_word = [w for w, word in enumerate(words) for _ in word]
    if len(char_word) != sum(len(t) for t in tokens):
        raise ValueError(f"words cover {len(char_word)} characters, tokens {sum(len(t) for t in tokens)}")
    word_of_token: list[int] = []
    start_char = 0
    for tok in tokens:
        word_of_token.append(char_word[start_char])
        start_char += len(tok)
    spans: list[tuple[int, int]] = []
    t = 0
    while t < len(tokens):
        e = t + 1
        while e < len(tokens) and word_of_token[e] == word_of_token[t]:
            e += 1
        spans += [(t, e)] * (e - t)
        t = e
    return spans


@dataclass
class AlignedSpace:
    """English and Chinese static vectors in one space (module docstring): ``en_vectors [N_en, H]`` preprocessed
    and mapped by ``U``, ``zh_vectors [N_zh, H]`` preprocessed; unit rows. ``lowercase_en``: English words are
    looked up lower-cased; ``zh_lookup``: how a Chinese character finds its vector."""

    en_words: list[str]
    en_vectors: Tensor
    zh_words: list[str]
    zh_vectors: Tensor
    lowercase_en: bool = True
    zh_lookup: str = "word"
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.en_vectors.shape[0] != len(self.en_words) or self.zh_vectors.shape[0] != len(self.zh_words):
            raise ValueError(f"{len(self.en_words)} English words for {tuple(self.en_vectors.shape)} vectors, "
                             f"{len(self.zh_words)} Chinese words for {tuple(self.zh_vectors.shape)}")
        if self.en_vectors.shape[1] != self.zh_vectors.shape[1]:
            raise ValueError(f"English vectors have {self.en_vectors.shape[1]} dimensions, Chinese "
                             f"{self.zh_vectors.shape[1]}: not one space")
        if self.zh_lookup not in ZH_LOOKUPS:
            raise ValueError(f"zh_lookup must be one of {ZH_LOOKUPS}, got {self.zh_lookup!r}")
        self._index = {"en": {w: i for i, w in enumerate(self.en_words)},
                       "zh": {w: i for i, w in enumerate(self.zh_words)}}

    @property
    def dim(self) -> int:
        return int(self.en_vectors.shape[1])

    def matrix(self, language: str) -> Tensor:
        return self.en_vectors if language == "en" else self.zh_vectors

    def identity(self) -> str:
        """sha256 over the words, the vectors and the lookup settings (for cache and run keys)."""
        h = hashlib.sha256(f"{self.lowercase_en} {self.zh_lookup}".encode())
        for words, vecs in ((self.en_words, self.en_vectors), (self.zh_words, self.zh_vectors)):
            h.update("\n".join(words).encode())
            h.update(vecs.float().contiguous().numpy().tobytes())
        return h.hexdigest()

    def key(self) -> str:
        """What keys a run read through this space: ``source``, the sha256 of what it was built from
        (:func:`space_source`), with the lookup settings, when it has one, else :meth:`identity`. The vectors
        themselves are a float computation whose last bits differ from one CPU to another, so keying by them
        reran every static row on every new machine; their :meth:`identity` is recorded beside."""
        if self.source is None:
            return self.identity()
        return hashlib.sha256(f"{self.source} {self.lowercase_en} {self.zh_lookup}".encode()).hexdigest()

    def lookup(self, sentences: Sequence[Sequence[str]], language: str) -> Lookup:
        """Where each token finds its vector (module docstring); one row per token, ``-1`` counted."""
        if language not in ("en", "zh"):
            raise ValueError(f"language must be 'en' or 'zh', got {language!r}")
        index = self._index[language]
        counts: Counter[str] = Counter()
        rows: list[list[int]] = []
        spans: list[list[tuple[int, int]]] = []
        words = segment_chinese(sentences) if language == "zh" and self.zh_lookup == "word" else None
        for k, toks in enumerate(sentences):
            r: list[int] = []
            sp: list[tuple[int, int]] = []
            if language == "en":
                for t, tok in enumerate(toks):
                    r.append(index.get(tok.lower() if self.lowercase_en else tok, -1))
                    sp.append((t, t + 1))
            else:
                wspans = word_spans(toks, words[k]) if words is not None else [(t, t + 1) for t in range(len(toks))]
                for t, tok in enumerate(toks):
                    a, e = wspans[t]
                    row = index.get("".join(toks[a:e]), -1) if words is not None else -1
                    if row >= 0:
                        counts["word"] += 1
                    else:
                        row, (a, e) = index.get(tok, -1), (t, t + 1)
                        counts["char"] += row >= 0
                    r.append(row)
                    sp.append((a, e))
            counts["tokens"] += len(toks)
            counts["unknown"] += sum(x < 0 for x in r)
            rows.append(r)
            spans.append(sp)
        return Lookup(language, rows, spans, counts)

    def vectors(self, lookup: Lookup) -> list[Tensor]:
        """One float32 ``[n_tokens, H]`` tensor per sentence: each token's row, zeros where it has none."""
        matrix = self.matrix(lookup.language)
        padded = torch.cat([matrix.float(), torch.zeros(1, self.dim)])  # row -1 -> the zero row
        return [padded[torch.tensor(r, dtype=torch.long)] if r else torch.zeros(0, self.dim) for r in lookup.rows]

    def clusters(self, k: int, *, seed: int = 0, fit_on: str = "en", iterations: int = 50,
                 restarts: int = 3) -> Clusters:
        """k-means over the aligned rows (:func:`spherical_kmeans`), centroids fitted on ``fit_on`` (``en``:
        mapped English rows; ``joint``: both languages), every row of both languages assigned to its nearest."""
        if fit_on not in CLUSTER_FITS:
            raise ValueError(f"fit_on must be one of {CLUSTER_FITS}, got {fit_on!r}")
        fit = self.en_vectors if fit_on == "en" else torch.cat([self.en_vectors, self.zh_vectors])
        centroids = spherical_kmeans(fit, k, seed=seed, iterations=iterations, restarts=restarts)
        return Clusters(int(centroids.shape[0]), centroids, assign_clusters(self.en_vectors, centroids),
                        assign_clusters(self.zh_vectors, centroids))


def aligned_space(en: StaticVectors, zh: StaticVectors, mapping: Tensor, *, source_mean: Tensor | None = None,
                  normalize: str = "renorm,center,renorm", lowercase_en: bool = True,
                  zh_lookup: str = "word") -> AlignedSpace:
    """Preprocess and map 02's spaces into one: English rows ``normalize``-d with ``source_mean`` (02's; None:
    their own) and mapped by ``mapping`` (``U [H, H]``, eq. 2); Chinese rows ``normalize``-d with their own mean."""
    h = en.vectors.shape[1]
    if tuple(mapping.shape) != (h, h) or zh.vectors.shape[1] != h:
        raise ValueError(f"U must be [H, H] = {(h, h)} for English vectors of {h} dimensions and Chinese of "
                         f"{zh.vectors.shape[1]}, got {tuple(mapping.shape)}")
    src, _ = normalize_embeddings(en.vectors.float(), normalize, mean=source_mean)
    tgt, _ = normalize_embeddings(zh.vectors.float(), normalize)
    return AlignedSpace(list(en.words), src @ mapping.float(), list(zh.words), tgt, lowercase_en, zh_lookup)


def build_static_vectors(encoder: Encoder, english: Sequence[Sequence[str]], chinese: Sequence[Sequence[str]],
                         config: StaticVectorConfig | None = None, *, cache_dir: str | os.PathLike[str] | None = None,
                         progress: bool = True) -> tuple[StaticVectors, StaticVectors]:
    """Notebook 02's static spaces: English types of ``english`` (lower-cased per ``config``); Chinese ``jieba``
    words of ``chinese`` followed by the characters not already words (:func:`~xner_lib.vectors.merge`). Occurrence
    vectors come through the feature cache."""
    config = config or StaticVectorConfig()
    kw = {"min_count": config.min_count, "max_types": config.max_types}
    en_tokens = [list(s) for s in english]
    en = type_vectors(en_tokens, occurrence_vectors(encoder, en_tokens, cache_dir, progress),
                      lowercase=config.lowercase_en, **kw)
    zh_text = [list(s) for s in chinese]
    zh_words = segment_chinese(zh_text)
    zh_w = type_vectors(zh_words, occurrence_vectors(encoder, zh_words, cache_dir, progress), **kw)
    zh_c = type_vectors(zh_text, occurrence_vectors(encoder, zh_text, cache_dir, progress), **kw)
    return en, merge(zh_w, zh_c)


def load_alignment(directory: str | os.PathLike[str]) -> tuple[Tensor, Tensor | None]:
    """02's ``U`` (``mapping.npy``) and English mean (``source_mean.npy``, None when absent) from its
    ``alignment/`` directory. Raises ``FileNotFoundError`` naming the file and the notebook that writes it."""
    directory = Path(directory)
    path = directory / "mapping.npy"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no map U; notebook 02 (02_alignment.ipynb) writes it")
    mean_path = directory / "source_mean.npy"
    mean = torch.from_numpy(np.load(mean_path)).float() if mean_path.is_file() else None
    return torch.from_numpy(np.load(path)).float(), mean


def build_aligned_space(encoder: Encoder, english: Sequence[Sequence[str]], chinese: Sequence[Sequence[str]],
                        alignment_dir: str | os.PathLike[str], config: StaticVectorConfig | None = None, *,
                        cache_dir: str | os.PathLike[str] | None = None, progress: bool = True) -> AlignedSpace:
    """:func:`build_static_vectors` then :func:`aligned_space` with 02's saved map (:func:`load_alignment`).
    ``english``: CoNLL-2003 train tokens; ``chinese``: unlabelled Chinese (02: WeiboNER train, People's Daily dev)."""
    config = config or StaticVectorConfig()
    mapping, mean = load_alignment(alignment_dir)
    en, zh = build_static_vectors(encoder, english, chinese, config, cache_dir=cache_dir, progress=progress)
    space = aligned_space(en, zh, mapping, source_mean=mean, normalize=config.normalize,
                          lowercase_en=config.lowercase_en, zh_lookup=config.zh_lookup)
    return replace(space, source=space_source(encoder, english, chinese, alignment_dir, config))


def space_source(encoder: Encoder, english: Sequence[Sequence[str]], chinese: Sequence[Sequence[str]],
                 alignment_dir: str | os.PathLike[str], config: StaticVectorConfig) -> str:
    """sha256 of what :func:`build_aligned_space` builds a space from: the encoder (identity of its weights and
    tokenizer, and window; not its name, which may be a clone's path), the config, the code that makes the
    vectors (:data:`STATIC_SPACE_VERSION`; the feature cache's format and unit rule), ``jieba``'s version (it
    segments the Chinese), the English and Chinese tokens, and the sha256 of 02's ``mapping.npy`` and
    ``source_mean.npy`` (``absent`` for a missing mean)."""
    from importlib.metadata import version

    from .data.sources import sha256_cached
    from .features import CACHE_FORMAT
    from .units import UNIT_RULE

    head = {"encoder": [encoder.identity, encoder.max_length], "config": asdict(config), "jieba": version("jieba"),
            "code": [STATIC_SPACE_VERSION, CACHE_FORMAT, UNIT_RULE]}
    h = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    for sentences in (english, chinese):
        h.update(json.dumps([list(s) for s in sentences], ensure_ascii=False).encode())
    for name in ("mapping.npy", "source_mean.npy"):
        path = Path(alignment_dir) / name
        h.update(f"{name}:{sha256_cached(path) if path.is_file() else 'absent'}\n".encode())
    return h.hexdigest()
