"""Notebook 02's outputs, read back instead of remade when what they are made from has not changed.

The alignment (eqs 2-7, :func:`~xner_lib.aligner.align`) reproduces bitwise only on the machine that made it.
Aligning again elsewhere moves the map in its last bits and, through the mutual nearest neighbours, can move
the lexicon by a pair. Measured: 2925 -> 2926 pairs, and the criterion 0.58383 -> 0.58393. Every transfer
run is keyed by the checksums of the lexicon and the map (:meth:`~xner_lib.experiment.Experiment.inputs`). So
if 02 remade them on every machine, every later notebook would retrain those runs.

So 02 records in ``alignment/metrics.json`` two things: the key of what the alignment is made from
(:func:`alignment_inputs`, under ``extra.inputs``) and the sha256 of each file it writes (``extra.files``).
When both still hold, it reads its outputs back (:func:`read_alignment`, :func:`stored_alignment`);
``fresh`` remakes them. A record made before this existed has no key. It is adopted once
(:func:`adopt_record`) when three things agree: its encoder identity, its aligner settings, and the sizes of
the static spaces built now, which are its recorded sizes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .aligner import AlignConfig, AlignmentResult
from .data.sources import sha256_of
from .files import write_atomic
from .lexicon import normalize_embeddings

logger = logging.getLogger(__name__)

#: bump when what 02 writes from the same inputs changes (the aligner's code, the static vectors' code)
STORE_VERSION = 1
#: the files 02 writes under ``alignment/`` that later notebooks read (``source_mean.npy`` only with centring)
ALIGNMENT_FILES: tuple[str, ...] = ("mapping.npy", "source_mean.npy", "lexicon.tsv", "curves.csv")


def alignment_inputs(encoder_identity: str, config: AlignConfig, settings: Mapping[str, Any],
                     data: Mapping[str, Any]) -> dict[str, Any]:
    """The key of an alignment, as plain JSON values. It holds :data:`STORE_VERSION`, the encoder's identity
    (weights and tokenizer), the aligner's settings (without ``progress``) and 02's other settings
    (``settings``: static vectors and checks). It also holds each corpus read (``data``: e.g.
    :func:`~xner_lib.experiment.data_identity`) and ``jieba``'s version, since jieba segments the Chinese."""
    align = {k: v for k, v in asdict(config).items() if k != "progress"}
    inputs = {"version": STORE_VERSION, "encoder": encoder_identity, "align": align, "settings": dict(settings),
              "data": dict(data), "jieba": version("jieba")}
    return json.loads(json.dumps(inputs, sort_keys=True, default=str))


def file_checksums(directory: str | Path) -> dict[str, str]:
    """sha256 of each of :data:`ALIGNMENT_FILES` present in ``directory``."""
    root = Path(directory)
    return {name: sha256_of(root / name) for name in ALIGNMENT_FILES if (root / name).is_file()}


def _record(directory: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_alignment(directory: str | Path, inputs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record of 02 in ``directory`` (``alignment/``) when it can be read back, else None (and a log line
    says why). It can be read back when its ``extra.inputs`` equal ``inputs`` and every file it lists in
    ``extra.files`` still has its sha256 (none missing, none added)."""
    root = Path(directory)
    record = _record(root)
    if record is None:
        return None
    extra = record.get("extra", {})
    if extra.get("inputs") is None:
        logger.warning("%s: records no inputs (made before they were recorded)", root / "metrics.json")
        return None
    if extra["inputs"] != dict(inputs):
        diffs = sorted(k for k in set(extra["inputs"]) | set(inputs) if extra["inputs"].get(k) != inputs.get(k))
        logger.warning("%s: made from other inputs (%s): aligning again", root / "metrics.json", ", ".join(diffs))
        return None
    if file_checksums(root) != extra.get("files"):
        logger.warning("%s: its files changed since it was written: aligning again", root)
        return None
    return record


def adopt_record(directory: str | Path, inputs: Mapping[str, Any], sizes: Sequence[Mapping[str, Any]]
                 ) -> dict[str, Any] | None:
    """Adopt a record of 02 made before inputs were recorded, and return it, or return None. The record
    must have the encoder identity and the aligner settings of ``inputs``. The static spaces built now must
    have exactly its recorded ``sizes`` (types and occurrences of each space): those follow from the corpora
    and the static-vector settings. When that holds, it gets ``extra.inputs``, ``extra.files`` (the files'
    checksums as they are) and ``extra.adopted_utc``, and it is written back."""
    root = Path(directory)
    record = _record(root)
    if record is None or record.get("extra", {}).get("inputs") is not None:
        return None
    config = {k: v for k, v in record.get("config", {}).items() if k != "progress"}
    same = (record.get("extra", {}).get("encoder_identity") == inputs["encoder"] and config == inputs["align"]
            and json.loads(json.dumps(record.get("scores", {}).get("sizes"))) == json.loads(json.dumps(list(sizes))))
    if not same:
        logger.warning("%s: a record without inputs whose encoder, settings or sizes differ: aligning again",
                       root / "metrics.json")
        return None
    record["extra"] = {**record.get("extra", {}), "inputs": dict(inputs), "files": file_checksums(root),
                       "adopted_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_atomic(root / "metrics.json", json.dumps(record, indent=2, ensure_ascii=False))
    return record


def finish_record(directory: str | Path, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """After 02 wrote its files and ``metrics.json``: add ``extra.inputs`` and ``extra.files`` to the record,
    so the next run of 02 can read it back."""
    root = Path(directory)
    record = _record(root)
    if record is None:
        raise FileNotFoundError(f"{root / 'metrics.json'}: no record to finish")
    record["extra"] = {**record.get("extra", {}), "inputs": dict(inputs), "files": file_checksums(root)}
    write_atomic(root / "metrics.json", json.dumps(record, indent=2, ensure_ascii=False))
    return record


def stored_alignment(directory: str | Path, record: Mapping[str, Any], source: torch.Tensor, target: torch.Tensor,
                     source_words: Sequence[str], target_words: Sequence[str], config: AlignConfig
                     ) -> AlignmentResult:
    """The :class:`~xner_lib.aligner.AlignmentResult` that 02's files in ``directory`` hold. ``source`` and
    ``target`` are the static vectors, which are preprocessed here as :func:`~xner_lib.aligner.align` does
    (the English centred on the stored ``source_mean.npy`` when it is there);
    ``source_words`` and ``target_words`` name their rows. The map is ``mapping.npy``. The lexicon is
    ``lexicon.tsv`` turned back into row indices; a word that is not a row is an error naming the file and
    line. The history is ``curves.csv``, and the criterion and candidates come from the record."""
    root = Path(directory)
    mean_file = root / "source_mean.npy"
    mean = torch.from_numpy(np.load(mean_file)).float() if mean_file.is_file() else None
    src, src_mean = normalize_embeddings(source.detach().float(), config.normalize, mean=mean)
    tgt, _ = normalize_embeddings(target.detach().float(), config.normalize)
    mapping = torch.from_numpy(np.load(root / "mapping.npy"))
    src_index = {w: i for i, w in enumerate(source_words)}
    tgt_index = {w: i for i, w in enumerate(target_words)}
    lex = pd.read_csv(root / "lexicon.tsv", sep="\t", keep_default_na=False, dtype={"english": str, "chinese": str})
    pairs = []
    for line, (en, zh) in enumerate(zip(lex["english"], lex["chinese"], strict=True), start=2):
        if en not in src_index or zh not in tgt_index:
            raise ValueError(f"{root / 'lexicon.tsv'}:{line}: the pair ({en!r}, {zh!r}) is not in the static "
                             "spaces built now: align again (fresh)")
        pairs.append((src_index[en], tgt_index[zh]))
    history = pd.read_csv(root / "curves.csv").to_dict("records")
    scores = record["scores"]
    return AlignmentResult(mapping=mapping.float(), lexicon=torch.tensor(pairs, dtype=torch.long).reshape(-1, 2),
                           criterion=float(scores["criterion"]), history=history, source=src, target=tgt,
                           source_mean=src_mean, config=config, candidates=[dict(c) for c in scores["candidates"]])
