"""Double attention and the reverse attention transfer (section 3.2): checked against slow, obvious loops."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from xner_lib.layers import (
    DoubleAttention,
    ReverseAttentionTransfer,
    SemanticAttention,
    StructuralAttention,
    relative_sinusoid,
)
from xner_lib.model import BiLstmCrfHead, HeadConfig

DIM, HEADS = 8, 2


pytestmark = pytest.mark.usefixtures("one_thread")


def batch(lengths: list[int], dim: int = DIM, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random states [B,U,dim] zero at padding, as the BiLSTM gives them, and their mask [B,U]."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    states = torch.randn(len(lengths), max(lengths), dim, generator=gen) * mask[..., None]
    return states, mask


def with_noise_at_padding(x: torch.Tensor, mask: torch.Tensor, seed: int = 99) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noise = 10 * torch.randn(x.shape, generator=gen)
    return torch.where(mask[..., None], x, noise)


def make(kind: str, position: bool = True, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "semantic":
        return SemanticAttention(DIM, HEADS, dropout=0.0).eval()
    if kind == "structural":
        return StructuralAttention(DIM, HEADS, dropout=0.0, position=position).eval()
    return DoubleAttention(DIM, HEADS, dropout=0.0, position=position).eval()


def softmax_list(xs: list[float]) -> list[float]:
    top = max(xs)
    es = [math.exp(x - top) for x in xs]
    return [e / sum(es) for e in es]


def slow_attention(scores: list[list[float]], values: torch.Tensor) -> torch.Tensor:
    """Row-wise softmax of an n x n list of scores, times values [n, d]: one head, real units only."""
    n = len(scores)
    out = torch.zeros(n, values.shape[1], dtype=torch.float64)
    for i in range(n):
        for j, w in enumerate(softmax_list(scores[i])):
            out[i] += w * values[j].double()
    return out


# ----------------------------------------------------------------------------- relative encodings
def test_relative_sinusoid_is_tener_sin_then_cos_of_each_distance() -> None:
    length, dim = 4, 7  # odd dim: a zero column, as TENER
    enc = relative_sinusoid(length, dim)
    assert enc.shape == (2 * length - 1, dim)
    half = dim // 2
    for row in range(2 * length - 1):
        k = row - (length - 1)
        for m in range(half):
            w = 10000 ** (-m / (half - 1))
            assert enc[row, m].item() == pytest.approx(math.sin(k * w), abs=1e-5)
            assert enc[row, half + m].item() == pytest.approx(math.cos(k * w), abs=1e-5)
        assert enc[row, dim - 1].item() == 0.0


def test_relative_encodings_are_directional() -> None:
    length = 6
    enc = relative_sinusoid(length, 10)
    zero = length - 1
    for k in range(1, length):
        assert not torch.allclose(enc[zero + k], enc[zero - k], atol=1e-3), k
        # the cosine half is even, the sine half odd: left and right differ only by the sign of the sines
        assert torch.allclose(enc[zero + k, 5:], enc[zero - k, 5:])
        assert torch.allclose(enc[zero + k, :5], -enc[zero - k, :5])


# ----------------------------------------------------------------------------- the two attentions, slowly
def test_semantic_equals_a_direct_slow_implementation() -> None:
    layer = make("semantic")
    states, mask = batch([4, 2])
    out = layer(states, mask)
    d = DIM // HEADS
    wq, wk, wv = (lin.weight.detach().double() for lin in (layer.query, layer.key, layer.value))
    for b, n in enumerate([4, 2]):
        x = states[b, :n].double()
        q, k, v = x @ wq.T, x @ wk.T, x @ wv.T
        heads = []
        for h in range(HEADS):
            sl = slice(h * d, (h + 1) * d)
            scores = [[float(q[i, sl] @ k[j, sl]) / math.sqrt(d) for j in range(n)] for i in range(n)]
            heads.append(slow_attention(scores, v[:, sl]))
            w = layer.weights(states, mask)[b, h, :n, :n].double()
            assert torch.allclose(w, torch.tensor([softmax_list(r) for r in scores], dtype=torch.float64),
                                  atol=1e-5)
        expected = torch.cat(heads, dim=1) @ layer.out.weight.detach().double().T + layer.out.bias.detach().double()
        assert torch.allclose(out[b, :n].double(), expected, atol=1e-5)
        assert torch.all(out[b, n:] == 0)


def test_structural_score_equals_a_double_loop_over_query_and_key() -> None:
    layer = make("structural")
    with torch.no_grad():
        layer.content_bias.normal_(0, 1.0)
        layer.position_bias.normal_(0, 1.0)
    states, mask = batch([5, 3])
    length, d = states.shape[1], DIM // HEADS
    scores = layer.scores(states)
    weights = layer.weights(states, mask)
    out = layer(states, mask)
    rel = relative_sinusoid(length, d).double()
    wq, wv = layer.query.weight.detach().double(), layer.value.weight.detach().double()
    for b, n in enumerate([5, 3]):
        x = states[b].double()
        q, v = x @ wq.T, x @ wv.T
        heads = []
        for h in range(HEADS):
            sl = slice(h * d, (h + 1) * d)
            u_h, v_h = layer.content_bias[h].detach().double(), layer.position_bias[h].detach().double()
            loop = [[0.0] * length for _ in range(length)]
            for i in range(length):
                for j in range(length):
                    r = rel[length - 1 + j - i]  # r_{j-i}
                    k_j = x[j, sl]  # TENER does not project the keys
                    loop[i][j] = float(q[i, sl] @ k_j + q[i, sl] @ r + u_h @ k_j + v_h @ r)
            assert torch.allclose(scores[b, h].double(), torch.tensor(loop, dtype=torch.float64), atol=1e-5)
            real = [row[:n] for row in loop[:n]]
            assert torch.allclose(weights[b, h, :n, :n].double(),
                                  torch.tensor([softmax_list(r) for r in real], dtype=torch.float64), atol=1e-5)
            heads.append(slow_attention(real, v[:n, sl]))
        assert torch.allclose(out[b, :n].double(), torch.cat(heads, dim=1), atol=1e-5)
        assert torch.all(out[b, n:] == 0)


def test_structural_without_position_scores_only_content_and_content_bias() -> None:
    layer = make("structural", position=False)
    assert layer.position_bias is None
    states, _ = batch([3])
    d = DIM // HEADS
    q = states[0].double() @ layer.query.weight.detach().double().T
    scores = layer.scores(states)
    for h in range(HEADS):
        sl = slice(h * d, (h + 1) * d)
        for i in range(3):
            for j in range(3):
                k_j = states[0, j, sl].double()
                expected = float(q[i, sl] @ k_j + layer.content_bias[h].detach().double() @ k_j)
                assert scores[0, h, i, j].item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("position", [False, True])
def test_permuting_real_units_permutes_outputs_only_without_position(position: bool) -> None:
    layer = make("structural", position=position)
    states, mask = batch([5, 2])
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = states.clone()
    permuted[0] = states[0, perm]
    out, out_perm = layer(states, mask), layer(permuted, mask)
    equivariant = torch.allclose(out_perm[0], out[0, perm], atol=1e-5)
    assert equivariant is (not position)
    assert torch.allclose(out_perm[1], out[1])  # the other sentence is untouched either way


def test_semantic_attention_is_permutation_equivariant() -> None:
    layer = make("semantic")
    states, mask = batch([4])
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.allclose(layer(states[:, perm], mask)[0], layer(states, mask)[0, perm], atol=1e-5)


# ----------------------------------------------------------------------------- padding
@pytest.mark.parametrize("kind", ["semantic", "structural"])
def test_padded_keys_get_exactly_zero_weight_and_padded_queries_zero_rows(kind: str) -> None:
    layer = make(kind)
    states, mask = batch([4, 1, 3])
    weights = layer.weights(states, mask)
    assert not torch.isnan(weights).any()
    for b, n in enumerate([4, 1, 3]):
        assert torch.all(weights[b, :, :, n:] == 0)
        assert torch.all(weights[b, :, n:, :] == 0)
        assert torch.allclose(weights[b, :, :n].sum(-1), torch.ones(HEADS, n))


@pytest.mark.parametrize("kind", ["semantic", "structural", "double"])
@pytest.mark.parametrize("position", [True, False])
def test_values_at_padded_positions_never_reach_real_outputs(kind: str, position: bool) -> None:
    layer = make(kind, position=position)
    states, mask = batch([4, 2, 1])
    noisy = with_noise_at_padding(states, mask)
    out, out_noisy = layer(states, mask), layer(noisy, mask)
    width = DIM if kind == "double" else 0  # DoubleAttention passes its input states through
    assert torch.allclose(out[mask][:, width:], out_noisy[mask][:, width:], atol=1e-6)
    assert torch.all(out_noisy[~mask][:, width:] == 0)
    assert not torch.isnan(out_noisy).any()


# ----------------------------------------------------------------------------- DoubleAttention as the head's middle
@pytest.mark.parametrize("position", [True, False])
def test_double_attention_concatenates_states_semantic_and_structural(position: bool) -> None:
    layer = make("double", position=position)
    states, mask = batch([3, 2])
    out = layer(states, mask)
    assert out.shape == (2, 3, 3 * DIM)
    assert layer.extra_dim == 2 * DIM == out.shape[-1] - states.shape[-1]
    assert torch.equal(out[..., :DIM], states)
    assert torch.allclose(out[..., DIM:2 * DIM], layer.semantic(states, mask))
    assert torch.allclose(out[..., 2 * DIM:], layer.structural(states, mask))


@pytest.mark.parametrize("position", [True, False])
def test_gradients_reach_every_parameter_of_double_attention(position: bool) -> None:
    layer = DoubleAttention(DIM, HEADS, dropout=0.1, position=position).train()
    states, mask = batch([4, 2])
    (layer(states, mask) ** 2).sum().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), name


def test_double_attention_plugs_into_the_head_as_middle() -> None:
    torch.manual_seed(0)
    cfg = HeadConfig(input_dim=6, proj_dim=8, lstm_hidden=4, labels=("O", "B-PER", "I-PER"))
    middle = DoubleAttention(cfg.state_dim, HEADS)
    head = BiLstmCrfHead(replace(cfg, extra_dim=middle.extra_dim), middle=middle)
    features, mask = batch([3, 1], 6)
    head.loss(features, mask, torch.zeros(2, 3, dtype=torch.long)).backward()
    assert middle.structural.position_bias.grad is not None
    assert [len(p) for p in head.eval().decode(features, mask)] == [3, 1]


def test_double_attention_maps_are_both_weight_tensors() -> None:
    layer = make("double")
    states, mask = batch([3, 2])
    maps = layer.attention_maps(states, mask)
    assert set(maps) == {"semantic", "structural"}
    for name, w in maps.items():
        assert w.shape == (2, HEADS, 3, 3), name
        assert torch.allclose(w[0].sum(-1), torch.ones(HEADS, 3))
        assert torch.all(w[1, :, :, 2] == 0)
    assert torch.equal(maps["structural"], layer.structural.weights(states, mask))


def test_double_attention_defaults() -> None:
    layer = DoubleAttention(200)
    assert layer.semantic.heads == layer.structural.heads == 4
    assert layer.semantic.dropout.p == layer.structural.dropout.p == 0.15
    assert layer.structural.position and layer.extra_dim == 400


def test_train_mode_dropout_keeps_padded_rows_zero() -> None:
    layer = DoubleAttention(DIM, HEADS, dropout=0.5).train()
    states, mask = batch([4, 1])
    out = layer(states, mask)
    assert torch.all(out[1, 1:] == 0)


def test_a_single_sentence_of_one_unit_works() -> None:
    states, mask = batch([1])
    for position in (True, False):
        out = make("double", position=position)(states, mask)
        assert out.shape == (1, 1, 3 * DIM) and not torch.isnan(out).any()
    maps = make("double").attention_maps(states, mask)
    assert torch.all(maps["structural"] == 1) and torch.all(maps["semantic"] == 1)


# ----------------------------------------------------------------------------- reverse attention transfer
DS, DT = 6, 5


def transfer(seed: int = 0) -> ReverseAttentionTransfer:
    torch.manual_seed(seed)
    return ReverseAttentionTransfer(DS, DT, dropout=0.0, proj_dim=4).eval()


def test_transfer_is_softmax_of_bilinear_scores_times_teacher_features_slowly() -> None:
    layer = transfer()
    student_lengths, teacher_lengths = [3, 2, 1], [4, 1, 2]  # different teacher lengths, one of one token
    states, mask = batch(student_lengths, DS)
    teacher, teacher_mask = batch(teacher_lengths, DT, seed=1)
    out = layer(states, mask, teacher, teacher_mask)
    weights = layer.weights(states, mask, teacher, teacher_mask)
    assert out.shape == (3, 3, DT) and weights.shape == (3, 3, 4)
    wq, wk = layer.query.weight.detach().double(), layer.key.weight.detach().double()
    for b, (n, m) in enumerate(zip(student_lengths, teacher_lengths, strict=True)):
        for i in range(n):
            h_i = states[b, i].double() @ wq.T
            scores = [float(h_i @ (teacher[b, j].double() @ wk.T)) / math.sqrt(4) for j in range(m)]
            r = softmax_list(scores)
            expected = sum(r[j] * teacher[b, j].double() for j in range(m))
            assert torch.allclose(out[b, i].double(), expected, atol=1e-5)
            assert torch.allclose(weights[b, i, :m].double(), torch.tensor(r, dtype=torch.float64), atol=1e-5)
            assert weights[b, i].sum().item() == pytest.approx(1.0, abs=1e-6)
            assert torch.all(weights[b, i, m:] == 0)
        assert torch.all(out[b, n:] == 0) and torch.all(weights[b, n:] == 0)
    # the sentence whose teacher side is one token copies that token's features
    assert torch.allclose(out[1, :2], teacher[1, 0].expand(2, DT))


def test_transfer_ignores_values_at_padded_student_and_teacher_positions() -> None:
    layer = transfer()
    states, mask = batch([3, 1], DS)
    teacher, teacher_mask = batch([2, 4], DT, seed=1)
    out = layer(states, mask, teacher, teacher_mask)
    noisy = layer(with_noise_at_padding(states, mask), mask, with_noise_at_padding(teacher, teacher_mask, 7),
                  teacher_mask)
    assert torch.allclose(out, noisy, atol=1e-6)
    assert torch.all(noisy[~mask] == 0)


def test_transfer_gradients_reach_its_projections() -> None:
    layer = ReverseAttentionTransfer(DS, DT, dropout=0.1).train()
    states, mask = batch([3, 2], DS)
    teacher, teacher_mask = batch([2, 3], DT, seed=1)
    (layer(states, mask, teacher, teacher_mask) ** 2).sum().backward()
    assert layer.query.weight.grad.abs().sum() > 0 and layer.key.weight.grad.abs().sum() > 0
    assert layer.extra_dim == DT and layer.proj_dim == 100


def test_transfer_on_one_sentence_of_one_unit_and_one_teacher_token() -> None:
    layer = transfer()
    states, mask = batch([1], DS)
    teacher, teacher_mask = batch([1], DT, seed=1)
    assert torch.allclose(layer(states, mask, teacher, teacher_mask), teacher)


# ----------------------------------------------------------------------------- input checks
@pytest.mark.parametrize("kind", ["semantic", "structural", "double"])
def test_wrong_shapes_raise_value_error_naming_them(kind: str) -> None:
    layer = make(kind)
    states, mask = batch([3, 2])
    with pytest.raises(ValueError, match=r"\(2, 3, 7\)"):
        layer(states[..., :7], mask)
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        layer(states, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(6, 8\)"):
        layer(states.reshape(6, DIM), mask)
    with pytest.raises(ValueError, match="no real position in batch rows \\[1\\]"):
        layer(states, torch.tensor([[True, True, False], [False, False, False]]))
    with pytest.raises(ValueError, match=r"\(2, 0, 8\)"):
        layer(states[:, :0], mask[:, :0])


def test_transfer_wrong_shapes_raise_value_error_naming_them() -> None:
    layer = transfer()
    states, mask = batch([3, 2], DS)
    teacher, teacher_mask = batch([2, 4], DT, seed=1)
    with pytest.raises(ValueError, match=r"teacher features .*\(2, 4, 4\)"):
        layer(states, mask, teacher[..., :4], teacher_mask)
    with pytest.raises(ValueError, match=r"same batch size"):
        layer(states, mask, teacher[:1], teacher_mask[:1])
    with pytest.raises(ValueError, match=r"teacher features .*\(2, 4\).*\(2, 3\)"):
        layer(states, mask, teacher, teacher_mask[:, :3])
    with pytest.raises(ValueError, match="teacher features has no real position"):
        layer(states, mask, teacher, torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"student states .*\(2, 3, 5\)"):
        layer(states[..., :5], mask, teacher, teacher_mask)


def test_bad_sizes_raise_value_error() -> None:
    with pytest.raises(ValueError, match="dim=10, heads=4"):
        SemanticAttention(10, 4)
    with pytest.raises(ValueError, match="dim=4, heads=4"):
        StructuralAttention(4, 4)  # one dimension per head leaves no room for sine and cosine
    StructuralAttention(4, 4, position=False)  # but is fine without position
    with pytest.raises(ValueError, match="dropout"):
        DoubleAttention(8, 2, dropout=1.0)
    with pytest.raises(ValueError, match="proj_dim"):
        ReverseAttentionTransfer(4, 4, proj_dim=0)
    with pytest.raises(ValueError, match="length=0"):
        relative_sinusoid(0, 4)
