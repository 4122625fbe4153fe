"""Interruption and determinism (issue 17, points 3 and 4), on the tiny encoder and toy data.

A feature extraction and a series of runs are killed part-way (SIGKILL, in a subprocess: nothing of the
dying process cleans up) and rerun: the rerun resumes from what was saved (the shards written, the runs whose
``metrics.json`` was written) and ends with results identical to an uninterrupted run. A truncated feature
shard, ``metrics.json`` or checkpoint file is detected and rebuilt, never loaded. The same seed gives the same
run (scores, curves) in this process and another; another seed another run.

Run as a script, this file is the child process that is killed: ``python test_interruption.py features|runs ...``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from xner_lib.batches import prepare
from xner_lib.data import Dataset, Sentence
from xner_lib.encoders import load_encoder, tiny_encoder
from xner_lib.experiment import Corpora, run_or_load
from xner_lib.features import cached_unit_features
from xner_lib.tagger import Tagger, load_checkpoint
from xner_lib.train import TrainConfig

SHARD = 4
N_SENTENCES = 12
SEEDS = (1, 2)
#: three steps on the toy, seconds per run; the head's rate leaves the toy half-learnt (CoNLL dev F1 0.0 at seed 1,
#: 0.8 at seed 2), so that scores, not only curves, tell seeds apart
CFG = TrainConfig(encoder="tiny-random-bert", epochs=1, batch_size=8, lr=1e-3, head_lr=3e-2, seed=1)


# --- what both processes compute ------------------------------------------------------------------------------------

@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Both processes compute on one thread (another count may round differently); the old count restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sentences() -> list[list[str]]:
    rng = random.Random(0)
    words = ["the", "man", "said", "Mr", "Smith", "in", "Berlin", "and", "Rome", "works", "for", "Siemens"]
    return [[rng.choice(words) for _ in range(3 + i)] for i in range(N_SENTENCES)]


def toy(n: int, fmt: str, seed: int) -> Dataset:
    """Names after 'Mr' are PER, after 'in' LOC (English); '他在<city>说' and '<person>先生说' (Chinese)."""
    rng = random.Random(seed)
    sents = []
    for _ in range(n):
        if fmt == "conll":
            cue, name = rng.choice(["Mr", "in"]), rng.choice(["Smith", "Jones", "Paris", "Berlin", "Brown", "Rome"])
            toks, tags = ["the", "man", cue, name, "said"], ["O", "O", "O", "B-PER" if cue == "Mr" else "B-LOC", "O"]
        elif rng.random() < 0.5:
            toks, tags = list(f"他在{rng.choice(['北京', '上海'])}说"), ["O", "O", "B-LOC", "I-LOC", "O"]
        else:
            toks, tags = list(f"{rng.choice(['张三', '李四'])}先生说"), ["B-PER", "I-PER", "O", "O", "O"]
        if fmt == "weibo":
            tags = [t if t == "O" else f"{t}.NAM" for t in tags]
        sents.append(Sentence(toks, tags, list(range(1, 6)), word_pos=[0] * 5 if fmt == "weibo" else []))
    return Dataset("toy", "test", fmt, Path(f"toy-{fmt}-{seed}"), sents)


def corpora(enc: Any) -> Corpora:
    sets = [toy(24, "conll", 0), toy(12, "conll", 1), toy(12, "conll", 2), toy(8, "weibo", 3),
            toy(8, "peoples_daily", 4)]
    return Corpora(*(prepare(d, enc, frozen=False, zh_units="char") for d in sets))


def run_seeds(runs: Path, checkpoints: Path, calls: list[int] | None = None) -> list[dict[str, Any]]:
    """:func:`run_or_load` over :data:`SEEDS`, checkpoints kept, as a notebook runs them."""
    enc = load_encoder("tiny-random-bert")

    def factory() -> Any:
        if calls is not None:
            calls.append(1)
        return load_encoder("tiny-random-bert")

    prepared = corpora(enc)
    with one_thread():
        return [run_or_load("baseline", replace(CFG, seed=s), factory, prepared, runs, checkpoints_dir=checkpoints,
                            encoder=enc, progress=False) for s in SEEDS]


# --- the child process, killed part-way -----------------------------------------------------------------------------

def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def child_features(cache: str, mode: str) -> None:
    """Extract features shard by shard; die at the third shard's encoder pass (``forward``) or half-way
    through writing the second shard (``write``)."""
    import xner_lib.features as features
    from xner_lib.files import atomic_file

    enc = tiny_encoder()
    if mode == "forward":
        passes: list[int] = []

        def third_pass_dies(*_: Any) -> None:
            passes.append(1)
            if len(passes) == 3:
                _die()

        enc.model.register_forward_hook(third_pass_dies)
    else:
        written: list[int] = []
        real = features.write_bytes_atomic

        def half_then_die(path: Path, content: bytes) -> Path:
            written.append(1)
            if len(written) < 2:
                return real(path, content)
            with atomic_file(path, binary=True) as fh:
                fh.write(content[: len(content) // 2])
                fh.flush()
                _die()
            raise AssertionError("unreachable")

        features.write_bytes_atomic = half_then_die  # type: ignore[assignment]
    with one_thread():
        cached_unit_features(enc, sentences(), "en", cache, shard_size=SHARD, progress=False)


def child_runs(runs: str, checkpoints: str) -> None:
    """:func:`run_seeds`, dying at the second seed's first evaluation of CoNLL dev (its training half done)."""
    import xner_lib.experiment as experiment

    real = experiment.train

    def train(cfg: TrainConfig, *args: Any, **kwargs: Any) -> Any:
        if cfg.seed == SEEDS[1]:
            kwargs["on_eval"] = lambda _: _die()
        return real(cfg, *args, **kwargs)

    experiment.train = train  # type: ignore[assignment]
    run_seeds(Path(runs), Path(checkpoints))


def killed(*args: str | Path) -> None:
    """Run this file as the child with ``args``; it must die of SIGKILL."""
    proc = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


# --- features -------------------------------------------------------------------------------------------------------

def shard_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*shard-*"))


def features_counting_passes(cache: Path) -> tuple[list[torch.Tensor], int]:
    enc = tiny_encoder()
    passes: list[int] = []
    handle = enc.model.register_forward_hook(lambda *_: passes.append(1))
    with one_thread():
        feats = cached_unit_features(enc, sentences(), "en", cache, shard_size=SHARD, progress=False)
    handle.remove()
    return feats, len(passes)


@pytest.fixture(scope="module")
def uninterrupted_features(tmp_path_factory: pytest.TempPathFactory) -> list[torch.Tensor]:
    feats, passes = features_counting_passes(tmp_path_factory.mktemp("features"))
    assert passes == N_SENTENCES // SHARD
    return feats


def test_a_killed_feature_extraction_resumes_at_the_first_missing_shard(tmp_path: Path,
                                                                         uninterrupted_features: list) -> None:
    killed("features", tmp_path, "forward")
    assert shard_files(tmp_path) == ["shard-00000.pt", "shard-00001.pt"]
    feats, passes = features_counting_passes(tmp_path)
    assert passes == 1  # the third shard only
    assert all(torch.equal(a, b) for a, b in zip(feats, uninterrupted_features, strict=True))


def test_a_shard_killed_while_written_is_never_read_and_its_temporary_is_removed(
        tmp_path: Path, uninterrupted_features: list) -> None:
    killed("features", tmp_path, "write")
    left = shard_files(tmp_path)
    assert left[0] == ".shard-00001.pt.tmp-" + left[0].split("tmp-")[1] and left[1:] == ["shard-00000.pt"]
    feats, passes = features_counting_passes(tmp_path)
    assert passes == 2 and shard_files(tmp_path) == [f"shard-{k:05d}.pt" for k in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(feats, uninterrupted_features, strict=True))


def test_a_truncated_shard_is_detected_and_rebuilt(tmp_path: Path, uninterrupted_features: list) -> None:
    features_counting_passes(tmp_path)
    shard = next(tmp_path.rglob("shard-00001.pt"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    with pytest.warns(UserWarning, match="corrupt feature shard"):
        feats, passes = features_counting_passes(tmp_path)
    assert passes == 1
    assert all(torch.equal(a, b) for a, b in zip(feats, uninterrupted_features, strict=True))


# --- runs -----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uninterrupted_runs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XNER_CACHE_DIR", str(root / "cache"))
        return run_seeds(root / "runs", root / "checkpoints")


@pytest.fixture
def cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XNER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def outcome(m: dict[str, Any]) -> tuple[Any, ...]:
    """What a run computed (not when, nor how long it took)."""
    return m["scores"], m["extra"]["variant_scores"], [h["loss"] for h in m["extra"]["history"]], m["extra"]["run_key"]


def test_killed_runs_resume_from_the_saved_ones_and_end_as_an_uninterrupted_series(
        cache_env: Path, uninterrupted_runs: list[dict[str, Any]]) -> None:
    runs, checkpoints = cache_env / "runs", cache_env / "checkpoints"
    killed("runs", runs, checkpoints)
    assert sorted(p.parent.name for p in runs.rglob("metrics.json")) == ["baseline-seed1"]
    assert [p.name for p in checkpoints.iterdir() if not p.name.startswith(".")] == ["baseline-seed1"]
    calls: list[int] = []
    resumed = run_seeds(runs, checkpoints, calls)
    assert len(calls) == 1  # the first seed is read back, only the second trains
    assert [outcome(m) for m in resumed] == [outcome(m) for m in uninterrupted_runs]


def test_the_same_seed_gives_the_same_run_and_another_seed_another_run(
        cache_env: Path, uninterrupted_runs: list[dict[str, Any]]) -> None:
    again = run_seeds(cache_env / "runs", cache_env / "checkpoints")  # this process; the fixture's too
    assert [outcome(m) for m in again] == [outcome(m) for m in uninterrupted_runs]
    first, second = again
    assert first["scores"]["conll_dev"] != second["scores"]["conll_dev"]
    assert [h["loss"] for h in first["extra"]["history"]] != [h["loss"] for h in second["extra"]["history"]]


def test_a_truncated_metrics_json_is_rerun_not_read(cache_env: Path, uninterrupted_runs: list[dict[str, Any]],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    run_seeds(cache_env / "runs", cache_env / "checkpoints")
    metrics = cache_env / "runs" / "baseline-seed1" / "metrics.json"
    metrics.write_bytes(metrics.read_bytes()[:200])
    calls: list[int] = []
    with caplog.at_level("WARNING"):
        rerun = run_seeds(cache_env / "runs", cache_env / "checkpoints", calls)
    assert len(calls) == 1 and "unreadable (truncated or corrupt JSON)" in caplog.text
    assert [outcome(m) for m in rerun] == [outcome(m) for m in uninterrupted_runs]
    json.loads(metrics.read_text(encoding="utf-8"))


def test_a_truncated_checkpoint_is_refused_and_its_run_rebuilt(cache_env: Path,
                                                               uninterrupted_runs: list[dict[str, Any]],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    run_seeds(cache_env / "runs", cache_env / "checkpoints")
    ckpt = cache_env / "checkpoints" / "baseline-seed2"
    weights = ckpt / "head.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=f"{weights}: {len(whole) // 2} bytes, {len(whole)} saved"):
        load_checkpoint(ckpt)
    with pytest.raises(ValueError, match="incomplete or corrupt checkpoint"):
        Tagger.from_pretrained(ckpt)
    calls: list[int] = []
    with caplog.at_level("WARNING"):
        rerun = run_seeds(cache_env / "runs", cache_env / "checkpoints", calls)
    assert len(calls) == 1 and "is incomplete" in caplog.text and "head.safetensors" in caplog.text
    assert [outcome(m) for m in rerun] == [outcome(m) for m in uninterrupted_runs]
    assert weights.read_bytes() == whole  # the same seed saved the same weights
    flipped = bytearray(whole)
    flipped[-1] ^= 0xFF  # same size, other bytes: only the checksum sees it
    weights.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="sha256 differs"):
        load_checkpoint(ckpt)


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    {"features": child_features, "runs": child_runs}[sys.argv[1]](*sys.argv[2:])
