"""How fast the pipeline runs on this machine, against its own limit and against a Hugging Face peer (issue 15).

:func:`run_bench` measures, in one process, with the profile's encoder and data:

* **the limit**: fp32 matrix-multiply GFLOP/s at the thread count in use (:func:`matmul_gflops`);
* **feature extraction**: tokens/s of the frozen encoder over the first CoNLL train sentences (tokenising,
  windowing and pooling included, no cache), and the FLOP/s it achieves (:func:`encoder_flops`: the encoder
  layers' multiply-adds at the real sequence lengths) as a share of the limit, and of the limit at the encoder's
  own shapes (:func:`layer_shape_gflops`: the products of one layer at the extraction's batch and lengths), and
  where its time goes by operator (:func:`profile_extraction`);
* **fine-tuning**: seconds per step and sentences/s of each variant asked for (the loop's own clock), and where
  the first variant's step spends its time (:func:`profile_steps`: encoder and head, forward and backward, the
  optimiser);
* **inference**: sentences/s of a trained tagger decoding People's Daily test sentences;
* **the peer**: ``BertForTokenClassification`` over the same encoder weights fine-tuned by the Hugging Face
  ``Trainer`` on the same CoNLL sentences, batch and CPU for a fixed number of steps, or stopped after a wall
  time (``peer_minutes``: ours, the mean training minutes of our made baseline seeds, so both are scored
  after the same wall time; the first sub-word of each word carries its label, as ``run_ner.py`` does): its
  steps/s, wall time and zero-shot strict F1 on People's Daily and WeiboNER (read as one string per
  sentence, each character tagged by the piece that covers it: :func:`_peer_predict_zh`), scored by
  :func:`~xner_lib.evaluate.score_dataset` exactly as ours are, beside our baseline seeds' records;
* the process's peak resident memory after each stage (``ru_maxrss``: a running maximum).

Every figure is a measurement of this run; ``bench.json`` keeps the history of runs (each with its git commit
and package versions) so a change can be judged before and after. Run it alone: a second CPU-heavy job halves
every figure.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .data import Dataset
from .encoders import Encoder, load_encoder
from .evaluate import git_state, package_versions, primary_view, score_dataset
from .files import scratch_dir, write_atomic


@dataclass
class BenchConfig:
    """What :func:`run_bench` measures and how much: ``matmul_size`` (square matrices of the limit),
    ``extraction_sentences`` and ``inference_sentences`` (the first of CoNLL train and People's Daily test),
    ``steps`` (at least 2) of each of ``variants`` (fine-tuning), ``peer_steps`` of the Hugging Face peer
    (0: skip it; the length of its linear schedule), ``peer_minutes``: stop the peer after this many minutes of
    training even if its steps are not done (None: run them all; ``"ours"``: the mean training minutes of our
    baseline's made seeds, :func:`ours_baseline`); ``ours_seeds``: the seeds of our baseline put beside the peer
    and averaged for ``"ours"`` (None: the profile's ``seeds``; give the seeds made on the bench's machine, since
    minutes from another machine compare nothing)."""

    matmul_size: int = 1024
    extraction_sentences: int = 2048  # 512 made the fixed costs (the encoder's identity hash: 0.5 s) 12% of it
    inference_sentences: int = 512
    steps: int = 20
    variants: tuple[str, ...] = ("baseline", "adv_att_pos")
    peer_steps: int = 200
    profile_steps: int | None = None
    peer_minutes: float | str | None = None
    ours_seeds: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.variants = tuple(self.variants)
        if self.profile_steps is None:
            self.profile_steps = max(0, min(10, self.steps - 1))
        if self.ours_seeds is not None:
            self.ours_seeds = tuple(int(s) for s in self.ours_seeds)
        if min(self.matmul_size, self.extraction_sentences, self.inference_sentences) < 1 or self.peer_steps < 0 \
                or not 0 <= self.profile_steps < self.steps \
                or self.steps < 2 or (self.peer_minutes is not None and self.peer_minutes != "ours"
                                      and not float(self.peer_minutes) > 0):
            raise ValueError(f"bench sizes must be positive, steps >= 2 (a step is timed from the one before it), "
                             f"peer_steps >= 0, 0 <= profile_steps < steps (a warm-up step more, same batches), "
                             f"peer_minutes > 0 when given: {self}")


def peak_rss_mib() -> float:
    """The process's peak resident set size so far, in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _best_gflops(product: Callable[[], Any], flops: float, seconds: float) -> float:
    """GFLOP/s of ``product`` (``flops`` a call): the best of repeated timed blocks of 4 calls over about
    ``seconds``, after one warm-up call."""
    product()
    best, spent = 0.0, 0.0
    while spent < seconds:
        t0 = time.perf_counter()
        for _ in range(4):
            product()
        dt = time.perf_counter() - t0
        spent += dt
        best = max(best, 4 * flops / dt / 1e9)
    return best


def matmul_gflops(size: int = 1024, seconds: float = 2.0) -> float:
    """fp32 ``size x size`` matrix-multiply throughput in GFLOP/s (``2 size^3`` FLOPs a product) at the current
    thread count, best of repeated timed blocks over about ``seconds`` (after one warm-up product)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return _best_gflops(lambda: torch.mm(a, b), 2 * size**3, seconds)


def layer_shape_gflops(hidden: int, intermediate: int, heads: int, rows: int, seq_len: int,
                       seconds: float = 1.0) -> dict[str, Any]:
    """The limit at the encoder's own shapes: fp32 GFLOP/s of each product one BERT layer makes over ``rows``
    pieces (sequences of ``seq_len``), and the rate of the whole layer's mix (its FLOPs over the time the
    products take at those rates). Products, FLOPs over the ``rows``: the four ``hidden x hidden`` projections
    (Q, K, V, output; ``8 rows h^2``), the feed-forward in and out (``2 rows h i`` each), and the attention's
    ``QK^T`` and ``AV`` (``2 rows L h`` each, batched over sequences and heads). Square 1024 products
    (:func:`matmul_gflops`) are the machine's best case; a 384-wide encoder cannot reach them, and this says by
    how much before any of our code runs."""
    x = torch.randn(rows, hidden)
    mid = torch.randn(rows, intermediate)
    w_hh, w_ih, w_hi = torch.randn(hidden, hidden), torch.randn(intermediate, hidden), torch.randn(hidden, intermediate)
    n_seq = max(1, rows // seq_len)
    q = torch.randn(n_seq * heads, seq_len, hidden // heads)
    a = torch.randn(n_seq * heads, seq_len, seq_len)
    products: dict[str, tuple[Callable[[], Any], float]] = {
        "projection": (lambda: torch.nn.functional.linear(x, w_hh), 2.0 * rows * hidden * hidden),
        "ffn_in": (lambda: torch.nn.functional.linear(x, w_ih), 2.0 * rows * hidden * intermediate),
        "ffn_out": (lambda: torch.nn.functional.linear(mid, w_hi), 2.0 * rows * intermediate * hidden),
        "scores": (lambda: torch.bmm(q, q.transpose(1, 2)), 2.0 * n_seq * heads * seq_len**2 * (hidden // heads)),
        "context": (lambda: torch.bmm(a, q), 2.0 * n_seq * heads * seq_len**2 * (hidden // heads)),
    }
    rates = {k: _best_gflops(f, flops, seconds / len(products)) for k, (f, flops) in products.items()}
    per_layer = {"projection": 4, "ffn_in": 1, "ffn_out": 1, "scores": 1, "context": 1}  # calls of each a layer
    flops = {k: per_layer[k] * products[k][1] for k in products}
    mix = sum(flops.values()) / sum(flops[k] / rates[k] for k in products)
    return {"rows": rows, "seq_len": seq_len, "hidden": hidden, "intermediate": intermediate, "heads": heads,
            "gflops": rates, "flop_share": {k: v / sum(flops.values()) for k, v in flops.items()},
            "layer_mix_gflops": mix}


def encoder_flops(model: torch.nn.Module, lengths: Sequence[int]) -> float:
    """Forward FLOPs of a BERT-style encoder over sequences of ``lengths`` (sub-word pieces, special tokens
    included): ``2 * P * L`` for the encoder layers' weights (``P`` of them, embeddings excluded: a lookup) and
    ``4 * layers * L^2 * hidden`` for the attention products (``QK^T`` and ``AV``) of each sequence."""
    cfg = model.config
    layers = model.encoder.layer
    weights = sum(p.numel() for p in layers.parameters() if p.dim() > 1)
    return float(sum(2 * weights * n + 4 * len(layers) * n * n * cfg.hidden_size for n in lengths))


def _timed_extraction(encoder: Encoder, dataset: Dataset) -> float:
    """Seconds the project's feature path takes over ``dataset`` from nothing (a fresh temporary cache)."""
    from .features import cached_unit_features

    with scratch_dir() as tmp:
        t0 = time.perf_counter()
        cached_unit_features(encoder, dataset, cache_dir=tmp, progress=False)
        return time.perf_counter() - t0


def bench_extraction(encoder: Encoder, dataset: Dataset, limit_gflops: float) -> dict[str, Any]:
    """Frozen-encoder unit features of ``dataset`` through the project's own path (no cache: a fresh temporary
    directory): tokens/s, sentences/s, and the achieved GFLOP/s (:func:`encoder_flops` over the pieces each
    window fed) against ``limit_gflops``."""
    from .units import encode_sentences

    encoded = encode_sentences(encoder.tokenizer, dataset.sentences, dataset.language, zh_units="token")
    pieces = [len(e.input_ids) + 2 for e in encoded]  # [CLS] and [SEP]
    seconds = _timed_extraction(encoder, dataset)
    gflops = encoder_flops(encoder.model, pieces) / seconds / 1e9
    return {"sentences": len(dataset), "tokens": dataset.n_tokens, "pieces": sum(pieces),
            "attention_length": sum(n * n for n in pieces) / sum(pieces), "seconds": seconds,
            "tokens_per_s": dataset.n_tokens / seconds, "sentences_per_s": len(dataset) / seconds,
            "gflops": gflops, "share_of_limit": gflops / limit_gflops, "peak_rss_mib": peak_rss_mib()}


#: the dense products of a BERT layer as the profiler names them (the share of time extraction spends in them):
#: the linear layers, and the attention, fused by SDPA (what transformers loads BERT with) or as ``bmm``
MATMUL_OPS = frozenset({"aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation",
                        "aten::_scaled_dot_product_flash_attention_for_cpu",
                        "aten::_scaled_dot_product_attention_math", "aten::_scaled_dot_product_efficient_attention",
                        "aten::_scaled_dot_product_flash_attention"})


def profile_extraction(encoder: Encoder, dataset: Dataset, top: int = 8) -> dict[str, Any]:
    """Where feature extraction spends its time: ``dataset``'s unit features through the project's path (no
    cache) under ``torch.profiler``, each operator's self CPU time as a share of the wall time: the dense
    products (:data:`MATMUL_OPS`), the ``top`` other operators, and what no operator accounts for (tokenising,
    windowing, pooling in Python, the profiler itself). A second pass over the data, apart from
    :func:`bench_extraction`, so the profiler's overhead does not touch the throughput figure."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = _timed_extraction(encoder, dataset)
    ops = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    matmul = sum(v for k, v in ops.items() if k in MATMUL_OPS)
    others = sorted(((k, v) for k, v in ops.items() if k not in MATMUL_OPS), key=lambda kv: -kv[1])
    return {"wall_seconds": wall, "matmul_share": matmul / wall,
            "top_other_ops": {k: v / wall for k, v in others[:top]},
            "outside_ops_share": max(0.0, wall - sum(ops.values())) / wall}


def bench_training(exp: Any, variants: Mapping[str, Any], names: Sequence[str], steps: int,
                   teacher: tuple[Path, dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Seconds per fine-tuning step of each variant of ``names``: ``steps`` steps of one epoch over the first
    ``steps * batch_size`` sentences of ``exp``'s CoNLL train (``exp`` cut to them), the loop's own clock between
    its first and last step (the evaluation after it excluded). Transfer variants need ``teacher`` (a saved
    baseline's directory and its run key)."""
    from .train import TrainConfig, train

    rows = []
    for name in names:
        vcfg = variants[name]
        if not isinstance(vcfg, TrainConfig):
            raise ValueError(f"bench: variant {name!r} names another variant")
        if vcfg.transfer and teacher is None:
            raise ValueError(f"bench: variant {name!r} transfers and needs a saved baseline as teacher")
        cfg = replace(vcfg, encoder=exp.encoder_name, seed=1, epochs=1.0, evals_per_epoch=1, patience=None)
        t0 = time.perf_counter()
        corpora, streams = exp.streams(cfg, exp.corpora(frozen=False), teacher if cfg.transfer else None,
                                       frozen=False)
        prepare_s = time.perf_counter() - t0
        result = train(cfg, load_encoder(exp.encoder_name), corpora.conll_train, corpora.conll_dev, progress=False,
                       rendered=streams.rendered, target=streams.target, teacher=streams.teacher,
                       mapping=streams.mapping)
        h = result.history
        per_step = (h[-1]["seconds"] - h[0]["seconds"]) / max(1, len(h) - 1)
        rows.append({"variant": name, "steps": len(h), "seconds_per_step": per_step,
                     "sentences_per_s": cfg.batch_size / per_step, "streams_seconds": prepare_s,
                     "peak_rss_mib": peak_rss_mib(), "tagger": result.tagger, "config": cfg})
    base = rows[0]["seconds_per_step"] if rows else 1.0
    for r in rows:
        r["ratio_to_first"] = r["seconds_per_step"] / base
    return rows


def profile_steps(tagger: Any, data: Any, cfg: Any, steps: int) -> dict[str, Any]:
    """Where a fine-tuning step's time goes (issue 15's step profile), over ``steps`` plain steps (CoNLL
    batches, no other stream: the baseline's step) of ``tagger`` in training mode on ``data`` (a
    :class:`~xner_lib.batches.Prepared` with encodings), on the tagger's device with the loop's precision, AdamW
    groups, schedule and :func:`~xner_lib.train.optimizer_step`. Phases, in seconds, the mean over the steps
    after a warm-up one (so the phases sum to the step):

    * ``encoder_forward``: pieces to unit vectors (:meth:`Tagger.features`);
    * ``head_forward``: the BiLSTM, attention layers, emissions and CRF loss (eqs 8-11);
    * ``head_backward``: from ``backward`` until the gradient reaches the unit vectors (a tensor hook: CPU
      autograd runs every node made after the unit vectors before their own);
    * ``encoder_backward``: the rest of the backward pass (pooling and the encoder layers);
    * ``optimizer``: unscaling, gradient clipping, the AdamW step and the schedule.

    The steps train ``tagger`` further: profile a tagger whose weights no later figure depends on (the bench's
    own, whose inference speed does not depend on its weights)."""
    import random

    from .batches import label_ids, length_batches
    from .device import mixed_precision, synchronize, to_device
    from .train import _labels, _optimizer, optimizer_step

    ids = label_ids(data.encoded, [s.tags for s in data.dataset.sentences], tagger.head.config.labels)
    batches = length_batches([len(e.input_ids) for e in data.encoded], cfg.batch_size, random.Random(cfg.seed))
    if len(batches) < steps + 1:
        raise ValueError(f"profile_steps: {steps} steps and a warm-up need {steps + 1} batches, the data has "
                         f"{len(batches)}")
    device = tagger.device
    amp = mixed_precision(device, cfg.precision)
    opt, sched = _optimizer(tagger, cfg, steps + 1)
    trainable = [p for p in tagger.parameters() if p.requires_grad]
    tagger.train()
    phases: dict[str, list[float]] = {k: [] for k in ("encoder_forward", "head_forward", "head_backward",
                                                      "encoder_backward", "optimizer", "step")}
    for batch in batches[: steps + 1]:
        marks: dict[str, float] = {}

        def reached(_grad: Tensor, marks: dict[str, float] = marks) -> None:
            """The gradient has reached the unit vectors: the head's backward is done."""
            synchronize(device)
            marks.setdefault("reached", time.perf_counter())

        opt.zero_grad(set_to_none=True)
        synchronize(device)
        t0 = time.perf_counter()
        with amp.autocast():
            feats, mask = tagger.features([data.encoded[i] for i in batch], None, data.dataset.language)
            synchronize(device)
            t1 = time.perf_counter()
            loss = tagger.head.loss(feats, mask, to_device(_labels(ids, batch, mask.shape), device))
        synchronize(device)
        t2 = time.perf_counter()
        if feats.requires_grad:
            feats.register_hook(reached)
        amp.backward(loss)
        synchronize(device)
        t3 = time.perf_counter()
        optimizer_step(opt, sched, amp, trainable, cfg.max_grad_norm)
        synchronize(device)
        t4 = time.perf_counter()
        mark = marks.get("reached", t3)
        for k, v in (("encoder_forward", t1 - t0), ("head_forward", t2 - t1), ("head_backward", mark - t2),
                     ("encoder_backward", t3 - mark), ("optimizer", t4 - t3), ("step", t4 - t0)):
            phases[k].append(v)
    mean = {k: sum(v[1:]) / steps for k, v in phases.items()}
    return {"steps": steps, "batch_size": cfg.batch_size, "device": str(device), "mean_seconds": mean,
            "share": {k: v / mean["step"] for k, v in mean.items() if k != "step"}, "peak_rss_mib": peak_rss_mib()}


def plain_step(cfg: Any) -> bool:
    """Whether a variant's training step is the baseline's (:func:`profile_steps` times only that one): a
    fine-tuned encoder and no stream besides CoNLL train (no teacher, adversary or Chinese stream)."""
    return bool(cfg.finetune) and all(c is None for c in (
        cfg.transfer_config, cfg.adversarial_config, cfg.few_shot_config, cfg.self_training_config,
        cfg.translate_train_config))


def bench_inference(tagger: Any, prepared: Any, batch_size: int = 64) -> dict[str, Any]:
    """Sentences/s of ``tagger`` decoding ``prepared`` (features, CRF Viterbi and the project's decoding)."""
    from .tagger import predict

    t0 = time.perf_counter()
    predict(tagger, prepared, batch_size, progress=False)
    seconds = time.perf_counter() - t0
    return {"sentences": len(prepared.encoded), "seconds": seconds,
            "sentences_per_s": len(prepared.encoded) / seconds, "peak_rss_mib": peak_rss_mib()}


def _peer_features(tokenizer: Any, sentences: Sequence[Sequence[str]], labels: Sequence[Sequence[str]] | None,
                   label_index: Mapping[str, int], max_length: int) -> tuple[list[dict[str, list[int]]], list[list]]:
    """``run_ner.py``'s alignment: pieces of pre-split words, the first piece of each word labelled, the others
    -100; and each sentence's word ids, to read predictions back per word."""
    rows, word_ids = [], []
    for k, words in enumerate(sentences):
        enc = tokenizer(list(words), is_split_into_words=True, truncation=True, max_length=max_length)
        wid = enc.word_ids()
        row = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if labels is not None:
            prev, lab = None, []
            for w in wid:
                lab.append(-100 if w is None or w == prev else label_index[labels[k][w]])
                prev = w
            row["labels"] = lab
        rows.append(row)
        word_ids.append(wid)
    return rows, word_ids


def piece_tags_to_tokens(piece_of_token: Sequence[int | None], piece_tags: Sequence[str]) -> list[str]:
    """Tags of a sentence's tokens from the tags of the pieces covering them (``piece_of_token[t]``; None or a
    piece past ``piece_tags``: cut off, tagged O): a token takes its piece's tag, except that a later token of
    the same piece continues the entity its first token began (``B-X`` becomes ``I-X``)."""
    out: list[str] = []
    prev: int | None = None
    for p in piece_of_token:
        if p is None or p >= len(piece_tags):
            out.append("O")
            prev = None
            continue
        tag = piece_tags[p]
        out.append("I-" + tag[2:] if p == prev and tag.startswith("B-") else tag)
        prev = p
    return out


def _argmax_rows(model: Any, tokenizer: Any, rows: Sequence[dict[str, list[int]]], batch_size: int
                 ) -> Iterator[list[int]]:
    """The peer's arg-max label id at every position of each of ``rows`` (``input_ids``, ``attention_mask``), in
    order: batches padded by the tokenizer's collator, eval mode, no autograd."""
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer)
    model.eval()
    with torch.inference_mode():
        for b in range(0, len(rows), batch_size):
            yield from model(**collate(list(rows[b:b + batch_size]))).logits.argmax(-1).tolist()


def _peer_predict_zh(model: Any, tokenizer: Any, dataset: Dataset, labels: Sequence[str], max_length: int,
                     batch_size: int) -> tuple[list[list[str]], int]:
    """The peer on Chinese: each sentence's characters tokenised as one string (the pieces the encoder was
    trained on; as words split with ``is_split_into_words``, every character would get its own word-start
    piece), through the same unit code as ours (:func:`~xner_lib.units.encode_sentences`, ``char`` units); each
    character takes the arg-max tag of the piece covering it (:func:`piece_tags_to_tokens`). Characters past
    ``max_length`` are tagged O and counted (second value)."""
    from .features import framing_ids
    from .units import encode_sentences

    encoded = encode_sentences(tokenizer, dataset.sentences, "zh", zh_units="char")
    cls, sep, _ = framing_ids(tokenizer)
    rows = [{"input_ids": [cls, *e.input_ids[:max_length - 2], sep]} for e in encoded]
    for r in rows:
        r["attention_mask"] = [1] * len(r["input_ids"])
    out: list[list[str]] = []
    cut = 0
    for k, (e, pred) in enumerate(zip(encoded, _argmax_rows(model, tokenizer, rows, batch_size), strict=True)):
        n = len(rows[k]["input_ids"]) - 2
        tags = piece_tags_to_tokens(e.unit_pos, [labels[i] for i in pred[1:n + 1]])  # past [CLS], up to [SEP]
        if len(tags) != len(dataset.sentences[k]):
            raise ValueError(f"{dataset.path}: sentence {k}: {len(tags)} tags for "
                             f"{len(dataset.sentences[k])} characters")
        cut += sum(p >= n for p in e.unit_pos)
        out.append(tags)
    return out, cut


def peer_predict(model: Any, tokenizer: Any, dataset: Dataset, labels: Sequence[str], max_length: int,
                 batch_size: int = 32) -> tuple[list[list[str]], int]:
    """The peer's tag per token of ``dataset`` (English: arg-max at each word's first piece, words split as
    ``run_ner.py`` splits them; Chinese: :func:`_peer_predict_zh`); tokens cut off by ``max_length`` are tagged
    O and counted (second value)."""
    if dataset.language == "zh":
        return _peer_predict_zh(model, tokenizer, dataset, labels, max_length, batch_size)
    rows, word_ids = _peer_features(tokenizer, [s.tokens for s in dataset.sentences], None, {}, max_length)
    out: list[list[str]] = []
    cut = 0
    for k, (wid, pred) in enumerate(zip(word_ids, _argmax_rows(model, tokenizer, rows, batch_size), strict=True)):
        n = len(dataset.sentences[k])
        tags = ["O"] * n
        seen: set[int] = set()
        for p, w in enumerate(wid):
            if w is not None and w not in seen:
                seen.add(w)
                tags[w] = labels[pred[p]]
        cut += n - len(seen)
        out.append(tags)
    return out, cut


def _wall_clock_stop(minutes: float) -> Any:
    """A ``TrainerCallback`` that ends training at the first step end after ``minutes`` of wall time from the
    start of training (its ``stopped_at_step`` is that step, or None when the steps ran out first)."""
    from transformers import TrainerCallback

    class WallClockStop(TrainerCallback):
        def __init__(self) -> None:
            self.start = time.perf_counter()
            self.stopped_at_step: int | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if time.perf_counter() - self.start >= 60 * minutes:
                control.should_training_stop = True
                self.stopped_at_step = state.global_step

    return WallClockStop()


def bench_peer(encoder_name: str, train_set: Dataset, tests: Mapping[str, Dataset], steps: int, batch_size: int,
               lr: float, seed: int = 1, minutes: float | None = None) -> dict[str, Any]:
    """The Hugging Face peer (module docstring): ``BertForTokenClassification`` over ``encoder_name``'s weights,
    ``Trainer`` for ``steps`` steps (linear schedule with a tenth of them as warm-up, AdamW, lr ``lr``) on
    ``train_set``, or until ``minutes`` of training wall time have passed (the schedule still planned over
    ``steps``); its steps done, steps/s, wall time, and strict F1 of each of ``tests`` (views as ours)."""
    from transformers import BertForTokenClassification, DataCollatorForTokenClassification, Trainer, TrainingArguments

    from .data.labels import MODEL_LABELS

    encoder = load_encoder(encoder_name)
    labels = list(MODEL_LABELS)
    index = {t: i for i, t in enumerate(labels)}
    base = encoder.model.config
    config = base.__class__.from_dict({**base.to_dict(), "num_labels": len(labels),
                                       "id2label": dict(enumerate(labels)), "label2id": index})
    model = BertForTokenClassification(config)
    missing, unexpected = model.bert.load_state_dict(encoder.model.state_dict(), strict=False)
    if missing or [k for k in unexpected if not k.startswith("pooler.")]:
        raise ValueError(f"peer: the encoder's weights do not fit BertForTokenClassification ({missing}, {unexpected})")
    rows, _ = _peer_features(encoder.tokenizer, [s.tokens for s in train_set.sentences],
                             [s.tags for s in train_set.sentences], index, encoder.max_length)
    with scratch_dir() as tmp:
        args = TrainingArguments(output_dir=str(tmp), max_steps=steps, per_device_train_batch_size=batch_size,
                                 learning_rate=lr, warmup_steps=max(1, steps // 10), weight_decay=0.01, seed=seed,
                                 report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
                                 dataloader_num_workers=0, disable_tqdm=True)
        stop = _wall_clock_stop(minutes) if minutes is not None else None
        trainer = Trainer(model=model, args=args, train_dataset=rows,
                          data_collator=DataCollatorForTokenClassification(encoder.tokenizer),
                          callbacks=[stop] if stop is not None else None)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        done = trainer.state.global_step
    scores, cut = {}, {}
    for name, data in tests.items():
        pred, cut[name] = peer_predict(model, encoder.tokenizer, data, labels, encoder.max_length)
        scores[name] = score_dataset(data, pred)[primary_view(data.format)]["strict"]
    return {"steps": done, "planned_steps": steps, "minutes_budget": minutes,
            "stopped_by_clock": stop is not None and stop.stopped_at_step is not None and done < steps,
            "batch_size": batch_size,
            "seconds": seconds, "steps_per_s": done / seconds, "scores": scores, "words_cut": cut,
            "peak_rss_mib": peak_rss_mib()}


def ours_baseline(runs: Path, seeds: Sequence[int]) -> dict[str, Any]:
    """Our fine-tuned baseline's made seeds among ``seeds`` (records ``runs/baseline-seed<s>/metrics.json``):
    per seed its training minutes, steps and zero-shot strict F1 (People's Daily, Weibo NAM-only), and their
    means (None when no seed is made)."""
    rows = {}
    for seed in seeds:
        path = runs / f"baseline-seed{seed}" / "metrics.json"
        if path.is_file():
            m = json.loads(path.read_text(encoding="utf-8"))
            rows[seed] = {"train_minutes": m["extra"]["seconds"]["train"] / 60, "steps": m["extra"].get("steps"),
                          "peoples_daily_f1": m["scores"]["peoples_daily_test"]["peoples_daily"]["strict"]["f1"],
                          "weibo_f1": m["scores"]["weibo_test"]["weibo_nam"]["strict"]["f1"]}
    mean = {k: sum(r[k] for r in rows.values()) / len(rows) for k in ("train_minutes", "peoples_daily_f1",
                                                                        "weibo_f1")} if rows else None
    return {"seeds": rows, "mean": mean}


def _shares(shares: Mapping[str, float]) -> str:
    """``name 40%, other 3%``: shares of a whole as a log line shows them."""
    return ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items())


def run_bench(params: Mapping[str, Any], config: BenchConfig, *, teacher_dir: Path | None = None,
              out: Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every measurement of the module docstring for a profile's ``params`` (as notebooks get them); appends the
    record to ``out/bench.json`` (default ``results/<profile>/bench.json``) and returns it. ``teacher_dir``: a
    saved baseline, needed by the transfer variants (default: the profile's ``checkpoints/baseline-seed1``
    when it exists)."""
    from .batches import prepare
    from .config import from_params, results_dir
    from .experiment import experiment_from_params, resolve_variants
    from .features import BATCH_TOKENS
    from .train import TrainConfig

    out = out or results_dir(str(params["profile"]), params.get("results_root"))
    seeds = list(config.ours_seeds) if config.ours_seeds is not None else [int(s) for s in params.get("seeds", [])]
    ours = ours_baseline(out / "runs", seeds)
    minutes = config.peer_minutes if config.peer_steps else None
    if minutes == "ours":
        if ours["mean"] is None:
            raise ValueError(f"peer_minutes 'ours': no baseline run of seeds {seeds} "
                             f"under {out / 'runs'}")
        minutes = ours["mean"]["train_minutes"]
    minutes = float(minutes) if minutes is not None else None
    threads = params.get("train_threads")
    if threads:
        torch.set_num_threads(int(threads))
    record: dict[str, Any] = {"config": asdict(config), "threads": torch.get_num_threads(), "git": git_state(),
                              "versions": package_versions(),
                              "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    limit = matmul_gflops(config.matmul_size)
    record["matmul_gflops"] = limit
    log(f"limit: fp32 matmul {limit:.1f} GFLOP/s on {record['threads']} threads")

    batch = int(params["train_batch_size"])
    cut = max(config.steps * batch, config.extraction_sentences, config.inference_sentences)
    loaded = experiment_from_params({**params, "max_sentences": cut})  # the encoder and data, loaded once

    def first(n: int) -> Any:
        """The experiment over the first ``n`` sentences of every set (as ``max_sentences: n`` would read them)."""
        return replace(loaded, data={k: d.head(n) for k, d in loaded.data.items()},
                       unlabelled=[d.head(n) for d in loaded.unlabelled])

    extraction_set = loaded.data["conll_train"].head(config.extraction_sentences)
    ex = bench_extraction(loaded.encoder, extraction_set, limit)
    mcfg = loaded.encoder.model.config
    shapes = layer_shape_gflops(mcfg.hidden_size, mcfg.intermediate_size, mcfg.num_attention_heads,
                                rows=min(BATCH_TOKENS, ex["pieces"]), seq_len=max(1, round(ex["attention_length"])))
    ex["shape_limit"] = shapes
    ex["share_of_shape_limit"] = ex["gflops"] / shapes["layer_mix_gflops"]
    if config.profile_steps:
        ex["profile"] = profile_extraction(loaded.encoder, extraction_set)
        log(f"extraction profile: dense products {100 * ex['profile']['matmul_share']:.0f}% of the wall time; "
            + _shares(dict(list(ex["profile"]["top_other_ops"].items())[:4]))
            + f"; outside any operator {100 * ex['profile']['outside_ops_share']:.0f}%")
    record["extraction"] = ex
    log(f"extraction: {ex['tokens_per_s']:.0f} tokens/s, {ex['gflops']:.1f} GFLOP/s = "
        f"{100 * ex['share_of_limit']:.0f}% of the limit; the encoder layer's own products reach "
        f"{shapes['layer_mix_gflops']:.1f} GFLOP/s ({100 * shapes['layer_mix_gflops'] / limit:.0f}% of the limit), "
        f"extraction {100 * ex['share_of_shape_limit']:.0f}% of that")

    base = from_params(TrainConfig, params, "train_")
    variants = resolve_variants(base, params.get("variants", {"baseline": {}}))
    exp = first(config.steps * batch)
    teacher_dir = teacher_dir or out / "checkpoints" / "baseline-seed1"
    teacher = None
    if (teacher_dir / "config.json").is_file():
        teacher = (teacher_dir, {"extra": {"run_key": json.loads((teacher_dir / "config.json").read_text())
                                           .get("run_key")}})
    names = [v for v in config.variants if teacher is not None or not getattr(variants.get(v), "transfer", None)]
    skipped = sorted(set(config.variants) - set(names))
    rows = bench_training(exp, variants, names, config.steps, teacher)
    for r in rows:
        log(f"train {r['variant']}: {r['seconds_per_step']:.3f} s/step, {r['sentences_per_s']:.1f} sentences/s, "
            f"x{r['ratio_to_first']:.2f}")
    record["training"] = [{k: v for k, v in r.items() if k not in ("tagger", "config")} for r in rows]
    record["training_skipped"] = {v: "no saved baseline to be its teacher" for v in skipped}
    plain = [r for r in rows if plain_step(r["config"])]
    if config.profile_steps and not plain:
        record["step_profile_skipped"] = "no variant asked for has the baseline's plain step"
        log(f"step profile: skipped, {record['step_profile_skipped']}")
    elif config.profile_steps:
        prof = profile_steps(plain[0]["tagger"], exp.corpora(frozen=False).conll_train, plain[0]["config"],
                             config.profile_steps)
        prof["variant"] = plain[0]["variant"]
        record["step_profile"] = prof
        log(f"step profile ({prof['variant']}, mean of {prof['steps']} steps, {prof['mean_seconds']['step']:.3f} s): "
            + _shares(prof["share"]))

    if rows:
        prepared = prepare(loaded.data["peoples_daily_test"].head(config.inference_sentences), loaded.encoder,
                           frozen=False, zh_units=loaded.zh_units)
        inf = bench_inference(rows[0]["tagger"], prepared, int(params.get("train_eval_batch_size", 64)))
        record["inference"] = inf
        log(f"inference: {inf['sentences_per_s']:.1f} sentences/s (People's Daily test)")

    if config.peer_steps:
        from .data import load
        from .experiment import SPLITS

        data = {k: load(SPLITS[k], params.get("data_dir"), max_sentences=params.get("max_sentences"))
                for k in ("conll_train", "peoples_daily_test", "weibo_test")}
        peer = bench_peer(exp.encoder_name, data["conll_train"], {k: data[k] for k in ("peoples_daily_test",
                                                                                      "weibo_test")},
                          config.peer_steps, batch, float(params["train_lr"]), minutes=minutes)
        record["peer"] = peer
        log(f"peer (HF Trainer): {peer['steps_per_s']:.2f} steps/s; strict F1 after {peer['steps']} steps "
            f"({peer['seconds'] / 60:.1f} min): " + ", ".join(f"{k} {v['f1']:.4f}" for k, v in peer["scores"].items()))
    record["ours_baseline"] = ours
    if ours["mean"] is not None:
        log(f"ours (baseline, {len(ours['seeds'])} seed(s)): {ours['mean']['train_minutes']:.1f} min of training; "
            f"strict F1 peoples_daily_test {ours['mean']['peoples_daily_f1']:.4f}, "
            f"weibo_test {ours['mean']['weibo_f1']:.4f}")
    record["peak_rss_mib"] = peak_rss_mib()
    path = out / "bench.json"
    history = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    write_atomic(path, lambda fh: json.dump([*history, record], fh, indent=2, default=str))
    log(f"wrote {path}")
    return record
