"""The BiLSTM-CRF head (eqs 8-11): checked against brute-force enumeration over all label sequences."""

from __future__ import annotations

import itertools

import pytest
import torch

from xner_lib.data.labels import MODEL_LABELS
from xner_lib.model import BiLstmCrfHead, HeadConfig, bio_allowed_transitions, check_mask

TINY3 = ("O", "B-PER", "I-PER")
TINY5 = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_head(labels: tuple[str, ...] = TINY3, input_dim: int = 6, seed: int = 0, **kw) -> BiLstmCrfHead:
    torch.manual_seed(seed)
    cfg = HeadConfig(input_dim=input_dim, proj_dim=8, lstm_hidden=5, labels=labels, **kw)
    head = BiLstmCrfHead(cfg)
    with torch.no_grad():  # transitions large enough that they matter
        head.crf.transitions.normal_(0, 1.5)
        head.crf.start_transitions.normal_(0, 1.5)
        head.crf.end_transitions.normal_(0, 1.5)
    return head.eval()


def seq_score(em: torch.Tensor, y: tuple[int, ...], head: BiLstmCrfHead, constrained: bool = False) -> float:
    """S(X, y) of eq. 8 with pytorch-crf's start and end scores, the slow and obvious way. ``em`` is [n, L]."""
    if constrained:
        start, trans, end = head.constrained_transitions()
    else:
        start, trans, end = head.crf.start_transitions, head.crf.transitions, head.crf.end_transitions
    s = start[y[0]] + em[0, y[0]]
    for t in range(1, len(y)):
        s = s + trans[y[t - 1], y[t]] + em[t, y[t]]
    return float((s + end[y[-1]]).detach())


def is_valid_bio(seq: list[str]) -> bool:
    prev = "O"
    for tag in seq:
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            return False
        prev = tag
    return True


def test_bio_allowed_transitions_forbid_only_orphan_inside_tags():
    start, trans = bio_allowed_transitions(TINY5)
    assert start.tolist() == [True, True, False, True, False]
    lab = {name: i for i, name in enumerate(TINY5)}
    assert trans[lab["B-PER"], lab["I-PER"]] and trans[lab["I-PER"], lab["I-PER"]]
    assert not trans[lab["O"], lab["I-PER"]] and not trans[lab["B-LOC"], lab["I-PER"]]
    assert not trans[lab["I-LOC"], lab["I-PER"]]
    assert trans[:, lab["O"]].all() and trans[:, lab["B-PER"]].all()
    assert int((~trans).sum()) == 2 * 3  # each I-X is forbidden after O and after the other type's B/I
    with pytest.raises(ValueError, match="not IOB2"):
        bio_allowed_transitions(["O", "PER"])


def test_loss_equals_brute_force_negative_log_likelihood():
    head = tiny_head(TINY3)
    feats = torch.randn(2, 3, 6)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    labels = torch.tensor([[1, 2, 0], [0, 1, -100]])  # -100 on padding is ignored
    loss = head.loss(feats, mask, labels)
    em = head.emissions(feats, mask).detach()
    nll = []
    for b, n in enumerate(mask.sum(1).tolist()):
        all_scores = torch.tensor([seq_score(em[b], y, head) for y in itertools.product(range(3), repeat=n)])
        gold = seq_score(em[b], tuple(labels[b, :n].tolist()), head)
        nll.append(torch.logsumexp(all_scores, 0).item() - gold)  # eqs 10-11
    assert loss.item() == pytest.approx(sum(nll) / len(nll), abs=1e-5)  # mean reduction


def test_unconstrained_decode_matches_pytorch_crf():
    head = tiny_head(MODEL_LABELS)
    em = torch.randn(4, 7, len(MODEL_LABELS)) * 3
    mask = torch.arange(7).unsqueeze(0) < torch.tensor([[7], [3], [1], [5]])
    assert head.crf_decode(em, mask, constrained=False) == head.crf.decode(em, mask)


def test_constrained_decode_equals_brute_force_argmax_over_valid_sequences():
    head = tiny_head(TINY5)
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        n = int(torch.randint(1, 5, (1,), generator=gen))
        em = torch.randn(1, n, 5, generator=gen) * 3
        mask = torch.ones(1, n, dtype=torch.bool)
        valid = [y for y in itertools.product(range(5), repeat=n) if is_valid_bio([TINY5[i] for i in y])]
        best = max(valid, key=lambda y: seq_score(em[0], y, head))
        assert head.crf_decode(em, mask) == [list(best)]


def test_constrained_decode_never_outputs_invalid_bio():
    head = tiny_head(MODEL_LABELS)
    with torch.no_grad():  # reward exactly the forbidden moves, so unconstrained decoding makes them
        head.crf.transitions.add_(5.0 * (~head.trans_allowed).float())
        head.crf.start_transitions.add_(5.0 * (~head.start_allowed).float())
    gen = torch.Generator().manual_seed(2)
    em = torch.randn(200, 12, len(MODEL_LABELS), generator=gen) * 4
    lengths = torch.randint(1, 13, (200,), generator=gen)
    mask = torch.arange(12).unsqueeze(0) < lengths.unsqueeze(1)
    def names(paths: list[list[int]]) -> list[list[str]]:
        return [[MODEL_LABELS[i] for i in p] for p in paths]
    free = names(head.crf_decode(em, mask, constrained=False))
    assert sum(not is_valid_bio(s) for s in free) > 100  # the test has teeth
    fixed = names(head.crf_decode(em, mask))
    assert all(is_valid_bio(s) for s in fixed)
    assert [len(s) for s in fixed] == lengths.tolist()


def test_padded_batch_decodes_each_sentence_to_its_length_and_as_if_alone():
    head = tiny_head(MODEL_LABELS, input_dim=6)
    lengths = [5, 1, 3, 4]
    sents = [torch.randn(n, 6) for n in lengths]
    feats = torch.zeros(len(lengths), 5, 6)
    for b, s in enumerate(sents):
        feats[b, : len(s)] = s
        feats[b, len(s):] = 99.0  # padding must not leak into any state
    mask = torch.arange(5).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    batch = head.decode(feats, mask)
    assert [len(p) for p in batch] == lengths
    alone = [head.decode(s.unsqueeze(0), torch.ones(1, len(s), dtype=torch.bool))[0] for s in sents]
    assert batch == alone
    states = head.forward_states(feats, mask)
    assert states.shape == (4, 5, 10) and torch.all(states[~mask] == 0)
    assert head.decode_tags(feats, mask) == [[MODEL_LABELS[i] for i in seq] for seq in batch]
    assert head.decode(feats.half(), mask) == head.decode(feats.half().float(), mask)  # fp16 cached features


def _cue_tags(words: list[int]) -> list[int]:
    """Gold of the synthetic task: words 0 'the', 1 'mr', 2 'in', 3 'name'. A run of names is a PER
    after 'mr' and a LOC after 'in' (the cue may be several words back), so the tag needs context."""
    out: list[int] = []
    cue, prev = None, None
    for w in words:
        if w == 3:
            out.append(TINY5.index(("I-" if prev == 3 else "B-") + ("PER" if cue == 1 else "LOC")))
        else:
            out.append(0)
            cue = w if w in (1, 2) else cue
        prev = w
    return out


def test_head_overfits_a_tiny_contextual_tagging_task():
    torch.manual_seed(0)
    sents = [[1, 3, 3, 0, 2, 3], [0, 2, 3, 3, 3], [1, 3, 0, 0], [2, 3, 0, 1, 3, 3, 3], [0, 1, 3, 2, 3, 3],
             [2, 3, 3, 0, 0, 1, 3]]
    seqs = [_cue_tags(s) for s in sents]
    assert seqs[0] == [0, 1, 2, 0, 0, 3]  # mr name name the in name
    vocab = torch.randn(4, 8)
    n, u = len(sents), max(map(len, sents))
    feats = torch.zeros(n, u, 8)
    gold = torch.zeros(n, u, dtype=torch.long)
    mask = torch.zeros(n, u, dtype=torch.bool)
    for b, (s, y) in enumerate(zip(sents, seqs, strict=True)):
        feats[b, : len(s)] = vocab[s] + 0.05 * torch.randn(len(s), 8)
        gold[b, : len(s)] = torch.tensor(y)
        mask[b, : len(s)] = True
    head = BiLstmCrfHead(HeadConfig(input_dim=8, proj_dim=16, lstm_hidden=16, labels=TINY5))
    opt = torch.optim.Adam(head.parameters(), lr=0.02)
    first = head.eval().loss(feats, mask, gold).item()
    head.train()
    for _ in range(100):
        opt.zero_grad()
        head.loss(feats, mask, gold).backward()
        opt.step()
    head.eval()
    assert head.loss(feats, mask, gold).item() < 0.05 * first
    assert head.decode(feats, mask) == seqs  # decode accuracy 1.0


class _Concat(torch.nn.Module):
    """Stands in for the double attention: appends ``extra`` features to the BiLSTM states."""

    def __init__(self, state_dim: int, extra: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(state_dim, extra)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.cat([states, self.lin(states)], dim=-1)


def test_middle_hook_widens_the_emission_input():
    cfg = HeadConfig(input_dim=6, proj_dim=8, lstm_hidden=5, extra_dim=3)
    head = BiLstmCrfHead(cfg, middle=_Concat(cfg.state_dim, 3)).eval()
    assert head.emit.in_features == 13
    feats, mask = torch.randn(2, 4, 6), torch.ones(2, 4, dtype=torch.bool)
    assert head.emissions(feats, mask).shape == (2, 4, len(MODEL_LABELS))
    head.loss(feats, mask, torch.zeros(2, 4, dtype=torch.long)).backward()
    assert head.middle.lin.weight.grad is not None and head.middle.lin.weight.grad.abs().sum() > 0
    wrong = BiLstmCrfHead(HeadConfig(input_dim=6, proj_dim=8, lstm_hidden=5, extra_dim=2), middle=_Concat(10, 3))
    with pytest.raises(ValueError, match="expects 12 input dimensions"):
        wrong.emissions(feats, mask)


def test_shape_errors_raise_value_error_naming_the_shapes():
    head = tiny_head(TINY3, input_dim=6)
    feats, mask = torch.randn(2, 4, 6), torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"H = 6, got \(2, 4, 5\)"):
        head.loss(torch.randn(2, 4, 5), mask, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"got \(4, 6\)"):
        head.decode(torch.randn(4, 6), mask)
    with pytest.raises(ValueError, match=r"mask must have shape \[B,U\] = \(2, 4\), got \(2, 3\)"):
        head.decode(feats, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"labels must have shape \[B,U\] = \(2, 4\), got \(2, 5\)"):
        head.loss(feats, mask, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="contiguous"):
        head.decode(feats, torch.tensor([[1, 0, 1, 0], [1, 1, 1, 1]], dtype=torch.bool))
    with pytest.raises(ValueError, match="empty sentences at batch rows \\[1\\]"):
        check_mask(torch.tensor([[1, 0], [0, 0]]), 2, 2)
    with pytest.raises(ValueError, match=r"ids in \[0, 3\)"):
        head.loss(feats, mask, torch.full((2, 4), 3))
    with pytest.raises(ValueError, match="L = 3"):
        head.crf_decode(torch.randn(2, 4, 5), mask)
    with pytest.raises(ValueError, match="dropout"):
        HeadConfig(input_dim=6, dropout=1.0)


def test_config_round_trips_through_a_plain_dict():
    cfg = HeadConfig(input_dim=384, labels=list(TINY5))
    assert cfg.labels == TINY5 and cfg.num_labels == 5 and cfg.proj_dim == 100 and cfg.dropout == 0.5
    assert HeadConfig(**cfg.to_dict()) == cfg
