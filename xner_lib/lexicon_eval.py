"""Word-translation evaluation of aligned spaces against a bilingual dictionary (MUSE ``evaluation/``).

Imports retrieval code only (:mod:`xner_lib.lexicon`), never training code.

Dictionary files hold one ``english chinese`` pair per line, separated by whitespace (MUSE's format);
blank lines are skipped. A line with another number of fields is an error reported as ``FILE:LINE``
(raised, or counted in a warning with ``on_error="warn"``). Pairs whose words are not in the
vocabularies are counted and reported, never dropped silently.

Public API
----------
``read_dictionary(path, on_error="raise") -> DictionaryFile``
    The pairs of a dictionary file and its bad lines.
``translation_precision(dictionary, src_words, src_emb, tgt_words, tgt_emb, ...) -> TranslationScores``
    precision@1/5/10 by cosine (``nn``) and CSLS retrieval; a query counts as correct when any of its
    gold translations is among the top k (MUSE).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from .data.corpus import DataFormatError
from .lexicon import Method, nearest_neighbours, unit_rows

PathLike = str | os.PathLike[str]


@dataclass
class DictionaryFile:
    """A bilingual dictionary read from ``path``: ``pairs`` in file order, ``bad_lines`` as ``FILE:LINE: why``."""

    path: Path
    pairs: list[tuple[str, str]]
    bad_lines: list[str] = field(default_factory=list)


@dataclass
class TranslationScores:
    """Result of :func:`translation_precision`.

    Attributes:
        precision: ``{method: {k: fraction in [0, 1]}}`` for methods ``nn`` and/or ``csls``.
        n_queries: distinct source words evaluated.
        n_pairs: dictionary pairs with both words in the vocabularies.
        n_missing: pairs skipped because a word is not in the vocabularies; ``missing_source`` and
            ``missing_target`` count the unknown words' pairs by side (a pair may count on both).
        n_bad_lines: malformed dictionary lines skipped (``on_error="warn"``).
    """

    precision: dict[str, dict[int, float]]
    n_queries: int
    n_pairs: int
    n_missing: int
    missing_source: int
    missing_target: int
    n_bad_lines: int = 0

    def as_rows(self) -> list[dict[str, float | int | str]]:
        """One flat row per method (for a table)."""
        return [{"method": m, **{f"P@{k}": v for k, v in ks.items()}, "queries": self.n_queries,
                 "pairs": self.n_pairs, "missing_pairs": self.n_missing} for m, ks in self.precision.items()]


def read_dictionary(path: PathLike, on_error: Literal["raise", "warn"] = "raise") -> DictionaryFile:
    """Read a bilingual dictionary file of whitespace-separated ``source target`` lines (UTF-8).

    Raises:
        FileNotFoundError: no such file.
        DataFormatError: (a ``ValueError``) bad lines, each as ``FILE:LINE: reason``, when ``on_error="raise"``;
            also for non-UTF-8 bytes and for a file with no pair at all.
    """
    if on_error not in ("raise", "warn"):
        raise ValueError(f"on_error must be 'raise' or 'warn', got {on_error!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"bilingual dictionary not found: {path}")
    pairs: list[tuple[str, str]] = []
    bad: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataFormatError([f"{path}:1: not UTF-8 ({err.reason} at byte {err.start})"]) from err
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            bad.append(f"{path}:{lineno}: expected 2 whitespace-separated words (source target), "
                       f"got {len(fields)}: {line.strip()[:60]!r}")
            continue
        pairs.append((fields[0], fields[1]))
    if bad and on_error == "raise":
        raise DataFormatError(bad)
    if bad:
        warnings.warn(f"{path}: skipped {len(bad)} malformed line(s), first: {bad[0]}", stacklevel=2)
    if not pairs:
        raise DataFormatError([f"{path}:1: no dictionary pairs in file"])
    return DictionaryFile(path=path, pairs=pairs, bad_lines=bad)


def _index(words: Sequence[str], name: str, rows: int) -> dict[str, int]:
    if len(words) != rows:
        raise ValueError(f"{name}: {len(words)} words for an embedding matrix with {rows} rows")
    index = {w: i for i, w in enumerate(words)}
    if len(index) != len(words):
        dup = next(w for i, w in enumerate(words) if index[w] != i)
        raise ValueError(f"{name}: duplicate word {dup!r}")
    return index


def translation_precision(dictionary: PathLike | DictionaryFile | Sequence[tuple[str, str]],
                          src_words: Sequence[str], src_emb: Tensor, tgt_words: Sequence[str], tgt_emb: Tensor,
                          methods: Sequence[Method] = ("nn", "csls"), ks: Sequence[int] = (1, 5, 10),
                          csls_k: int = 10, on_error: Literal["raise", "warn"] = "raise") -> TranslationScores:
    """Precision@k of word translation from ``src_emb`` (mapped source, S x d) to ``tgt_emb`` (T x d).

    Args:
        dictionary: a dictionary file path, a :class:`DictionaryFile`, or ``(source, target)`` pairs.
        src_words: the S source words, row order of ``src_emb``.
        tgt_words: the T target words, row order of ``tgt_emb``.
        methods: retrieval by cosine (``nn``) and/or CSLS with ``csls_k`` neighbours.
        ks: cut-offs.
        on_error: for a dictionary path, what to do with malformed lines (see :func:`read_dictionary`).

    Returns:
        :class:`TranslationScores`; a warning reports pairs with unknown words.

    Raises:
        ValueError: shapes or word lists disagree, or no dictionary pair is in the vocabularies.
    """
    if src_emb.dim() != 2 or tgt_emb.dim() != 2 or src_emb.shape[1] != tgt_emb.shape[1]:
        raise ValueError(f"src_emb and tgt_emb must be (S, d) and (T, d), got {tuple(src_emb.shape)} "
                         f"and {tuple(tgt_emb.shape)}")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive cut-offs, got {tuple(ks)}")
    n_bad = 0
    if isinstance(dictionary, (str, os.PathLike)):
        dictionary = read_dictionary(dictionary, on_error=on_error)
    if isinstance(dictionary, DictionaryFile):
        pairs, n_bad, where = dictionary.pairs, len(dictionary.bad_lines), str(dictionary.path)
    else:
        pairs, where = list(dictionary), "dictionary"
    s_index = _index(src_words, "src_words", src_emb.shape[0])
    t_index = _index(tgt_words, "tgt_words", tgt_emb.shape[0])
    gold: dict[int, set[int]] = {}
    miss_s = miss_t = n_missing = 0
    for s, t in pairs:
        if s in s_index and t in t_index:
            gold.setdefault(s_index[s], set()).add(t_index[t])
        else:
            n_missing += 1
            miss_s += s not in s_index
            miss_t += t not in t_index
    if n_missing:
        warnings.warn(f"{where}: {n_missing} of {len(pairs)} pairs have a word outside the vocabularies "
                      f"({miss_s} source, {miss_t} target side); precision uses the other "
                      f"{len(pairs) - n_missing}", stacklevel=2)
    if not gold:
        raise ValueError(f"{where}: none of the {len(pairs)} pairs has both words in the vocabularies")
    queries = torch.tensor(sorted(gold))
    src, tgt = unit_rows(src_emb.float()), unit_rows(tgt_emb.float())
    precision: dict[str, dict[int, float]] = {}
    for method in methods:
        _, top = nearest_neighbours(src, tgt, method, k=csls_k, topk=max(ks), src_ids=queries)
        precision[method] = {}
        for k in ks:
            hits = [bool(gold[int(q)] & set(top[i, :k].tolist())) for i, q in enumerate(queries)]
            precision[method][k] = sum(hits) / len(hits)
    return TranslationScores(precision=precision, n_queries=len(gold), n_pairs=len(pairs) - n_missing,
                             n_missing=n_missing, missing_source=miss_s, missing_target=miss_t, n_bad_lines=n_bad)
