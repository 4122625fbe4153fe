"""Table 3's static rows: the feature CRF (sklearn-crfsuite), the static-vector BiLSTM-CRF, 02's aligned space."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from xner_lib.data import Dataset, Sentence, load
from xner_lib.decoding import DecodeConfig
from xner_lib.encoders import load_encoder
from xner_lib.evaluate import score_dataset
from xner_lib.feature_crf import FeatureCrfConfig, features, predict, sentence_features, shape, train_feature_crf
from xner_lib.lexicon import normalize_embeddings
from xner_lib.static_space import (
    AlignedSpace,
    StaticVectorConfig,
    aligned_space,
    build_aligned_space,
    build_static_vectors,
    spherical_kmeans,
    word_spans,
)
from xner_lib.static_tagger import predict as static_predict
from xner_lib.static_tagger import prepare_static, train_static_tagger
from xner_lib.train import TrainConfig
from xner_lib.vectors import StaticVectors, segment_chinese


def dataset(rows: list[list[tuple[str, str]]], fmt: str, name: str = "toy") -> Dataset:
    sents = [Sentence([t for t, _ in r], [y for _, y in r], list(range(1, len(r) + 1)), name) for r in rows]
    return Dataset(name, "test", fmt, Path(name), sents)


# --- a toy aligned space: a direction per word class, shared by English and Chinese ---------------------------
DIM = 12
CLASSES = {"title": 0, "city": 1, "verb": 2, "func": 3, "time": 4, "event": 5}
EN_WORDS = {"mr": "title", "paris": "city", "london": "city", "berlin": "city", "madrid": "city", "rome": "city",
            "new": "city", "york": "city", "said": "verb", "went": "verb", "saw": "verb", "to": "func", "the": "func",
            "in": "func", "we": "func", "they": "func", "today": "time", "yesterday": "time", "olympics": "event",
            "games": "event"}
ZH_WORDS = {"北京": "city", "上海": "city", "广州": "city", "我们": "func", "他们": "func", "去": "verb",
            "了": "func", "今天": "time", "昨天": "time", "奥运会": "event", "在": "func", "看": "verb"}
CITIES = ["paris", "london", "berlin", "madrid", "rome"]
NAMES = ["Smith", "Jones", "Brown", "Taylor", "Wilson", "Evans", "Walker", "Wright", "Green", "Hall"]


def toy_space(seed: int = 0) -> AlignedSpace:
    g = torch.Generator().manual_seed(seed)
    directions = torch.linalg.qr(torch.randn(DIM, DIM, generator=g))[0]

    def vectors(words: dict[str, str]) -> torch.Tensor:
        base = torch.stack([directions[CLASSES[c]] for c in words.values()])
        return torch.nn.functional.normalize(base + 0.15 * torch.randn(len(words), DIM, generator=g), dim=1)

    return AlignedSpace(list(EN_WORDS), vectors(EN_WORDS), list(ZH_WORDS), vectors(ZH_WORDS))


def city(rng: random.Random) -> list[tuple[str, str]]:
    if rng.random() < 0.2:
        return [("New", "B-LOC"), ("York", "I-LOC")] if rng.random() < 0.5 else [("new", "B-LOC"), ("york", "I-LOC")]
    c = rng.choice(CITIES)
    return [(c.capitalize() if rng.random() < 0.5 else c, "B-LOC")]


def english_toy(n: int, seed: int, names: list[str]) -> Dataset:
    """Capitalised (unknown) words after "Mr" are PER; city-class words are LOC, cased or not (so their cluster,
    not their case, carries LOC); "olympics" is MISC; unknown lower-case words are O."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        kind = rng.randrange(4)
        if kind == 0:
            rows.append([("Mr", "O"), (rng.choice(names), "B-PER"), ("said", "O"),
                         (rng.choice(["today", "yesterday"]), "O")])
        elif kind == 1:
            rows.append([(rng.choice(["we", "they"]), "O"), (rng.choice(["went", "saw"]), "O"), ("to", "O"),
                         *city(rng), (rng.choice(["today", "yesterday", "zorp", "blick"]), "O")])
        elif kind == 2:
            saw = [(rng.choice(["we", "they"]), "O"), ("saw", "O"), ("the", "O"), ("olympics", "B-MISC")]
            rows.append([*saw, ("in", "O"), *city(rng)] if rng.random() < 0.5 else [("in", "O"), *city(rng), *saw])
        else:
            rows.append([(rng.choice(["zorp", "blick", "fnord"]), "O"), ("said", "O"), ("the", "O"),
                         (rng.choice(["zorp", "today"]), "O")])
    return dataset(rows, "conll")


def chinese_toy() -> Dataset:
    """Characters; each city word (a jieba word whose vector lies in the city class) is LOC; 奥运会 lies in the
    English MISC word's class but a Chinese corpus has no MISC; the last sentence holds a link (no entity)."""
    rows = []
    for who in ("我们", "他们"):
        for c in ("北京", "上海", "广州"):
            for when in ("今天", "昨天"):
                text = [(ch, "O") for ch in who + when + "去了"]
                text += [(ch, ("B-LOC" if i == 0 else "I-LOC")) for i, ch in enumerate(c)]
                rows.append(text)
                rows.append([(ch, "O") for ch in who + "在"] + [(ch, ("B-LOC" if i == 0 else "I-LOC"))
                                                               for i, ch in enumerate(c)]
                            + [(ch, "O") for ch in "看奥运会"])
    rows.append([(ch, "O") for ch in "看http://t.cn/Paris"])
    return dataset(rows, "peoples_daily")


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    out, t = set(), 0
    while t < len(tags):
        if tags[t].startswith("B-"):
            e = t + 1
            while e < len(tags) and tags[e] == "I-" + tags[t][2:]:
                e += 1
            out.add((tags[t][2:], t, e))
            t = e
        else:
            t += 1
    return out


# --- the aligned space --------------------------------------------------------------------------------------
def test_kmeans_is_seeded_and_separates_well_separated_classes() -> None:
    space = toy_space()
    rows = torch.cat([space.en_vectors, space.zh_vectors])
    a = spherical_kmeans(rows, len(CLASSES), seed=3)
    assert torch.equal(a, spherical_kmeans(rows, len(CLASSES), seed=3))
    ids = (torch.nn.functional.normalize(rows, dim=1) @ a.T).argmax(1).tolist()
    classes = [CLASSES[c] for c in [*EN_WORDS.values(), *ZH_WORDS.values()]]
    assert len(set(zip(classes, ids, strict=True))) == len(CLASSES)  # one cluster per class, one class per cluster
    clusters = space.clusters(len(CLASSES), seed=3, fit_on="en")
    assert clusters.shared()["zh_rows_in_english_clusters"] == 1.0
    city_ids = {int(clusters.en[space.en_words.index(w)]) for w in CITIES}
    assert city_ids == {int(clusters.zh[space.zh_words.index(w)]) for w in ("北京", "上海", "广州")}


def test_english_rows_are_preprocessed_with_02s_mean_and_mapped_by_u() -> None:
    g = torch.Generator().manual_seed(1)
    en = StaticVectors(["a", "b", "c"], torch.randn(3, 4, generator=g), [1, 1, 1])
    zh = StaticVectors(["甲", "乙"], torch.randn(2, 4, generator=g), [1, 1])
    u = torch.linalg.qr(torch.randn(4, 4, generator=g))[0]
    mean = torch.randn(4, generator=g)
    space = aligned_space(en, zh, u, source_mean=mean)
    want, _ = normalize_embeddings(en.vectors, "renorm,center,renorm", mean=mean)
    assert torch.allclose(space.en_vectors, want @ u, atol=1e-6)
    assert torch.allclose(space.zh_vectors, normalize_embeddings(zh.vectors, "renorm,center,renorm")[0])
    with pytest.raises(ValueError, match="U must be"):
        aligned_space(en, zh, torch.eye(3))


def test_unknown_tokens_get_a_counted_zero_vector_and_are_never_dropped() -> None:
    space = toy_space()
    en = space.lookup([["Mr", "Zorp", "went", "to", "Paris"]], "en")
    assert en.rows[0][1] == -1 and min(en.rows[0][i] for i in (0, 2, 3, 4)) >= 0
    assert en.counts == {"tokens": 5, "unknown": 1}
    chars = list("我们去了北京和猫")
    words = segment_chinese([chars])[0]
    spans = word_spans(chars, words)
    zh = space.lookup([chars], "zh")
    beijing = space.zh_words.index("北京")
    assert zh.rows[0][4:6] == [beijing, beijing] and zh.spans[0][4] == zh.spans[0][5] == spans[4]
    assert zh.rows[0][-1] == -1 and zh.rows[0][-2] == -1  # 和, 猫: neither word nor character has a vector
    assert zh.counts["tokens"] == 8 and zh.counts["unknown"] == sum(r < 0 for r in zh.rows[0])
    assert zh.counts["word"] + zh.counts["char"] + zh.counts["unknown"] == 8
    vec = space.vectors(zh)[0]
    assert vec.shape == (8, DIM) and vec[-1].abs().sum() == 0 and torch.equal(vec[4], space.zh_vectors[beijing])
    by_char = AlignedSpace(space.en_words, space.en_vectors, space.zh_words + ["北"],
                           torch.cat([space.zh_vectors, torch.ones(1, DIM)]), zh_lookup="char").lookup([chars], "zh")
    assert by_char.rows[0][4] == len(space.zh_words) and by_char.rows[0][5] == -1  # 北 has its own vector, 京 none
    data, counts = prepare_static(dataset([[(c, "O") for c in chars]], "peoples_daily"), space)
    assert counts == zh.counts and data.cached[0].shape == (8, DIM) and len(data.encoded[0].unit_spans) == 8


# --- the feature CRF ----------------------------------------------------------------------------------------
CRF = FeatureCrfConfig(clusters=(len(CLASSES),), max_iterations=60, seed=0)


def test_shapes_are_language_independent_classes_and_groups_switch_features() -> None:
    assert [shape(t) for t in ("Mr.", "Paris", "1990", "北京", "，", "iPhone")] == ["Xxp", "Xx", "d", "L", "p", "xXx"]
    ids = [torch.tensor([4, 7])]
    full = sentence_features(["Mr", "Zorp"], [0, -1], [(0, 1), (1, 2)], ids, window=1)
    assert {"c0[0]=4", "c0[1]=unk", "shape=Xx", "len=2", "first", "relpos=0"} <= set(full[0])
    assert full[1]["c0[0]=unk"] == 1.0 and full[1]["c0[1]=pad"] == 1.0 and full[1]["c0[-1]=4"] == 1.0
    only = sentence_features(["Mr", "Zorp"], [0, -1], [(0, 1), (1, 2)], ids, window=1, groups=("clusters",))
    assert not any(k.startswith(("shape", "len", "first", "relpos")) for f in only for k in f)
    with pytest.raises(ValueError, match="unknown feature groups"):
        FeatureCrfConfig(groups=("case",))


def test_feature_crf_learns_the_mr_pattern_and_transfers_city_clusters_to_chinese() -> None:
    space = toy_space()
    model = train_feature_crf(CRF, space, english_toy(300, 0, NAMES[:6]))
    test = english_toy(60, 1, NAMES[6:])  # names never seen in training
    pred = predict(model, test)
    assert all(len(p) == len(s) for p, s in zip(pred, test.sentences, strict=True))
    assert score_dataset(test, pred)["conll"]["per_type"]["PER"]["f1"] == 1.0
    assert score_dataset(test, pred)["conll"]["strict"]["f1"] > 0.95
    zh = chinese_toy()
    zpred = predict(model, zh)
    assert all(len(p) == len(s) for p, s in zip(zpred, zh.sentences, strict=True))
    assert score_dataset(zh, zpred)["peoples_daily"]["strict"]["f1"] == 1.0  # every 北京 / 上海 / 广州 as LOC, whole
    assert not any(t.endswith("MISC") for p in zpred for t in p)  # 奥运会: the target's label set has no MISC
    free = predict(model, zh, DecodeConfig(target_labels=False, links=False))
    assert any(t.endswith("MISC") for p in free for t in p)  # ... which the free decoding would have used
    assert set(zpred[-1]) == {"O"}


def test_feature_crf_decoding_reads_back_crfsuites_weights() -> None:
    space = toy_space()
    model = train_feature_crf(CRF, space, english_toy(200, 2, NAMES))
    test = english_toy(80, 3, NAMES)
    ours = predict(model, test, DecodeConfig(False, False), constrained=False)
    theirs = [list(p) for p in model.crf.predict(features(model, [s.tokens for s in test.sentences], "en"))]
    assert ours == theirs


# --- the static-vector BiLSTM-CRF ---------------------------------------------------------------------------
STATIC = TrainConfig(encoder="static-aligned", finetune=False, epochs=6, batch_size=10, head_lr=1e-2,
                     evals_per_epoch=1, seed=1, threads=1)


def test_static_tagger_learns_the_mr_pattern_and_transfers_city_vectors_to_chinese() -> None:
    space = toy_space()
    run = train_static_tagger(STATIC, space, english_toy(300, 0, NAMES[:6]), english_toy(40, 4, NAMES[:6]))
    assert run.counts["train"]["unknown"] > 0  # the names: zero vectors, kept
    test = english_toy(60, 1, NAMES[6:])
    pred, counts = static_predict(run, space, test)
    assert counts["tokens"] == test.n_tokens
    assert all(len(p) == len(s) for p, s in zip(pred, test.sentences, strict=True))
    assert score_dataset(test, pred)["conll"]["per_type"]["PER"]["f1"] == 1.0
    zh = chinese_toy()
    zpred, zcounts = static_predict(run, space, zh)
    assert zcounts["unknown"] > 0 and all(len(p) == len(s) for p, s in zip(zpred, zh.sentences, strict=True))
    assert score_dataset(zh, zpred)["peoples_daily"]["strict"]["f1"] > 0.9
    assert not any(t.endswith("MISC") for p in zpred for t in p)


def test_static_tagger_is_frozen_and_trains_on_english_only() -> None:
    space = toy_space()
    with pytest.raises(ValueError, match="finetune=False"):
        train_static_tagger(TrainConfig(finetune=True), space, english_toy(5, 0, NAMES), english_toy(5, 1, NAMES))
    with pytest.raises(ValueError, match="English CoNLL"):
        train_static_tagger(STATIC, space, chinese_toy(), english_toy(5, 1, NAMES))


# --- both rows on the first sentences of the real corpora ---------------------------------------------------
N = 40


@pytest.fixture(scope="module")
def real(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    enc = load_encoder("tiny-random-bert")
    sets = {name: load(rel, data_dir, max_sentences=N) for name, rel in (
        ("train", "conll2003/train.txt"), ("dev", "conll2003/dev.txt"), ("weibo", "weibo/test.txt"),
        ("pd", "peoples_daily/test.txt"), ("zh_text", "weibo/train.txt"))}
    en, zh = build_static_vectors(enc, [s.tokens for s in sets["train"]], [s.tokens for s in sets["zh_text"]],
                                  StaticVectorConfig(min_count=2), cache_dir=tmp_path_factory.mktemp("cache"),
                                  progress=False)
    u = torch.linalg.qr(torch.randn(enc.hidden_size, enc.hidden_size, generator=torch.Generator().manual_seed(0)))[0]
    return {"space": aligned_space(en, zh, u), **sets}


def test_both_rows_tag_every_real_token_deterministically(real: dict) -> None:
    space = real["space"]
    crf_cfg = FeatureCrfConfig(clusters=(8, 32), max_iterations=30, seed=5)
    static_cfg = TrainConfig(encoder="static-aligned", finetune=False, epochs=2, batch_size=8, evals_per_epoch=1,
                             seed=7, threads=1)
    crf_a, crf_b = (train_feature_crf(crf_cfg, space, real["train"]) for _ in range(2))
    assert crf_a.attributes == crf_b.attributes and torch.equal(crf_a.weights, crf_b.weights)
    assert crf_a.train_counts["unknown"] > 0  # min_count 2: the singletons of the 40 sentences have no vector
    run_a, run_b = (train_static_tagger(static_cfg, space, real["train"], real["dev"]) for _ in range(2))
    state_a, state_b = run_a.tagger.state_dict(), run_b.tagger.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    for name in ("dev", "weibo", "pd"):
        ds = real[name]
        crf_pred = predict(crf_a, ds)
        assert crf_pred == predict(crf_b, ds)
        static_pred, counts = static_predict(run_a, space, ds)
        assert static_pred == static_predict(run_b, space, ds)[0]
        lookup = space.lookup([s.tokens for s in ds.sentences], ds.language)
        assert counts == lookup.counts and counts["tokens"] == ds.n_tokens and counts["unknown"] > 0
        zero = sum(int((v.abs().sum(1) == 0).sum()) for v in space.vectors(lookup))
        assert zero == counts["unknown"]
        for pred in (crf_pred, static_pred):
            assert [len(p) for p in pred] == [len(s) for s in ds.sentences]
            scores = score_dataset(ds, pred)  # scored exactly as every other row
            assert 0.0 <= next(iter(scores.values()))["strict"]["f1"] <= 1.0
            if ds.language == "zh":
                assert not any(t.endswith("MISC") for p in pred for t in p)
    other = train_feature_crf(FeatureCrfConfig(clusters=(8, 32), max_iterations=30, seed=6), space, real["train"])
    assert not torch.equal(other.clusters[0].centroids, crf_a.clusters[0].centroids)  # the seed reaches the k-means


# --- the rows as runs: cached under a run key, read back, rerun when the key changes -------------------------
def _toy_experiment(tmp_path: Path):
    from xner_lib.experiment import Experiment

    en = english_toy(120, 0, NAMES)
    zh = chinese_toy()
    data = {"conll_train": en, "conll_dev": english_toy(40, 1, NAMES), "conll_test": english_toy(40, 2, NAMES),
            "weibo_test": dataset([[(c, y if y == "O" else y + ".NAM") for c, y in zip(s.tokens, s.tags, strict=True)]
                                   for s in zh.sentences], "weibo"),
            "peoples_daily_test": zh}
    return Experiment(data, None, "toy", tmp_path, progress=False)  # type: ignore[arg-type]  # rows use no encoder


def test_static_rows_are_runs_read_back_by_run_key_and_rerun_when_it_changes(tmp_path: Path) -> None:
    from xner_lib.report import table3
    from xner_lib.static_rows import run_feature_crf, run_static_tagger

    exp = _toy_experiment(tmp_path)
    space = toy_space()
    crf_cfg = FeatureCrfConfig(clusters=(len(CLASSES),), max_iterations=30, seed=1)
    first = run_feature_crf(exp, crf_cfg, space)
    path = tmp_path / "runs" / "feature_crf-seed1" / "metrics.json"
    assert path.is_file() and first["variant"] == "feature_crf" and first["seed"] == 1
    assert set(first["scores"]) == {"conll_dev", "conll_test", "weibo_test", "peoples_daily_test"}
    assert first["extra"]["lookup"]["peoples_daily_test"]["tokens"] == exp.data["peoples_daily_test"].n_tokens
    stamp = path.stat().st_mtime_ns
    assert run_feature_crf(exp, crf_cfg, space)["extra"]["run_key"] == first["extra"]["run_key"]
    assert path.stat().st_mtime_ns == stamp  # read back, not retrained
    other = run_feature_crf(exp, FeatureCrfConfig(clusters=(len(CLASSES),), max_iterations=31, seed=1), space)
    assert other["extra"]["run_key"] != first["extra"]["run_key"] and path.stat().st_mtime_ns != stamp
    moved = run_feature_crf(exp, FeatureCrfConfig(clusters=(len(CLASSES),), max_iterations=31, seed=1), toy_space(5))
    assert moved["extra"]["run_key_parts"]["space"] != other["extra"]["run_key_parts"]["space"]

    cfg = TrainConfig(encoder="static-aligned", finetune=False, epochs=2, batch_size=16, lr=0.0, head_lr=1e-2,
                      evals_per_epoch=1, seed=2, threads=1)
    static = run_static_tagger(exp, cfg, space)
    assert (tmp_path / "runs" / "static_bilstm_crf-seed2" / "metrics.json").is_file()
    assert static["extra"]["steps"] == len(static["extra"]["history"]) > 0 and static["seed"] == 2
    static_path = tmp_path / "runs" / "static_bilstm_crf-seed2" / "metrics.json"
    stamp = static_path.stat().st_mtime_ns
    assert run_static_tagger(exp, cfg, space) == static and static_path.stat().st_mtime_ns == stamp

    t3 = table3({"CRF": ("crf", [other, moved]), "Pipeline": ("pipeline", "not rebuilt: a reason"),
                 "Static": ("word2vec", [static])}, {"crf": (0.5698, 0.2526, 0.35), "pipeline": (0.6, 0.3, 0.4)})
    assert t3.model.tolist() == ["CRF", "Pipeline", "Static"]
    crf_pd = [m["scores"]["peoples_daily_test"]["peoples_daily"]["strict"]["f1"] for m in (other, moved)]
    assert t3.loc[0, "People's Daily F1"] == pytest.approx(round(sum(crf_pd) / 2, 4), abs=1e-4)
    assert t3.loc[0, "paper F1"] == 0.35 and t3.loc[0, "seeds"] == "1 1"
    assert t3.loc[1, "note"] == "not rebuilt: a reason" and t3.isna().loc[1, "People's Daily F1"]
    assert t3.isna().loc[2, "paper F1"] and t3.isna().loc[2, "People's Daily F1 std"]


def test_a_space_is_keyed_by_what_it_is_built_from_not_by_its_vectors_last_bits(real: dict, tmp_path: Path) -> None:
    """Static vectors are a float computation whose last bits differ from one CPU to another: Table 3's rows are
    keyed by what the space is built from (encoder, config, tokens, 02's map), so a clone on another machine
    reads them back; a changed map, encoder or text still reruns them."""
    from xner_lib.static_rows import run_feature_crf

    enc = load_encoder("tiny-random-bert")
    english, chinese = [s.tokens for s in real["train"]], [s.tokens for s in real["zh_text"]]
    align = tmp_path / "alignment"
    align.mkdir()
    u = torch.linalg.qr(torch.randn(enc.hidden_size, enc.hidden_size, generator=torch.Generator().manual_seed(0)))[0]
    np.save(align / "mapping.npy", u.numpy())
    config, cache = StaticVectorConfig(min_count=2), tmp_path / "cache"

    def build(directory: Path = align) -> AlignedSpace:
        return build_aligned_space(enc, english, chinese, directory, config, cache_dir=cache, progress=False)

    space = build()
    assert space.source is not None and space.key() == build().key() != space.identity()
    # another machine: the same inputs, vectors that differ in their last bits
    elsewhere = replace(space, en_vectors=space.en_vectors * (1 + 1e-7), zh_vectors=space.zh_vectors * (1 - 1e-7))
    assert elsewhere.identity() != space.identity() and elsewhere.key() == space.key()
    exp = _toy_experiment(tmp_path)
    crf_cfg = FeatureCrfConfig(clusters=(4,), max_iterations=5, seed=1)
    first = run_feature_crf(exp, crf_cfg, space)
    assert first["extra"]["space_vectors"] == space.identity()
    assert run_feature_crf(exp, crf_cfg, elsewhere)["timestamp_utc"] == first["timestamp_utc"]  # read back
    # what the space is built from still keys it: another map, other text, another encoder
    other = tmp_path / "other"
    other.mkdir()
    np.save(other / "mapping.npy", -u.numpy())
    assert build(other).key() != space.key()
    assert build_aligned_space(enc, english, chinese[:-1], align, config, cache_dir=cache,
                               progress=False).key() != space.key()
    moved = replace(enc, identity="another")
    assert build_aligned_space(moved, english, chinese, align, config, cache_dir=cache,
                               progress=False).key() != space.key()
    # the encoder's name (a clone's path, say) does not; the space's own lookup settings do
    renamed = replace(enc, name="/elsewhere/encoder")
    assert build_aligned_space(renamed, english, chinese, align, config, cache_dir=cache,
                               progress=False).key() == space.key()
    assert replace(space, zh_lookup="char").key() != space.key()
    # a space built by hand has no source: its vectors key it
    assert toy_space().key() == toy_space().identity()


def test_a_table3_row_without_runs_says_so_instead_of_failing() -> None:
    from xner_lib import report
    from xner_lib.paper import TABLE3

    t = report.table3({"CRF": ("crf", []), "ELMo": ("elmo", "not rebuilt: no weights")}, TABLE3)
    assert list(t.note) == ["no run made yet", "not rebuilt: no weights"]
    assert t.loc[0, "paper F1"] == TABLE3["crf"][2]
