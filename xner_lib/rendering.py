"""Word-by-word renderings through the bilingual lexicon, for reverse-attention transfer (DESIGN.md, Model 5).

The paper's reverse attention (section 3.2, second half) pairs a Chinese sentence with English text that a
frozen English NER teacher can read. Its ref. 20 (Feng et al., IJCAI 2018, "Improving Low Resource Named
Entity Recognition using Cross-lingual Knowledge Transfer") makes that text by translating word by word
through a bilingual lexicon; this module does the same with the lexicon the aligner induces (DESIGN.md,
Model 6; notebook 02 writes it to ``results/<profile>/alignment/lexicon.tsv``, columns
``english<TAB>chinese<TAB>cosine`` with a header line, English lower-cased when ``vec_lowercase_en``).

Two directions:

* **zh -> en** (test time, :func:`render_zh`): a Chinese sentence (one token per character) is segmented
  into words with ``jieba`` (:func:`xner_lib.vectors.segment_chinese`), each word is replaced by its English
  translation, and a word the lexicon lacks is kept as it is. The result is one English token per Chinese
  word; every source character belongs to exactly one rendered token.
* **en -> zh** (training, :func:`render_en`): an English CoNLL sentence is rendered word by word into
  Chinese units. A translated word becomes the characters of its translation (Chinese units are
  characters); a word the lexicon lacks is kept as one token. IOB2 labels are projected through the word
  alignment: ``B-X`` on the first unit of an entity's first word, ``I-X`` on every other unit of the entity.
  Every source word yields at least one unit, so every entity survives with its type (checked and counted).

Every rendering carries its word alignment (:class:`Rendering`, a list of :class:`WordPair`) and its
coverage; :class:`CoverageCounts` sums coverage over a corpus (DESIGN.md: "Report the rendering's
coverage"). The lexicon holds the best pair per word and direction: the highest cosine, ties broken by the
earlier line (notebook 02 writes the most confident pairs first).

A rendered CoNLL corpus is a :class:`RenderedDataset`: its format stays ``conll`` (CoNLL labels, MISC
included, and the CoNLL evaluation views and decoding labels apply) while its language is ``zh``, so
:func:`xner_lib.units.encode_sentences` reads it as Chinese. A kept English word is one multi-character
token there; the encoder side gives it exactly one unit under ``zh_units="char"`` (units are sentence
tokens, each carrying the vector of the sub-word that covers its first character).
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .data import DataFormatError, Dataset, Sentence
from .vectors import segment_chinese

#: the header notebook 02 writes (pandas ``to_csv(sep="\t", index=False)``)
LEXICON_COLUMNS: tuple[str, str, str] = ("english", "chinese", "cosine")
#: Bump when a change here changes what a rendering holds: cached teacher features are keyed by it.
RENDERING_VERSION = 1
#: largest |cosine| accepted (the file rounds cosines to 4 decimals)
_MAX_ABS_COSINE = 1.0001


class LexiconFormatError(DataFormatError):
    """A lexicon file that cannot be read; ``problems`` holds one ``FILE:LINE: reason`` per bad line."""


@dataclass(frozen=True)
class LexiconPair:
    """One translation pair of the lexicon file: ``english`` as written, ``chinese``, ``cosine`` after
    mapping, and ``line``, its 1-based line in the file (0 when not read from a file)."""

    english: str
    chinese: str
    cosine: float
    line: int = 0


@dataclass
class Lexicon:
    """A bilingual word lexicon with the best translation of each word in each direction.

    ``pairs`` in file order; a word in several pairs translates through the pair with the highest cosine,
    ties broken by the earlier pair (the aligner lists its most confident pairs first). English lookups are
    case-insensitive (keys lower-cased, as notebook 02 writes them with ``vec_lowercase_en``); Chinese
    lookups are exact. ``path`` names the file read (empty when built in memory).
    """

    pairs: list[LexiconPair]
    path: str = ""
    _en: dict[str, LexiconPair] = field(init=False, repr=False, compare=False)
    _zh: dict[str, LexiconPair] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._en = _best_by(self.pairs, lambda p: p.english.lower())
        self._zh = _best_by(self.pairs, lambda p: p.chinese)

    @classmethod
    def from_tsv(cls, path: str | os.PathLike[str]) -> Lexicon:
        """Read notebook 02's ``lexicon.tsv`` (UTF-8, header ``english<TAB>chinese<TAB>cosine``, pandas
        quoting). Blank lines are skipped.

        Raises ``FileNotFoundError`` naming a missing file and :class:`LexiconFormatError` listing every bad
        line as ``FILE:LINE: reason`` (bytes that are not UTF-8, a wrong header or column count, an empty
        word or one containing whitespace, a cosine that is not a finite number in [-1, 1], no pairs).
        """
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"{where}: no lexicon file here (notebook 02 writes "
                                    f"results/<profile>/alignment/lexicon.tsv)")
        problems: list[str] = []
        pairs: list[LexiconPair] = []
        header_seen = False
        for lineno, bline in enumerate(path.read_bytes().split(b"\n"), start=1):
            try:
                line = bline.decode("utf-8")
            except UnicodeDecodeError as err:
                problems.append(f"{where}:{lineno}: not UTF-8 (byte 0x{bline[err.start]:02x} "
                                f"at column {err.start + 1})")
                header_seen = True
                continue
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]
            line = line.rstrip("\r")
            if not line.strip():
                continue
            try:
                cols = next(csv.reader([line], delimiter="\t", quotechar='"', strict=True))
            except csv.Error as err:
                problems.append(f"{where}:{lineno}: bad quoting ({err}): {line!r}")
                header_seen = True
                continue
            if not header_seen:
                header_seen = True
                if tuple(c.strip() for c in cols) != LEXICON_COLUMNS:
                    problems.append(f"{where}:{lineno}: expected the header {'<TAB>'.join(LEXICON_COLUMNS)!r}, "
                                    f"found {line!r}")
                continue
            pair, problem = _parse_pair(cols, lineno)
            if problem:
                problems.append(f"{where}:{lineno}: {problem}: {line!r}")
            elif pair is not None:
                pairs.append(pair)
        if not problems and not pairs:
            problems.append(f"{where}:1: no translation pairs (empty lexicon)")
        if problems:
            raise LexiconFormatError(problems)
        return cls(pairs, where)

    def __len__(self) -> int:
        """The number of pairs read (a word in several pairs counts once per pair)."""
        return len(self.pairs)

    @property
    def n_english(self) -> int:
        """Distinct English words (lower-cased)."""
        return len(self._en)

    @property
    def n_chinese(self) -> int:
        """Distinct Chinese words."""
        return len(self._zh)

    def en_to_zh(self, word: str) -> str | None:
        """The Chinese translation of an English word (looked up lower-cased), or None."""
        pair = self._en.get(word.lower())
        return None if pair is None else pair.chinese

    def zh_to_en(self, word: str) -> str | None:
        """The English translation of a Chinese word (as the file writes it, i.e. lower-cased), or None."""
        pair = self._zh.get(word)
        return None if pair is None else pair.english


def _best_by(pairs: Iterable[LexiconPair], key: Callable[[LexiconPair], str]) -> dict[str, LexiconPair]:
    """Per key, the pair with the highest cosine; the earlier pair wins a tie."""
    best: dict[str, LexiconPair] = {}
    for p in pairs:
        k = key(p)
        if k not in best or p.cosine > best[k].cosine:
            best[k] = p
    return best


def _parse_pair(cols: list[str], lineno: int) -> tuple[LexiconPair | None, str]:
    """One data row -> (pair, "") or (None, reason)."""
    if len(cols) != len(LEXICON_COLUMNS):
        return None, f"expected {len(LEXICON_COLUMNS)} tab-separated columns (english, chinese, cosine), " \
                     f"found {len(cols)}"
    english, chinese, cos_text = cols
    for name, word in (("english", english), ("chinese", chinese)):
        if not word:
            return None, f"empty {name} word"
        if any(c.isspace() for c in word):
            return None, f"{name} word {word!r} contains whitespace"
    try:
        cosine = float(cos_text)
    except ValueError:
        return None, f"cosine {cos_text!r} is not a number"
    if not math.isfinite(cosine) or abs(cosine) > _MAX_ABS_COSINE:
        return None, f"cosine {cos_text!r} is not a finite number in [-1, 1]"
    return LexiconPair(english, chinese, cosine, lineno), ""


@dataclass(frozen=True)
class WordPair:
    """One word-by-word lookup: source tokens ``source`` [a, b) became rendered tokens ``target`` [c, d).

    ``word`` is the source word looked up (zh: the characters joined; en: the word); ``translated`` is
    False when the lexicon lacked it and it was kept as it is.
    """

    source: tuple[int, int]
    target: tuple[int, int]
    word: str
    translated: bool


@dataclass(frozen=True)
class Rendering:
    """A sentence rendered word by word, with its word alignment (DESIGN.md, Model 5).

    ``tokens``: the rendered tokens (zh -> en: English words; en -> zh: Chinese characters and kept English
    words). ``pairs``: one :class:`WordPair` per source word, in order; their ``source`` ranges tile the
    ``n_source`` source tokens and their ``target`` ranges tile ``tokens`` (checked on construction), so
    every source token maps to exactly one word and every rendered token comes from exactly one word.
    ``tags`` (en -> zh only): the projected IOB2 tags of ``tokens``. ``entities``: entities of the source
    tags; ``entities_kept``: entities found in the projected tags with the same types in the same order
    (equal to ``entities`` by construction, counted separately as a check); ``entities_translated``: source
    entities all of whose words were translated.
    """

    tokens: list[str]
    pairs: list[WordPair]
    n_source: int
    tags: list[str] | None = None
    entities: int = 0
    entities_kept: int = 0
    entities_translated: int = 0

    def __post_init__(self) -> None:
        s = t = 0
        for p in self.pairs:
            if p.source[0] != s or p.target[0] != t or p.source[1] <= s or p.target[1] <= t:
                raise ValueError(f"word pairs do not tile the sentences: {p} after source {s}, target {t}")
            s, t = p.source[1], p.target[1]
        if s != self.n_source or t != len(self.tokens):
            raise ValueError(f"word pairs cover {s} of {self.n_source} source tokens and {t} of "
                             f"{len(self.tokens)} rendered tokens")
        if self.tags is not None and len(self.tags) != len(self.tokens):
            raise ValueError(f"{len(self.tags)} tags for {len(self.tokens)} rendered tokens")

    @property
    def n_words(self) -> int:
        """Source words (zh: jieba words; en: tokens)."""
        return len(self.pairs)

    @property
    def n_translated(self) -> int:
        """Source words the lexicon translated."""
        return sum(p.translated for p in self.pairs)

    @property
    def n_source_translated(self) -> int:
        """Source tokens (zh: characters) inside translated words."""
        return sum(p.source[1] - p.source[0] for p in self.pairs if p.translated)

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Per rendered token, the [start, end) range of source tokens it came from."""
        out: list[tuple[int, int]] = []
        for p in self.pairs:
            out.extend([p.source] * (p.target[1] - p.target[0]))
        return out

    @property
    def source_spans(self) -> list[tuple[int, int]]:
        """Per source token, the [start, end) range of rendered tokens its word became."""
        out: list[tuple[int, int]] = []
        for p in self.pairs:
            out.extend([p.target] * (p.source[1] - p.source[0]))
        return out


@dataclass
class CoverageCounts:
    """Coverage of a lexicon rendering over sentences (DESIGN.md, Model 5: "Report the rendering's coverage").

    ``direction``: ``zh->en`` or ``en->zh``. ``source_tokens`` / ``rendered_tokens``: tokens read and
    written; ``words``: source words (zh: jieba words; en: tokens); ``translated``: words the lexicon
    translated (the rest were kept as they are); ``source_tokens_translated``: source tokens inside
    translated words. en->zh only: ``entities`` (source), ``entities_kept`` (found again in the projected
    tags, same types) and ``entities_translated`` (every word of the entity translated).
    """

    direction: str = ""
    sentences: int = 0
    source_tokens: int = 0
    rendered_tokens: int = 0
    words: int = 0
    translated: int = 0
    source_tokens_translated: int = 0
    entities: int = 0
    entities_kept: int = 0
    entities_translated: int = 0

    def add(self, rendering: Rendering) -> None:
        """Count one rendered sentence."""
        self.sentences += 1
        self.source_tokens += rendering.n_source
        self.rendered_tokens += len(rendering.tokens)
        self.words += rendering.n_words
        self.translated += rendering.n_translated
        self.source_tokens_translated += rendering.n_source_translated
        self.entities += rendering.entities
        self.entities_kept += rendering.entities_kept
        self.entities_translated += rendering.entities_translated

    @property
    def share_translated(self) -> float:
        """Translated words / words (0.0 when there are no words)."""
        return self.translated / self.words if self.words else 0.0

    @property
    def share_tokens_translated(self) -> float:
        """Source tokens inside translated words / source tokens (0.0 when there are none)."""
        return self.source_tokens_translated / self.source_tokens if self.source_tokens else 0.0

    def as_dict(self) -> dict[str, str | int | float]:
        """A flat row for a coverage table (every count, plus the two shares)."""
        return {"direction": self.direction, "sentences": self.sentences, "source_tokens": self.source_tokens,
                "rendered_tokens": self.rendered_tokens, "words": self.words, "translated": self.translated,
                "share_translated": self.share_translated,
                "source_tokens_translated": self.source_tokens_translated,
                "share_tokens_translated": self.share_tokens_translated, "entities": self.entities,
                "entities_kept": self.entities_kept, "entities_translated": self.entities_translated}


def coverage_table(counts: Mapping[str, CoverageCounts]) -> list[dict[str, str | int | float]]:
    """Rows (``pandas.DataFrame(rows)``-ready) of named coverage counts, e.g. ``{"conll2003/train": ...}``;
    the name goes in the ``set`` column."""
    return [{"set": name, **c.as_dict()} for name, c in counts.items()]


def surface_forms(token_lists: Iterable[Sequence[str]]) -> dict[str, str]:
    """Lower-cased word -> its most frequent surface form in ``token_lists`` (ties: the form seen first).

    Pass it as ``casing`` to :func:`render_zh` to give a cased English teacher ``China`` rather than the
    lexicon's ``china`` (the lexicon's English side is lower-cased).
    """
    counts: Counter[str] = Counter()
    for toks in token_lists:
        counts.update(toks)
    best: dict[str, tuple[int, str]] = {}
    for form, n in counts.items():  # Counter keeps first-seen order, so a strict > keeps the first form
        key = form.lower()
        if key not in best or n > best[key][0]:
            best[key] = (n, form)
    return {k: form for k, (_, form) in best.items()}


def _check_tokens(tokens: Sequence[str]) -> None:
    for i, tok in enumerate(tokens):
        if not isinstance(tok, str) or not tok:
            raise ValueError(f"token {i} is empty or not a string: {tok!r}")


def render_zh(chars: Sequence[str], lexicon: Lexicon, *, words: Sequence[str] | None = None,
              casing: Mapping[str, str] | None = None) -> Rendering:
    """Render a Chinese sentence word by word into English (DESIGN.md, Model 5; Feng et al. 2018).

    ``chars``: the sentence's tokens (one character each; a token of several characters, such as Weibo's
    doubled U+FFFD, is never split). ``words``: its segmentation (default: ``jieba`` through
    :func:`~xner_lib.vectors.segment_chinese`); a word boundary that falls inside a token is dropped, so
    the words there merge. Each word becomes one English token: its translation, or the word itself when
    the lexicon lacks it. ``casing`` (e.g. :func:`surface_forms` of CoNLL train) maps a lower-cased English
    translation to the form written. Every source token lies in exactly one word (``Rendering.pairs``).
    """
    toks = list(chars)
    _check_tokens(toks)
    text = "".join(toks)
    if words is None:
        words = segment_chinese([toks])[0] if toks else []
    elif "".join(words) != text:
        raise ValueError(f"the words {list(words)!r} do not concatenate to the sentence {text!r}")
    token_at: dict[int, int] = {}  # character offset of a token boundary -> index of the token starting there
    offset = 0
    for i, tok in enumerate(toks):
        token_at[offset] = i
        offset += len(tok)
    token_at[offset] = len(toks)
    tokens: list[str] = []
    pairs: list[WordPair] = []
    start, offset = 0, 0
    for w in words:
        offset += len(w)
        end = token_at.get(offset)
        if end is None or end == start:  # a boundary inside a token: the word runs on
            continue
        word = "".join(toks[start:end])
        english = lexicon.zh_to_en(word)
        if english is not None and casing is not None:
            english = casing.get(english.lower(), english)
        pairs.append(WordPair((start, end), (len(tokens), len(tokens) + 1), word, english is not None))
        tokens.append(word if english is None else english)
        start = end
    return Rendering(tokens, pairs, len(toks))


def _chunks(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Strict IOB2 chunks ``(type, start, end)``."""
    out: list[tuple[str, int, int]] = []
    for i, tag in enumerate(tags):
        if tag.startswith("B-"):
            out.append((tag[2:], i, i + 1))
        elif tag.startswith("I-") and out and out[-1][2] == i and out[-1][0] == tag[2:]:
            out[-1] = (out[-1][0], out[-1][1], i + 1)
    return out


def iob2_problem(tags: Sequence[str]) -> str:
    """Why ``tags`` is not a valid IOB2 sequence (``""`` when it is): every tag is ``O``, ``B-X`` or
    ``I-X`` with a non-empty type, and ``I-X`` follows ``B-X`` or ``I-X``."""
    prev = "O"
    for i, tag in enumerate(tags):
        if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
            return f"tag {i} {tag!r} is not O, B-X or I-X"
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            return f"tag {i} {tag!r} follows {prev!r}"
        prev = tag
    return ""


def render_en(tokens: Sequence[str], tags: Sequence[str], lexicon: Lexicon) -> tuple[list[str], list[str], Rendering]:
    """Render a tagged English sentence word by word into Chinese units, projecting its IOB2 tags
    (DESIGN.md, Model 5: the student's training input; Feng et al. 2018).

    A translated word becomes the characters of its translation; a word the lexicon lacks stays one token
    as it is. A word tagged ``B-X`` gives ``B-X`` to its first unit and ``I-X`` to the others; ``I-X`` and
    ``O`` words give their tag to every unit. Each word yields at least one unit, so the result is valid
    IOB2 with the same entities (count and types) as the source; this is checked, and counted on the
    returned :class:`Rendering`. Returns ``(units, unit tags, rendering)``.

    Raises ``ValueError`` when ``tokens`` and ``tags`` differ in length or ``tags`` is not valid IOB2.
    """
    toks = list(tokens)
    _check_tokens(toks)
    if len(toks) != len(tags):
        raise ValueError(f"{len(toks)} tokens but {len(tags)} tags")
    problem = iob2_problem(tags)
    if problem:
        raise ValueError(f"source tags are not IOB2: {problem}")
    units: list[str] = []
    out_tags: list[str] = []
    pairs: list[WordPair] = []
    for i, (word, tag) in enumerate(zip(toks, tags, strict=True)):
        chinese = lexicon.en_to_zh(word)
        pieces = list(chinese) if chinese is not None else [word]
        pairs.append(WordPair((i, i + 1), (len(units), len(units) + len(pieces)), word, chinese is not None))
        units.extend(pieces)
        rest = tag if tag == "O" else "I-" + tag[2:]
        out_tags.extend([tag] + [rest] * (len(pieces) - 1))
    source = _chunks(tags)
    projected = _chunks(out_tags)
    if [c[0] for c in projected] != [c[0] for c in source] or iob2_problem(out_tags):
        raise AssertionError(f"label projection lost or changed entities: {tags} -> {out_tags}")
    translated = sum(all(pairs[k].translated for k in range(a, b)) for _, a, b in source)
    rendering = Rendering(units, pairs, len(toks), out_tags, len(source), len(projected), translated)
    return units, out_tags, rendering


def _token_lists(data: Dataset | Iterable[Sentence | Sequence[str]]) -> list[list[str]]:
    return [list(s.tokens) if isinstance(s, Sentence) else list(s) for s in data]


def render_sentences_zh(data: Dataset | Iterable[Sentence | Sequence[str]], lexicon: Lexicon, *,
                        casing: Mapping[str, str] | None = None) -> list[Rendering]:
    """:func:`render_zh` of every sentence (a Chinese :class:`Dataset`, sentences or character lists);
    ``jieba`` runs once per sentence."""
    if isinstance(data, Dataset) and data.language != "zh":
        raise ValueError(f"dataset {data.name}/{data.split} is {data.language!r}, not Chinese")
    lists = _token_lists(data)
    segmented = segment_chinese(lists)
    return [render_zh(toks, lexicon, words=words, casing=casing)
            for toks, words in zip(lists, segmented, strict=True)]


def render_dataset_zh(data: Dataset | Iterable[Sentence | Sequence[str]], lexicon: Lexicon, *,
                      casing: Mapping[str, str] | None = None) -> tuple[list[list[str]], CoverageCounts]:
    """The English renderings (token lists, in order) of a Chinese corpus for the teacher, and their
    coverage (``zh->en``). See :func:`render_zh`."""
    renderings = render_sentences_zh(data, lexicon, casing=casing)
    counts = CoverageCounts("zh->en")
    for r in renderings:
        counts.add(r)
    return [r.tokens for r in renderings], counts


@dataclass
class RenderedDataset(Dataset):
    """A CoNLL corpus rendered into Chinese units (:func:`render_dataset_en`).

    The format stays ``conll`` (CoNLL labels with MISC; CoNLL views and decoding labels apply), the
    language is ``zh`` (units: characters, plus kept English words as single tokens). ``renderings[i]``
    aligns sentence ``i`` with its English source sentence; ``lines`` of a unit is its source word's line.
    """

    renderings: list[Rendering] = field(default_factory=list)

    @property
    def language(self) -> str:
        """Always ``zh``: the sentences are Chinese renderings."""
        return "zh"

    def head(self, n: int | None) -> RenderedDataset:
        """The first ``n`` sentences (all when None) and their renderings, as a new rendered dataset."""
        if n is not None and n < 0:
            raise ValueError(f"head(n) takes n >= 0 sentences, got {n}")
        if n is None or n >= len(self.sentences):
            return self
        kept = self.sentences[:n]
        return replace(self, sentences=kept, docs=kept[-1].doc if kept else 0, renderings=self.renderings[:n])


def render_dataset_en(dataset: Dataset, lexicon: Lexicon) -> tuple[RenderedDataset, CoverageCounts]:
    """Render an English corpus (CoNLL, IOB2) into Chinese with projected tags (:func:`render_en`), and its
    coverage (``en->zh``). The result is named ``<name>-rendered-zh``, keeps the split, path and documents,
    and reads as Chinese (:class:`RenderedDataset`)."""
    if dataset.language != "en":
        raise ValueError(f"dataset {dataset.name}/{dataset.split} is {dataset.language!r}, not English")
    counts = CoverageCounts("en->zh")
    sentences: list[Sentence] = []
    renderings: list[Rendering] = []
    for s in dataset.sentences:
        units, tags, r = render_en(s.tokens, s.tags, lexicon)
        lines = [s.lines[p.source[0]] for p in r.pairs for _ in range(p.target[1] - p.target[0])]
        sentences.append(Sentence(units, tags, lines, s.source, s.doc, [], Counter(s.repaired)))
        renderings.append(r)
        counts.add(r)
    out = RenderedDataset(f"{dataset.name}-rendered-zh", dataset.split, dataset.format, dataset.path, sentences,
                          dataset.docs, renderings)
    return out, counts


__all__ = [
    "LEXICON_COLUMNS", "CoverageCounts", "Lexicon", "LexiconFormatError", "LexiconPair", "RenderedDataset",
    "Rendering", "WordPair", "coverage_table", "iob2_problem", "render_dataset_en", "render_dataset_zh", "render_en",
    "render_sentences_zh", "render_zh", "surface_forms",
]
