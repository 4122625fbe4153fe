"""The tagging head: projection, BiLSTM and CRF over encoder unit vectors (paper sections 3.1 and 3.4).

Data flow for a batch of ``B`` sentences of at most ``U`` units (English words or Chinese characters)
whose encoder vectors have ``H`` dimensions (DESIGN.md, Model items 2, 3 and 7)::

    features [B,U,H] -> Linear(H, 100) -> dropout 0.5 -> BiLSTM -> dropout      (forward_states)
                     -> [middle layers, e.g. the double attention, later]       (hook)
                     -> Linear emissions O_t = W h_t  [B,U,L]                 (eq. 9)
                     -> CRF: -log p(y|X) in training (eqs 10-11), Viterbi with BIO constraints in decoding (eq. 8)

The CRF is ``torchcrf.CRF`` (pytorch-crf, batch-first, contiguous masks, mean reduction). Its transition
scores ``A`` of eq. 8 are learnt without constraints; at decoding only, a constrained copy forbids every
transition an IOB2 sequence cannot make (``I-X`` only after ``B-X`` or ``I-X``, never first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torchcrf import CRF

from .data.labels import MODEL_LABELS
from .device import to_device
from .layers import DEFAULT_DROPOUT, DEFAULT_HEADS, DoubleAttention, ReverseAttentionTransfer

#: the attention layers a head can have (``HeadConfig.attention``)
ATTENTIONS: tuple[str, ...] = ("none", "double")


@dataclass
class HeadConfig:
    """Sizes of the tagging head.

    ``input_dim`` is the encoder's hidden size ``H``. ``proj_dim`` is Table 2's "token embedding
    dimension 100"; ``lstm_hidden`` is per direction, so the BiLSTM states have ``2 * lstm_hidden``
    dimensions. ``extra_dim`` is what a custom ``middle`` module adds to those states before the emission
    layer. ``labels`` is the label map (IOB2, index = CRF tag id); it travels with the checkpoint.

    The paper's layers (section 3.2; DESIGN.md Model 4-5), off by default (the baseline):

    * ``attention="double"``: the semantic and structural self-attention of
      :class:`~xner_lib.layers.DoubleAttention` over the BiLSTM states, concatenated to them;
      ``position=False`` drops the structural attention's relative-position terms (the "without position"
      ablation); ``attention_heads``, ``attention_dropout`` size it.
    * ``teacher_dim > 0``: the reverse-attention transfer (:class:`~xner_lib.layers.ReverseAttentionTransfer`)
      from a frozen English teacher whose features have ``teacher_dim`` dimensions; its output is
      concatenated before the emission layer.
    """

    input_dim: int
    proj_dim: int = 100
    dropout: float = 0.5
    lstm_hidden: int = 100
    lstm_layers: int = 1
    extra_dim: int = 0
    labels: tuple[str, ...] = field(default=MODEL_LABELS)
    attention: str = "none"
    position: bool = True
    attention_heads: int = DEFAULT_HEADS
    attention_dropout: float = DEFAULT_DROPOUT
    teacher_dim: int = 0

    def __post_init__(self) -> None:
        self.labels = tuple(self.labels)  # a YAML list becomes a tuple
        for name in ("input_dim", "proj_dim", "lstm_hidden", "lstm_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"HeadConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.extra_dim < 0:
            raise ValueError(f"HeadConfig.extra_dim must be >= 0, got {self.extra_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"HeadConfig.dropout must be in [0, 1), got {self.dropout}")
        bio_allowed_transitions(self.labels)  # validates the label names
        if self.attention not in ATTENTIONS:
            raise ValueError(f"HeadConfig.attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.attention_heads < 1 or self.teacher_dim < 0 or not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"HeadConfig: attention_heads >= 1, teacher_dim >= 0 and attention_dropout in [0, 1) "
                             f"are required, got {self.attention_heads}, {self.teacher_dim}, {self.attention_dropout}")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def state_dim(self) -> int:
        """Size of the BiLSTM states ``h_t`` (both directions)."""
        return 2 * self.lstm_hidden

    @property
    def attention_dim(self) -> int:
        """What the double attention adds to the states (the semantic and the structural outputs)."""
        return 2 * self.state_dim if self.attention == "double" else 0

    @property
    def emission_input_dim(self) -> int:
        """Input size of the emission layer ``W`` of eq. 9: BiLSTM states plus what ``middle``, the double
        attention and the transfer add."""
        return self.state_dim + self.extra_dim + self.attention_dim + self.teacher_dim

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = list(self.labels)
        return d


def bio_allowed_transitions(labels: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Which IOB2 label sequences are valid, as masks over the CRF's start and transition scores.

    Returns ``start_allowed [L]`` (bool: the label may open a sentence) and ``trans_allowed [L, L]``
    (bool: ``trans_allowed[i, j]`` when label ``j`` may follow label ``i``). ``I-X`` may follow only
    ``B-X`` or ``I-X`` and may not open a sentence; everything else is allowed. Any label may end one.
    Raises ``ValueError`` for a label that is neither ``O`` nor ``B-``/``I-`` plus a type.
    """
    kinds: list[tuple[str, str]] = []
    for lab in labels:
        if lab == "O":
            kinds.append(("O", ""))
        elif len(lab) > 2 and lab[:2] in ("B-", "I-"):
            kinds.append((lab[0], lab[2:]))
        else:
            raise ValueError(f"label {lab!r} is not IOB2 (expected 'O', 'B-TYPE' or 'I-TYPE')")
    n = len(kinds)
    start = torch.tensor([k != "I" for k, _ in kinds], dtype=torch.bool)
    trans = torch.ones(n, n, dtype=torch.bool)
    for j, (kj, tj) in enumerate(kinds):
        if kj == "I":
            for i, (ki, ti) in enumerate(kinds):
                trans[i, j] = ki in ("B", "I") and ti == tj
    return start, trans


def check_mask(mask: Tensor, batch: int, length: int) -> Tensor:
    """Validate a unit mask ``[B,U]`` (bool or 0/1) and return its lengths ``[B]`` (long).

    Every sentence must be non-empty and its mask contiguous from position 0 (pytorch-crf's contract).
    """
    if mask.dim() != 2 or tuple(mask.shape) != (batch, length):
        raise ValueError(f"mask must have shape [B,U] = {(batch, length)}, got {tuple(mask.shape)}")
    mask = mask.bool()
    lengths = mask.sum(dim=1)
    if batch and bool((lengths == 0).any()):
        empty = torch.nonzero(lengths == 0).flatten().tolist()
        raise ValueError(f"mask has empty sentences at batch rows {empty}; drop them before the model")
    prefix = torch.arange(length, device=mask.device).unsqueeze(0) < lengths.unsqueeze(1)
    if not torch.equal(prefix, mask):
        bad = torch.nonzero((prefix != mask).any(dim=1)).flatten().tolist()
        raise ValueError(f"mask must be contiguous from position 0 (True then False); rows {bad} are not")
    return lengths


def viterbi_decode(emissions: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor) -> list[list[int]]:
    """Best label sequence per sentence under the score of eq. 8, by Viterbi.

    ``emissions [B,U,L]``, ``mask [B,U]`` (contiguous), ``start [L]``, ``trans [L,L]`` (from row label
    to column label), ``end [L]``. Forbidden transitions are ``-inf`` entries. Returns ``B`` lists,
    each exactly as long as its sentence.
    """
    batch, length, _ = emissions.shape
    lengths = mask.long().sum(dim=1).tolist()
    score = start.unsqueeze(0) + emissions[:, 0]  # [B,L]
    history: list[Tensor] = []
    for t in range(1, length):
        # [B,L_prev,1] + [L_prev,L_next] + [B,1,L_next] -> best previous label per next label
        best, idx = (score.unsqueeze(2) + trans.unsqueeze(0) + emissions[:, t].unsqueeze(1)).max(dim=1)
        score = torch.where(mask[:, t].unsqueeze(1), best, score)
        history.append(idx)
    score = score + end.unsqueeze(0)
    hist = torch.stack(history).tolist() if history else []  # [U-1][B][L]
    last = score.argmax(dim=1).tolist()
    paths: list[list[int]] = []
    for b in range(batch):
        path = [last[b]]
        for t in range(lengths[b] - 1, 0, -1):
            path.append(hist[t - 1][b][path[-1]])
        path.reverse()
        paths.append(path)
    return paths


class BiLstmCrfHead(nn.Module):
    """Projection, BiLSTM and a CRF over encoder unit vectors (sections 3.1 and 3.4, eqs 8-11).

    Args:
        config: sizes and label map (:class:`HeadConfig`).
        middle: optional layers between the BiLSTM and the emissions, called as
            ``middle(states [B,U,2*lstm_hidden], mask [B,U]) -> [B,U,2*lstm_hidden + extra_dim]``
            (the double attention concatenates its outputs to the BiLSTM states, DESIGN.md Model 4).

    Inputs everywhere are ``features [B,U,H]`` (float, ``H = config.input_dim``) and ``mask [B,U]``
    (bool, True on real units, contiguous from position 0, no empty sentence). Dropout is active in
    train mode: call ``.eval()`` before decoding.
    """

    def __init__(self, config: HeadConfig, middle: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.project = nn.Linear(config.input_dim, config.proj_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(config.proj_dim, config.lstm_hidden, num_layers=config.lstm_layers,
                            batch_first=True, bidirectional=True,
                            dropout=config.dropout if config.lstm_layers > 1 else 0.0)
        self.middle = middle
        self.attention = (DoubleAttention(config.state_dim, heads=config.attention_heads,
                                          dropout=config.attention_dropout, position=config.position)
                          if config.attention == "double" else None)
        self.transfer = (ReverseAttentionTransfer(config.state_dim, config.teacher_dim,
                                                  dropout=config.attention_dropout) if config.teacher_dim else None)
        self.emit = nn.Linear(config.emission_input_dim, config.num_labels)  # W of eq. 9
        self.crf = CRF(config.num_labels, batch_first=True)  # A of eq. 8, plus start/end scores
        start_ok, trans_ok = bio_allowed_transitions(config.labels)
        self.register_buffer("start_allowed", start_ok, persistent=False)
        self.register_buffer("trans_allowed", trans_ok, persistent=False)

    # ----------------------------------------------------------------------------- boundary checks
    def _check(self, features: Tensor, mask: Tensor) -> Tensor:
        if features.dim() != 3 or features.shape[-1] != self.config.input_dim:
            raise ValueError(f"features must have shape [B,U,H] with H = {self.config.input_dim}, "
                             f"got {tuple(features.shape)}")
        if not features.is_floating_point():
            raise ValueError(f"features must be floating point, got {features.dtype}")
        batch, length = features.shape[:2]
        if batch == 0 or length == 0:
            raise ValueError(f"features must hold at least one unit, got shape {tuple(features.shape)}")
        return check_mask(mask, batch, length)

    def _check_emissions(self, emissions: Tensor, mask: Tensor) -> Tensor:
        if emissions.dim() != 3 or emissions.shape[-1] != self.config.num_labels:
            raise ValueError(f"emissions must have shape [B,U,L] with L = {self.config.num_labels}, "
                             f"got {tuple(emissions.shape)}")
        if emissions.shape[0] == 0 or emissions.shape[1] == 0:
            raise ValueError(f"emissions must hold at least one unit, got shape {tuple(emissions.shape)}")
        return check_mask(mask, emissions.shape[0], emissions.shape[1])

    # ----------------------------------------------------------------------------- forward parts
    def forward_states(self, features: Tensor, mask: Tensor) -> Tensor:
        """BiLSTM states ``h_t`` of section 3.4: ``features [B,U,H] -> [B,U,2*lstm_hidden]``.

        Projection to ``proj_dim`` (Table 2), dropout, a BiLSTM over packed sequences (padding never
        enters a state), dropout. States at padded positions are zero. Features in another floating
        dtype (fp16 from the feature cache) are cast to the head's dtype. Under autocast (CUDA) the projection
        computes in half precision and its output is cast back to the LSTM's dtype: autocast runs the cuDNN LSTM
        in half precision itself where it can, and any other LSTM then sees matching dtypes (no-op in float32).
        """
        lengths = self._check(features, mask)
        x = self.dropout(self.project(features.to(self.project.weight.dtype)))
        x = x.to(self.lstm.weight_ih_l0.dtype)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        states, _ = pad_packed_sequence(out, batch_first=True, total_length=features.shape[1])
        return self.dropout(states)

    def emissions(self, features: Tensor, mask: Tensor, teacher: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Emission scores ``O_t = W h_t`` (eq. 9): ``features [B,U,H] -> [B,U,L]``.

        ``h_t`` is the BiLSTM state, passed through ``middle`` first when the head has one, then joined by
        the double attention's outputs (section 3.2) and by the transfer ``R T`` from the teacher's features
        ``teacher = (T [B,W,D_t], teacher_mask [B,W])`` when the head has those layers.
        """
        return self.emissions_from_states(self.forward_states(features, mask), mask, teacher)

    def emissions_from_states(self, states: Tensor, mask: Tensor, teacher: tuple[Tensor, Tensor] | None = None
                              ) -> Tensor:
        """:meth:`emissions` from BiLSTM states already computed (:meth:`forward_states`), for a caller that
        needs both (the transfer's teacher features)."""
        mask = mask.bool()
        if self.middle is not None:
            states = self.middle(states, mask)
        parts = [states]
        if self.attention is not None:
            parts = [self.attention(states, mask)]  # [states, semantic, structural]
        if self.transfer is not None:
            if teacher is None:
                raise ValueError("this head transfers from a teacher: pass teacher=(features [B,W,D_t], mask [B,W])")
            parts.append(self.transfer(states, mask, teacher[0].to(states.dtype), teacher[1]))
        states = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        if states.shape[-1] != self.config.emission_input_dim:
            raise ValueError(f"the emission layer expects {self.config.emission_input_dim} input dimensions "
                             f"(2*lstm_hidden + extra_dim + attention + teacher_dim), got states of shape "
                             f"{tuple(states.shape)}")
        return self.emit(states)

    def forward(self, features: Tensor, mask: Tensor, teacher: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Same as :meth:`emissions`: ``[B,U,H] -> [B,U,L]``."""
        return self.emissions(features, mask, teacher)

    def attention_maps(self, features: Tensor, mask: Tensor, teacher: tuple[Tensor, Tensor] | None = None
                       ) -> dict[str, Tensor]:
        """The attention weights the head computes for heat maps (section 3.2), before dropout, no gradient:
        ``semantic`` and ``structural`` ``[B,heads,U,U]`` (query, key) when the head has the double attention
        (:meth:`~xner_lib.layers.DoubleAttention.attention_maps`), ``transfer`` ``[B,U,W]`` (the reverse
        attention ``R`` over the teacher's ``W`` positions) when it transfers (``teacher`` as in
        :meth:`emissions`). Rows sum to 1 over real keys; rows of padded queries are 0. A head with neither
        layer (the baseline) gives ``{}``. Call ``.eval()`` first for the weights prediction uses."""
        with torch.no_grad():
            mask = mask.bool()
            states = self.forward_states(features, mask)
            if self.middle is not None:
                states = self.middle(states, mask)
            out: dict[str, Tensor] = {}
            if self.attention is not None:
                out.update(self.attention.attention_maps(states, mask))
            if self.transfer is not None:
                if teacher is None:
                    raise ValueError("this head transfers from a teacher: pass teacher=(features [B,W,D_t], "
                                     "mask [B,W])")
                out["transfer"] = self.transfer.weights(states, mask, teacher[0].to(states.dtype), teacher[1])
            return out

    # ----------------------------------------------------------------------------- CRF
    def crf_loss(self, emissions: Tensor, mask: Tensor, labels: Tensor) -> Tensor:
        """Mean over the batch of ``-log p(y|X)`` (eqs 10-11) from ``emissions [B,U,L]``.

        ``labels [B,U]`` (long) are label ids; values at padded positions are ignored. The CRF computes in
        float32 (half-precision emissions from autocast are cast up; a no-op in float32).
        """
        self._check_emissions(emissions, mask)
        if tuple(labels.shape) != tuple(emissions.shape[:2]):
            raise ValueError(f"labels must have shape [B,U] = {tuple(emissions.shape[:2])}, "
                             f"got {tuple(labels.shape)}")
        mask = mask.bool()
        labels = labels.long().masked_fill(~mask, 0)  # pytorch-crf indexes padded positions too
        if bool(((labels < 0) | (labels >= self.config.num_labels)).any()):
            raise ValueError(f"labels must be ids in [0, {self.config.num_labels}) at unmasked positions")
        return -self.crf(emissions.float(), labels, mask=mask, reduction="mean")

    def constrained_transitions(self) -> tuple[Tensor, Tensor, Tensor]:
        """Copies of the CRF's ``start [L]``, ``transitions [L,L]`` and ``end [L]`` scores with every
        transition invalid in IOB2 set to ``-inf`` (decoding only; the learnt parameters are untouched).
        """
        neg = torch.tensor(float("-inf"), dtype=self.crf.transitions.dtype, device=self.crf.transitions.device)
        start = torch.where(self.start_allowed, self.crf.start_transitions.detach(), neg)
        trans = torch.where(self.trans_allowed, self.crf.transitions.detach(), neg)
        return start, trans, self.crf.end_transitions.detach().clone()

    def crf_decode(self, emissions: Tensor, mask: Tensor, *, constrained: bool = True,
                   allowed: Tensor | None = None) -> list[list[int]]:
        """Viterbi argmax of the score ``S(X,y)`` of eq. 8 from ``emissions [B,U,L]``.

        With ``constrained`` (default) only valid IOB2 sequences are considered. ``allowed`` (Bool
        ``[B,U,L]`` or ``[L]``) restricts the labels each position may take (the target's label set, links
        as O): a forbidden label's emission becomes ``-inf``; ``O`` must stay allowed everywhere. Returns
        ``B`` lists of label ids, each exactly as long as its sentence's mask.
        """
        self._check_emissions(emissions, mask)
        if allowed is not None:
            allowed = to_device(allowed, emissions.device).bool().expand_as(emissions)
            o = self.config.labels.index("O")
            if not bool(allowed[..., o].all()):
                raise ValueError("allowed must keep the label O at every position")
            emissions = emissions.masked_fill(~allowed, float("-inf"))
        with torch.no_grad():
            if constrained:
                start, trans, end = self.constrained_transitions()
            else:
                start, trans, end = (self.crf.start_transitions, self.crf.transitions, self.crf.end_transitions)
            return viterbi_decode(emissions.detach(), mask.bool(), start.detach(), trans.detach(), end.detach())

    # ----------------------------------------------------------------------------- the two entry points
    def loss(self, features: Tensor, mask: Tensor, labels: Tensor, teacher: tuple[Tensor, Tensor] | None = None
             ) -> Tensor:
        """Training loss ``L_ner = -log p(y|X)`` (eqs 10-11), mean over the batch; a scalar.

        ``features [B,U,H]``, ``mask [B,U]``, ``labels [B,U]`` (long label ids), ``teacher`` as in
        :meth:`emissions`.
        """
        return self.crf_loss(self.emissions(features, mask, teacher), mask, labels)

    def decode(self, features: Tensor, mask: Tensor, *, constrained: bool = True) -> list[list[int]]:
        """Best label ids per sentence (eq. 8, Viterbi, IOB2 constraints): ``B`` lists of lengths ``mask.sum(1)``."""
        with torch.no_grad():
            emissions = self.emissions(features, mask)
        return self.crf_decode(emissions, mask, constrained=constrained)

    def decode_tags(self, features: Tensor, mask: Tensor, *, constrained: bool = True) -> list[list[str]]:
        """As :meth:`decode`, with label names from ``config.labels``."""
        labels = self.config.labels
        return [[labels[i] for i in seq] for seq in self.decode(features, mask, constrained=constrained)]
