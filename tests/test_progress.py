"""Readable output (issue 9, point 7): a bar in a terminal, one summary line per stage anywhere else."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
import torch
from tqdm import tqdm

from xner_lib import progress as progress_module
from xner_lib.aligner import AlignConfig, align
from xner_lib.batches import prepare
from xner_lib.data import Dataset, Sentence
from xner_lib.encoders import load_encoder
from xner_lib.progress import SummaryProgress, progress, progress_mode
from xner_lib.tagger import predict
from xner_lib.train import TrainConfig, train


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _no_forced_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(progress_module.ENV, raising=False)


def test_not_a_terminal_gives_one_small_line_per_stage() -> None:
    out = io.StringIO()
    bar = progress(total=5000, desc="train seed 1", unit="steps", file=out)
    for i in range(5000):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    bar.close()
    bar.close()  # a second close writes nothing
    for _ in progress(range(300), desc="adversarial", unit="epochs", file=out):
        pass
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(out.getvalue()) < 200
    assert len(lines) == 2
    assert lines[0].startswith("train seed 1: 5000/5000 steps in ") and lines[0].endswith(" s (loss=0.000)")
    assert lines[1].startswith("adversarial: 300/300 epochs in ")


def test_summary_after_break_and_cache_hits_and_context_manager() -> None:
    out = io.StringIO()
    for i in progress(range(10), desc="adversarial", unit="epochs", file=out):
        if i == 3:
            break
    with progress(total=100, initial=60, desc="features tiny en", unit="sent", file=out) as bar:
        bar.update(40)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("adversarial: 3/10 epochs in ")
    assert lines[1].startswith("features tiny en: 100/100 sent in ") and lines[1].endswith("(60 already done)")


def test_terminal_gets_a_tqdm_bar_and_a_notebook_kernel_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    tty = _Tty()
    bar = progress(total=3, desc="x", file=tty)
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setattr(progress_module, "in_notebook_kernel", lambda: True)
    assert progress_mode(tty) == "summary"
    assert isinstance(progress(total=3, desc="x", file=tty), SummaryProgress)


def test_environment_forces_a_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setenv(progress_module.ENV, "off")
    for _ in progress(range(3), desc="quiet", file=out):
        pass
    assert out.getvalue() == ""
    monkeypatch.setenv(progress_module.ENV, "bar")
    assert isinstance(progress(total=1, desc="x", file=out), tqdm)
    monkeypatch.setenv(progress_module.ENV, "widget")
    with pytest.raises(ValueError, match="XNER_PROGRESS"):
        progress(desc="x")
    monkeypatch.delenv(progress_module.ENV)
    silent = io.StringIO()
    progress(total=2, desc="x", disable=True, file=silent).close()
    assert silent.getvalue() == ""


def test_training_and_alignment_write_one_line_per_stage_when_stderr_is_not_a_terminal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The library's own loops (tqdm.auto before: a '\\r' redraw per refresh, kept by papermill)."""
    torch.set_num_threads(1)
    rng = random.Random(0)
    sents = [Sentence(["the", "man", "Mr", rng.choice(["Smith", "Jones"]), "said"], ["O", "O", "O", "B-PER", "O"],
                      list(range(1, 6))) for _ in range(24)]
    data = Dataset("toy", "train", "conll", Path("toy"), sents)
    enc = load_encoder("tiny-random-bert")
    prep = prepare(data, enc, frozen=True, cache_dir=tmp_path / "cache")
    capsys.readouterr()
    cfg = TrainConfig(encoder="tiny-random-bert", finetune=False, epochs=2, batch_size=4, seed=1)
    result = train(cfg, enc, prep, prep, progress=True)
    predict(result.tagger, prep, progress=True)
    vectors = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    align(vectors, vectors.clone(), AlignConfig(dis_hidden=16, epoch_size=640, n_epochs=2, refinement_rounds=2,
                                                criterion_max_size=100, lexicon_max_rank=100, similarity_size=100))
    err = capsys.readouterr().err
    assert "\r" not in err
    stages = [line.split(":")[0] for line in err.splitlines()]
    assert stages == ["train seed 1", "predict toy/train", "adversarial", "refinement"], err
    assert err.splitlines()[0].startswith("train seed 1: 12/12 steps in ")


def test_smoke_results_are_ignored_by_git() -> None:
    import subprocess

    from xner_lib.config import REPO_ROOT

    proc = subprocess.run(["git", "check-ignore", "-q", "results/smoke/notebooks/03_training.ipynb"], cwd=REPO_ROOT)
    assert proc.returncode == 0
    proc = subprocess.run(["git", "check-ignore", "-q", "results/cpu/notebooks/03_training.ipynb"], cwd=REPO_ROOT)
    assert proc.returncode == 1
