"""Raw text in, tokens and entity spans with character offsets out (issue 14, points 4 and 5).

This module holds the text side of inference; the model side is :meth:`xner_lib.tagger.Tagger.tag`.

Splitting (:func:`split_text`), the same for every text:

* a link (:func:`xner_lib.data.links.link_spans`: ``http://``, ``https://``, ``www.``, Weibo ``t.cn/``) is
  one token, so the link rule of the decoding (links as O) finds it whole;
* a CJK character (Han, kana, Hangul, CJK radicals and strokes, :data:`CJK_RANGES`) is one token: Chinese
  is split into characters, as in WeiboNER and People's Daily;
* a run of letters and digits (hyphens inside allowed: ``Franco-German``) is one token: English words,
  and Latin words inside Chinese text;
* any other character but whitespace (punctuation, symbols, emoji, each code point of an emoji sequence)
  is one token;
* whitespace separates tokens and is never a token.

Every token keeps its ``[start, end)`` character offsets into the original string.

Language (:func:`detect_language`): ``zh`` when the text holds a CJK character (:data:`CJK_RANGES`, CJK
punctuation alone does not count), else ``en``; a caller may force either. The language decides how the
encoder reads the tokens (:func:`xner_lib.units.encode_sentences`: English words with spaces, Chinese
tokens joined without spaces, as the Chinese corpora are read, so the spaces of a mixed text do not reach
the encoder) and the label set of the decoding: a ``zh`` text is decoded as the Chinese test sets are
(:data:`TEXT_FORMATS`: PER, LOC, ORG; MISC forbidden when the model's decoding asks for the target's
labels), an ``en`` text as CoNLL-2003.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqeval.metrics.v1 import Entities
from seqeval.scheme import IOB2

from .data import Dataset, Sentence
from .data.links import link_spans

#: the character ranges that count as CJK: radicals, kana, bopomofo, Hangul, strokes, Han (BMP, extensions
#: A to H, compatibility ideographs).
CJK_RANGES: str = ("\u2e80-\u2fdf\u3040-\u30ff\u3100-\u318f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
                   "\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003ffff")
_CJK = re.compile(f"[{CJK_RANGES}]")
#: a token between links: one CJK character, a word (letters and digits, inner hyphens), or any other
#: non-space character.
_TOKEN = re.compile(f"[{CJK_RANGES}]|[^\\W_{CJK_RANGES}]+(?:-[^\\W_{CJK_RANGES}]+)*|\\S")

#: the corpus format a text of each language is decoded as (``decoding.allowed_labels``): its target label set.
#: WeiboNER and People's Daily share PER, LOC and ORG, so either serves for ``zh``.
TEXT_FORMATS: dict[str, str] = {"en": "conll", "zh": "peoples_daily"}
LANGUAGES: tuple[str, ...] = tuple(TEXT_FORMATS)


def detect_language(text: str) -> str:
    """``zh`` when ``text`` holds a CJK character (:data:`CJK_RANGES`), else ``en``."""
    return "zh" if _CJK.search(text) else "en"


def split_text(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Tokens of ``text`` and their ``[start, end)`` character offsets (module docstring). Whitespace-only
    or empty text gives no token; ``text[start:end] == token`` for every token."""
    tokens: list[str] = []
    offsets: list[tuple[int, int]] = []

    def plain(a: int, b: int) -> None:
        for m in _TOKEN.finditer(text, a, b):
            tokens.append(m.group())
            offsets.append(m.span())

    pos = 0
    for a, b in link_spans(text):
        plain(pos, a)
        tokens.append(text[a:b])
        offsets.append((a, b))
        pos = b
    plain(pos, len(text))
    return tokens, offsets


def text_dataset(token_lists: Sequence[Sequence[str]], language: str, *, lines: Sequence[int] | None = None,
                 name: str = "input", source: str = "") -> Dataset:
    """The adapter from tokenised texts to what :func:`xner_lib.batches.prepare` reads: a :class:`Dataset` of
    format ``TEXT_FORMATS[language]``, one :class:`Sentence` per text, every tag ``O`` (no gold), every
    token on line ``lines[i]`` (default ``i + 1``) of ``source``. A text without tokens is refused (the
    encoder needs at least one; :meth:`~xner_lib.tagger.Tagger.tag` never sends one)."""
    if language not in TEXT_FORMATS:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    lines = list(lines) if lines is not None else list(range(1, len(token_lists) + 1))
    if len(lines) != len(token_lists):
        raise ValueError(f"{len(lines)} line numbers for {len(token_lists)} texts")
    sentences = []
    for toks, line in zip(token_lists, lines, strict=True):
        if not toks:
            raise ValueError(f"{source or name}:{line}: a text without tokens cannot be encoded")
        sentences.append(Sentence(list(toks), ["O"] * len(toks), [line] * len(toks), source))
    return Dataset(name, "text", TEXT_FORMATS[language], Path(source or name), sentences)


def entity_spans(text: str, offsets: Sequence[tuple[int, int]], tags: Sequence[str]) -> list[dict[str, Any]]:
    """The entities of token ``tags`` (strict IOB2 chunks, as the primary score reads them: an ``I-X`` that
    continues no ``X`` belongs to no entity) as ``{"type", "start", "end", "text"}``, with character offsets
    into ``text`` (the first token's start, the last token's end) and ``text[start:end]``."""
    if len(offsets) != len(tags):
        raise ValueError(f"{len(tags)} tags for {len(offsets)} tokens")
    out = []
    for ent in Entities([list(tags)], IOB2).entities[0]:
        start, end = offsets[ent.start][0], offsets[ent.end - 1][1]
        out.append({"type": ent.tag, "start": start, "end": end, "text": text[start:end]})
    return out


@dataclass(frozen=True)
class TaggedText:
    """One tagged text: its language, tokens, their character offsets and one IOB2 tag per token."""

    text: str
    language: str
    tokens: list[str]
    offsets: list[tuple[int, int]]
    tags: list[str]

    def entities(self) -> list[dict[str, Any]]:
        """The entity spans (:func:`entity_spans`)."""
        return entity_spans(self.text, self.offsets, self.tags)

    def to_json(self) -> dict[str, Any]:
        """``{"text", "language", "entities"}``: what ``python -m xner_lib predict`` prints per text."""
        return {"text": self.text, "language": self.language, "entities": self.entities()}

    def conll_lines(self) -> list[str]:
        """``token<TAB>tag`` per token (tokens never hold whitespace)."""
        return [f"{tok}\t{tag}" for tok, tag in zip(self.tokens, self.tags, strict=True)]
