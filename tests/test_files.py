"""Atomic writes (xner_lib.files): a failed write keeps the old target and leaves no temporary behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from xner_lib import files
from xner_lib.files import atomic_dir, atomic_file, remove_stale_temps, write_atomic, write_bytes_atomic


class Boom(Exception):
    pass


def _fail(fh) -> None:
    fh.write("half" if "b" not in fh.mode else b"half")
    raise Boom


def _plain_mode(tmp_path: Path) -> int:
    """The permission bits a plain ``open`` gives a new file here (the umask applied)."""
    probe = tmp_path / "probe"
    probe.write_text("")
    mode = stat.S_IMODE(probe.stat().st_mode)
    probe.unlink()
    return mode


def test_text_write_creates_parents_and_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "t.txt"
    assert write_atomic(target, "ünï\n") == target
    assert target.read_text(encoding="utf-8") == "ünï\n"
    write_atomic(target, lambda fh: fh.write("new"))
    assert target.read_text() == "new"
    with pytest.raises(Boom):
        write_atomic(target, _fail)
    assert target.read_text() == "new"
    assert os.listdir(target.parent) == ["t.txt"]
    assert stat.S_IMODE(target.stat().st_mode) == _plain_mode(tmp_path)  # not mkstemp's 0600


def test_binary_write_of_bytes_and_of_a_writer_and_a_failed_one(tmp_path: Path) -> None:
    target = tmp_path / "x.npy"
    write_bytes_atomic(target, lambda fh: np.save(fh, np.arange(5)))
    assert np.array_equal(np.load(target), np.arange(5))
    with pytest.raises(Boom):
        write_bytes_atomic(target, _fail)
    assert np.array_equal(np.load(target), np.arange(5))
    write_bytes_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    with pytest.raises(Boom), atomic_file(target, binary=True) as fh:
        fh.write(b"partial")
        raise Boom
    assert target.read_bytes() == b"\x00\x01" and os.listdir(tmp_path) == ["x.npy"]
    assert stat.S_IMODE(target.stat().st_mode) == _plain_mode(tmp_path)


def test_directory_appears_whole_and_replaces_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "ckpt"
    with atomic_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp.is_dir() and not target.exists()
        (tmp / "a.txt").write_text("1")
        (tmp / "inner").mkdir()
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "inner"]
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("2")
    assert [p.name for p in target.iterdir()] == ["b.txt"]  # the old contents are gone
    assert os.listdir(target.parent) == ["ckpt"]  # nothing set aside is left
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~files._UMASK  # not mkdtemp's 0700


def test_failed_directory_build_keeps_the_old_directory_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    with atomic_dir(target) as tmp:
        (tmp / "good.txt").write_text("good")
    with pytest.raises(Boom), atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise Boom
    assert [p.name for p in target.iterdir()] == ["good.txt"]
    assert os.listdir(tmp_path) == ["ckpt"]


def test_failed_final_rename_puts_the_old_directory_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "ckpt"
    with atomic_dir(target) as tmp:
        (tmp / "good.txt").write_text("good")
    real, calls = os.replace, []

    def replace(src, dst):  # moving the old one aside works, putting the new one in place does not
        calls.append(Path(src).name)
        if Path(dst) == target and len(calls) == 2:
            raise OSError("rename failed")
        real(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    monkeypatch.undo()
    assert calls[0] == "ckpt" and calls[2] == "old"  # aside, the failed rename, back
    assert [p.name for p in target.iterdir()] == ["good.txt"]
    assert os.listdir(tmp_path) == ["ckpt"]


def test_stale_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    target = tmp_path / "built"
    dead = 2**22 + 12345  # above the kernel's pid_max: no such process
    (tmp_path / f".built.tmp-{dead}").mkdir()  # the old e5s1 naming
    (tmp_path / f".built.tmp-{dead}-abc").write_text("x")
    (tmp_path / f".built.tmp-{os.getpid()}-def").mkdir()  # this process: live
    (tmp_path / ".built.tmp-notapid").mkdir()
    (tmp_path / ".other.tmp-1").mkdir()
    removed = remove_stale_temps(target)
    assert sorted(p.name for p in removed) == [f".built.tmp-{dead}", f".built.tmp-{dead}-abc"]
    assert sorted(os.listdir(tmp_path)) == [f".built.tmp-{os.getpid()}-def", ".built.tmp-notapid", ".other.tmp-1"]


def test_figures_are_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.pyplot as plt

    from xner_lib import report

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = report.save_figure(fig, tmp_path / "figures", "f")
    good = path.read_bytes()
    assert good[:8] == b"\x89PNG\r\n\x1a\n"

    def broken(self, fname, **kwargs):  # dies half-way, whether given a path or a handle
        if isinstance(fname, str | os.PathLike):
            Path(fname).write_bytes(b"\x89PNG half")
        else:
            fname.write(b"\x89PNG half")
        raise Boom

    monkeypatch.setattr(type(fig), "savefig", broken)
    with pytest.raises(Boom):
        report.save_figure(fig, tmp_path / "figures", "f")
    plt.close(fig)
    assert path.read_bytes() == good and os.listdir(path.parent) == ["f.png"]


def test_no_module_or_notebook_hand_rolls_its_own_temp_then_rename() -> None:
    """One place per idea: temporary files and renames live in xner_lib/files.py only, and results are not
    written straight to their final path with numpy or pandas."""
    import re

    from xner_lib.config import REPO_ROOT

    banned = re.compile(r"\bos\.(replace|rename)\(|\btempfile\.|\bnp\.save\((?!fh\b)|\.to_csv\((?!\)|index=|sep=)"
                        r"|\.savefig\((?!fh\b)")
    sources = [p for p in sorted((REPO_ROOT / "xner_lib").rglob("*.py")) if p.name != "files.py"]
    sources += sorted((REPO_ROOT / "notebooks").glob("*.ipynb")) + sorted((REPO_ROOT / "benchmarks").glob("*.py"))
    hits = [f"{p.relative_to(REPO_ROOT)}:{n}: {line.strip()}" for p in sources
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if banned.search(line)]
    assert not hits, "write through xner_lib.files instead:\n" + "\n".join(hits)


_KILLED_WRITER = """
import os, signal, sys
import pandas as pd
from xner_lib import files, report
from xner_lib.evaluate import write_metrics

files.os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # die with the new content written, not renamed
target = sys.argv[2]
if sys.argv[1] == "csv":
    report.write_table(pd.DataFrame({"f1": [0.9] * 1000}), os.path.dirname(target), "table")
else:
    write_metrics(target, variant="v", encoder="e", seed=1, config={}, scores={"f1": 0.9})
"""


@pytest.mark.parametrize(("kind", "name"), [("csv", "table.csv"), ("json", "metrics.json")])
def test_a_writer_killed_mid_write_leaves_the_old_result_whole(tmp_path: Path, kind: str, name: str) -> None:
    """SIGKILL runs no cleanup: what a reader finds afterwards is the old file, whole, and a temporary that
    :func:`remove_stale_temps` recognises as the dead process's."""
    import signal
    import subprocess
    import sys

    target = tmp_path / name
    target.write_text("the old result\n")
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, kind, str(target)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert target.read_text() == "the old result\n"
    temps = [p for p in tmp_path.iterdir() if p.name.startswith(f".{name}.tmp-")]
    assert len(temps) == 1 and temps[0].stat().st_size > 0  # the new content got that far
    assert remove_stale_temps(target) == temps and sorted(os.listdir(tmp_path)) == [name]
