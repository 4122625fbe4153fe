"""Sentences, datasets and the readers of the three corpus formats (paper section 4.1, Table 1).

Formats (see ``shared/data/SOURCES.md``):

* ``conll``: CoNLL-2003, ``token POS chunk NER`` separated by spaces, ``-DOCSTART-`` lines between
  documents.
* ``weibo``: WeiboNER 2nd version, ``char+position<TAB>tag``; the position digits after the character
  are its 0-based index inside its jieba word (``310`` is ``3`` at position 10); a token opening with
  two U+FFFD characters keeps both as its character.
* ``peoples_daily``: People's Daily, ``char tag``.

Every reader validates as it reads. Errors a user can cause (wrong column count, unknown tag, bytes
that are not UTF-8, an empty file, a bad Weibo position) are collected and raised together as a
:class:`DataFormatError` whose lines read ``FILE:LINE: reason``. An orphan ``I-X`` tag (after ``O`` or
after another type) is repaired to ``B-X`` and counted on the dataset, never dropped.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Format = Literal["conll", "weibo", "peoples_daily"]
FORMATS: tuple[str, ...] = ("conll", "weibo", "peoples_daily")

_TYPES: dict[str, tuple[str, ...]] = {
    "conll": ("PER", "LOC", "ORG", "MISC"),
    "weibo": tuple(f"{t}.{k}" for t in ("PER", "LOC", "GPE", "ORG") for k in ("NAM", "NOM")),
    "peoples_daily": ("PER", "LOC", "ORG"),
}
_COLUMNS: dict[str, int] = {"conll": 4, "weibo": 2, "peoples_daily": 2}
_DOCSTART = "-DOCSTART-"
_DOUBLE_FFFD = "\ufffd\ufffd"


def allowed_tags(fmt: str) -> frozenset[str]:
    """The tag set of a format: ``O`` and ``B-``/``I-`` of each of its entity types."""
    _check_format(fmt)
    return frozenset({"O"} | {f"{p}-{t}" for t in _TYPES[fmt] for p in ("B", "I")})


class DataFormatError(ValueError):
    """A corpus file that cannot be read; ``problems`` holds one ``FILE:LINE: reason`` per line."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        shown = self.problems[:20]
        more = len(self.problems) - len(shown)
        text = "\n".join(shown) + (f"\n... and {more} more" if more > 0 else "")
        super().__init__(text)


@dataclass
class Sentence:
    """One sentence: its tokens (English words or Chinese characters), IOB2 tags and source lines.

    ``lines[i]`` is the 1-based line of ``tokens[i]`` in ``source``. ``word_pos`` holds Weibo's
    per-character position inside its jieba word (empty for the other formats). ``doc`` is the number of
    ``-DOCSTART-`` lines read before the sentence; ``repaired`` counts the orphan ``I-`` tags of this
    sentence repaired to ``B-`` on reading (type -> count).
    """

    tokens: list[str]
    tags: list[str]
    lines: list[int]
    source: str = ""
    doc: int = 0
    word_pos: list[int] = field(default_factory=list)
    repaired: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if not (len(self.tokens) == len(self.tags) == len(self.lines)):
            raise ValueError(
                f"{self.source}: tokens, tags and lines differ in length "
                f"({len(self.tokens)}, {len(self.tags)}, {len(self.lines)})"
            )

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class Dataset:
    """The sentences of one file plus what reading it found.

    ``docs`` counts ``-DOCSTART-`` lines (CoNLL only); ``repaired_orphans`` counts the orphan ``I-`` tags
    of the sentences held that were turned into ``B-`` (type -> count, from ``Sentence.repaired``).
    """

    name: str
    split: str
    format: str
    path: Path
    sentences: list[Sentence]
    docs: int = 0

    def __len__(self) -> int:
        return len(self.sentences)

    def __iter__(self) -> Iterator[Sentence]:
        return iter(self.sentences)

    @property
    def language(self) -> str:
        """``en`` for CoNLL-2003 (words), ``zh`` for WeiboNER and People's Daily (characters)."""
        return "en" if self.format == "conll" else "zh"

    @property
    def n_tokens(self) -> int:
        return sum(len(s) for s in self.sentences)

    def entity_counts(self) -> Counter[str]:
        """Chunks per entity type (a chunk starts at each ``B-``; orphans were repaired on reading)."""
        counts: Counter[str] = Counter()
        for s in self.sentences:
            counts.update(t[2:] for t in s.tags if t.startswith("B-"))
        return counts

    @property
    def repaired_orphans(self) -> Counter[str]:
        """Orphan ``I-`` tags repaired to ``B-`` in the sentences held, per type."""
        total: Counter[str] = Counter()
        for s in self.sentences:
            total.update(s.repaired)
        return total

    def head(self, n: int | None) -> Dataset:
        """The first ``n`` sentences as a new dataset (all of them when ``n`` is None), with the counts of
        what it holds: the orphans repaired in those sentences and the ``-DOCSTART-`` lines read up to the
        last of them."""
        if n is not None and n < 0:
            raise ValueError(f"head(n) takes n >= 0 sentences, got {n}")
        if n is None or n >= len(self.sentences):
            return self
        kept = self.sentences[:n]
        return Dataset(self.name, self.split, self.format, self.path, kept, kept[-1].doc if kept else 0)


def _check_format(fmt: str) -> None:
    if fmt not in _TYPES:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def repair_orphans(tags: list[str]) -> Counter[str]:
    """Turn every orphan ``I-X`` (first tag, after ``O`` or after another type) into ``B-X`` in place.

    Returns the number of repairs per type. On an IOB1 file this is exactly the IOB1 -> IOB2 conversion.
    """
    repaired: Counter[str] = Counter()
    prev = "O"
    for i, tag in enumerate(tags):
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            tags[i] = "B-" + tag[2:]
            repaired[tag[2:]] += 1
        prev = tags[i]
    return repaired


#: the most digits a Weibo position may have (real ones have one or two; Python refuses to parse > 4300)
_MAX_POSITION_DIGITS = 6


def _weibo_token(tok: str) -> tuple[str, int] | str:
    """A Weibo token split into its character and its position inside its jieba word (``310`` is ``3`` at
    position 10; two leading U+FFFD are one character), or the reason it cannot be (a problem line)."""
    width = 2 if tok.startswith(_DOUBLE_FFFD) else 1
    char, digits = tok[:width], tok[width:]
    if not (digits.isascii() and digits.isdigit()):
        return f"Weibo token {tok!r} lacks its position digits (ASCII 0-9 after the character)"
    if len(digits) > _MAX_POSITION_DIGITS:
        return f"Weibo token {tok[:12]!r}... has a position of {len(digits)} digits"
    return char, int(digits)


def read_file(path: str | Path, fmt: str, *, name: str = "", split: str = "") -> Dataset:
    """Read and validate one corpus file of format ``fmt`` (``conll``, ``weibo``, ``peoples_daily``).

    Raises :class:`DataFormatError` listing every ``FILE:LINE: reason`` found; warns (and counts on the
    returned dataset) when orphan ``I-`` tags were repaired.
    """
    _check_format(fmt)
    path = Path(path)
    raw = path.read_bytes()
    where = str(path)
    if not raw.strip():
        raise DataFormatError([f"{where}:1: empty file (no tokens)"])
    tagset = allowed_tags(fmt)
    problems: list[str] = []
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    positions: list[int] = []
    docs = 0

    def close() -> None:
        if tokens:
            sentences.append(Sentence(tokens.copy(), tags.copy(), lines.copy(), where, docs,
                                      positions.copy() if fmt == "weibo" else []))
        tokens.clear(), tags.clear(), lines.clear(), positions.clear()

    for lineno, bline in enumerate(raw.split(b"\n"), start=1):
        try:
            line = bline.decode("utf-8")
        except UnicodeDecodeError as err:
            problems.append(f"{where}:{lineno}: not UTF-8 (byte 0x{bline[err.start]:02x} at column {err.start + 1})")
            continue
        if lineno == 1 and line.startswith("\ufeff"):
            line = line[1:]
        line = line.rstrip("\r")
        if not line.strip():
            close()
            continue
        if fmt == "conll" and line.split(maxsplit=1)[0] == _DOCSTART:
            close()
            docs += 1
            continue
        cols = line.split("\t") if fmt == "weibo" else line.split()
        if len(cols) != _COLUMNS[fmt]:
            problems.append(f"{where}:{lineno}: expected {_COLUMNS[fmt]} columns, found {len(cols)}: {line!r}")
            continue
        tok, tag = cols[0], cols[-1]
        if tag not in tagset:
            problems.append(f"{where}:{lineno}: unknown tag {tag!r} for format {fmt}")
            continue
        if fmt == "weibo":
            parsed = _weibo_token(tok)  # not `split`: that is the dataset's split, a parameter
            if isinstance(parsed, str):
                problems.append(f"{where}:{lineno}: {parsed}")
                continue
            tok, pos = parsed
            positions.append(pos)
        tokens.append(tok)
        tags.append(tag)
        lines.append(lineno)
    close()
    if problems:
        raise DataFormatError(problems)
    if not sentences:
        raise DataFormatError([f"{where}:1: empty file (no sentences)"])
    for s in sentences:
        s.repaired = repair_orphans(s.tags)
    dataset = Dataset(name or path.parent.name, split or path.stem, fmt, path, sentences, docs)
    repaired = dataset.repaired_orphans
    if repaired:
        total = sum(repaired.values())
        warnings.warn(f"{where}: repaired {total} orphan I- tag(s) to B- ({dict(repaired)})", stacklevel=2)
    return dataset
