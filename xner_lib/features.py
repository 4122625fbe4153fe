"""Unit vectors from an encoder: windowing, a differentiable batch function, and an on-disk feature cache.

Windowing (DESIGN.md, Model 1: every gold token gets a prediction): a sentence whose sub-words do not
fit ``max_length - 2`` is cut into windows of that width whose starts are ``stride`` apart (default half
a window), the last one ending at the sentence end. Each unit takes its vector from the one window in
which its sub-word has the most context (the largest distance to the nearer window edge), so every
unit gets exactly one vector.

Cache: frozen-encoder features of a whole dataset stored as float16 in
``<cache>/features/<key>/shard-NNNNN.pt``, the key hashing the encoder's identity (weights and
tokenizer, recomputed at call time), the unit rule, the windowing and the text. The shards hold the
sentences in order of length (sub-words; a stable sort, :func:`length_order`), not in input order, so that
each batch pads little (measured on 3,000 CoNLL sentences: 20.7 s in input-order shards of 512, 15.8 s
length-sorted; docs/method.md, Where the time goes); they are read back in input order. Shards are written
atomically (:mod:`xner_lib.files`) and carry a sha256 of their payload: an interrupted (even killed)
extraction resumes at the first missing shard, a corrupt or truncated shard is detected and recomputed, and
the temporary file of a shard whose writer was killed is removed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data import Dataset, Sentence
from .device import module_device, to_device
from .encoders import Encoder, encoder_identity, resolve_cache_dir, tokenizer_identity
from .files import remove_stale_temps, write_atomic, write_bytes_atomic
from .progress import Progress
from .progress import progress as progress_bar
from .units import EncodedSentence, encode_sentences, unit_rule

CACHE_FORMAT = "xner-features-v1"
_SHARD_MAGIC = b"XNERSHD1"
BATCH_TOKENS = 2048  # pieces an extraction forward holds (sentences x longest window); 4096 was 8% slower (cache)
SHARD_LAYOUT = "length-sorted"  # the cache's shards hold sentences in length_order (part of the key)


@dataclass(frozen=True)
class Window:
    """Sub-words [start, end) of sentence ``sentence`` fed as one encoder input (special tokens added)."""

    sentence: int
    start: int
    end: int


def plan_windows(n: int, width: int, stride: int | None = None) -> list[tuple[int, int]]:
    """[start, end) windows covering ``n`` sub-words: one when ``n <= width``, else windows of ``width``
    whose starts are ``stride`` (default ``width // 2``) apart, the last ending at ``n``."""
    if width < 2:
        raise ValueError(f"window width {width} is too small (max_length must be at least 4)")
    stride = stride or max(1, width // 2)
    if not 1 <= stride <= width:
        raise ValueError(f"stride {stride} must lie in [1, width={width}]")
    if n <= width:
        return [(0, n)]
    starts = list(range(0, n - width, stride)) + [n - width]
    return [(s, s + width) for s in starts]


def assign_windows(positions: Sequence[int], windows: Sequence[tuple[int, int]]) -> list[int]:
    """For each sub-word position, the window (index) where it has the most context,
    ``min(p - start, end - 1 - p)``; ties go to the earlier window."""
    out = []
    for p in positions:
        best, best_ctx = -1, -1
        for w, (s, e) in enumerate(windows):
            if s <= p < e and min(p - s, e - 1 - p) > best_ctx:
                best, best_ctx = w, min(p - s, e - 1 - p)
        if best < 0:
            raise ValueError(f"position {p} lies in no window")
        out.append(best)
    return out


def framing_ids(tokenizer: Any, name: str = "") -> tuple[int, int, int]:
    """The ids that frame a window, ``[CLS] pieces [SEP]`` (``<s> pieces </s>`` for XLM-R-style tokenizers), and
    the padding id."""
    cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if cls is None or sep is None:
        raise ValueError(f"{name or type(tokenizer).__name__}: the tokenizer has no cls/bos or sep/eos token to "
                         "frame windows")
    return int(cls), int(sep), int(tokenizer.pad_token_id)


def _special_ids(encoder: Encoder) -> tuple[int, int, int]:
    return framing_ids(encoder.tokenizer, encoder.name)


def _plan(encoder: Encoder, batch: Sequence[EncodedSentence], stride: int | None
          ) -> tuple[list[Window], list[list[tuple[int, int]]]]:
    """Windows of a batch and, per sentence and unit, (window index, position inside the framed window)."""
    width = encoder.max_length - 2
    windows: list[Window] = []
    where: list[list[tuple[int, int]]] = []
    for i, sent in enumerate(batch):
        spans = plan_windows(len(sent.input_ids), width, stride)
        first = len(windows)
        windows.extend(Window(i, s, e) for s, e in spans)
        chosen = assign_windows(sent.unit_pos, spans)
        where.append([(first + w, p - spans[w][0] + 1) for p, w in zip(sent.unit_pos, chosen, strict=True)])
    return windows, where


def unit_vectors(encoder: Encoder, batch: Sequence[EncodedSentence], *, stride: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-layer vectors of every unit of a batch, differentiable (gradients reach the encoder).

    Returns ``vectors`` [B, U, H] (U = most units in the batch; padding rows are zero) and ``mask``
    Bool[B, U], True on the first ``n_units`` positions of each row (contiguous, padding after).
    Sentences longer than ``encoder.max_length - 2`` sub-words are windowed (module docstring).
    The caller chooses train/eval mode and ``torch.no_grad``. Both tensors are on the encoder's device
    (:func:`~xner_lib.device.to_device`).
    """
    cls, sep, pad = _special_ids(encoder)
    device = module_device(encoder.model)
    windows, where = _plan(encoder, batch, stride)
    n_units = [s.n_units for s in batch]
    u_max = max(n_units, default=0)
    if not windows:
        return to_device((torch.zeros(0, 0, encoder.hidden_size), torch.zeros(0, 0, dtype=torch.bool)), device)
    rows = [[cls, *batch[w.sentence].input_ids[w.start:w.end], sep] for w in windows]
    t_max = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (t_max - len(r)) for r in rows], dtype=torch.long)  # one copy, not one a row
    attn = torch.tensor([[1] * len(r) + [0] * (t_max - len(r)) for r in rows], dtype=torch.long)
    hidden = encoder.model(input_ids=to_device(ids, device), attention_mask=to_device(attn, device)
                           ).last_hidden_state  # [W, T, H]
    flat = torch.cat([hidden.reshape(-1, hidden.shape[-1]), hidden.new_zeros(1, hidden.shape[-1])])
    padding_row = flat.shape[0] - 1
    index = torch.tensor([[w * t_max + p for w, p in units] + [padding_row] * (u_max - len(units))
                          for units in where], dtype=torch.long).reshape(len(batch), u_max)
    vectors = flat[to_device(index, device)]  # [B, U, H]
    mask = torch.arange(u_max).unsqueeze(0) < torch.tensor(n_units).unsqueeze(1)
    return vectors, to_device(mask, device)


def length_order(encoded: Sequence[EncodedSentence]) -> list[int]:
    """Sentence indices by number of sub-words, shortest first (stable: equal lengths keep input order): the
    order extraction batches and the feature cache's shards follow."""
    return sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))


def _batches(encoded: Sequence[EncodedSentence], order: Sequence[int], batch_tokens: int, width: int
             ) -> list[list[int]]:
    """Group sentence indices (already sorted by length) so that batch size x longest window <= batch_tokens."""
    out: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i in order:
        n = min(len(encoded[i].input_ids), width) + 2
        if cur and (len(cur) + 1) * max(longest, n) > batch_tokens:
            out.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        out.append(cur)
    return out


def extract_unit_features(encoder: Encoder, encoded: Sequence[EncodedSentence], *,
                          batch_tokens: int = BATCH_TOKENS,
                          stride: int | None = None, progress: Progress | None = None) -> list[torch.Tensor]:
    """Frozen-encoder unit vectors, one float16 tensor [U_i, H] per sentence (on the CPU, input order),
    computed on the encoder's device (move it there first, e.g. :func:`~xner_lib.device.placed`).

    Runs in eval mode without gradients (the model's mode is restored); sentences are sorted by length
    and batched so that sentences x window length stays under ``batch_tokens``.
    """
    model = encoder.model
    was_training = model.training
    model.eval()
    order = length_order(encoded)
    out: list[torch.Tensor | None] = [None] * len(encoded)
    try:
        with torch.no_grad():
            for group in _batches(encoded, order, batch_tokens, encoder.max_length - 2):
                vectors, _ = unit_vectors(encoder, [encoded[i] for i in group], stride=stride)
                vectors = to_device(vectors, torch.device("cpu")).half()  # one move and conversion a batch
                for row, i in enumerate(group):
                    out[i] = vectors[row, :encoded[i].n_units].clone()
                if progress is not None:
                    progress.update(len(group))
    finally:
        model.train(was_training)
    assert all(t is not None for t in out)
    return out  # type: ignore[return-value]


def feature_key(encoder: Encoder, token_lists: Sequence[Sequence[str]], language: str,
                stride: int | None = None, zh_units: str = "token") -> str:
    """The cache key: sha256 over the encoder's current identity, tokenizer, unit rule, windowing and text."""
    head = {"format": CACHE_FORMAT, "encoder": encoder_identity(encoder.model, encoder.tokenizer),
            "tokenizer": tokenizer_identity(encoder.tokenizer),
            "unit_rule": unit_rule(zh_units if language == "zh" else "token"), "pooling": "unit-first-subword",
            "max_length": encoder.max_length, "stride": stride, "language": language, "dtype": "float16",
            "shards": SHARD_LAYOUT}
    h = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    for toks in token_lists:
        h.update(json.dumps(list(toks), ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def _write_shard(path: Path, features: Sequence[torch.Tensor]) -> None:
    buf = io.BytesIO()
    lengths = torch.tensor([f.shape[0] for f in features], dtype=torch.long)
    torch.save({"lengths": lengths, "values": torch.cat(list(features))}, buf)
    payload = buf.getvalue()
    write_bytes_atomic(path, _SHARD_MAGIC + hashlib.sha256(payload).digest() + payload)


def _read_shard(path: Path, expected_units: Sequence[int]) -> list[torch.Tensor] | None:
    """The shard's tensors, or None when it is missing, corrupt or does not match the expected unit counts."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    n = len(_SHARD_MAGIC)
    if raw[:n] != _SHARD_MAGIC or hashlib.sha256(raw[n + 32:]).digest() != raw[n:n + 32]:
        warnings.warn(f"{path}: corrupt feature shard (checksum mismatch); recomputing it", stacklevel=3)
        return None
    data = torch.load(io.BytesIO(raw[n + 32:]), weights_only=True)
    if data["lengths"].tolist() != list(expected_units):
        warnings.warn(f"{path}: feature shard does not match the sentences; recomputing it", stacklevel=3)
        return None
    return list(torch.split(data["values"], data["lengths"].tolist()))


def cached_unit_features(encoder: Encoder, data: Dataset | Sequence[Sentence | Sequence[str]],
                         language: str | None = None, cache_dir: str | os.PathLike[str] | None = None, *,
                         shard_size: int = 512, batch_tokens: int = BATCH_TOKENS, stride: int | None = None,
                         progress: bool = True, zh_units: str = "token") -> list[torch.Tensor]:
    """Frozen-encoder unit features of a whole dataset, computed once and then read from the cache.

    ``data`` is a :class:`Dataset` (its language is used) or a list of sentences / token lists with
    ``language`` (``en``/``zh``). Returns one float16 tensor [U_i, H] per sentence, in order, where
    ``U_i`` is the number of units of :func:`~xner_lib.units.encode_sentences`. A directory's shard size
    is fixed by its first extraction (``meta.json``).
    """
    if isinstance(data, Dataset):
        if language is not None and language != data.language:
            raise ValueError(f"language={language!r} but dataset {data.name}/{data.split} is {data.language!r}")
        language, sentences = data.language, data.sentences
    else:
        sentences = list(data)
    if language is None:
        raise ValueError("language is required ('en' or 'zh') when data is not a Dataset")
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    token_lists = [list(s.tokens) if isinstance(s, Sentence) else list(s) for s in sentences]
    encoded = encode_sentences(encoder.tokenizer, token_lists, language, zh_units=zh_units)
    key = feature_key(encoder, token_lists, language, stride, zh_units)
    root = resolve_cache_dir(cache_dir) / "features" / key[:32]
    root.mkdir(parents=True, exist_ok=True)
    meta_path = root / "meta.json"
    try:
        shard_size = int(json.loads(meta_path.read_text())["shard_size"])
    except (OSError, ValueError, KeyError):
        meta = {"key": key, "format": CACHE_FORMAT, "encoder": encoder.name,
                "unit_rule": unit_rule(zh_units if language == "zh" else "token"),
                "language": language, "max_length": encoder.max_length, "stride": stride,
                "sentences": len(encoded), "units": sum(e.n_units for e in encoded), "shard_size": shard_size,
                "shards": SHARD_LAYOUT}
        write_atomic(meta_path, json.dumps(meta, indent=2))
    order = length_order(encoded)
    chunks = [order[s:s + shard_size] for s in range(0, len(order), shard_size)]
    for k in range(len(chunks)):  # what an extraction killed while writing a shard left behind
        remove_stale_temps(root / f"shard-{k:05d}.pt")
    shards: list[list[torch.Tensor] | None] = [
        _read_shard(root / f"shard-{k:05d}.pt", [encoded[i].n_units for i in chunk]) for k, chunk in enumerate(chunks)]
    done = sum(len(chunk) for chunk, sh in zip(chunks, shards, strict=True) if sh is not None)
    with progress_bar(total=len(encoded), initial=done, disable=not progress, unit="sent",
                      desc=f"features {encoder.name} {language}") as bar:
        for k, chunk in enumerate(chunks):
            if shards[k] is None:
                shards[k] = extract_unit_features(encoder, [encoded[i] for i in chunk], batch_tokens=batch_tokens,
                                                  stride=stride, progress=bar)
                _write_shard(root / f"shard-{k:05d}.pt", shards[k])
    out: list[torch.Tensor | None] = [None] * len(encoded)
    for chunk, shard in zip(chunks, shards, strict=True):
        assert shard is not None
        for i, features in zip(chunk, shard, strict=True):
            out[i] = features
    return out  # type: ignore[return-value]
