"""The case study (issue 14.1): attention maps of one sentence, Figure 4's table, on tiny models built here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from xner_lib.batches import pad_features
from xner_lib.case_study import AttentionMaps, attention_maps, case_sentences, case_table, text_sentence
from xner_lib.data import Dataset, Sentence
from xner_lib.encoders import tiny_encoder
from xner_lib.model import HeadConfig
from xner_lib.tagger import Tagger, Teacher, build_tagger

pytestmark = pytest.mark.usefixtures("one_thread")

SENTENCE = "上司会以为你不尊重他"  # the paper's Figure 4


@pytest.fixture(autouse=True)
def _cache_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XNER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "xner-cache"))


def _tagger(seed: int, **head: object) -> Tagger:
    enc = tiny_encoder(seed=seed)
    torch.manual_seed(seed)
    cfg = HeadConfig(input_dim=enc.hidden_size, proj_dim=8, lstm_hidden=6, attention_heads=3, **head)
    return build_tagger(cfg, enc, finetune=True).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tagger]:
    """A baseline (no attention), and a full model (double attention + transfer) whose teacher is the baseline."""
    lexicon = tmp_path_factory.mktemp("lexicon") / "lexicon.tsv"
    lexicon.write_text("english\tchinese\tcosine\nboss\t上司\t0.9\nrespect\t尊重\t0.8\n", encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XNER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "xner-cache"))
        baseline = _tagger(1)
        teacher = Teacher(baseline, lexicon)
        full = _tagger(2, attention="double", teacher_dim=teacher.dim)
        full.teacher = teacher
        return {"baseline": baseline, "full": full, "attention only": _tagger(3, attention="double")}


def _rows_sum_to_one(m: np.ndarray) -> None:
    assert np.all(m >= 0)
    np.testing.assert_allclose(m.sum(axis=-1), 1.0, atol=1e-5)


def test_attention_maps_of_a_chinese_sentence_have_one_row_per_character_and_sum_to_one(models) -> None:
    maps = attention_maps(models["full"], SENTENCE)
    assert isinstance(maps, AttentionMaps)
    assert maps.tokens == list(SENTENCE)  # char units
    assert maps.semantic.shape == maps.structural.shape == (3, 10, 10)
    w = len(maps.teacher_tokens)
    assert maps.transfer.shape == (10, w)
    assert "boss" in maps.teacher_tokens and "respect" in maps.teacher_tokens  # the rendering the teacher read
    for m in (maps.semantic, maps.structural, maps.transfer):
        _rows_sum_to_one(m)
    mats = maps.matrices()
    np.testing.assert_allclose(mats["semantic"], maps.semantic.mean(axis=0))
    np.testing.assert_allclose(maps.matrices(heads=1)["structural"], maps.structural[1])
    assert not np.allclose(maps.semantic[0], maps.semantic[1])  # heads differ: per-head maps are kept


def test_an_english_sentence_is_read_by_the_teacher_as_it_is(models) -> None:
    maps = attention_maps(models["full"], "The boss thinks you do not respect him")
    assert maps.teacher_tokens == maps.tokens == "The boss thinks you do not respect him".split()
    assert maps.transfer.shape == (8, 8)


def test_padding_changes_no_map_and_gets_zero_weight(models) -> None:
    """In a batch, a short sentence's maps equal its maps alone, padded keys weigh 0 and padded queries are 0."""
    full = models["full"]
    short, long_ = "上司会以为", SENTENCE
    alone = attention_maps(full, short)
    from xner_lib.batches import prepare

    ds = Dataset("t", "text", "peoples_daily", Path("t"), [Sentence(list(t), ["O"] * len(t), [1] * len(t))
                                                         for t in (long_, short)])
    data = prepare(ds, full.text_encoder, frozen=False, zh_units="char")
    feats, mask = full.features(data.encoded, None, "zh")
    teacher = pad_features(full.teacher.features(ds))
    maps = full.head.attention_maps(feats, mask, teacher)
    n, w = len(short), int(teacher[1][1].sum())
    for name in ("semantic", "structural"):
        m = maps[name][1].numpy()
        np.testing.assert_allclose(m[:, :n, :n], getattr(alone, name), atol=1e-5)
        assert np.all(m[:, :, n:] == 0) and np.all(m[:, n:, :] == 0)
        _rows_sum_to_one(m[:, :n])
    r = maps["transfer"][1].numpy()
    np.testing.assert_allclose(r[:n, :w], alone.transfer, atol=1e-5)
    assert np.all(r[:, w:] == 0) and np.all(r[n:] == 0)
    _rows_sum_to_one(r[:n])


def test_a_baseline_has_no_attention_map_and_an_attention_only_model_no_transfer(models) -> None:
    assert attention_maps(models["baseline"], SENTENCE) is None
    maps = attention_maps(models["attention only"], SENTENCE)
    assert maps.transfer is None and maps.teacher_tokens is None and set(maps.matrices()) == {"semantic", "structural"}


def test_heat_maps_draw_one_panel_per_map(models) -> None:
    from xner_lib.report import plot_attention

    fig = plot_attention(attention_maps(models["full"], SENTENCE), title="x")
    assert len([ax for ax in fig.axes if ax.images]) == 3
    fig = plot_attention(attention_maps(models["attention only"], SENTENCE), heads=0)
    assert len([ax for ax in fig.axes if ax.images]) == 2


def _weibo() -> Dataset:
    tags = [["B-PER.NAM", "I-PER.NAM", "O", "B-GPE.NAM", "I-GPE.NAM", "B-PER.NOM"], ["O", "O"]]
    toks = [list("李开复在北京人"), list("好的")]
    toks[0] = toks[0][:6]
    return Dataset("weibo", "test", "weibo", Path("weibo/test.txt"),
                   [Sentence(t, g, list(range(1, len(t) + 1))) for t, g in zip(toks, tags, strict=True)])


class _Fixed:
    """A stand-in tagger whose predictions are given."""

    def __init__(self, tags: list[str]) -> None:
        self.tags = tags

    def predict_dataset(self, dataset: Dataset, batch_size: int = 64) -> list[list[str]]:
        assert len(dataset) == 1
        return [self.tags]


def test_case_table_holds_tokens_each_models_tags_and_the_scored_gold() -> None:
    sentence = case_sentences({"weibo_test": _weibo()}, {"weibo_test": [0]})["weibo_test[0]"]
    models = {"baseline": _Fixed(["O"] * 6), "ours": _Fixed(["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "B-MISC"])}
    table = case_table(sentence, models)
    assert table.index.tolist() == ["token", "baseline", "ours", "gold"]
    assert table.loc["token"].tolist() == list("李开复在北京")
    assert table.loc["gold"].tolist() == ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"]  # NAM only, GPE as LOC
    assert table.loc["ours"].tolist() == ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"]  # MISC as O on Chinese
    assert table.loc["baseline"].tolist() == ["O"] * 6


def test_case_table_colours_entity_types_and_frames_wrong_tags() -> None:
    from xner_lib.report import TYPE_COLOURS, style_case

    sentence = case_sentences({"weibo_test": _weibo()}, {"weibo_test": [0]})["weibo_test[0]"]
    table = case_table(sentence, {"baseline": _Fixed(["O"] * 6), "ours": _Fixed(["B-PER", "I-PER"] + ["O"] * 4)})
    ctx = style_case(table)._compute().ctx  # (row, col) -> [(property, value)]
    css = {k: dict(v) for k, v in ctx.items()}
    assert css[(2, 0)]["background-color"] == TYPE_COLOURS["PER"] and css[(2, 0)]["font-weight"] == "bold"
    assert "outline" in css[(1, 0)] and "outline" not in css[(2, 0)]  # baseline missed the PER, ours did not
    assert "outline" in css[(2, 3)]  # ours missed the LOC
    assert "outline" not in css.get((3, 3), {})  # gold is never framed
    html = style_case(table).to_html()
    assert TYPE_COLOURS["LOC"] in html and "李" in html


def test_case_sentences_take_indices_and_raw_texts_without_gold() -> None:
    cases = case_sentences({"weibo_test": _weibo()}, {"weibo_test": [0, 1]}, [SENTENCE])
    assert list(cases) == ["weibo_test[0]", "weibo_test[1]", "text[0]"]
    assert cases["weibo_test[1]"].sentences[0].tokens == ["好", "的"]
    table = case_table(cases["text[0]"], {"m": _Fixed(["O"] * 10)})
    assert table.index.tolist() == ["token", "m"]  # no gold row for raw text
    assert text_sentence("Mr Smith").language == "en"
    with pytest.raises(IndexError, match="no sentence 5"):
        case_sentences({"weibo_test": _weibo()}, {"weibo_test": [5]})
    with pytest.raises(ValueError, match="case_indices names"):
        case_sentences({"weibo_test": _weibo()}, {"conll_test": [0]})
