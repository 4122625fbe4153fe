"""Table 3's static-vector BiLSTM-CRF row: the project's head fed notebook 02's aligned static vectors.

The paper's "Word2vec + Bi-LSTM-CRF" row, rebuilt zero-shot: :class:`~xner_lib.model.BiLstmCrfHead` (projection,
BiLSTM, CRF; the baseline's head) reads, per token, the static vector of
:meth:`~xner_lib.static_space.AlignedSpace.lookup` instead of the contextual encoder's unit vector: an English word's
lower-cased type vector mapped by 02's ``U`` (eq. 2); a Chinese character the vector of the ``jieba`` word holding
it (else its own; ``zh_lookup``). A token without a vector gets the zero vector, counted (``Lookup.counts``), never
dropped. Every token is its own unit (English words, Chinese characters: the ``char`` unit scheme).

Training is the project's loop (:func:`~xner_lib.train.train`) on cached features: :func:`prepare_static` builds
a :class:`~xner_lib.batches.Prepared` whose ``cached`` features are the static vectors, and the "encoder" is a
stand-in that only carries their size (:func:`static_encoder`; the tagger is frozen, ``finetune=False``).
CoNLL-2003 train only, the kept weights chosen on CoNLL dev strict F1; prediction and decoding are the project's
(:func:`~xner_lib.tagger.predict`: IOB2 constraints, the target's label set, links as O).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .batches import Prepared
from .data import Dataset
from .data.links import link_mask
from .decoding import DecodeConfig
from .encoders import Encoder
from .static_space import AlignedSpace
from .tagger import Tagger
from .tagger import predict as predict_prepared
from .train import TrainConfig, TrainResult, train
from .units import EncodedSentence


@dataclass
class StaticRun:
    """A trained static-vector tagger: the training result (:class:`~xner_lib.train.TrainResult`, the tagger
    with the CoNLL-dev-selected weights) and the lookup counts of its training and dev corpora."""

    result: TrainResult
    space: AlignedSpace
    counts: dict[str, Counter[str]] = field(default_factory=dict)

    @property
    def tagger(self) -> Tagger:
        return self.result.tagger


def static_encoder(space: AlignedSpace) -> Encoder:
    """The stand-in encoder a frozen tagger over ``space`` is built with: its name, identity and size only (no
    model, no tokenizer; :func:`~xner_lib.train.train` reads ``hidden_size``)."""
    return Encoder(name="static-aligned", model=None, tokenizer=None, identity=space.identity(),  # type: ignore[arg-type]
                   hidden_size=space.dim, max_length=0)


def prepare_static(dataset: Dataset, space: AlignedSpace) -> tuple[Prepared, Counter[str]]:
    """``dataset`` as the training loop and :func:`~xner_lib.tagger.predict` read it: one unit per token, its
    static vector as the cached feature (zeros without one), link tokens; and the lookup counts (``tokens``,
    ``unknown``, for Chinese ``word``/``char``)."""
    sentences = [list(s.tokens) for s in dataset.sentences]
    lookup = space.lookup(sentences, dataset.language)
    vectors = space.vectors(lookup)
    encoded = [EncodedSentence(input_ids=[0] * len(t), unit_pos=list(range(len(t))),
                               unit_spans=[(i, i + 1) for i in range(len(t))]) for t in sentences]
    links = [link_mask(t, dataset.language) for t in sentences]
    return Prepared(dataset, encoded, vectors, links, zh_units="char"), lookup.counts


def train_static_tagger(cfg: TrainConfig, space: AlignedSpace, train_set: Dataset, dev_set: Dataset, *,
                        progress: bool = False) -> StaticRun:
    """Train the head on ``train_set`` (CoNLL-2003 train) read through ``space``, keeping the weights of the best
    strict F1 on ``dev_set`` (CoNLL dev). ``cfg`` is a frozen :class:`~xner_lib.train.TrainConfig` of the plain
    head (no adversarial or transfer section). Seeded by ``cfg.seed``."""
    if cfg.finetune:
        raise ValueError("static vectors are not fine-tuned: use TrainConfig(finetune=False)")
    if cfg.adversarial or cfg.transfer:
        raise ValueError("the static-vector row is the plain head: no adversarial or transfer section")
    for d in (train_set, dev_set):
        if d.language != "en":
            raise ValueError(f"the static-vector tagger trains and selects on English CoNLL, got {d.name}/{d.split}")
    train_data, train_counts = prepare_static(train_set, space)
    dev_data, dev_counts = prepare_static(dev_set, space)
    result = train(cfg, static_encoder(space), train_data, dev_data, progress=progress)
    return StaticRun(result, space, {"train": train_counts, "dev": dev_counts})


def predict(run: StaticRun | Tagger, space: AlignedSpace, dataset: Dataset, decode: DecodeConfig | None = None,
            batch_size: int = 64) -> tuple[list[list[str]], Counter[str]]:
    """One IOB2 tag per token of every sentence of ``dataset`` (any corpus), decoded as the project decodes
    (default :class:`~xner_lib.decoding.DecodeConfig`), and the lookup counts of ``dataset``."""
    tagger = run.tagger if isinstance(run, StaticRun) else run
    data, counts = prepare_static(dataset, space)
    return predict_prepared(tagger, data, batch_size, progress=False, decode=decode), counts

