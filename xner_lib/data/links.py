"""Links in the input text (DESIGN.md, Data: "URLs are recognised in every corpus and never become entity
characters (counted)").

A link is ``http://`` or ``https://`` or ``www.`` followed by URL characters (RFC 3986's unreserved and
reserved ASCII set but ``@``, which in Weibo text starts a mention), or a Weibo short link ``t.cn/`` plus
its code (at most 7 characters: Weibo text often runs straight on into ASCII words, as in Weibo train's
``http://t.cn/zTozVasAppStore``). Tokens are joined as the language
writes them (English with spaces, Chinese without) and a token is a *link token* when any of its
characters lies in a link. @mentions and hashtags are not links: nothing here removes text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: the link pattern (see the module docstring); a Weibo short link is tried first.
LINK_PATTERN = re.compile(
    r"(?:https?://)?t\.cn/[A-Za-z0-9]{1,7}"
    r"|(?:https?://|www\.)[A-Za-z0-9\-._~:/?#\[\]!$&'()*+,;=%]+",
    re.IGNORECASE,
)


def link_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the links in ``text``."""
    return [m.span() for m in LINK_PATTERN.finditer(text)]


def link_mask(tokens: Sequence[str], language: str) -> list[bool]:
    """Per token, whether any of its characters lies inside a link. ``language``: ``en`` (tokens are
    words, joined with spaces) or ``zh`` (characters, joined without)."""
    if language not in ("en", "zh"):
        raise ValueError(f"language must be 'en' or 'zh', got {language!r}")
    sep = " " if language == "en" else ""
    starts, pos = [], 0
    for tok in tokens:
        starts.append(pos)
        pos += len(tok) + len(sep)
    text = sep.join(tokens)
    mask = [False] * len(tokens)
    t = 0
    for a, b in link_spans(text):
        while t < len(tokens) and starts[t] + len(tokens[t]) <= a:
            t += 1
        k = t
        while k < len(tokens) and starts[k] < b:
            mask[k] = True
            k += 1
    return mask


@dataclass(frozen=True)
class LinkCounts:
    """Links found in a corpus: ``links`` (spans), ``tokens`` inside them, ``sentences`` holding one, and
    ``gold_entity_tokens``: gold entity tokens inside a link (a link is decoded as O, so these are lost)."""

    links: int
    tokens: int
    sentences: int
    gold_entity_tokens: int


def count_links(token_lists: Iterable[Sequence[str]], language: str,
                tag_lists: Iterable[Sequence[str]] | None = None) -> LinkCounts:
    """:class:`LinkCounts` over sentences (and their gold tags, when given)."""
    sep = " " if language == "en" else ""
    links = tokens = sentences = gold = 0
    tag_iter = iter(tag_lists) if tag_lists is not None else None
    for toks in token_lists:
        mask = link_mask(toks, language)
        n = len(link_spans(sep.join(toks)))
        links += n
        tokens += sum(mask)
        sentences += n > 0
        if tag_iter is not None:
            tags = next(tag_iter)
            gold += sum(m and t != "O" for m, t in zip(mask, tags, strict=True))
    return LinkCounts(links, tokens, sentences, gold)
