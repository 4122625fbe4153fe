"""Double attention (paper section 3.2) and the reverse attention transfer (DESIGN.md Model items 4 and 5).

Both sit between the BiLSTM and the emission layer of :class:`xner_lib.model.BiLstmCrfHead`. For ``B``
sentences of at most ``U`` units with BiLSTM states of ``D`` dimensions::

    states [B,U,D] -> SemanticAttention   (scaled dot-product self-attention, Vaswani et al. 2017)  [B,U,D]
                   -> StructuralAttention (relative-position self-attention, TENER, paper ref. 31)  [B,U,D]
    DoubleAttention: cat([states, semantic, structural], -1)                                      [B,U,3D]

    ReverseAttentionTransfer: Chinese states [B,U,Ds] attend over a frozen English teacher's
    features [B,W,Dt]: R = softmax(H Wq (T Wk)^T / sqrt(d)) [B,U,W], output R @ T                  [B,U,Dt]

Masks are bool (or 0/1) ``[B,U]``, True on real units; every sentence has at least one. In every module a
padded key gets ``-inf`` before the softmax, so its weight is exactly 0 and the values at padded positions
never reach a real output; output rows (and weight rows) at padded queries are 0.

The structural attention follows TENER's ``RelativeMultiHeadAttn`` and
``RelativeSinusoidalPositionalEmbedding`` (Yan et al. 2019, "TENER: Adapting Transformer Encoder for Named
Entity Recognition", arXiv:1911.04474; code: fastnlp/TENER, ``modules/relative_transformer.py``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

DEFAULT_HEADS = 4
"""``D = 2 * lstm_hidden = 200`` split in 4 heads of 50 dimensions each: enough room per head for the
relative sinusoids (25 frequencies), and few heads for the small data (TENER uses 8-14 heads of 96-128 over
much wider models)."""

DEFAULT_DROPOUT = 0.15
"""Dropout on the attention weights: TENER's value (``dropout = 0.15``, also its attention-map dropout, in
both ``train_tener_en.py`` configurations); Vaswani et al. use 0.1 on sub-layer outputs. The head already has
dropout 0.5 on the BiLSTM states, so a light dropout here."""

DEFAULT_TRANSFER_DIM = 100
"""Projection size ``d`` of the transfer's bilinear score: Table 2's token embedding dimension, the size the
head already projects the encoder to."""


# ----------------------------------------------------------------------------- relative position encodings
def relative_sinusoid(length: int, dim: int) -> Tensor:
    """Sinusoidal encodings of the relative distances ``-(length-1) .. length-1``: ``R [2*length-1, dim]``.

    Row ``r`` encodes the distance ``k = r - (length - 1)``: the encoding ``r_{j-i}`` of key ``j`` seen from
    query ``i`` is ``R[length - 1 + j - i]``. Built as TENER's ``RelativeSinusoidalPositionalEmbedding.
    get_embedding`` (Yan et al. 2019, paper ref. 31): with ``h = dim // 2`` frequencies
    ``w_m = 10000^(-m / (h - 1))``, ``R(k) = [sin(k w_0) .. sin(k w_{h-1}), cos(k w_0) .. cos(k w_{h-1})]``,
    then a zero column when ``dim`` is odd. The sine half is odd in ``k``, so ``R(k) != R(-k)`` for
    ``k != 0``: the encodings tell left from right (TENER section 3.2.2). TENER keeps a larger table with a
    padding row; only the rows used are built here. With ``h = 1`` TENER divides by zero; here ``w_0 = 1``.
    """
    if length < 1 or dim < 2:
        raise ValueError(f"relative_sinusoid needs length >= 1 and dim >= 2, got length={length}, dim={dim}")
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000.0) / max(half - 1, 1)))
    angles = torch.arange(-(length - 1), length, dtype=torch.float).unsqueeze(1) * freqs.unsqueeze(0)
    enc = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2 == 1:
        enc = torch.cat([enc, torch.zeros(2 * length - 1, 1)], dim=1)
    return enc


# ----------------------------------------------------------------------------- shared pieces
def _check_sizes(dim: int, heads: int, dropout: float) -> None:
    if dim < 1 or heads < 1 or dim % heads != 0:
        raise ValueError(f"dim must be a positive multiple of heads, got dim={dim}, heads={heads}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def _check_states(states: Tensor, dim: int, what: str = "states") -> None:
    if states.dim() != 3 or states.shape[-1] != dim:
        raise ValueError(f"{what} must have shape [B,U,D] with D = {dim}, got {tuple(states.shape)}")
    if states.shape[0] == 0 or states.shape[1] == 0:
        raise ValueError(f"{what} must hold at least one position, got shape {tuple(states.shape)}")
    if not states.is_floating_point():
        raise ValueError(f"{what} must be floating point, got {states.dtype}")


def _check_mask(mask: Tensor, states: Tensor, what: str = "states") -> Tensor:
    """``mask [B,U]`` for ``states [B,U,*]`` as bool; every sentence must have a real position."""
    if tuple(mask.shape) != tuple(states.shape[:2]):
        raise ValueError(f"the mask of {what} must have shape [B,U] = {tuple(states.shape[:2])}, "
                         f"got {tuple(mask.shape)}")
    mask = mask.bool()
    empty = torch.nonzero(~mask.any(dim=1)).flatten().tolist()
    if empty:
        raise ValueError(f"the mask of {what} has no real position in batch rows {empty}; drop them first")
    return mask


def _masked_softmax(scores: Tensor, query_mask: Tensor, key_mask: Tensor) -> Tensor:
    """Softmax of ``scores [B,h,Q,K]`` over the real keys; rows of padded queries are 0.

    Padded keys get ``-inf``: weight exactly 0. Every sentence has a real key, so no row is all ``-inf``
    and no NaN appears, not even at padded queries (whose rows are then zeroed).
    """
    scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1).masked_fill(~query_mask[:, None, :, None], 0.0)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """``[B,U,D] -> [B,heads,U,D/heads]``: head ``n`` takes dimensions ``n*D/heads .. (n+1)*D/heads - 1``."""
    batch, length, _ = x.shape
    return x.view(batch, length, heads, -1).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """``[B,heads,U,d] -> [B,U,heads*d]``, the inverse of :func:`_split_heads`."""
    batch, heads, length, d = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * d)


# ----------------------------------------------------------------------------- the two attentions of section 3.2
class _SelfAttention(nn.Module):
    """What the two attentions share: masked softmax over their own :meth:`scores` and the weighted values.
    A subclass sets ``dim``, ``heads``, ``value`` and ``dropout`` and defines ``scores``."""

    dim: int
    heads: int
    value: nn.Linear
    dropout: nn.Dropout

    def scores(self, states: Tensor) -> Tensor:
        raise NotImplementedError

    def weights(self, states: Tensor, mask: Tensor) -> Tensor:
        """Attention weights before dropout, ``[B,heads,U,U]``: rows sum to 1 over real keys (0 at padded
        keys); rows of padded queries are 0. ``states [B,U,D]``, ``mask [B,U]``."""
        _check_states(states, self.dim)
        mask = _check_mask(mask, states)
        return _masked_softmax(self.scores(states), mask, mask)

    def context(self, states: Tensor, mask: Tensor) -> Tensor:
        """Dropped-out weights times the values, heads concatenated: ``[B,U,D]``."""
        weights = self.dropout(self.weights(states, mask))
        return _merge_heads(weights @ _split_heads(self.value(states), self.heads))


class SemanticAttention(_SelfAttention):
    """The semantic attention of section 3.2: multi-head scaled dot-product self-attention on content.

    ``A = softmax(Q K^T / sqrt(d_head))`` per head with ``Q, K, V = H W_q, H W_k, H W_v`` (Vaswani et al.
    2017, paper ref. 30; no position term: it attends by what the units say, not where they are), dropout on
    ``A``, heads concatenated and projected back to ``dim``. Projections without bias and an output
    projection with one, as TENER's ``MultiHeadAttn`` (modules/transformer.py).

    Args:
        dim: size ``D`` of the states (the BiLSTM's ``2 * lstm_hidden``).
        heads: number of heads; must divide ``dim``.
        dropout: dropout on the attention weights (train mode only).
    """

    def __init__(self, dim: int, heads: int = DEFAULT_HEADS, dropout: float = DEFAULT_DROPOUT) -> None:
        super().__init__()
        _check_sizes(dim, heads, dropout)
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def scores(self, states: Tensor) -> Tensor:
        """Unmasked scores ``q_i . k_j / sqrt(d_head)``: ``states [B,U,D] -> [B,heads,U,U]`` (query, key)."""
        _check_states(states, self.dim)
        q = _split_heads(self.query(states), self.heads)
        k = _split_heads(self.key(states), self.heads)
        return q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)

    def forward(self, states: Tensor, mask: Tensor) -> Tensor:
        """``states [B,U,D]``, ``mask [B,U]`` -> ``[B,U,D]``, zero at padded positions."""
        return self.out(self.context(states, mask)).masked_fill(~mask.bool().unsqueeze(-1), 0.0)


class StructuralAttention(_SelfAttention):
    """The structural attention of section 3.2: TENER's relative-position self-attention (paper ref. 31).

    Per head, the score of key ``j`` for query ``i`` is TENER's (eq. 20 of Yan et al. 2019, unscaled as
    its default ``scale=False``)::

        A_ij = q_i . k_j  +  q_i . r_{j-i}  +  u . k_j  +  v . r_{j-i}

    with ``q = H W_q``, ``k = H`` (TENER does not project the keys: ``RelativeMultiHeadAttn`` has a
    ``qv_linear`` only, and ``K`` is the input split in heads; followed here), learned per-head vectors
    ``u`` (``content_bias``) and ``v`` (``position_bias``), and ``r`` the fixed directional sinusoids of
    :func:`relative_sinusoid` (not learned) of ``d_head`` dimensions, indexed by ``j - i`` as TENER's
    ``_shift`` does (checked: its row ``i``, column ``j`` holds distance ``j - i``). Then softmax over real
    keys, dropout, ``A V`` with ``V = H W_v``, heads concatenated; no output projection, as TENER.

    Two departures from TENER's code, both to match its paper and the brief of this module: TENER's code
    adds a fifth term ``k_j . r_{i-j}`` (its ``E_`` with ``_transpose_shift``) that its eq. 20 does not
    have, left out; and the distance terms are gathered by index instead of TENER's pad-and-reshape shift
    (same numbers, easier to read).

    ``position=False`` is the paper's "without position" ablation (Table 5): ``A_ij = q_i . k_j + u . k_j``;
    the layer then has no ``position_bias`` and is permutation-equivariant over the real units.

    Args:
        dim: size ``D`` of the states; ``heads`` must divide it, ``D / heads >= 2`` with ``position``.
        heads: number of heads.
        dropout: dropout on the attention weights (train mode only).
        position: keep the relative-position terms (default) or drop them.
    """

    def __init__(self, dim: int, heads: int = DEFAULT_HEADS, dropout: float = DEFAULT_DROPOUT,
                 position: bool = True) -> None:
        super().__init__()
        _check_sizes(dim, heads, dropout)
        if position and dim // heads < 2:
            raise ValueError(f"relative encodings need dim / heads >= 2, got dim={dim}, heads={heads}")
        self.dim, self.heads, self.head_dim, self.position = dim, heads, dim // heads, position
        self.query = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        # TENER initialises both biases with xavier_normal_ on [heads, head_dim]
        self.content_bias = nn.Parameter(nn.init.xavier_normal_(torch.empty(heads, self.head_dim)))  # u
        self.position_bias = (nn.Parameter(nn.init.xavier_normal_(torch.empty(heads, self.head_dim)))  # v
                              if position else None)

    def scores(self, states: Tensor) -> Tensor:
        """Unmasked scores ``A_ij`` (class docstring): ``states [B,U,D] -> [B,heads,U,U]`` (query, key)."""
        _check_states(states, self.dim)
        batch, length, _ = states.shape
        q = _split_heads(self.query(states), self.heads)  # [B,h,U,d]
        k = _split_heads(states, self.heads)  # TENER: the keys are the states themselves
        scores = (q + self.content_bias[:, None]) @ k.transpose(-1, -2)  # q_i.k_j + u.k_j
        if self.position_bias is None:
            return scores
        rel = relative_sinusoid(length, self.head_dim).to(states)  # [2U-1,d], row U-1+k is r_k
        by_distance = (q + self.position_bias[:, None]) @ rel.T  # [B,h,U,2U-1]: (q_i + v).r_k for every k
        pos = torch.arange(length, device=states.device)
        row = (pos[None, :] - pos[:, None] + length - 1).expand(batch, self.heads, length, length)  # j-i
        return scores + by_distance.gather(-1, row)

    def forward(self, states: Tensor, mask: Tensor) -> Tensor:
        """``states [B,U,D]``, ``mask [B,U]`` -> ``[B,U,D]``, zero at padded positions."""
        return self.context(states, mask).masked_fill(~mask.bool().unsqueeze(-1), 0.0)


class DoubleAttention(nn.Module):
    """The double attention layer of section 3.2 (DESIGN.md Model 4): the head builds it when
    ``HeadConfig.attention == "double"``.

    ``states [B,U,D]``, ``mask [B,U]`` -> ``cat([states, semantic(states), structural(states)], -1)``
    ``[B,U,3D]``: the BiLSTM states followed by the :class:`SemanticAttention` and the
    :class:`StructuralAttention` outputs (both zero at padded positions); ``extra_dim = 2D`` is what it adds
    (``HeadConfig.attention_dim``).

    Defaults: ``heads = 4`` (``D = 200`` in 4 heads of 50: enough dimensions per head for the relative
    sinusoids, few heads for the small data; TENER uses 8-14 heads over much wider models) and
    ``dropout = 0.15`` on the attention weights (TENER's value; the head already drops 0.5 of the states).
    ``position=False`` is the "without position" ablation; "without attention" is a head without this layer.
    """

    def __init__(self, dim: int, heads: int = DEFAULT_HEADS, dropout: float = DEFAULT_DROPOUT,
                 position: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.semantic = SemanticAttention(dim, heads, dropout)
        self.structural = StructuralAttention(dim, heads, dropout, position=position)

    @property
    def extra_dim(self) -> int:
        """Dimensions added to the states: ``2 * dim``."""
        return 2 * self.dim

    def forward(self, states: Tensor, mask: Tensor) -> Tensor:
        """``states [B,U,D]``, ``mask [B,U]`` -> ``[B,U,3D]``; the first ``D`` columns are ``states``."""
        return torch.cat([states, self.semantic(states, mask), self.structural(states, mask)], dim=-1)

    def attention_maps(self, states: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Weights for heat maps (before dropout, no gradient): ``{"semantic", "structural"}`` each
        ``[B,heads,U,U]`` (query, key), rows summing to 1 over real keys, zero rows at padded queries."""
        with torch.no_grad():
            return {"semantic": self.semantic.weights(states, mask),
                    "structural": self.structural.weights(states, mask)}


# ----------------------------------------------------------------------------- transfer from the English teacher
class ReverseAttentionTransfer(nn.Module):
    """The attention matrix used in reverse (section 3.2, second half; our definition: DESIGN.md Model 5).

    Each Chinese (student) unit attends over a frozen English teacher's features ``T`` (its BiLSTM states
    and emission scores over the English rendering of the sentence) with a bilinear score::

        R = softmax(H Wq (T Wk)^T / sqrt(d))   [B,U,W], over the teacher's real positions
        output = R @ T                         [B,U,Dt]

    ``Wq [Ds,d]`` and ``Wk [Dt,d]`` have no bias; ``d = proj_dim`` (default 100, Table 2's token embedding
    dimension). Dropout on ``R`` in train mode. The output carries the teacher's features unchanged in kind
    (no value projection): the emission layer after it is linear anyway. Rows at padded student positions
    are 0; a teacher side of one token gives ``R = 1`` and copies that token's features. The teacher is
    frozen by its caller: gradients reach ``T`` only if it requires them.

    Args:
        student_dim: size ``Ds`` of the student's states ``H``.
        teacher_dim: size ``Dt`` of the teacher's features ``T``.
        dropout: dropout on ``R`` (train mode only).
        proj_dim: size ``d`` of the bilinear projection.
    """

    def __init__(self, student_dim: int, teacher_dim: int, dropout: float = DEFAULT_DROPOUT,
                 proj_dim: int = DEFAULT_TRANSFER_DIM) -> None:
        super().__init__()
        for name, value in (("student_dim", student_dim), ("teacher_dim", teacher_dim), ("proj_dim", proj_dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        _check_sizes(proj_dim, 1, dropout)
        self.student_dim, self.teacher_dim, self.proj_dim = student_dim, teacher_dim, proj_dim
        self.query = nn.Linear(student_dim, proj_dim, bias=False)
        self.key = nn.Linear(teacher_dim, proj_dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    @property
    def extra_dim(self) -> int:
        """Dimensions of the output: the teacher's ``Dt``."""
        return self.teacher_dim

    def _check(self, states: Tensor, mask: Tensor, teacher: Tensor, teacher_mask: Tensor) -> tuple[Tensor, Tensor]:
        _check_states(states, self.student_dim, "student states")
        _check_states(teacher, self.teacher_dim, "teacher features")
        if teacher.shape[0] != states.shape[0]:
            raise ValueError(f"student states {tuple(states.shape)} and teacher features {tuple(teacher.shape)} "
                             "must have the same batch size B")
        return _check_mask(mask, states, "student states"), _check_mask(teacher_mask, teacher, "teacher features")

    def scores(self, states: Tensor, teacher: Tensor) -> Tensor:
        """Unmasked scores ``H Wq (T Wk)^T / sqrt(d)``: ``[B,U,Ds]``, ``[B,W,Dt]`` -> ``[B,U,W]``."""
        _check_states(states, self.student_dim, "student states")
        _check_states(teacher, self.teacher_dim, "teacher features")
        return self.query(states) @ self.key(teacher).transpose(-1, -2) / math.sqrt(self.proj_dim)

    def weights(self, states: Tensor, mask: Tensor, teacher: Tensor, teacher_mask: Tensor) -> Tensor:
        """``R [B,U,W]`` before dropout: rows sum to 1 over the teacher's real positions (0 at its padding);
        rows at padded student positions are 0. ``states [B,U,Ds]``, ``mask [B,U]``, ``teacher [B,W,Dt]``,
        ``teacher_mask [B,W]``."""
        mask, teacher_mask = self._check(states, mask, teacher, teacher_mask)
        scores = self.scores(states, teacher).unsqueeze(1)  # one "head" for the shared softmax
        return _masked_softmax(scores, mask, teacher_mask).squeeze(1)

    def forward(self, states: Tensor, mask: Tensor, teacher: Tensor, teacher_mask: Tensor) -> Tensor:
        """``R @ T``: ``states [B,U,Ds]``, ``mask [B,U]``, ``teacher [B,W,Dt]``, ``teacher_mask [B,W]`` ->
        ``[B,U,Dt]``, zero at padded student positions."""
        weights = self.dropout(self.weights(states, mask, teacher, teacher_mask))
        # padded teacher rows have weight 0, but 0 * inf or 0 * NaN would not vanish: zero them too
        teacher = teacher.masked_fill(~teacher_mask.bool().unsqueeze(-1), 0.0)
        return (weights @ teacher).masked_fill(~mask.bool().unsqueeze(-1), 0.0)
