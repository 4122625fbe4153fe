"""Bad data (issue 17, point 1): the three readers, ``validate`` and ``evaluate --input`` on random, mutated
and garbled files (hypothesis).

Every outcome is a dataset holding exactly the sentences and tokens written (counted by the rules of
``shared/data/SOURCES.md``), or a :class:`DataFormatError` whose every line reads ``FILE:LINE: reason`` and
names exactly the lines that are wrong; never another exception, never a sentence or token dropped.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from xner_lib import cli
from xner_lib.data import FORMATS, DataFormatError, Dataset, allowed_tags, read_file

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DOCSTART = "-DOCSTART- -X- -X- O"
#: tags no format accepts, or that one format accepts and another does not
BAD_TAGS = ("B-FOO", "b-PER", "E-LOC", "S-ORG", "o", "0", "B-", "I-", "I-MISC", "B-PER.NAM", "B-GPE.NOM",
            "B-PER")


# --- what a file holds, line by line ---------------------------------------------------------------------------

@dataclass
class Line:
    """One line of a corpus file: its fields, the separators between them, the whitespace around them and
    its ending; ``raw`` replaces the encoded text (a mutation that is not UTF-8)."""

    fields: list[str] = field(default_factory=list)
    seps: list[str] = field(default_factory=list)
    lead: str = ""
    trail: str = ""
    ending: str = "\n"
    token: bool = False
    raw: bytes | None = None

    def encode(self) -> bytes:
        if self.raw is not None:
            return self.raw + self.ending.encode()
        text = self.fields[0] + "".join(s + f for s, f in zip(self.seps, self.fields[1:], strict=True))
        return (self.lead + text + self.trail + self.ending).encode("utf-8")


@dataclass
class Written:
    """A generated file: its lines, a BOM or not, and what a reader must find (tags in IOB2, repaired)."""

    fmt: str
    lines: list[Line]
    bom: bool
    sentences: list[tuple[list[str], list[str], list[int], list[int]]]  # tokens, tags, lines, weibo positions
    docs: int
    repaired: Counter[str]

    def to_bytes(self) -> bytes:
        return (b"\xef\xbb\xbf" if self.bom else b"") + b"".join(line.encode() for line in self.lines)

    def token_lines(self) -> list[int]:
        return [i for i, line in enumerate(self.lines, start=1) if line.token]


def iob2(tags: list[str]) -> tuple[list[str], Counter[str]]:
    """The tags with every orphan ``I-X`` (first, after ``O`` or after another type) as ``B-X``, and the count
    per type: the rule SOURCES.md counts chunks by."""
    out, repaired, prev = [], Counter[str](), "O"
    for tag in tags:
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            repaired[tag[2:]] += 1
            tag = "B-" + tag[2:]
        out.append(tag)
        prev = tag
    return out, repaired


# --- strategies ---------------------------------------------------------------------------------------------------

#: a character of a whitespace-separated token: no separator (Z), no control, format or unassigned code point (C)
WORD_CHAR = st.characters(blacklist_categories=("Z", "C"))
#: a Weibo character: anything but the line structure (tab, CR, LF), a BOM or a lone surrogate
WEIBO_CHAR = st.one_of(st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\r\n\ufeff"),
                       st.just("\ufffd\ufffd"))
SPACE = st.text(alphabet=" \t", min_size=1, max_size=3)
PAD = st.text(alphabet=" \t", max_size=2)
BLANK = st.sampled_from(["", " ", "\t", " \t "])
ENDING = st.sampled_from(["\n", "\r\n"])


@st.composite
def token_line(draw: st.DrawFn, fmt: str, tag: str) -> tuple[Line, str, int]:
    """A token line of ``fmt`` with ``tag``; returns the line, the token the reader keeps and its Weibo position."""
    if fmt == "weibo":
        char, pos = draw(WEIBO_CHAR), draw(st.integers(0, 30))
        return Line([f"{char}{pos}", tag], ["\t"], ending=draw(ENDING), token=True), char, pos
    word = draw(st.text(WORD_CHAR, min_size=1, max_size=8).filter(lambda w: w != "-DOCSTART-"))
    n = 4 if fmt == "conll" else 2
    middle = [draw(st.text(WORD_CHAR, min_size=1, max_size=4)) for _ in range(n - 2)]
    seps = [draw(SPACE) for _ in range(n - 1)]
    return Line([word, *middle, tag], seps, draw(PAD), draw(PAD), draw(ENDING), token=True), word, -1


def blank_lines(draw: st.DrawFn, lo: int, hi: int) -> list[Line]:
    return [Line([draw(BLANK)], [], ending=draw(ENDING)) for _ in range(draw(st.integers(lo, hi)))]


@st.composite
def written(draw: st.DrawFn, fmt: str) -> Written:
    """A valid file of ``fmt`` in any layout the format allows: CRLF or LF per line, a BOM, separators of
    mixed tabs and spaces (CoNLL, People's Daily), whitespace-only and repeated blank lines, DOCSTART lines
    (CoNLL), orphan I- tags, with or without a final blank line or final newline."""
    tagset = sorted(allowed_tags(fmt))
    lines: list[Line] = blank_lines(draw, 0, 2)
    sentences, docs, repaired = [], 0, Counter[str]()
    for _ in range(draw(st.integers(1, 5))):
        if fmt == "conll" and draw(st.booleans()):
            lines.append(Line(DOCSTART.split(" "), [" "] * 3, ending=draw(ENDING)))
            lines += blank_lines(draw, 0, 2)
            docs += 1
        tags = draw(st.lists(st.sampled_from(tagset), min_size=1, max_size=6))
        tokens, numbers, positions = [], [], []
        for tag in tags:
            line, tok, pos = draw(token_line(fmt, tag))
            lines.append(line)
            tokens.append(tok)
            numbers.append(len(lines))
            if fmt == "weibo":
                positions.append(pos)
        fixed, rep = iob2(tags)
        repaired += rep
        sentences.append((tokens, fixed, numbers, positions))
        lines += blank_lines(draw, 1, 3)
    lines = lines[:len(lines) - draw(st.integers(0, len(lines) - max(numbers)))]  # no final blank line, or some
    if draw(st.booleans()):
        lines[-1] = replace(lines[-1], ending="")  # no final newline
    return Written(fmt, lines, draw(st.booleans()), sentences, docs, repaired)


def _mutate_fields(line: Line, fmt: str, kind: str, draw: st.DrawFn) -> Line:
    """``line`` with one defect of ``kind`` in its fields."""
    if kind == "extra column":
        return replace(line, fields=[*line.fields, "EXTRA"], seps=[*line.seps, "\t" if fmt == "weibo" else " "])
    if kind == "truncated":
        cut = draw(st.integers(1, len(line.fields) - 1))
        return replace(line, fields=line.fields[:cut], seps=line.seps[:cut - 1])
    if kind == "tag cut short":
        return replace(line, fields=[*line.fields[:-1], line.fields[-1][:-1]])
    if kind == "unknown tag":
        bad = draw(st.sampled_from([t for t in BAD_TAGS if t not in allowed_tags(fmt)]))
        return replace(line, fields=[*line.fields[:-1], bad])
    if kind == "space for tab":
        return replace(line, seps=[draw(SPACE.filter(lambda s: "\t" not in s))])
    assert kind == "bad position", kind
    char = line.fields[0][:2] if line.fields[0].startswith("\ufffd\ufffd") else line.fields[0][:1]
    digits = draw(st.sampled_from(["", "²", "٣", "x", "1" * 5000, "-1", " 1"]))
    return replace(line, fields=[char + digits, *line.fields[1:]])


MUTATIONS = {fmt: ["extra column", "truncated", "tag cut short", "unknown tag", "not UTF-8"]
             + (["space for tab", "bad position"] if fmt == "weibo" else []) for fmt in FORMATS}


@st.composite
def mutated(draw: st.DrawFn, fmt: str) -> tuple[Written, list[int]]:
    """A valid file of ``fmt`` with one to three of its token lines broken; returns it and the broken lines."""
    w = draw(written(fmt))
    targets = draw(st.lists(st.sampled_from(w.token_lines()), min_size=1, max_size=3, unique=True))
    lines = list(w.lines)
    for n in targets:
        kind = draw(st.sampled_from(MUTATIONS[fmt]))
        if kind == "not UTF-8":
            body = replace(lines[n - 1], ending="").encode()
            at = draw(st.integers(0, len(body)))
            bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xe4\xb8", b"\x80", b"\xed\xa0\x80"]))
            lines[n - 1] = replace(lines[n - 1], raw=body[:at] + bad + body[at:])
        else:
            lines[n - 1] = _mutate_fields(lines[n - 1], fmt, kind, draw)
    return replace(w, lines=lines), sorted(targets)


#: pieces of garbled files
FRAGMENTS = [b"\n", b"\r\n", b"\r", b" ", b"  ", b"\t", b"\xef\xbb\xbf", b"\xff", b"\xc3", b"O", b"B-PER", b"I-PER",
             b"I-LOC", b"B-MISC", b"x", "中".encode(), "\ufffd".encode(), b"-DOCSTART-", b"-X-", b"0", b"12",
             b"B-PER.NAM", b"I-ORG.NOM", b"NNP", b"B-NP", "²".encode(), "\u3000".encode(), "\x85".encode(), b"\x0c",
             b"1" * 4400]


# --- helpers ------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def file_with(content: bytes) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "corpus.txt"
        path.write_bytes(content)
        yield path


def read(path: Path, fmt: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # orphan repairs: counted on the dataset, checked below
        return read_file(path, fmt)


def problem_lines(problems: list[str], path: Path) -> list[int]:
    """The line of every problem, each checked to read ``FILE:LINE: reason``."""
    pattern = re.compile(rf"{re.escape(str(path))}:(\d+): \S")
    numbers = []
    for problem in problems:
        m = pattern.match(problem)
        assert m, f"not FILE:LINE: reason: {problem!r}"
        numbers.append(int(m.group(1)))
    return numbers


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def assert_holds_exactly(ds: Dataset, w: Written) -> None:
    assert [(s.tokens, s.tags, s.lines) for s in ds] == [(t, g, n) for t, g, n, _ in w.sentences]
    if w.fmt == "weibo":
        assert [s.word_pos for s in ds] == [p for _, _, _, p in w.sentences]
    assert ds.n_tokens == len(w.token_lines()) and ds.docs == w.docs and ds.repaired_orphans == w.repaired


def content_lines(raw: bytes, fmt: str) -> list[list[int]]:
    """The oracle of SOURCES.md's counting rules on a file that decodes: a token is a non-blank line that is
    not a ``-DOCSTART-`` line; a sentence is a maximal run of token lines. Returns the runs' line numbers."""
    runs: list[list[int]] = [[]]
    for n, chunk in enumerate(raw.split(b"\n"), start=1):
        text = chunk.decode("utf-8").removeprefix("\ufeff" if n == 1 else "").rstrip("\r")
        if not text.strip() or (fmt == "conll" and text.split()[0] == "-DOCSTART-"):
            runs.append([])
        else:
            runs[-1].append(n)
    return [r for r in runs if r]


# --- the readers --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_a_valid_file_in_any_layout_reads_to_exactly_what_was_written(fmt: str) -> None:
    @SETTINGS
    @given(written(fmt))
    def check(w: Written) -> None:
        with file_with(w.to_bytes()) as path:
            assert_holds_exactly(read(path, fmt), w)
            rc, out, _ = run_cli(["validate", str(path), "--format", fmt])
        assert rc == 0
        assert f"sentences: {len(w.sentences)}\ntokens: {len(w.token_lines())}\n" in out
        assert f"orphan I- repaired to B-: {sum(w.repaired.values())}" in out

    check()


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_broken_line_is_named_with_file_and_line_and_no_other(fmt: str) -> None:
    @SETTINGS
    @given(mutated(fmt))
    def check(case: tuple[Written, list[int]]) -> None:
        w, broken = case
        with file_with(w.to_bytes()) as path:
            with pytest.raises(DataFormatError) as err:
                read(path, fmt)
            assert problem_lines(err.value.problems, path) == broken
            rc, out, _ = run_cli(["validate", str(path), "--format", fmt])
            assert rc == 1 and out.splitlines() == err.value.problems

    check()


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_garbled_file_is_read_whole_or_refused_line_by_line(fmt: str) -> None:
    @SETTINGS
    @given(st.lists(st.sampled_from(FRAGMENTS), max_size=60))
    @example([b"x", "²".encode(), b"\t", b"O"])  # a Unicode digit that int() refuses
    @example([b"x", b"1" * 4400, b"\t", b"O"])  # more digits than int() parses
    @example([b"-DOCSTART-", b"x", b" ", b"N", b" ", b"N", b" ", b"O"])  # a token that begins like DOCSTART
    def check(fragments: list[bytes]) -> None:
        raw = b"".join(fragments)
        with file_with(raw) as path:
            try:
                ds = read(path, fmt)
            except DataFormatError as err:
                n_lines = raw.count(b"\n") + 1
                assert all(1 <= n <= n_lines for n in problem_lines(err.problems, path))
                rc, out, _ = run_cli(["validate", str(path), "--format", fmt])
                assert rc == 1 and out.splitlines() == err.problems
                return
        runs = content_lines(raw, fmt)
        assert [s.lines for s in ds] == runs  # no sentence or token dropped, none invented
        text_lines = raw.decode("utf-8").split("\n")
        for s in ds:
            for tok, tag, n in zip(s.tokens, s.tags, s.lines, strict=True):
                assert tok in text_lines[n - 1] and tag[2:] in text_lines[n - 1]

    check()


def test_a_token_that_only_begins_like_docstart_is_a_token(tmp_path: Path) -> None:
    path = tmp_path / "docstart.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\n-DOCSTART-like NN B-NP O\nx NN I-NP B-PER\n", encoding="utf-8")
    ds = read_file(path, "conll")
    assert ds.docs == 1 and ds.sentences[0].tokens == ["-DOCSTART-like", "x"]


# --- evaluate --input reads as validate does ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """``--model DIR --cache-dir DIR`` of an untrained tiny tagger's checkpoint (its scores do not matter here)."""
    import torch

    from xner_lib.encoders import load_encoder
    from xner_lib.model import HeadConfig
    from xner_lib.tagger import build_tagger, save_checkpoint
    from xner_lib.train import TrainConfig

    root = tmp_path_factory.mktemp("bad-data-model")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XNER_CACHE_DIR", str(root / "cache"))
        torch.manual_seed(0)
        enc = load_encoder("tiny-random-bert")
        tagger = build_tagger(HeadConfig(input_dim=enc.hidden_size), enc, finetune=True)
        save_checkpoint(tagger, root / "model", asdict(TrainConfig(encoder="tiny-random-bert")))
        yield ["--model", str(root / "model"), "--cache-dir", str(root / "cache"), "--device", "cpu"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_evaluate_refuses_a_broken_file_with_the_lines_validate_prints(fmt: str, model: list[str]) -> None:
    @settings(SETTINGS, max_examples=25)
    @given(mutated(fmt))
    def check(case: tuple[Written, list[int]]) -> None:
        w, broken = case
        with file_with(w.to_bytes()) as path:
            rc, out, err = run_cli(["evaluate", *model, "--input", str(path), "--format", fmt])
            assert (rc, out) == (1, "")
            assert err.splitlines() == run_cli(["validate", str(path), "--format", fmt])[1].splitlines()
            assert problem_lines(err.splitlines(), path) == broken

    check()


@pytest.mark.parametrize("fmt", FORMATS)
def test_evaluate_scores_every_sentence_and_token_of_a_valid_file(fmt: str, model: list[str]) -> None:
    @settings(SETTINGS, max_examples=8)
    @given(written(fmt))
    def check(w: Written) -> None:
        with file_with(w.to_bytes()) as path:
            out_json = path.with_suffix(".json")
            rc, out, err = run_cli(["evaluate", *model, "--input", str(path), "--format", fmt,
                                    "--out", str(out_json)])
            assert rc == 0, err
            record = json.loads(out_json.read_text(encoding="utf-8"))
        assert (record["sentences"], record["tokens"]) == (len(w.sentences), len(w.token_lines()))
        assert f"{len(w.sentences)} sentences, {len(w.token_lines())} tokens" in out

    check()
