"""Atomic writes, the one way this project writes a file or a directory that something else reads back.

Every writer builds its output under a temporary name beside the target (same directory, so the final
``os.replace`` is a rename on one file system), then renames it into place. A reader never sees a
half-written file or directory, and a write that fails leaves the old target as it was and no temporary
file or directory behind. Temporary names are ``.<target name>.tmp-<pid>-<random>``, so that what a killed
process left can be recognised (:func:`remove_stale_temps`).

Public API
----------
``atomic_file(path, binary=False)``
    Context manager yielding an open text (UTF-8) or binary handle; the file appears at ``path`` on success.
``write_atomic(path, content)``
    Text: a string, or a callable that writes to the handle.
``write_bytes_atomic(path, content)``
    Bytes: a bytes object, or a callable that writes to the binary handle (``np.save``, ``torch.save``, ...).
``atomic_dir(path)``
    Context manager yielding an empty temporary directory; on success it replaces the directory ``path``.
``remove_stale_temps(path)``
    Remove the temporary siblings of ``path`` left by processes that no longer run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO, TextIO

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def _prepare(path: str | os.PathLike[str]) -> tuple[Path, str]:
    """The target as a Path (its parents created) and the prefix of this process's temporary names."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target, f"{_temp_prefix(target)}{os.getpid()}-"


@contextmanager
def atomic_file(path: str | os.PathLike[str], binary: bool = False) -> Iterator[IO]:
    """Yield a handle on a temporary file beside ``path``; on a normal exit it is flushed, synced and renamed
    to ``path`` (parents created, permissions as a plain ``open`` would give), on an exception removed."""
    target, prefix = _prepare(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=target.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_UMASK)
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write(path: str | os.PathLike[str], content: object, binary: bool) -> Path:
    with atomic_file(path, binary=binary) as fh:
        if callable(content):
            content(fh)
        else:
            fh.write(content)
    return Path(path)


def write_atomic(path: str | os.PathLike[str], content: str | Callable[[TextIO], object]) -> Path:
    """Create ``path`` with ``content`` (a string, or ``content(fh)`` on a UTF-8 text handle), atomically."""
    return _write(path, content, binary=False)


def write_bytes_atomic(path: str | os.PathLike[str], content: bytes | Callable[[BinaryIO], object]) -> Path:
    """Create ``path`` with ``content`` (bytes, or ``content(fh)`` on a binary handle), atomically."""
    return _write(path, content, binary=True)


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path`` to fill; on a normal exit it becomes ``path``.

    An existing ``path`` is moved aside first and removed after the rename, so ``path`` is at every moment
    either the old directory, absent for the instant between two renames, or the complete new one; never
    a partial one. On an exception the temporary directory is removed and the old ``path`` kept. Raises
    ``OSError`` when another process created ``path`` between the two renames (the caller may then check
    and keep that one). Temporary directories of dead processes are removed first.
    """
    target, prefix = _prepare(path)
    remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        yield tmp
        _replace_dir(tmp, target, prefix)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(tmp: Path, target: Path, prefix: str) -> None:
    """Rename ``tmp`` to ``target``, moving an existing ``target`` aside first (restored if the rename fails)."""
    if not (target.exists() or target.is_symlink()):
        os.replace(tmp, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    try:
        os.replace(target, aside / "old")
        try:
            os.replace(tmp, target)
        except BaseException:
            if not (target.exists() or target.is_symlink()):
                os.replace(aside / "old", target)
            raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A fresh temporary directory, removed with everything in it on exit: for work that must not reuse or keep
    anything (a cold-cache measurement, a library's output directory)."""
    with tempfile.TemporaryDirectory(prefix="xner-") as tmp:
        yield Path(tmp)


def symlink_atomic(target: str | os.PathLike[str], link: str | os.PathLike[str]) -> Path:
    """Point the symbolic link ``link`` at ``target`` (as given: a relative target resolves from the link's
    directory), replacing any link already there in one rename, so a reader sees the old target or the new."""
    path, prefix = _prepare(link)
    tmp = path.parent / f"{prefix}link"
    tmp.unlink(missing_ok=True)  # this process's own leftover
    os.symlink(target, tmp, target_is_directory=True)
    os.replace(tmp, path)
    return path


def remove_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files and directories of ``path`` (``.<name>.tmp-<pid>...``) whose process no
    longer runs; return what was removed. Those of live processes (this one included) are kept."""
    target = Path(path)
    removed = []
    for tmp in target.parent.glob(f"{_temp_prefix(target)}*"):
        pid = tmp.name[len(_temp_prefix(target)):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed
