"""Notebook 02's outputs, read back instead of remade when what they are made from has not changed.

The alignment (eqs 2-7, :func:`~xner_lib.aligner.align`) reproduces bitwise only on the machine that made it.
Aligning again elsewhere moves the map in its last bits and, through the mutual nearest neighbours, can move
the lexicon by a pair. Measured: 2925 -> 2926 pairs, and the criterion 0.58383 -> 0.58393. Every transfer
run is keyed by the checksums of the lexicon and the map (:meth:`~xner_lib.experiment.Experiment.inputs`). So
if 02 remade them on every machine, every later notebook would retrain those runs.

So 02 records in ``alignment/metrics.json`` what the alignment is made from (:func:`alignment_inputs`,
``extra.inputs``) and the sha256 of each file it wrote (``extra.files``), in the same write as its scores.
When both still hold, it reads its outputs back (:func:`read_alignment`, :func:`stored_alignment`);
``fresh`` remakes them. Before aligning again it removes the old record (:func:`forget_record`), so an
alignment stopped halfway leaves no record to read back over a mix of old and new files.

A record made before inputs were recorded has no key. It is adopted once (:func:`adopt_record`) when its
aligner settings equal this run's, its files are all there, its lexicon has the recorded number of pairs, and the
static spaces built now have exactly its recorded sizes; and when its encoder identity differs from today's, its
stored map applied to the vectors built now reproduces its recorded criterion and lexicon (:func:`reproduction`).
Measured on the ``cpu`` profile's record (made 2026-11-24 under another identity of e5-small-offline): criterion
0.5838314 recorded, 0.5838339 now; 2924 of its 2925 pairs found again.
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

import pandas as pd
import torch

from .aligner import AlignConfig, AlignmentResult, map_criterion, map_lexicon, preprocess
from .data.sources import sha256_of
from .files import write_atomic
from .rendering import Lexicon
from .static_space import load_alignment

logger = logging.getLogger(__name__)

#: bump when what 02 writes from the same inputs changes (the aligner's code, the static vectors' code)
STORE_VERSION = 1
#: the files 02 writes under ``alignment/`` that later notebooks read (``source_mean.npy`` only with centring)
ALIGNMENT_FILES: tuple[str, ...] = ("mapping.npy", "source_mean.npy", "lexicon.tsv", "curves.csv")
#: a record made under another encoder identity is adopted only when its map, on the vectors built now, gives its
#: recorded criterion within this and finds again at least this share of its lexicon (:func:`reproduction`)
ADOPT_CRITERION_TOLERANCE = 1e-4
ADOPT_LEXICON_AGREEMENT = 0.99


def required_files(config: AlignConfig) -> set[str]:
    """The files of :data:`ALIGNMENT_FILES` an alignment under ``config`` writes: all but ``source_mean.npy``
    when its preprocessing does not centre."""
    return {n for n in ALIGNMENT_FILES if n != "source_mean.npy" or "center" in config.normalize.split(",")}


def alignment_inputs(encoder: Mapping[str, Any], config: AlignConfig, settings: Mapping[str, Any],
                     data: Mapping[str, Any]) -> dict[str, Any]:
    """The key of an alignment, as plain JSON values. It holds :data:`STORE_VERSION` and the encoder
    (``encoder``: its ``identity``, the sha256 of weights and tokenizer, and ``max_length``, its window). It
    holds the aligner's settings (without ``progress``) and 02's other settings (``settings``: the static
    vectors and the checks). It holds each corpus read (``data``: e.g.
    :func:`~xner_lib.experiment.data_identity`) and jieba's version, since jieba segments the Chinese."""
    align = {k: v for k, v in asdict(config).items() if k != "progress"}
    inputs = {"version": STORE_VERSION, "encoder": {k: encoder[k] for k in ("identity", "max_length")},
              "align": align, "settings": dict(settings), "data": dict(data), "jieba": version("jieba")}
    return json.loads(json.dumps(inputs, sort_keys=True, default=str))


def file_checksums(directory: str | Path) -> dict[str, str]:
    """sha256 of each of :data:`ALIGNMENT_FILES` present in ``directory``."""
    root = Path(directory)
    return {name: sha256_of(root / name) for name in ALIGNMENT_FILES if (root / name).is_file()}


def _record(directory: Path) -> dict[str, Any] | None:
    """``metrics.json`` of ``directory``, or None when there is none. A file that does not read as a JSON object
    is an error naming it (02 would otherwise align again over committed outputs without a word)."""
    path = directory / "metrics.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        line = f":{err.lineno}" if isinstance(err, json.JSONDecodeError) else ""
        raise ValueError(f"{path}{line}: not readable JSON ({err}); restore it from git, or align again with "
                         "fresh=True") from err
    if not isinstance(record, dict):
        raise ValueError(f"{path}: not a JSON object; restore it from git, or align again with fresh=True")
    return record


def read_alignment(directory: str | Path, inputs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record of 02 in ``directory`` (``alignment/``) when it can be read back, else None. Unless there is
    no record at all, a log line says why not. It can be read back when its ``extra.inputs`` equal ``inputs`` and
    its ``extra.files`` are exactly the files there (none changed, missing or added). Those files must also
    include every one its settings write (:func:`required_files`)."""
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
    files = extra.get("files") or {}
    missing = required_files(AlignConfig(**inputs["align"])) - set(files)
    if missing or file_checksums(root) != files:
        logger.warning("%s: its files changed since it was written (%s): aligning again", root,
                       f"not recorded: {sorted(missing)}" if missing else "checksums")
        return None
    return record


def forget_record(directory: str | Path) -> None:
    """Remove 02's record before aligning again. That way an alignment stopped halfway leaves no record, and a
    later run aligns again instead of reading back a mix of old and new files."""
    (Path(directory) / "metrics.json").unlink(missing_ok=True)


def reproduction(directory: str | Path, record: Mapping[str, Any], source: torch.Tensor, target: torch.Tensor,
                 source_words: Sequence[str], target_words: Sequence[str], config: AlignConfig) -> dict[str, Any]:
    """What 02's stored map gives on the static spaces built now: the aligner's model-selection criterion
    (:func:`~xner_lib.aligner.map_criterion`) beside the recorded one, and the lexicon it induces
    (:func:`~xner_lib.aligner.map_lexicon`) against ``lexicon.tsv``: pairs stored, pairs now, pairs in both."""
    res = stored_alignment(directory, record, source, target, source_words, target_words, config)
    criterion = map_criterion(res.mapped_source, res.target, config)
    now = map_lexicon(res.mapped_source, res.target, config)
    stored = set(map(tuple, res.lexicon.tolist()))
    return {"criterion_recorded": float(record["scores"]["criterion"]), "criterion_now": float(criterion),
            "lexicon_pairs_recorded": len(stored), "lexicon_pairs_now": len(now),
            "lexicon_pairs_in_both": len(stored & set(map(tuple, now.tolist())))}


def adopt_record(directory: str | Path, inputs: Mapping[str, Any], sizes: Sequence[Mapping[str, Any]],
                 spaces: tuple[torch.Tensor, torch.Tensor, Sequence[str], Sequence[str]] | None = None
                 ) -> dict[str, Any] | None:
    """Adopt a record of 02 made before inputs were recorded, and return it, or return None. The conditions:

    * its aligner settings are those of ``inputs``;
    * the files its settings write are all there;
    * ``lexicon.tsv`` has the recorded number of pairs;
    * the static spaces built now have exactly its recorded ``sizes``, the types and occurrences of each
      space. Those follow from the corpora, the jieba segmentation and the static-vector settings;
    * its encoder identity is that of ``inputs``; or, given ``spaces`` (the static vectors built now and the
      words naming their rows: source, target, source words, target words), its map on them reproduces it
      (:func:`reproduction`): the criterion within :data:`ADOPT_CRITERION_TOLERANCE` of the recorded one and
      at least :data:`ADOPT_LEXICON_AGREEMENT` of its lexicon's pairs found again.

    Not verified: the ``recovery_`` settings of check (a), which change only that check's recorded figures.
    When adopted, the record gets ``extra.inputs``, ``extra.files`` (the files' checksums as they are),
    ``extra.adopted_utc`` and, adopted under another encoder identity, ``extra.reproduction``; it is written
    back."""
    root = Path(directory)
    record = _record(root)
    if record is None or record.get("extra", {}).get("inputs") is not None:
        return None
    config = {k: v for k, v in record.get("config", {}).items() if k != "progress"}
    align_config = AlignConfig(**inputs["align"])
    reasons = []
    same_encoder = record.get("extra", {}).get("encoder_identity") == inputs["encoder"]["identity"]
    if not same_encoder and spaces is None:
        reasons.append("encoder")
    if config != inputs["align"]:
        reasons.append("aligner settings")
    missing = required_files(align_config) - set(file_checksums(root))
    if missing:
        reasons.append(f"missing {sorted(missing)}")
    elif len(Lexicon.from_tsv(root / "lexicon.tsv").pairs) != record.get("scores", {}).get("lexicon_pairs"):
        reasons.append("lexicon size")
    if json.loads(json.dumps(record.get("scores", {}).get("sizes"))) != json.loads(json.dumps(list(sizes))):
        reasons.append("static-space sizes")
    reproduced: dict[str, Any] | None = None
    if not reasons and not same_encoder and spaces is not None:
        reproduced = reproduction(root, record, *spaces, align_config)
        if (abs(reproduced["criterion_now"] - reproduced["criterion_recorded"]) > ADOPT_CRITERION_TOLERANCE
                or reproduced["lexicon_pairs_in_both"]
                < ADOPT_LEXICON_AGREEMENT * reproduced["lexicon_pairs_recorded"]):
            reasons.append(f"encoder (its map on the vectors built now: {reproduced})")
    if reasons:
        logger.warning("%s: a record without inputs whose %s differ: aligning again", root / "metrics.json",
                       ", ".join(reasons))
        return None
    record["extra"] = {**record.get("extra", {}), "inputs": dict(inputs), "files": file_checksums(root),
                       "adopted_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if reproduced is not None:
        record["extra"]["reproduction"] = reproduced
    write_atomic(root / "metrics.json", json.dumps(record, indent=2, ensure_ascii=False))
    return record


def stored_alignment(directory: str | Path, record: Mapping[str, Any], source: torch.Tensor, target: torch.Tensor,
                     source_words: Sequence[str], target_words: Sequence[str], config: AlignConfig
                     ) -> AlignmentResult:
    """The :class:`~xner_lib.aligner.AlignmentResult` that 02's files in ``directory`` hold.

    * ``source`` and ``target`` are the static vectors; ``source_words`` and ``target_words`` name their rows.
      They are preprocessed as :func:`~xner_lib.aligner.align` does, with the English centred on the stored
      ``source_mean.npy`` (:func:`~xner_lib.aligner.preprocess`).
    * The map and the mean come from :func:`~xner_lib.static_space.load_alignment`.
    * The lexicon is ``lexicon.tsv`` (:meth:`~xner_lib.rendering.Lexicon.from_tsv`) turned back into row
      indices. A word that is not a row is an error naming the file and the line.
    * The history is ``curves.csv``; the criterion and the candidates come from the record."""
    root = Path(directory)
    mapping, mean = load_alignment(root)
    if tuple(mapping.shape) != (source.shape[1], source.shape[1]):
        raise ValueError(f"{root / 'mapping.npy'}: a map of shape {tuple(mapping.shape)} for vectors of dimension "
                         f"{source.shape[1]}: align again (fresh)")
    src, src_mean, tgt = preprocess(source, target, config.normalize, source_mean=mean)
    src_index = {w: i for i, w in enumerate(source_words)}
    tgt_index = {w: i for i, w in enumerate(target_words)}
    pairs = []
    for pair in Lexicon.from_tsv(root / "lexicon.tsv").pairs:
        if pair.english not in src_index or pair.chinese not in tgt_index:
            raise ValueError(f"{root / 'lexicon.tsv'}:{pair.line}: the pair ({pair.english!r}, {pair.chinese!r}) "
                             "is not in the static spaces built now: align again (fresh)")
        pairs.append((src_index[pair.english], tgt_index[pair.chinese]))
    history = pd.read_csv(root / "curves.csv").to_dict("records")
    scores = record["scores"]
    return AlignmentResult(mapping=mapping, lexicon=torch.tensor(pairs, dtype=torch.long).reshape(-1, 2),
                           criterion=float(scores["criterion"]), history=history, source=src, target=tgt,
                           source_mean=src_mean, config=config, candidates=[dict(c) for c in scores["candidates"]])
