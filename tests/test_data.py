"""Readers, validation and label harmonisation on hand-written fixtures and on the real corpora."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from xner_lib.cli import main as cli
from xner_lib.data import (
    CORPUS_FILES,
    HARMONISATION,
    DataFormatError,
    harmonise,
    read_file,
    repair_orphans,
)


def test_conll_reader_keeps_tokens_tags_lines_and_docs(fixtures: Path) -> None:
    ds = read_file(fixtures / "conll_small.txt", "conll")
    assert ds.docs == 2
    assert [s.tokens for s in ds] == [["EU", "rejects", "German", "call", "."], ["Peter", "Blackburn"],
                                      ["BRUSSELS", "1996-08-22"]]
    assert ds.sentences[0].tags == ["B-ORG", "O", "B-MISC", "O", "O"]
    assert ds.sentences[0].lines == [3, 4, 5, 6, 7]
    assert ds.sentences[2].lines == [14, 15]
    assert ds.sentences[2].doc == 2
    assert ds.entity_counts() == {"ORG": 1, "MISC": 1, "PER": 1, "LOC": 1}
    assert ds.language == "en"


def test_weibo_reader_splits_char_from_position_digits(fixtures: Path) -> None:
    with pytest.warns(UserWarning, match="repaired 1 orphan"):
        ds = read_file(fixtures / "weibo_small.txt", "weibo", name="weibo", split="test")
    assert (ds.name, ds.split) == ("weibo", "test")  # a token's parse once overwrote the split
    first, second = ds.sentences
    assert first.tokens == list("我爱北京的张三老师")
    assert first.word_pos == [0, 1, 0, 1, 0, 0, 1, 0, 1]
    # '310' is the digit 3 at position 10; a double U+FFFD token keeps both characters
    assert second.tokens == ["3", "\ufffd\ufffd", "李", "四"]
    assert second.word_pos == [10, 0, 0, 1]
    # the orphan I-PER.NAM after O becomes B-PER.NAM and is counted, the entity is kept
    assert second.tags == ["O", "O", "B-PER.NAM", "I-PER.NAM"]
    assert ds.repaired_orphans == {"PER.NAM": 1}
    assert ds.language == "zh"


def test_peoples_daily_reader(fixtures: Path) -> None:
    ds = read_file(fixtures / "peoples_daily_small.txt", "peoples_daily")
    assert len(ds) == 2 and ds.n_tokens == 11
    assert ds.entity_counts() == {"LOC": 1, "ORG": 1, "PER": 1}


def test_repair_orphans_is_iob1_to_iob2() -> None:
    tags = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG", "I-ORG"]
    assert repair_orphans(tags) == {"PER": 1, "LOC": 1, "ORG": 1}
    assert tags == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG", "I-ORG"]


IOB1_DOCS = """-DOCSTART- -X- -X- O

A NNP B-NP I-PER
b VBZ O O

-DOCSTART- -X- -X- O

C NNP B-NP I-ORG
D NNP B-NP I-LOC
e VBZ O O

F NNP B-NP B-PER
G NNP B-NP I-PER

-DOCSTART- -X- -X- O

H NNP B-NP I-MISC
"""


def test_head_reports_the_counts_of_the_sentences_it_holds(tmp_path: Path) -> None:
    """The first n sentences carry the counts a file of just those sentences would give, not the whole file's."""
    path = tmp_path / "iob1.txt"
    path.write_text(IOB1_DOCS, encoding="utf-8")
    with pytest.warns(UserWarning, match="repaired 4 orphan"):
        ds = read_file(path, "conll")
    assert (len(ds), ds.docs, ds.repaired_orphans) == (4, 3, {"PER": 1, "ORG": 1, "LOC": 1, "MISC": 1})
    blocks = IOB1_DOCS.split("\n\n")  # DOCSTART and sentence blocks, in file order
    for n, n_blocks in ((0, 0), (1, 2), (2, 4), (3, 5)):
        head = ds.head(n)
        assert head.sentences == ds.sentences[:n]
        prefix = tmp_path / f"first{n}.txt"
        prefix.write_text("\n\n".join(blocks[:n_blocks]) + "\n", encoding="utf-8")
        if n:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                alone = read_file(prefix, "conll")
            assert len(alone) == n
            expected = (alone.docs, alone.repaired_orphans, alone.entity_counts())
        else:
            expected = (0, {}, {})
        assert (head.docs, head.repaired_orphans, head.entity_counts()) == expected, n
    assert ds.head(4) is ds and ds.head(None) is ds
    with pytest.raises(ValueError, match="n >= 0"):
        ds.head(-1)


def test_weibo_head_leaves_out_the_orphans_of_the_sentences_it_drops(fixtures: Path) -> None:
    with pytest.warns(UserWarning, match="repaired 1 orphan"):
        ds = read_file(fixtures / "weibo_small.txt", "weibo")
    assert ds.head(1).repaired_orphans == {} and ds.repaired_orphans == {"PER.NAM": 1}
    assert [s.repaired for s in ds] == [{}, {"PER.NAM": 1}]


@pytest.mark.parametrize(
    ("fmt", "content", "reason"),
    [
        ("conll", b"EU NNP B-NP B-ORG\nrejects VBZ O\n\n", "expected 4 columns, found 3"),
        ("conll", b"EU NNP B-NP B-ORG\nrejects VBZ B-VP B-FOO\n\n", "unknown tag 'B-FOO'"),
        ("weibo", "我0\tO\n爱\tO\n\n".encode(), "lacks its position digits"),
        ("weibo", "我0\tO\n爱0 O\n\n".encode(), "expected 2 columns, found 1"),
        ("peoples_daily", "在 O\n北 B-GPE\n\n".encode(), "unknown tag 'B-GPE'"),
        ("peoples_daily", b"\xe5\x9c\xa8 O\n\xff\xfe O\n\n", "not UTF-8"),
    ],
)
def test_malformed_line_is_reported_with_file_and_line(tmp_path: Path, fmt: str, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataFormatError) as err:
        read_file(path, fmt)
    assert err.value.problems == [err.value.problems[0]]
    assert err.value.problems[0].startswith(f"{path}:2: ")
    assert reason in err.value.problems[0]


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(b"\n\n")
    with pytest.raises(DataFormatError, match=f"{path}:1: empty file"):
        read_file(path, "conll")


def test_every_bad_line_is_listed(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("在 O\n北 X\n\n京 O O\n", encoding="utf-8")
    with pytest.raises(DataFormatError) as err:
        read_file(path, "peoples_daily")
    assert [p.split(": ")[0] for p in err.value.problems] == [f"{path}:2", f"{path}:4"]


def test_cli_validate_prints_counts(fixtures: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["validate", str(fixtures / "peoples_daily_small.txt"), "--format", "peoples_daily"]) == 0
    out = capsys.readouterr().out
    assert "sentences: 2" in out and "tokens: 11" in out and "entities: 3" in out and "  LOC: 1" in out


def test_cli_validate_prints_file_line_reason_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.conll"
    path.write_text("EU NNP B-NP B-ORG\nrejects VBZ O\n\n", encoding="utf-8")
    assert cli(["validate", str(path), "--format", "conll"]) == 1
    assert capsys.readouterr().out.strip() == f"{path}:2: expected 4 columns, found 3: 'rejects VBZ O'"


def test_harmonisation_weibo_views() -> None:
    tags = ["B-GPE.NAM", "I-GPE.NAM", "B-PER.NOM", "I-PER.NOM", "B-ORG.NAM", "O"]
    assert harmonise(tags, "weibo_nam") == ["B-LOC", "I-LOC", "O", "O", "B-ORG", "O"]
    assert harmonise(tags, "weibo_nam_nom") == ["B-LOC", "I-LOC", "B-PER", "I-PER", "B-ORG", "O"]
    assert harmonise(["B-MISC", "I-MISC", "B-PER"], "chinese_prediction") == ["O", "O", "B-PER"]
    with pytest.raises(KeyError, match="MISC"):
        harmonise(["B-MISC"], "peoples_daily")


def test_method_doc_shows_the_harmonisation_table() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "method.md").read_text(encoding="utf-8")
    for view, table in HARMONISATION.items():
        for source, target in table.items():
            row = f"| `{view}` | {source} | {target or 'O'} |"
            assert row in doc, f"docs/method.md lacks the row {row}"


# SOURCES.md, counted conlleval-style: (sentences, tokens, entities, per type, orphans repaired)
EXPECTED = {
    "conll2003/train.txt": (14041, 203621, 23499, {"LOC": 7140, "MISC": 3438, "ORG": 6321, "PER": 6600}, 0),
    "conll2003/dev.txt": (3250, 51362, 5942, {"LOC": 1837, "MISC": 922, "ORG": 1341, "PER": 1842}, 0),
    "conll2003/test.txt": (3453, 46435, 5648, {"LOC": 1668, "MISC": 702, "ORG": 1661, "PER": 1617}, 0),
    "weibo/train.txt": (1350, 73778, 1895, {"GPE.NAM": 205, "GPE.NOM": 8, "LOC.NAM": 56, "LOC.NOM": 51,
                                            "ORG.NAM": 183, "ORG.NOM": 42, "PER.NAM": 578, "PER.NOM": 772}, 10),
    "weibo/dev.txt": (270, 14509, 389, {"GPE.NAM": 26, "GPE.NOM": 1, "LOC.NAM": 6, "LOC.NOM": 6, "ORG.NAM": 47,
                                        "ORG.NOM": 5, "PER.NAM": 90, "PER.NOM": 208}, 0),
    "weibo/test.txt": (270, 14842, 418, {"GPE.NAM": 47, "GPE.NOM": 2, "LOC.NAM": 19, "LOC.NOM": 9, "ORG.NAM": 39,
                                         "ORG.NOM": 17, "PER.NAM": 113, "PER.NOM": 172}, 4),
    "peoples_daily/dev.txt": (2318, 109870, 3819, {"LOC": 1951, "ORG": 984, "PER": 884}, 0),
    "peoples_daily/test.txt": (4636, 219197, 7707, {"LOC": 3658, "ORG": 2185, "PER": 1864}, 0),
}


@pytest.mark.parametrize("relpath", sorted(EXPECTED))
def test_real_corpus_counts_match_sources_md(data_dir: Path, relpath: str) -> None:
    f = next(f for f in CORPUS_FILES if f.relpath == relpath)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = read_file(data_dir / relpath, f.format)
    sentences, tokens, entities, per_type, orphans = EXPECTED[relpath]
    assert (len(ds), ds.n_tokens, sum(ds.entity_counts().values())) == (sentences, tokens, entities)
    assert dict(ds.entity_counts()) == per_type
    assert sum(ds.repaired_orphans.values()) == orphans


def test_original_iob1_files_read_to_the_same_tags(data_dir: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        iob1 = read_file(data_dir / "conll2003/original_iob1/eng.testb", "conll")
    iob2 = read_file(data_dir / "conll2003/test.txt", "conll")
    assert sum(iob1.repaired_orphans.values()) == 5628
    assert [s.tags for s in iob1] == [s.tags for s in iob2]
