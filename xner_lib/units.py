"""Sentence tokens -> sub-words -> *units*, the things the model labels (DESIGN.md, Model; paper 3.1).

A unit is a contiguous run of sentence tokens represented by one sub-word vector.

* English (``language="en"``): one unit per word, represented by its first sub-word; with
  SentencePiece tokenizers a bare ``▁`` piece is skipped (the next piece of the word represents it).
* Chinese (``language="zh"``): the *unspaced* sentence is tokenised and each sub-word becomes a unit
  covering the characters its offsets cover (a SentencePiece token of several characters is one unit;
  a WordPiece tokenizer gives one unit per character). A bare ``▁`` never represents a character.
* A token no sub-word covers (U+FFFD, removed by the normaliser) still gets a unit, represented by an
  inserted unknown id and counted in ``n_nopiece``; tokens represented by the tokenizer's own unknown
  piece are counted in ``n_unk``. Nothing is dropped: the unit spans tile the sentence.

Two unit schemes for Chinese (``zh_units``, DESIGN.md Model; docs/method.md, "Units"):

* ``token`` (``units-v1``): one unit per sub-word, as above. An entity boundary that falls inside a
  multi-character sub-word cannot be predicted (the *unit ceiling*, :func:`unit_ceiling_tags`).
* ``char``: every Chinese character is its own unit and carries the vector of the sub-word that covers
  it; the encoder input is the same. Every boundary is reachable (the ceiling is 100%).

Labels move between tokens and units with :func:`unit_tags` and :func:`spread_tags` (BIO-aware: the first
token gets the unit's tag, the rest ``I-`` of its type). :func:`unit_tags` keeps every entity under one
policy, counted (:class:`UnitTagCounts`): a unit takes the tag of its first token, unless an entity
*begins* inside the unit, in which case the unit begins the first entity that begins inside it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from .data import Sentence

BARE_PIECE = "\u2581"
LANGUAGES = ("en", "zh")
ZH_UNITS = ("token", "char")
UNIT_RULE = ("units-v1 en=word,first-non-bare-subword zh=unspaced-offsets,token-units,no-bare "
             "uncovered=inserted-unk")


def unit_rule(zh_units: str = "token") -> str:
    """The name of the unit rule (it enters feature-cache and run keys): ``UNIT_RULE`` for ``token`` units,
    with ``zh=char-units`` appended for ``char`` units."""
    if zh_units not in ZH_UNITS:
        raise ValueError(f"zh_units must be one of {ZH_UNITS}, got {zh_units!r}")
    return UNIT_RULE if zh_units == "token" else UNIT_RULE + " zh=char-units,covering-subword-vector"


@dataclass(frozen=True)
class EncodedSentence:
    """One sentence as sub-word ids and units.

    ``input_ids`` (length N): sub-word ids without special tokens, inserted unknown ids included.
    ``unit_pos[u]``: index in ``input_ids`` of the sub-word whose vector represents unit ``u`` (U units).
    ``unit_spans[u]``: the [start, end) range of sentence tokens unit ``u`` covers; the spans tile
    ``range(n_tokens)`` in order. ``n_unk``: tokens represented by the tokenizer's unknown piece;
    ``n_nopiece``: tokens no sub-word covers (represented by an inserted unknown id).
    """

    input_ids: list[int]
    unit_pos: list[int]
    unit_spans: list[tuple[int, int]]
    n_unk: int = 0
    n_nopiece: int = 0

    @property
    def n_units(self) -> int:
        return len(self.unit_spans)

    @property
    def n_tokens(self) -> int:
        return self.unit_spans[-1][1] if self.unit_spans else 0


@dataclass
class _Piece:
    """A sub-word: its id, the token range it carries (``None``: none, e.g. a bare ``▁``), the token
    range its raw offsets touch, and whether it is a bare ``▁``."""

    id: int
    cover: tuple[int, int] | None
    touch: tuple[int, int]
    bare: bool


def _tokens_of(sentence: Sentence | Sequence[str]) -> list[str]:
    return list(sentence.tokens) if isinstance(sentence, Sentence) else list(sentence)


def _bare_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    i = tokenizer.convert_tokens_to_ids(BARE_PIECE)
    return None if i is None or i == tokenizer.unk_token_id else int(i)


def _build(n_tokens: int, pieces: list[_Piece], blank: list[bool], unk_id: int) -> EncodedSentence:
    """Merge the pieces' token ranges into units, pick each unit's representative, insert unknown ids."""
    merged: list[list[int]] = []
    for a, b in sorted(p.cover for p in pieces if p.cover is not None):
        if merged and a < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    spans: list[tuple[int, int]] = []
    t, m = 0, 0
    while t < n_tokens:
        if m < len(merged) and merged[m][0] == t:
            spans.append((t, merged[m][1]))
            t, m = merged[m][1], m + 1
        else:
            spans.append((t, t + 1))
            t += 1
    unit_of = [0] * n_tokens
    for u, (a, b) in enumerate(spans):
        unit_of[a:b] = [u] * (b - a)
    rep: list[int | None] = [None] * len(spans)
    for i, p in enumerate(pieces):
        if p.cover is not None and not p.bare and rep[unit_of[p.cover[0]]] is None:
            rep[unit_of[p.cover[0]]] = i
    for u, (a, b) in enumerate(spans):  # a blank (whitespace) unit may be carried by a bare "▁"
        if rep[u] is None and all(blank[a:b]):
            rep[u] = next((i for i, p in enumerate(pieces) if p.bare and p.touch[0] < b and a < p.touch[1]), None)
    anchors = [p.cover[0] if p.cover is not None else p.touch[0] for p in pieces]
    inserted: dict[int, list[int]] = {}  # piece index -> units whose unknown id goes right before it
    for u, (a, _) in enumerate(spans):
        if rep[u] is None:
            at = next((i for i, anchor in enumerate(anchors) if anchor >= a), len(pieces))
            inserted.setdefault(at, []).append(u)
    ids: list[int] = []
    pos_of_piece: list[int] = []
    unit_pos = [0] * len(spans)
    for i in range(len(pieces) + 1):
        for u in inserted.get(i, []):
            unit_pos[u] = len(ids)
            ids.append(unk_id)
        if i < len(pieces):
            pos_of_piece.append(len(ids))
            ids.append(pieces[i].id)
    n_unk = n_nopiece = 0
    for u, (a, b) in enumerate(spans):
        r = rep[u]
        if r is None:
            n_nopiece += b - a
        else:
            unit_pos[u] = pos_of_piece[r]
            n_unk += (b - a) if pieces[r].id == unk_id else 0
    return EncodedSentence(ids, unit_pos, spans, n_unk, n_nopiece)


def _encode_en(tokenizer: PreTrainedTokenizerBase, batch: list[list[str]]) -> list[EncodedSentence]:
    enc = tokenizer(batch, is_split_into_words=True, add_special_tokens=False, verbose=False)
    bare = _bare_id(tokenizer)
    out = []
    for i, words in enumerate(batch):
        pieces = []
        for pid, w in zip(enc["input_ids"][i], enc.word_ids(i), strict=True):
            if w is None:
                continue
            is_bare = pid == bare
            pieces.append(_Piece(pid, None if is_bare else (w, w + 1), (w, w + 1), is_bare))
        out.append(_build(len(words), pieces, [not w.strip() for w in words], tokenizer.unk_token_id))
    return out


def _encode_zh(tokenizer: PreTrainedTokenizerBase, batch: list[list[str]]) -> list[EncodedSentence]:
    texts = ["".join(toks) for toks in batch]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    normalizer = tokenizer.backend_tokenizer.normalizer
    soft: dict[str, bool] = {}  # a character the normaliser removes or turns into whitespace carries no piece
    bare = _bare_id(tokenizer)
    out = []
    for i, (toks, text) in enumerate(zip(batch, texts, strict=True)):
        char_tok = [t for t, tok in enumerate(toks) for _ in tok]
        for ch in text:
            if ch not in soft:
                soft[ch] = not (normalizer.normalize_str(ch) if normalizer else ch).strip()
        pieces = []
        for pid, (a, b) in zip(enc["input_ids"][i], enc["offset_mapping"][i], strict=True):
            if not text:
                break
            is_bare = pid == bare
            if b <= a:  # a zero-width piece carries no character: context only
                t = char_tok[min(a, len(text) - 1)]
                pieces.append(_Piece(pid, None, (t, t + 1), is_bare))
                continue
            b = min(b, len(text))
            touch = (char_tok[a], char_tok[b - 1] + 1)
            core = [c for c in range(a, b) if not soft[text[c]]]
            cover = None if is_bare else ((char_tok[core[0]], char_tok[core[-1]] + 1) if core else touch)
            pieces.append(_Piece(pid, cover, touch, is_bare))
        out.append(_build(len(toks), pieces, [not tok.strip() for tok in toks], tokenizer.unk_token_id))
    return out


def split_units(sentence: EncodedSentence) -> EncodedSentence:
    """``char`` units: every token its own unit, carrying the sub-word position of the unit that held it.
    The sub-word ids (the encoder's input) do not change."""
    pos: list[int] = []
    spans: list[tuple[int, int]] = []
    for p, (a, b) in zip(sentence.unit_pos, sentence.unit_spans, strict=True):
        pos.extend([p] * (b - a))
        spans.extend((t, t + 1) for t in range(a, b))
    return EncodedSentence(sentence.input_ids, pos, spans, sentence.n_unk, sentence.n_nopiece)


def encode_sentences(tokenizer: PreTrainedTokenizerBase, sentences: Sequence[Sentence | Sequence[str]],
                     language: str, *, zh_units: str = "token", chunk: int = 1024) -> list[EncodedSentence]:
    """Encode sentences (``Sentence`` objects or token lists) into units; ``language`` is ``en`` or ``zh``.

    ``zh_units`` (Chinese only): ``token`` (a unit per sub-word) or ``char`` (a unit per character,
    :func:`split_units`). English units are always words.
    """
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    if zh_units not in ZH_UNITS:
        raise ValueError(f"zh_units must be one of {ZH_UNITS}, got {zh_units!r}")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"a fast (Rust) tokenizer is needed for offsets and word ids, got {type(tokenizer).__name__}")
    encode = _encode_en if language == "en" else _encode_zh
    token_lists = [_tokens_of(s) for s in sentences]
    out: list[EncodedSentence] = []
    for start in range(0, len(token_lists), chunk):
        out.extend(encode(tokenizer, token_lists[start:start + chunk]))
    if language == "zh" and zh_units == "char":
        out = [split_units(e) for e in out]
    return out


def encode_sentence(tokenizer: PreTrainedTokenizerBase, sentence: Sentence | Sequence[str],
                    language: str, *, zh_units: str = "token") -> EncodedSentence:
    """Encode one sentence into units (see :func:`encode_sentences`)."""
    return encode_sentences(tokenizer, [sentence], language, zh_units=zh_units)[0]


class UnitTagCounts(Counter):
    """What :func:`unit_tags` did to entities, counted (a ``Counter``):

    ``entities``: entities read; ``start_inside``: entities that begin inside a unit (not on its first
    token) and keep their unit, so they start on the unit that holds their first token; ``end_inside``:
    entity tokens followed, inside their unit, by a token that does not continue them (the entity is
    extended to the unit's end or cut before it); ``lost``: entities that begin inside a unit another
    entity keeps (the only case where an entity gets no unit of its own).
    """


def unit_tags(tags: Sequence[str], spans: Sequence[tuple[int, int]], counts: Counter | None = None) -> list[str]:
    """Token tags -> unit tags (training on units). Nothing is dropped without a count (``counts``, a
    :class:`UnitTagCounts` or any ``Counter``, is updated in place when given). The result is valid IOB2.

    Policy, for a unit of several tokens: if its last token belongs to an entity, the unit takes that
    entity (``B-`` when the entity begins inside the unit, else its ``I-``), so the next unit can continue
    it; otherwise the unit begins the first entity that begins inside it, or takes its first token's tag.
    An entity beginning inside a unit thus starts on the unit that holds its first token. With one-token
    units (English words, ``char`` units) this is the identity.
    """
    n = spans[-1][1] if spans else 0
    if len(tags) != n:
        raise ValueError(f"{len(tags)} tags for units that cover {n} tokens")
    out: list[str] = []
    for a, b in spans:
        begins = [t for t in range(a, b) if tags[t].startswith("B-")]
        last = tags[b - 1]
        if last != "O":  # the entity holding the unit's last token: where it begins, if inside the unit
            start = next((t for t in reversed(begins) if t <= b - 1), None)
            tag = tags[start] if start is not None else last
        else:
            start = begins[0] if begins else None
            tag = tags[start] if start is not None else tags[a]
        out.append(tag)
        if counts is not None:
            ends = sum(tags[t] != "O" and not tags[t + 1].startswith("I-") for t in range(a, b - 1))
            kept = start is not None and tag.startswith("B-")  # an entity beginning in the unit keeps it
            seen = {"entities": len(begins), "start_inside": int(kept and start > a),
                    "lost": len(begins) - int(kept), "end_inside": ends}
            counts.update({k: v for k, v in seen.items() if v})
    return out


def unit_ceiling_tags(tags: Sequence[str], spans: Sequence[tuple[int, int]]) -> list[str]:
    """Gold token tags mapped to units and back (:func:`unit_tags` then :func:`spread_tags`): the best
    prediction the units allow. Scored against the gold tags it gives the *unit ceiling*."""
    return spread_tags(unit_tags(tags, spans), spans)


def spread_tags(tags: Sequence[str], spans: Sequence[tuple[int, int]]) -> list[str]:
    """Unit tags -> token tags, BIO-aware: the first token takes the unit's tag, the others ``I-`` of the same
    type (``O`` stays ``O``). Length: the number of tokens the spans cover."""
    if len(tags) != len(spans):
        raise ValueError(f"{len(tags)} unit tags for {len(spans)} units")
    out: list[str] = []
    for tag, (a, b) in zip(tags, spans, strict=True):
        out.append(tag)
        out.extend(["O" if tag == "O" else f"I-{tag[2:]}"] * (b - a - 1))
    return out
