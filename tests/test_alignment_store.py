"""Notebook 02's outputs read back while what they are made from holds (xner_lib.alignment_store)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from xner_lib import report
from xner_lib.aligner import AlignConfig, align
from xner_lib.alignment_store import (
    adopt_record,
    alignment_inputs,
    file_checksums,
    forget_record,
    read_alignment,
    stored_alignment,
)
from xner_lib.evaluate import write_metrics

CONFIG = AlignConfig(dis_hidden=16, batch_size=16, epoch_size=256, n_epochs=1, refinement_rounds=1, progress=False,
                     criterion_max_size=60, lexicon_max_rank=60, similarity_size=40, starts="identity,similarity")
SIZES = [{"space": "English words", "types": 80, "occurrences": 400}]


def _spaces() -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    g = torch.Generator().manual_seed(0)
    source = torch.randn(80, 8, generator=g)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    target = source[:70] @ q + 0.01 * torch.randn(70, 8, generator=g)
    return source, target, [f"w{i}" for i in range(80)], [f"字{i}" for i in range(70)]


def _write_as_02(adir: Path, encoder_identity: str = "enc-1", *, inputs: dict | None = None) -> object:
    """What notebook 02 writes for a real (small) alignment, and its record (finished when ``inputs``)."""
    source, target, en_words, zh_words = _spaces()
    res = align(source, target, CONFIG)
    adir.mkdir(parents=True, exist_ok=True)
    np.save(adir / "mapping.npy", res.mapping.numpy())
    np.save(adir / "source_mean.npy", res.source_mean.numpy())
    pd.DataFrame(res.history).to_csv(adir / "curves.csv", index=False)
    lex = res.lexicon
    pd.DataFrame({"english": [en_words[int(i)] for i in lex[:, 0]], "chinese": [zh_words[int(j)] for j in lex[:, 1]],
                  "cosine": 0.5}).to_csv(adir / "lexicon.tsv", sep="\t", index=False)
    scores = {"criterion": res.criterion, "chosen_start": res.chosen["start"],
              "candidates": report.candidates_table(res.candidates).to_dict("records"), "sizes": SIZES}
    scores["lexicon_pairs"] = len(lex)
    extra = {"encoder_identity": encoder_identity}
    if inputs is not None:  # as 02 writes it now: what it is made from and its files' checksums, in one write
        extra.update(inputs=inputs, files=file_checksums(adir))
    write_metrics(adir / "metrics.json", variant="alignment", encoder="tiny", seed=CONFIG.seed,
                  config=CONFIG.to_dict(), scores=scores, extra=extra)
    return res


def _inputs(**changes) -> dict:
    base = dict(encoder={"name": "tiny", "identity": "enc-1", "max_length": 32}, config=CONFIG,
                settings={"vec_min_count": 3},
                data={"conll_train": {"sha256": "a", "sentences": 10}})
    return alignment_inputs(**{**base, **changes})


def test_an_alignment_is_read_back_only_while_its_inputs_and_files_hold(tmp_path: Path) -> None:
    adir = tmp_path / "alignment"
    inputs = _inputs()
    _write_as_02(adir, inputs=inputs)
    record = read_alignment(adir, inputs)
    assert record is not None and record["extra"]["inputs"] == inputs
    assert set(record["extra"]["files"]) == {"mapping.npy", "source_mean.npy", "lexicon.tsv", "curves.csv"}
    # another encoder, aligner setting, static-vector setting or corpus: aligned again
    assert read_alignment(adir, _inputs(encoder={"identity": "enc-2", "max_length": 32})) is None
    assert read_alignment(adir, _inputs(config=AlignConfig(**{**CONFIG.to_dict(), "seed": 1}))) is None
    assert read_alignment(adir, _inputs(settings={"vec_min_count": 2})) is None
    assert read_alignment(adir, _inputs(data={"conll_train": {"sha256": "b", "sentences": 10}})) is None
    assert read_alignment(adir, _inputs(encoder={"identity": "enc-1", "max_length": 64})) is None  # its window
    # progress is not an input, nor the encoder's name
    assert read_alignment(adir, _inputs(encoder={"name": "other", "identity": "enc-1", "max_length": 32}))
    assert read_alignment(adir, _inputs(config=AlignConfig(**{**CONFIG.to_dict(), "progress": True}))) is not None
    # a file changed or gone since it was written: aligned again
    lexicon = (adir / "lexicon.tsv").read_text(encoding="utf-8")
    (adir / "lexicon.tsv").write_text(lexicon.replace("0.5", "0.6", 1), encoding="utf-8")
    assert read_alignment(adir, inputs) is None
    (adir / "lexicon.tsv").write_text(lexicon, encoding="utf-8")
    assert read_alignment(adir, inputs) is not None
    (adir / "notes.txt").write_text("not an output")  # not one of 02's files: no effect
    assert read_alignment(adir, inputs) is not None
    (adir / "source_mean.npy").unlink()
    assert read_alignment(adir, inputs) is None
    # a corrupt record is an error naming it, not a silent new alignment over the committed files
    (adir / "metrics.json").write_text('{"scores": ', encoding="utf-8")
    with pytest.raises(ValueError, match=r"metrics\.json:1: not readable JSON"):
        read_alignment(adir, inputs)
    forget_record(adir)  # what 02 does before aligning again
    assert not (adir / "metrics.json").exists() and read_alignment(adir, inputs) is None


def test_a_record_listing_fewer_files_than_its_settings_write_is_not_read_back(tmp_path: Path) -> None:
    adir = tmp_path / "alignment"
    inputs = _inputs()
    _write_as_02(adir, inputs=inputs)
    record = json.loads((adir / "metrics.json").read_text(encoding="utf-8"))
    (adir / "curves.csv").unlink()
    del record["extra"]["files"]["curves.csv"]  # consistent with the directory, but an output is missing
    (adir / "metrics.json").write_text(json.dumps(record), encoding="utf-8")
    assert read_alignment(adir, inputs) is None


def test_a_record_without_inputs_is_adopted_only_when_encoder_settings_and_sizes_agree(tmp_path: Path) -> None:
    adir = tmp_path / "alignment"
    _write_as_02(adir)  # made before inputs were recorded
    inputs = _inputs()
    assert read_alignment(adir, inputs) is None
    before = (adir / "metrics.json").read_text(encoding="utf-8")
    assert adopt_record(adir, _inputs(encoder={"identity": "enc-2", "max_length": 32}), SIZES) is None
    assert adopt_record(adir, inputs, [{**SIZES[0], "types": 81}]) is None
    assert adopt_record(adir, _inputs(config=AlignConfig(**{**CONFIG.to_dict(), "n_epochs": 2})), SIZES) is None
    lexicon = (adir / "lexicon.tsv").read_text(encoding="utf-8")
    (adir / "lexicon.tsv").write_text("\n".join(lexicon.splitlines()[:-1]) + "\n", encoding="utf-8")
    assert adopt_record(adir, inputs, SIZES) is None  # a pair short of the recorded lexicon: a half-written one
    (adir / "lexicon.tsv").write_text(lexicon, encoding="utf-8")
    mapping = (adir / "mapping.npy").read_bytes()
    (adir / "mapping.npy").unlink()
    assert adopt_record(adir, inputs, SIZES) is None  # an output missing
    (adir / "mapping.npy").write_bytes(mapping)
    assert (adir / "metrics.json").read_text(encoding="utf-8") == before  # refused: left as it was
    adopted = adopt_record(adir, inputs, SIZES)
    assert adopted is not None and adopted["extra"]["adopted_utc"]
    assert adopted["extra"]["files"] == file_checksums(adir)
    assert read_alignment(adir, inputs) == json.loads((adir / "metrics.json").read_text(encoding="utf-8"))
    assert adopt_record(adir, inputs, SIZES) is None  # once: it has inputs now


def test_a_record_of_another_encoder_identity_is_adopted_only_when_its_map_reproduces_it_now(tmp_path: Path) -> None:
    adir = tmp_path / "alignment"
    made = _write_as_02(adir, encoder_identity="enc-old")  # made before inputs were recorded, under another identity
    source, target, en_words, zh_words = _spaces()
    inputs = _inputs()  # today's identity, enc-1
    assert adopt_record(adir, inputs, SIZES) is None  # no vectors to check it on: refused
    g = torch.Generator().manual_seed(1)
    other = (torch.randn(80, 8, generator=g), torch.randn(70, 8, generator=g), en_words, zh_words)
    assert adopt_record(adir, inputs, SIZES, spaces=other) is None  # other vectors: the map does not reproduce it
    assert "inputs" not in json.loads((adir / "metrics.json").read_text(encoding="utf-8"))["extra"]
    slightly = (source + 1e-7 * torch.randn(80, 8, generator=g), target, en_words, zh_words)
    adopted = adopt_record(adir, inputs, SIZES, spaces=slightly)
    assert adopted is not None and adopted["extra"]["encoder_identity"] == "enc-old"
    rep = adopted["extra"]["reproduction"]
    assert rep["criterion_recorded"] == pytest.approx(made.criterion)
    assert rep["criterion_now"] == pytest.approx(made.criterion, abs=1e-4)
    assert rep["lexicon_pairs_recorded"] == len(made.lexicon) == rep["lexicon_pairs_in_both"]
    assert read_alignment(adir, inputs) == adopted  # read back under today's identity from now on


def test_the_stored_alignment_is_the_one_that_was_made_and_a_bad_lexicon_line_is_named(tmp_path: Path) -> None:
    adir = tmp_path / "alignment"
    inputs = _inputs()
    made = _write_as_02(adir, inputs=inputs)
    source, target, en_words, zh_words = _spaces()
    back = stored_alignment(adir, read_alignment(adir, inputs), source, target, en_words, zh_words, CONFIG)
    assert torch.equal(back.mapping, made.mapping) and torch.equal(back.lexicon, made.lexicon)
    assert torch.allclose(back.source, made.source) and torch.allclose(back.target, made.target)
    assert torch.allclose(back.mapped_source, made.mapped_source)
    assert back.criterion == pytest.approx(made.criterion) and back.chosen["start"] == made.chosen["start"]
    assert pd.DataFrame(back.history).equals(pd.read_csv(adir / "curves.csv"))
    assert len(back.history) == len(made.history) and back.history[-1]["criterion"] == pytest.approx(
        made.history[-1]["criterion"])
    record = read_alignment(adir, inputs)
    lexicon = pd.read_csv(adir / "lexicon.tsv", sep="\t")
    assert len(lexicon) >= 2
    lexicon.loc[1, "chinese"] = "不在"
    lexicon.to_csv(adir / "lexicon.tsv", sep="\t", index=False)
    with pytest.raises(ValueError, match=r"lexicon\.tsv:3: the pair \('w\d+', '不在'\)"):
        stored_alignment(adir, record, source, target, en_words, zh_words, CONFIG)
