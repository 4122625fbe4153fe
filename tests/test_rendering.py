"""Word-by-word lexicon renderings for reverse-attention transfer (xner_lib.rendering; DESIGN.md Model 5).

A small lexicon is written per test (tmp_path); one test reads the real People's Daily test file
(``$XNER_DATA_DIR`` or the default data directories, skipped only when no data directory exists).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from seqeval.metrics.sequence_labeling import get_entities

from xner_lib.config import REPO_ROOT
from xner_lib.data import load, read_file
from xner_lib.data.sources import candidate_dirs
from xner_lib.encoders import tiny_tokenizer
from xner_lib.rendering import (
    CoverageCounts,
    Lexicon,
    LexiconFormatError,
    LexiconPair,
    RenderedDataset,
    Rendering,
    WordPair,
    coverage_table,
    iob2_problem,
    render_dataset_en,
    render_dataset_zh,
    render_en,
    render_sentences_zh,
    render_zh,
    surface_forms,
)
from xner_lib.units import encode_sentences

FFFD = "\ufffd"

# pandas writes '"' quoted as '""""' (notebook 02 uses DataFrame.to_csv(sep="\t"))
LEXICON_TSV = "".join(line + "\n" for line in [
    "english\tchinese\tcosine",
    "germany\t德国\t0.9",
    "german\t德国\t0.8",
    "german\t德语\t0.85",
    "eu\t欧盟\t0.9",
    "rejects\t拒绝\t0.7",
    "call\t呼吁\t0.6",
    "to\t以\t0.5",
    "british\t英国\t0.8",
    "lamb\t羊肉\t0.7",
    ".\t。\t0.9",
    "peter\t彼得\t0.8",
    "beijing\t北京\t0.9",
    "i\t我\t0.9",
    "me\t我\t0.9",
    "love\t爱\t0.8",
    "love\t喜欢\t0.8",
    '""""\t“\t0.7',
])


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


@pytest.fixture
def lexicon(tmp_path: Path) -> Lexicon:
    return Lexicon.from_tsv(write(tmp_path / "lexicon.tsv", LEXICON_TSV))


def covered(r: Rendering) -> list[int]:
    """Every source index as often as a rendered token's span holds it."""
    return sorted(i for a, b in r.spans for i in range(a, b))


# --- the lexicon -------------------------------------------------------------------------------------------


def test_lookups_both_directions_pick_the_best_cosine(lexicon):
    assert len(lexicon) == 17 and lexicon.n_english == 15 and lexicon.n_chinese == 15
    assert lexicon.en_to_zh("germany") == "德国"
    assert lexicon.en_to_zh("German") == lexicon.en_to_zh("GERMAN") == "德语"  # 0.85 beats 0.8; lower-cased
    assert lexicon.zh_to_en("德国") == "germany"  # 0.9 beats german's 0.8
    assert lexicon.zh_to_en("德语") == "german"
    assert lexicon.en_to_zh('"') == "“"  # pandas quoting undone
    assert lexicon.en_to_zh("boycott") is None and lexicon.zh_to_en("上海") is None
    assert lexicon.zh_to_en("Beijing") is None  # Chinese lookups are exact


def test_ties_go_to_the_earlier_pair_in_both_directions(lexicon):
    assert lexicon.en_to_zh("love") == "爱"  # 爱 and 喜欢 both 0.8: the earlier line
    assert lexicon.zh_to_en("我") == "i"  # i and me both 0.9
    rev = Lexicon(list(reversed(lexicon.pairs)))
    assert rev.en_to_zh("love") == "喜欢" and rev.zh_to_en("我") == "me"
    assert rev.en_to_zh("german") == "德语" and rev.zh_to_en("德国") == "germany"  # strict winners do not move


def test_cased_english_entries_are_found_lower_cased():
    lex = Lexicon([LexiconPair("China", "中国", 0.5), LexiconPair("china", "中华", 0.7)])
    assert lex.en_to_zh("CHINA") == "中华" and lex.zh_to_en("中国") == "China"


# --- bad lexicon files -------------------------------------------------------------------------------------

HEADER = "english\tchinese\tcosine\n"


@pytest.mark.parametrize("text, line, reason", [
    (HEADER + "eu\t欧盟\t0.9\nbad\t坏\n", 3, "expected 3 tab-separated columns"),
    (HEADER + "eu\t欧盟\tabc\n", 2, "is not a number"),
    (HEADER + "eu\t欧盟\t0.9\neu\t欧盟\t1.5\n", 3, "finite number in [-1, 1]"),
    (HEADER + "eu\t欧盟\tnan\n", 2, "finite number in [-1, 1]"),
    (HEADER + "\t欧盟\t0.9\n", 2, "empty english word"),
    (HEADER + "eu\t\t0.9\n", 2, "empty chinese word"),
    (HEADER + "new york\t纽约\t0.9\n", 2, "contains whitespace"),
    (HEADER + '"eu"x\t欧盟\t0.9\n', 2, "bad quoting"),
    ("en\tzh\tcos\neu\t欧盟\t0.9\n", 1, "expected the header"),
    (HEADER, 1, "no translation pairs"),
    ("", 1, "no translation pairs"),
    ((HEADER + "eu\t欧盟\t0.9\n").encode() + b"x\t\xff\xfe\t0.5\n", 3, "not UTF-8"),
])
def test_bad_lexicon_lines_are_named_by_file_and_line(tmp_path, text, line, reason):
    path = write(tmp_path / "bad.tsv", text)
    with pytest.raises(LexiconFormatError) as err:
        Lexicon.from_tsv(path)
    assert f"{path}:{line}: " in str(err.value) and reason in str(err.value)


def test_every_bad_line_is_listed(tmp_path):
    path = write(tmp_path / "bad.tsv", HEADER + "a\tb\n" + "eu\t欧盟\t0.9\n" + "c\td\tx\n")
    with pytest.raises(LexiconFormatError) as err:
        Lexicon.from_tsv(path)
    assert [p.split(": ")[0] for p in err.value.problems] == [f"{path}:2", f"{path}:4"]


def test_missing_lexicon_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope.tsv")):
        Lexicon.from_tsv(tmp_path / "nope.tsv")


def test_blank_lines_and_crlf_are_accepted(tmp_path):
    lex = Lexicon.from_tsv(write(tmp_path / "l.tsv", "english\tchinese\tcosine\r\n\r\neu\t欧盟\t0.9\r\n\n"))
    assert len(lex) == 1 and lex.en_to_zh("EU") == "欧盟" and lex.pairs[0].line == 3


# --- zh -> en ----------------------------------------------------------------------------------------------


def test_zh_rendering_covers_every_character_exactly_once(lexicon):
    chars = list("我爱北京") + [FFFD * 2] + list("天安门")
    # a given segmentation whose boundary falls inside the two-character token: those words merge
    r = render_zh(chars, lexicon, words=["我", "爱", "北京", FFFD, FFFD + "天", "安门"])
    assert r.tokens == ["i", "love", "beijing", FFFD * 2 + "天", "安门"]
    assert r.spans == [(0, 1), (1, 2), (2, 4), (4, 6), (6, 8)]
    assert covered(r) == list(range(len(chars)))
    assert r.source_spans == [(0, 1), (1, 2), (2, 3), (2, 3), (3, 4), (3, 4), (4, 5), (4, 5)]
    assert (r.n_words, r.n_translated, r.n_source_translated) == (5, 3, 4)
    assert [p.translated for p in r.pairs] == [True, True, True, False, False]


def test_zh_rendering_segments_with_jieba(lexicon):
    r = render_zh(list("我爱北京天安门。"), lexicon)
    assert r.tokens == ["i", "love", "beijing", "天安门", "."]
    assert covered(r) == list(range(8)) and r.n_translated == 4
    assert render_zh([], lexicon).tokens == []


def test_unknown_zh_words_are_kept_and_casing_applies(lexicon):
    r = render_zh(list("我爱上海"), lexicon, words=["我", "爱", "上海"])
    assert r.tokens == ["i", "love", "上海"] and [p.word for p in r.pairs] == ["我", "爱", "上海"]
    casing = surface_forms([["I", "love", "Beijing", "beijing", "Beijing", "The", "the"]])
    assert casing == {"i": "I", "love": "love", "beijing": "Beijing", "the": "The"}
    cased = render_zh(list("我爱北京"), lexicon, words=["我", "爱", "北京"], casing=casing)
    assert cased.tokens == ["I", "love", "Beijing"]


def test_zh_rendering_rejects_words_that_are_not_the_sentence(lexicon):
    with pytest.raises(ValueError, match="do not concatenate"):
        render_zh(list("我爱北京"), lexicon, words=["我", "爱"])
    with pytest.raises(ValueError, match="empty"):
        render_zh(["我", ""], lexicon)


def test_a_rendering_must_tile_source_and_target():
    with pytest.raises(ValueError, match="tile"):
        Rendering(["a", "b"], [WordPair((0, 1), (0, 1), "x", True), WordPair((2, 3), (1, 2), "y", True)], 3)
    with pytest.raises(ValueError, match="cover"):
        Rendering(["a"], [WordPair((0, 1), (0, 1), "x", True)], 2)


# --- en -> zh, label projection ----------------------------------------------------------------------------


def test_projection_places_b_and_i_on_multi_character_translations(lexicon):
    tokens = ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
    tags = ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]
    units, out, r = render_en(tokens, tags, lexicon)
    assert units == ["欧", "盟", "拒", "绝", "德", "语", "呼", "吁", "以", "boycott", "英", "国", "羊", "肉", "。"]
    assert out == ["B-ORG", "I-ORG", "O", "O", "B-MISC", "I-MISC", "O", "O", "O", "O", "B-MISC", "I-MISC",
                   "O", "O", "O"]
    assert r.tokens == units and r.tags == out
    assert r.spans[:3] == [(0, 1), (0, 1), (1, 2)] and r.source_spans[5] == (9, 10)
    assert (r.n_words, r.n_translated) == (9, 8) and (r.entities, r.entities_kept, r.entities_translated) == (3, 3, 3)


def test_projection_of_multi_word_and_kept_entities(lexicon):
    tokens = ["Peter", "Blackburn", "met", "Blackburn", "Rovers", "in", "Germany", "Beijing"]
    tags = ["B-PER", "I-PER", "O", "B-ORG", "I-ORG", "O", "B-LOC", "B-LOC"]
    units, out, r = render_en(tokens, tags, lexicon)
    assert units == ["彼", "得", "Blackburn", "met", "Blackburn", "Rovers", "in", "德", "国", "北", "京"]
    assert out == ["B-PER", "I-PER", "I-PER", "O", "B-ORG", "I-ORG", "O", "B-LOC", "I-LOC", "B-LOC", "I-LOC"]
    assert iob2_problem(out) == ""
    src = [(t, tokens[a:b + 1]) for t, a, b in get_entities(tags)]
    got = [(t, units[a:b + 1]) for t, a, b in get_entities(out)]
    assert [t for t, _ in got] == [t for t, _ in src] == ["PER", "ORG", "LOC", "LOC"]
    assert got[1] == ("ORG", ["Blackburn", "Rovers"])  # every word kept: the entity keeps its tags
    assert (r.entities, r.entities_kept, r.entities_translated) == (4, 4, 2)


def test_projection_rejects_bad_source_tags(lexicon):
    with pytest.raises(ValueError, match="not IOB2"):
        render_en(["EU", "call"], ["O", "I-ORG"], lexicon)
    with pytest.raises(ValueError, match="tags"):
        render_en(["EU", "call"], ["O"], lexicon)
    assert iob2_problem(["B-PER", "I-LOC"]) and iob2_problem(["X"]) and not iob2_problem(["B-PER", "I-PER", "O"])


# --- datasets ----------------------------------------------------------------------------------------------


def test_rendered_conll_reads_as_chinese_and_encodes_one_unit_per_token(lexicon, fixtures):
    conll = read_file(fixtures / "conll_small.txt", "conll")
    rendered, counts = render_dataset_en(conll, lexicon)
    assert isinstance(rendered, RenderedDataset) and rendered.language == "zh" and rendered.format == "conll"
    assert len(rendered) == len(conll) and rendered.split == conll.split and rendered.docs == conll.docs
    assert rendered.entity_counts() == conll.entity_counts()
    assert counts.entities == counts.entities_kept == sum(conll.entity_counts().values())
    assert counts.words == conll.n_tokens and counts.rendered_tokens == rendered.n_tokens
    assert 0 < counts.translated < counts.words
    for src, out, r in zip(conll, rendered, rendered.renderings, strict=True):
        assert iob2_problem(out.tags) == "" and out.tokens == r.tokens
        assert out.lines == [src.lines[a] for a, _ in r.spans]
    kept = [t for s in rendered for t in s.tokens if len(t) > 1]
    assert "Blackburn" in kept
    encoded = encode_sentences(tiny_tokenizer(), rendered.sentences, rendered.language, zh_units="char")
    for e, s in zip(encoded, rendered, strict=True):  # a kept English word is one unit, as every character
        assert e.n_units == len(s) and e.unit_spans == [(t, t + 1) for t in range(len(s))]
    token_units = encode_sentences(tiny_tokenizer(), rendered.sentences, "zh", zh_units="token")
    assert all(e.n_tokens == len(s) for e, s in zip(token_units, rendered, strict=True))
    head = rendered.head(1)
    assert isinstance(head, RenderedDataset) and head.language == "zh" and len(head.renderings) == 1


def test_dataset_renderers_check_the_language(lexicon, fixtures):
    with pytest.warns(UserWarning, match="repaired 1 orphan"):
        weibo = read_file(fixtures / "weibo_small.txt", "weibo")
    conll = read_file(fixtures / "conll_small.txt", "conll")
    with pytest.raises(ValueError, match="not English"):
        render_dataset_en(weibo, lexicon)
    with pytest.raises(ValueError, match="not Chinese"):
        render_dataset_zh(conll, lexicon)
    toks, counts = render_dataset_zh(weibo, lexicon)
    assert len(toks) == len(weibo) and counts.source_tokens == weibo.n_tokens and counts.direction == "zh->en"
    assert counts.rendered_tokens == counts.words == sum(map(len, toks))


def test_coverage_counts_and_table():
    c = CoverageCounts("zh->en")
    c.add(Rendering(["i", "上海"], [WordPair((0, 1), (0, 1), "我", True), WordPair((1, 3), (1, 2), "上海", False)], 3))
    assert (c.sentences, c.source_tokens, c.words, c.translated, c.source_tokens_translated) == (1, 3, 2, 1, 1)
    assert c.share_translated == 0.5 and c.share_tokens_translated == pytest.approx(1 / 3)
    rows = coverage_table({"x": c, "empty": CoverageCounts()})
    assert rows[0]["set"] == "x" and rows[0]["share_translated"] == 0.5 and rows[1]["share_translated"] == 0.0


# --- real data ---------------------------------------------------------------------------------------------


def _real_data_dir() -> Path | None:
    given = os.environ.get("XNER_DATA_DIR")
    if given:
        return Path(given) if Path(given).is_dir() else None
    return next((p for p in candidate_dirs() if (p / "peoples_daily").is_dir()), None)


@pytest.mark.slow
def test_real_peoples_daily_rendering_covers_every_character(tmp_path):
    root = _real_data_dir()
    if root is None:
        pytest.skip("no data directory ($XNER_DATA_DIR, ./data or ../shared/data): People's Daily test is absent")
    ds = load("peoples_daily/test.txt", root, download_missing=False)
    real = REPO_ROOT / "results" / "cpu" / "alignment" / "lexicon.tsv"
    lex = Lexicon.from_tsv(real if real.is_file() else write(tmp_path / "lexicon.tsv", LEXICON_TSV))
    toks, counts = render_dataset_zh(ds, lex)
    assert counts.sentences == len(ds) == 4636 and counts.source_tokens == ds.n_tokens == 219_197
    assert counts.rendered_tokens == counts.words == sum(map(len, toks))
    assert 0 < counts.translated < counts.words and counts.source_tokens_translated < counts.source_tokens
    # the per-sentence alignments tile the characters and agree with the dataset-level counts
    renderings = render_sentences_zh(ds, lex)
    assert [r.tokens for r in renderings] == toks
    translated = 0
    for s, r in zip(ds, renderings, strict=True):
        assert covered(r) == list(range(len(s)))
        assert "".join(p.word for p in r.pairs) == "".join(s.tokens)
        for p, tok in zip(r.pairs, r.tokens, strict=True):
            assert tok == (lex.zh_to_en(p.word) if p.translated else p.word)
        translated += r.n_translated
    assert translated == counts.translated
