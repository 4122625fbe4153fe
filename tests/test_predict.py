"""Inference on raw text and on any labelled file (issue 14, points 4 and 5): ``Tagger.from_pretrained``,
``Tagger.tag``, and the ``predict`` and ``evaluate`` commands, on tiny models trained here."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from xner_lib import cli
from xner_lib.batches import Prepared, prepare
from xner_lib.data import Dataset, Sentence, read_file
from xner_lib.data.labels import MODEL_LABELS
from xner_lib.decoding import DecodeConfig
from xner_lib.encoders import load_encoder
from xner_lib.evaluate import score_dataset
from xner_lib.inference import TaggedText, detect_language, entity_spans, split_text, text_dataset
from xner_lib.tagger import InferenceSettings, Tagger, predict, save_checkpoint
from xner_lib.train import TrainConfig, train
from xner_lib.units import encode_sentences


def _toy_en(n: int) -> Dataset:
    """Names after 'Mr' are PER, after 'in' LOC (as tests/test_train.py's toy corpus)."""
    rng = random.Random(0)
    sents = []
    for _ in range(n):
        name, cue = rng.choice(["Smith", "Jones", "Paris", "Berlin", "Brown", "Rome"]), rng.choice(["Mr", "in"])
        sents.append(Sentence(["the", "man", cue, name, "said"], ["O", "O", "O", "B-PER" if cue == "Mr" else "B-LOC",
                                                                  "O"], list(range(1, 6))))
    return Dataset("toy", "train", "conll", Path("toy"), sents)


_ZH_CITIES = ["北京", "上海", "广州"]
_ZH_PEOPLE = ["张三", "李四", "王五"]


def _toy_zh_sentences(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """Chinese toy sentences and their character tags: '他在<city>说' (LOC), '<person>先生说' (PER)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            city = rng.choice(_ZH_CITIES)
            out.append((f"他在{city}说", ["O", "O", "B-LOC", "I-LOC", "O"]))
        else:
            person = rng.choice(_ZH_PEOPLE)
            out.append((f"{person}先生说", ["B-PER", "I-PER", "O", "O", "O"]))
    return out


def _toy_zh(n: int) -> Dataset:
    sents = [Sentence(list(text), tags, list(range(1, len(text) + 1))) for text, tags in _toy_zh_sentences(n)]
    return Dataset("toy_zh", "train", "peoples_daily", Path("toy_zh"), sents)


def _train(data: Dataset, finetune: bool, cache: Path, epochs: float = 8) -> tuple[Tagger, TrainConfig]:
    torch.set_num_threads(1)
    enc = load_encoder("tiny-random-bert")
    prep = prepare(data, enc, frozen=not finetune, cache_dir=cache, zh_units="char")
    cfg = TrainConfig(encoder="tiny-random-bert", finetune=finetune, epochs=epochs, batch_size=8, lr=1e-3,
                      head_lr=1e-2, seed=3, head={"dropout": 0.1})
    return train(cfg, enc, prep, prep, progress=False).tagger, cfg


@pytest.fixture(autouse=True)
def _cache_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep encoder identities and features of these tests out of the user's cache."""
    monkeypatch.setenv("XNER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "xner-cache"))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("predict")


@pytest.fixture(scope="module")
def en_model(root: Path) -> Iterator[tuple[Tagger, Path]]:
    """A fine-tuned tagger trained on the English toy corpus, and its checkpoint (no ``scoring`` recorded)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XNER_CACHE_DIR", str(root / "cache"))
        tagger, cfg = _train(_toy_en(64), True, root / "cache")
        yield tagger, save_checkpoint(tagger, root / "en", asdict(cfg))


@pytest.fixture(scope="module")
def zh_model(root: Path) -> Iterator[Path]:
    """The checkpoint of a fine-tuned tagger trained on the Chinese toy corpus, as the experiments record it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XNER_CACHE_DIR", str(root / "cache"))
        tagger, cfg = _train(_toy_zh(64), True, root / "cache")
        yield save_checkpoint(tagger, root / "zh", asdict(cfg), scoring={"zh_units": "char", "decode": {
            "target_labels": True, "links": True}, "alt_units": {}, "snapshot_epoch": None})


def _load(path: Path, root: Path) -> Tagger:
    return Tagger.from_pretrained(path, root / "cache")


# --- text side ---------------------------------------------------------------------------------------------

def test_split_text_keeps_offsets_words_characters_and_links() -> None:
    cases = {
        "Mr. Smith's car in New-York, 2023!": ["Mr", ".", "Smith", "'", "s", "car", "in", "New-York", ",", "2023",
                                                "!"],
        "我在Paris见到Smith先生 and 北京。": ["我", "在", "Paris", "见", "到", "Smith", "先", "生", "and", "北", "京",
                                        "。"],
        "见 http://t.cn/zTozVasAppStore 了": ["见", "http://t.cn/zTozVas", "AppStore", "了"],
        "see www.example.com/a?b=1 now": ["see", "www.example.com/a?b=1", "now"],
        "😀👍🏽 Smith ❤️": ["😀", "👍", "🏽", "Smith", "❤", "\ufe0f"],
        "": [],
        " \t\n\u3000 ": [],
    }
    for text, expected in cases.items():
        tokens, offsets = split_text(text)
        assert tokens == expected, text
        assert [text[a:b] for a, b in offsets] == tokens
        assert all(b1 <= a2 for (_, b1), (a2, _) in zip(offsets, offsets[1:], strict=False))
    assert detect_language("Mr Smith") == "en" and detect_language("Smith 先生") == "zh"
    assert detect_language("Hello。") == "en"  # CJK punctuation alone is not Chinese text


def test_text_dataset_is_what_prepare_reads() -> None:
    ds = text_dataset([["我", "在"], ["北", "京", "说"]], "zh", lines=[3, 7], source="in.txt")
    assert ds.format == "peoples_daily" and ds.language == "zh" and len(ds) == 2
    assert ds.sentences[1].tags == ["O"] * 3 and ds.sentences[1].lines == [7] * 3
    assert text_dataset([["Mr", "Smith"]], "en").format == "conll"
    enc = load_encoder("tiny-random-bert")
    prep = prepare(ds, enc, frozen=False, zh_units="char")
    assert [e.n_units for e in prep.encoded] == [2, 3]
    with pytest.raises(ValueError, match=r"in.txt:2: a text without tokens"):
        text_dataset([["a"], []], "en", source="in.txt")
    with pytest.raises(ValueError, match="language"):
        text_dataset([["a"]], "fr")


def test_entity_spans_are_strict_chunks_with_character_offsets() -> None:
    text = "Mr  New York, in 北京 x"
    tokens, offsets = split_text(text)
    assert tokens == ["Mr", "New", "York", ",", "in", "北", "京", "x"]
    tags = ["O", "B-LOC", "I-LOC", "O", "O", "B-LOC", "I-LOC", "I-PER"]  # the last, an orphan, is no entity
    assert entity_spans(text, offsets, tags) == [
        {"type": "LOC", "start": 4, "end": 12, "text": "New York"},
        {"type": "LOC", "start": 17, "end": 19, "text": "北京"}]
    tagged = TaggedText(text, "zh", tokens, offsets, tags)
    assert tagged.to_json()["entities"] == tagged.entities()
    assert tagged.conll_lines()[1] == "New\tB-LOC"
    with pytest.raises(ValueError, match="tags for"):
        entity_spans(text, offsets, tags[:-1])


# --- the model side ----------------------------------------------------------------------------------------

def _groups(texts: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        if split_text(t)[0]:
            out.setdefault(detect_language(t), []).append(i)
    return out


def test_from_pretrained_tags_as_predict_does_on_the_same_tokens(en_model: tuple[Tagger, Path], root: Path) -> None:
    trained, ckpt = en_model
    tagger = _load(ckpt, root)
    assert not tagger.training and tagger.inference == InferenceSettings()  # no scoring recorded: the defaults
    texts = ["the man Mr Smith said", "", "the  man in Rome\tsaid", "他在北京说", "Mr Brown 在 Paris 说",
             "the man in Berlin said 😀 Mr Jones"]
    tagged = tagger.tag_tokens(texts)
    enc = trained.encoder
    assert enc is not None
    for lang, idx in _groups(texts).items():
        ds = text_dataset([split_text(texts[i])[0] for i in idx], lang)
        expected = predict(trained, prepare(ds, enc, frozen=False, zh_units="char"), progress=False,
                           decode=DecodeConfig())
        assert [tagged[i].tags for i in idx] == expected, lang
    assert [t.language for t in tagged] == ["en", "en", "en", "zh", "zh", "en"]
    ents = tagger.tag(texts)
    assert ents[0] == [{"type": "PER", "start": 11, "end": 16, "text": "Smith"}]
    assert ents[2] == [{"type": "LOC", "start": 12, "end": 16, "text": "Rome"}]
    assert ents[1] == [] and tagged[1].tokens == [] and tagged[1].tags == []
    for text, found in zip(texts, ents, strict=True):
        assert all(text[e["start"]:e["end"]] == e["text"] for e in found)


def test_a_frozen_checkpoint_tags_as_predict_does(root: Path) -> None:
    data = _toy_en(32)
    tagger, cfg = _train(data, False, root / "cache", epochs=4)
    assert tagger.encoder is None and tagger.text_encoder is None
    with pytest.raises(ValueError, match="no text encoder"):
        tagger.tag(["Mr Smith"])
    loaded = _load(save_checkpoint(tagger, root / "frozen", asdict(cfg)), root)
    assert loaded.encoder is None and loaded.text_encoder is not None
    texts = ["the man Mr Smith said", "in Paris Mr Jones said"]
    ds = text_dataset([split_text(t)[0] for t in texts], "en")
    expected = predict(tagger, prepare(ds, loaded.text_encoder, frozen=True, cache_dir=root / "cache"),
                       progress=False)
    assert [t.tags for t in loaded.tag_tokens(texts)] == expected
    assert any(t != "O" for tags in expected for t in tags)


def test_awkward_and_long_texts_get_one_tag_per_token(en_model: tuple[Tagger, Path], root: Path) -> None:
    tagger = _load(en_model[1], root)
    rng = random.Random(0)
    long_zh = "".join(rng.choice("我爱北京天安门上司会以为你不尊重他") for _ in range(10_000))
    texts = ["", "   \t ", "😀🎉", "我😀你", "上司会以为你不尊重他", "Mr Smith 在北京 met 李四 at http://t.cn/abc 了",
             "\u200b\x00 é e\u0301", long_zh]
    tagged = tagger.tag_tokens(texts)
    assert [len(t.tags) for t in tagged] == [len(t.tokens) for t in tagged] == [0, 0, 2, 3, 10, 11, 5, 10_000]
    assert tagged[7].tokens == list(long_zh) and tagged[4].tokens == list("上司会以为你不尊重他")
    assert all(tag in MODEL_LABELS for t in tagged for tag in t.tags)
    # the long text is windowed by the feature code: far more sub-words than one encoder window holds
    reader = tagger.text_encoder
    assert reader is not None
    n_ids = len(encode_sentences(reader.tokenizer, [tagged[7].tokens], "zh", zh_units="char")[0].input_ids)
    assert n_ids > 10 * (reader.max_length - 2)
    for t in tagged:
        assert all(t.text[e["start"]:e["end"]] == e["text"] for e in t.entities())
    with pytest.raises(TypeError, match="list of strings"):
        tagger.tag("Mr Smith")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="language"):
        tagger.tag(["Mr Smith"], language="fr")


def test_language_can_be_forced(en_model: tuple[Tagger, Path], root: Path) -> None:
    tagger = _load(en_model[1], root)
    seen: list[str] = []
    original = tagger.predict_dataset

    def spy(ds: Dataset, batch_size: int = 64, progress: bool = False) -> list[list[str]]:
        seen.append(ds.format)
        return original(ds, batch_size, progress)

    tagger.predict_dataset = spy  # type: ignore[method-assign]
    assert tagger.tag_tokens(["Mr Smith"], language="zh")[0].language == "zh"
    assert tagger.tag_tokens(["北京"], language="en")[0].tokens == ["北", "京"]
    assert seen == ["peoples_daily", "conll"]


def test_settings_come_from_the_checkpoints_scoring(en_model: tuple[Tagger, Path], root: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    trained, _ = en_model
    cfg = TrainConfig(encoder="tiny-random-bert", seed=3, head={"dropout": 0.1})
    ckpt = save_checkpoint(trained, root / "token_units", asdict(cfg), scoring={
        "zh_units": "token", "decode": {"target_labels": False, "links": False}})
    tagger = _load(ckpt, root)
    assert tagger.inference == InferenceSettings("token", DecodeConfig(target_labels=False, links=False))
    import xner_lib.tagger as train_module

    used: list[tuple[str, str]] = []
    real_prepare, real_predict = train_module.prepare, train_module.predict

    def prepare_spy(dataset: Dataset, *args: object, **kwargs: object) -> Prepared:
        used.append(("zh_units", str(kwargs["zh_units"])))
        return real_prepare(dataset, *args, **kwargs)  # type: ignore[arg-type]

    def predict_spy(tagger: Tagger, data: Prepared, *args: object, **kwargs: object) -> list[list[str]]:
        used.append(("decode", str(kwargs["decode"])))
        return real_predict(tagger, data, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train_module, "prepare", prepare_spy)
    monkeypatch.setattr(train_module, "predict", predict_spy)
    tagger.tag(["他在北京说"])
    assert used == [("zh_units", "token"), ("decode", str(DecodeConfig(target_labels=False, links=False)))]
    meta = json.loads((ckpt / "config.json").read_text())
    meta["scoring"] = {"zh_units": "word"}
    (ckpt / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"config.json: scoring: zh_units"):
        _load(ckpt, root)
    meta["scoring"] = {"decode": {"links": True, "typo": 1}}
    (ckpt / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"config.json: scoring.decode has unknown keys \['typo'\]"):
        _load(ckpt, root)


def test_chinese_text_is_decoded_over_the_target_labels_and_links_are_o(en_model: tuple[Tagger, Path],
                                                                         root: Path) -> None:
    tagger = _load(en_model[1], root)
    labels = list(tagger.head.config.labels)
    real = tagger.head.emissions

    def favour_misc(feats: torch.Tensor, mask: torch.Tensor, teacher: object = None) -> torch.Tensor:
        out = torch.zeros_like(real(feats, mask))
        out[..., labels.index("B-MISC")] = 10.0
        out[..., labels.index("B-PER")] = 5.0
        return out

    tagger.head.emissions = favour_misc  # type: ignore[method-assign]
    zh, en = "他在 http://t.cn/abc 说", "Mr see www.a.com Smith"
    got = tagger.tag_tokens([zh, en])
    assert got[0].tags == ["B-PER", "B-PER", "O", "B-PER"]  # MISC is not a Chinese label; the link is O
    assert got[1].tags == ["B-MISC", "B-MISC", "O", "B-MISC"]  # English keeps MISC; the link is O
    tagger.inference = InferenceSettings("char", DecodeConfig(target_labels=False, links=False))
    assert tagger.tag_tokens([zh])[0].tags == ["B-MISC"] * 4


def test_from_pretrained_names_what_is_wrong(tmp_path: Path, en_model: tuple[Tagger, Path]) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope: no such model directory"):
        Tagger.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"not a saved model \(no config.json\)"):
        Tagger.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"train": {},\n oops}')
    with pytest.raises(ValueError, match=r"config.json:2: not valid JSON"):
        Tagger.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"train": {}}')
    with pytest.raises(ValueError, match=r"missing head, finetuned"):
        Tagger.from_pretrained(tmp_path)


# --- the command line --------------------------------------------------------------------------------------

def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_predict_prints_json_lines_and_conll(zh_model: Path, root: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    model = ["--model", str(zh_model), "--cache-dir", str(root / "cache")]
    rc, out, _ = _run(["predict", *model, "--text", "他在上海说"], capsys)
    assert rc == 0
    assert json.loads(out) == {"text": "他在上海说", "language": "zh",
                               "entities": [{"type": "LOC", "start": 2, "end": 4, "text": "上海"}]}
    lines = ["李四先生说", "", "   ", " 他在广州说", "上司会以为你不尊重他", "😀"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rc, out, _ = _run(["predict", *model, "--input", str(src)], capsys)
    assert rc == 0
    records = [json.loads(x) for x in out.splitlines()]
    assert [r["text"] for r in records] == lines  # one object per input line, in order
    assert records[0]["entities"] == [{"type": "PER", "start": 0, "end": 2, "text": "李四"}]
    assert records[3]["entities"] == [{"type": "LOC", "start": 3, "end": 5, "text": "广州"}]
    assert records[1]["entities"] == records[2]["entities"] == []
    rc, out, _ = _run(["predict", *model, "--input", str(src), "--format", "conll"], capsys)
    assert rc == 0
    blocks = out.rstrip("\n").split("\n\n")
    assert len(blocks) == 4  # the texts with tokens
    rows = [line.split("\t") for line in blocks[0].splitlines()]
    assert rows == [["李", "B-PER"], ["四", "I-PER"], ["先", "O"], ["生", "O"], ["说", "O"]]
    assert [r[0] for r in (line.split("\t") for line in blocks[2].splitlines())] == list("上司会以为你不尊重他")


def test_cli_evaluate_scores_a_fixture_and_a_tab_separated_bio_file(zh_model: Path, root: Path, tmp_path: Path,
                                                                    fixtures: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    model = ["--model", str(zh_model), "--cache-dir", str(root / "cache")]
    out_json = tmp_path / "scores.json"
    rc, out, _ = _run(["evaluate", *model, "--input", str(fixtures / "peoples_daily_small.txt"), "--format",
                       "peoples_daily", "--out", str(out_json)], capsys)
    assert rc == 0
    assert "strict P" in out and "conlleval P" in out and "\noverall " in out and "view: peoples_daily" in out
    record = json.loads(out_json.read_text(encoding="utf-8"))
    ds = read_file(fixtures / "peoples_daily_small.txt", "peoples_daily")
    expected = score_dataset(ds, _load(zh_model, root).predict_dataset(ds))
    assert record["views"] == json.loads(json.dumps(expected)) and record["scores"] == record["views"]["peoples_daily"]
    assert record["sentences"] == len(ds) and record["inference"]["zh_units"] == "char"

    bio = tmp_path / "mine.tsv"  # a user's own file: character<TAB>tag, a blank line between sentences
    sents = _toy_zh_sentences(12, seed=7)
    bio.write_text("\n\n".join("\n".join(f"{c}\t{t}" for c, t in zip(text, tags, strict=True))
                               for text, tags in sents) + "\n", encoding="utf-8")
    rc, out, _ = _run(["evaluate", *model, "--input", str(bio), "--format", "peoples_daily", "--out",
                       str(out_json)], capsys)
    assert rc == 0
    record = json.loads(out_json.read_text(encoding="utf-8"))
    assert record["sentences"] == 12 and record["tokens"] == 60
    assert record["scores"]["strict"]["support"] == 12 and record["scores"]["strict"]["f1"] > 0.9
    overall = next(line for line in out.splitlines() if line.startswith("overall"))
    assert float(overall.split()[3]) == pytest.approx(100 * record["scores"]["strict"]["f1"], abs=0.01)

    rc, out, _ = _run(["evaluate", *model, "--input", str(fixtures / "weibo_small.txt"), "--format", "weibo",
                       "--scheme", "NAM+NOM", "--out", str(out_json)], capsys)
    assert rc == 0 and "view: weibo_nam_nom" in out
    assert json.loads(out_json.read_text())["view"] == "weibo_nam_nom"


def test_cli_errors_are_one_clear_message(zh_model: Path, root: Path, tmp_path: Path, fixtures: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_model"
    rc, out, err = _run(["predict", "--model", str(missing), "--text", "他在北京说"], capsys)
    assert rc == 1 and out == "" and err.strip() == f"cannot load the model: {missing}: no such model directory"
    rc, _, err = _run(["evaluate", "--model", str(missing), "--input", str(fixtures / "peoples_daily_small.txt"),
                       "--format", "peoples_daily"], capsys)
    assert rc == 1 and "no such model directory" in err and len(err.strip().splitlines()) == 1
    model = ["--model", str(zh_model), "--cache-dir", str(root / "cache")]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    rc, out, err = _run(["predict", *model, "--input", str(empty)], capsys)
    assert rc == 1 and out == "" and err.strip() == f"{empty}:1: empty file (no text to tag)"
    rc, out, err = _run(["evaluate", *model, "--input", str(empty), "--format", "peoples_daily"], capsys)
    assert rc == 1 and out == "" and err.strip() == f"{empty}:1: empty file (no tokens)"
    bad = tmp_path / "bad.tsv"
    bad.write_text("北\tB-LOC\n京\tI-LOC\n说\tB-GPE\n", encoding="utf-8")
    rc, _, err = _run(["evaluate", *model, "--input", str(bad), "--format", "peoples_daily"], capsys)
    assert rc == 1 and err.strip() == f"{bad}:3: unknown tag 'B-GPE' for format peoples_daily"
    rc, _, err = _run(["predict", *model, "--input", str(tmp_path / "absent.txt")], capsys)
    assert rc == 1 and "absent.txt:0: cannot read" in err
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("ok\ncaf\xe9\n".encode("latin-1"))
    rc, _, err = _run(["predict", *model, "--input", str(binary)], capsys)
    assert rc == 1 and err.strip() == f"{binary}:2: not UTF-8 (byte 0xe9 at column 4)"
    rc, _, err = _run(["evaluate", *model, "--input", str(fixtures / "peoples_daily_small.txt"), "--format",
                       "peoples_daily", "--scheme", "NAM+NOM"], capsys)
    assert rc == 2 and "only --format weibo" in err
