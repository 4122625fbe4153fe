"""Links, the target's label set at decoding, and the decoding variants of a run (issue 10)."""

from __future__ import annotations

import torch

from xner_lib.data.labels import MODEL_LABELS
from xner_lib.data.links import count_links, link_mask, link_spans
from xner_lib.decoding import DecodeConfig, allowed_labels, allowed_matrix, entities_in_links
from xner_lib.model import BiLstmCrfHead, HeadConfig


def test_link_spans_find_weibo_short_links_and_stop_at_their_code():
    text = "一键听歌：http://t.cn/zH4S4xq下载地址：http://t.cn/aoRTqWAndroid版"
    assert [text[a:b] for a, b in link_spans(text)] == ["http://t.cn/zH4S4xq", "http://t.cn/aoRTqWA"]
    en = "see www.pt.lu/info and https://x.org/a?b=1 now"
    assert [en[a:b] for a, b in link_spans(en)] == ["www.pt.lu/info", "https://x.org/a?b=1"]
    assert link_spans("@土豆网音乐 #话题# 没有链接") == []


def test_link_mask_marks_the_tokens_a_link_covers_in_both_languages():
    assert link_mask(list("看http://t.cn/ab了"), "zh") == [False] + [True] * 14 + [False]
    assert link_mask(["Visit", "www.a.com", "today", "."], "en") == [False, True, False, False]
    counts = count_links([list("看t.cn/ab"), list("无")], "zh", [["O"] * 8, ["B-PER"]])
    assert (counts.links, counts.tokens, counts.sentences, counts.gold_entity_tokens) == (1, 7, 1, 0)


def test_target_labels_forbid_misc_on_chinese_only():
    misc = [x.endswith("MISC") for x in MODEL_LABELS]
    zh = allowed_labels(MODEL_LABELS, "peoples_daily", True)
    assert zh.tolist() == [not m for m in misc]
    assert allowed_labels(MODEL_LABELS, "peoples_daily", False).all()
    assert allowed_labels(MODEL_LABELS, "conll", True).all()


def test_decoding_with_misc_forbidden_and_links_as_o_changes_only_what_it_must():
    torch.manual_seed(0)
    head = BiLstmCrfHead(HeadConfig(input_dim=4)).eval()
    labels = head.config.labels
    emissions = torch.full((1, 4, len(labels)), -5.0)
    emissions[0, 0, labels.index("B-MISC")] = 5.0  # MISC wins unless forbidden; LOC is second best
    emissions[0, 0, labels.index("B-LOC")] = 4.0
    emissions[0, 1, labels.index("B-PER")] = 5.0  # a PER on a link token
    emissions[0, 2, labels.index("O")] = 5.0
    emissions[0, 3, labels.index("B-ORG")] = 5.0
    with torch.no_grad():
        head.crf.transitions.zero_()
        head.crf.start_transitions.zero_()
        head.crf.end_transitions.zero_()
    mask = torch.ones(1, 4, dtype=torch.bool)
    spans = [[(0, 1), (1, 2), (2, 3), (3, 4)]]
    links = [[False, True, False, False]]

    def decode(config: DecodeConfig) -> list[str]:
        allowed = allowed_matrix(labels, "weibo", config, spans, links, 4)
        return [labels[i] for i in head.crf_decode(emissions, mask, allowed=allowed)[0]]

    assert decode(DecodeConfig(False, False)) == ["B-MISC", "B-PER", "O", "B-ORG"]
    assert decode(DecodeConfig(True, False)) == ["B-LOC", "B-PER", "O", "B-ORG"]
    assert decode(DecodeConfig(True, True)) == ["B-LOC", "O", "O", "B-ORG"]
    assert entities_in_links([decode(DecodeConfig(True, False))], links) == 1
    assert entities_in_links([decode(DecodeConfig(True, True))], links) == 0
