"""Static word vectors: per-type means over occurrences, halves, jieba segmentation."""

from __future__ import annotations

import torch

from xner_lib.encoders import load_encoder
from xner_lib.vectors import merge, occurrence_vectors, segment_chinese, type_vectors


def test_type_vector_is_the_mean_of_its_occurrences() -> None:
    toks = [["A", "b", "a"], ["b", "c"]]
    feats = [torch.tensor([[1.0, 0], [2, 2], [3, 0]]), torch.tensor([[4.0, 4], [9, 9]])]
    sv = type_vectors(toks, feats, lowercase=True)
    assert sv.words == ["a", "b", "c"] and sv.counts == [2, 2, 1]
    assert torch.allclose(sv.vectors, torch.tensor([[2.0, 0], [3, 3], [9, 9]]))
    assert type_vectors(toks, feats, lowercase=True, min_count=2).words == ["a", "b"]
    even, odd = (type_vectors(toks, feats, lowercase=True, min_count=2, part=p) for p in (0, 1))
    assert torch.allclose(even.vectors, torch.tensor([[1.0, 0], [2, 2]]))
    assert torch.allclose(odd.vectors, torch.tensor([[3.0, 0], [4, 4]]))


def test_jieba_words_tile_the_sentence() -> None:
    sents = [list("我爱北京天安门"), list("上司会以为你不尊重他")]
    words = segment_chinese(sents)
    assert ["".join(w) for w in words] == ["".join(s) for s in sents]
    assert "北京" in words[0]


def test_occurrence_vectors_give_one_vector_per_word(tmp_path) -> None:
    enc = load_encoder("tiny-random-bert")
    toks = [["北京", "天安门"], ["the", "boss", "thinks"]]
    feats = occurrence_vectors(enc, toks, tmp_path, progress=False)
    assert [f.shape for f in feats] == [(2, enc.hidden_size), (3, enc.hidden_size)]
    zh = type_vectors(toks[:1], feats[:1])
    h = enc.hidden_size
    chars = type_vectors([["北", "京", "北京"]], [torch.stack([torch.zeros(h), torch.ones(h), torch.full((h,), 7.0)])])
    both = merge(zh, chars)
    assert both.words == ["北京", "天安门", "北", "京"] and both.counts == [1, 1, 1, 1]
    assert torch.equal(both.vectors, torch.cat([zh.vectors, chars.vectors[:2]]))  # 北京 keeps the word's vector
    assert torch.allclose(zh.vectors, feats[0].float())  # one occurrence each: the occurrence vector itself
