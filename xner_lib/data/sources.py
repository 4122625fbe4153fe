"""Where the corpora live: data-directory resolution and a verified downloader (DESIGN.md, Data).

The data directory is, in order: an explicit argument, ``$XNER_DATA_DIR``, ``./data``, ``../shared/data``.
Files missing from it are fetched from their canonical public URLs and kept only when their sha256
matches; offline, :func:`ensure_files` stops with one message naming every missing file and where
to put it.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_file

_NEURONER = ("https://raw.githubusercontent.com/Franck-Dernoncourt/NeuroNER/"
             "3817feaf290c1f6e03ae23ea964e68c88d0e7a88/neuroner/data/conll2003/en/")
_WEIBO = ("https://raw.githubusercontent.com/hltcoe/golden-horse/"
          "7a73c08e45ed94312af4ef2d97cc35a47d029e99/data/weiboNER_2nd_conll.")
_PD = ("https://raw.githubusercontent.com/OYE93/Chinese-NLP-Corpus/"
       "e9bb5b5f262466af5d45bcf7ee3380f2cb994907/NER/People%27s%20Daily/example.")


@dataclass(frozen=True)
class DataFile:
    """One corpus file: its path under the data directory, format, canonical URL and sha256."""

    relpath: str
    format: str
    url: str
    sha256: str
    required: bool = True

    @property
    def name(self) -> str:
        return self.relpath.split("/")[0]

    @property
    def split(self) -> str:
        return Path(self.relpath).stem


#: The corpora of the paper (SOURCES.md). People's Daily train is optional: the pipeline never needs it.
CORPUS_FILES: tuple[DataFile, ...] = (
    DataFile("conll2003/train.txt", "conll", _NEURONER + "train.txt",
             "213953b5522fb7924802d883e50f027b2c6ffb5d4d0e63368ed82909f9b60423"),
    DataFile("conll2003/dev.txt", "conll", _NEURONER + "valid.txt",
             "c02eb19809eafb83998326a0481942eb37d96f31826ae387cfe8773699969f5b"),
    DataFile("conll2003/test.txt", "conll", _NEURONER + "test.txt",
             "dc4ac7f3d6d01a6bec59261814561da3b287b6b493b97d1f69c580b52ec1831b"),
    DataFile("weibo/train.txt", "weibo", _WEIBO + "train",
             "4e8954c54ab33b0afc9a8abb85715c47422645cc6d1b49fdb24540f4a427e997"),
    DataFile("weibo/dev.txt", "weibo", _WEIBO + "dev",
             "e72730d83aac680505280b6301c879b3ba470d29ac308979d48cdc58ee4907cc"),
    DataFile("weibo/test.txt", "weibo", _WEIBO + "test",
             "faaf6c0ebde5348b935cfd5c89f0f22c9e0779d60667d8b5efbc647b6707d50e"),
    DataFile("peoples_daily/train.txt", "peoples_daily", _PD + "train",
             "fbacf4110b131354270b7ff470c88eb84645f0ed8df30c3e409dde437cb45e70", required=False),
    DataFile("peoples_daily/dev.txt", "peoples_daily", _PD + "dev",
             "7d8e6fcd1745e6adcb99d90307d84c3a0f9f8ff5ee6fe62ca27646cb765fc38a"),
    DataFile("peoples_daily/test.txt", "peoples_daily", _PD + "test",
             "233299005f941a4b055e38aadcf3ee853e44bc1f88166078d3b52b26b77ea362"),
)


def corpus_file(relpath: str) -> DataFile:
    """The :class:`DataFile` registered under ``relpath`` (e.g. ``weibo/test.txt``)."""
    for f in CORPUS_FILES:
        if f.relpath == relpath:
            return f
    raise KeyError(f"no corpus file {relpath!r}; known: {', '.join(f.relpath for f in CORPUS_FILES)}")


class DataUnavailableError(RuntimeError):
    """Corpus files are missing and could not be downloaded."""


_REPO = Path(__file__).resolve().parents[2]


def candidate_dirs(explicit: str | os.PathLike[str] | None = None) -> list[Path]:
    """The data directories tried, in order: argument, ``$XNER_DATA_DIR``, ``./data``, ``../shared/data``.

    ``./data`` and ``../shared/data`` are tried from the working directory, then from the repository root
    (so a notebook started inside ``notebooks/`` finds the same data).
    """
    out: list[Path] = []
    if explicit:
        out.append(Path(explicit))
    if os.environ.get("XNER_DATA_DIR"):
        out.append(Path(os.environ["XNER_DATA_DIR"]))
    for base in (Path.cwd(), _REPO):
        out += [base / "data", base.parent / "shared" / "data"]
    return out


def resolve_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: the argument or ``$XNER_DATA_DIR`` when given (it must exist), else the first
    existing default; when none exists, ``./data`` (where downloads go)."""
    given = explicit or os.environ.get("XNER_DATA_DIR")
    if given:
        if not Path(given).is_dir():
            source = "argument" if explicit else "$XNER_DATA_DIR"
            raise DataUnavailableError(f"data directory {given} (from {source}) does not exist")
        return Path(given).resolve()
    for p in candidate_dirs():
        if p.is_dir():
            return p.resolve()
    return (Path.cwd() / "data").resolve()


def sha256_of(path: Path) -> str:
    """The sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_cached(path: str | os.PathLike[str]) -> str:
    """:func:`sha256_of`, computed once per (resolved path, size, modification time) in this process."""
    resolved = Path(path).resolve()
    st = resolved.stat()
    key = (str(resolved), st.st_size, st.st_mtime_ns)
    if key not in _SHA256_CACHE:
        _SHA256_CACHE[key] = sha256_of(resolved)
    return _SHA256_CACHE[key]


def download(f: DataFile, data_dir: Path, *, timeout: float = 30.0) -> Path:
    """Fetch ``f.url`` into ``data_dir/f.relpath``; the file appears only if its sha256 matches.

    Raises ``urllib.error.URLError``/``OSError`` when unreachable and :class:`DataUnavailableError` on a
    checksum mismatch (the partial download is removed).
    """
    dest = data_dir / f.relpath
    with atomic_file(dest, binary=True) as out, urllib.request.urlopen(f.url, timeout=timeout) as resp:
        h = hashlib.sha256()
        for block in iter(lambda: resp.read(1 << 20), b""):
            h.update(block)
            out.write(block)
        if h.hexdigest() != f.sha256:
            raise DataUnavailableError(
                f"{f.url}: sha256 {h.hexdigest()} does not match the expected {f.sha256}; file not kept")
    return dest


def ensure_files(files: Iterable[DataFile] = CORPUS_FILES, data_dir: str | os.PathLike[str] | None = None,
                 *, download_missing: bool = True, timeout: float = 30.0) -> Path:
    """Make sure every required file of ``files`` is in the data directory and return that directory.

    Missing required files are downloaded when ``download_missing``; whatever is still missing ends in one
    :class:`DataUnavailableError` naming each file, its URL and the path to put it at. Optional files are
    fetched when possible and otherwise left out.
    """
    root = resolve_data_dir(data_dir)
    missing: list[tuple[DataFile, str]] = []
    for f in files:
        if (root / f.relpath).is_file():
            continue
        reason = "not present"
        if download_missing:
            try:
                download(f, root, timeout=timeout)
                continue
            except (OSError, urllib.error.URLError, DataUnavailableError) as err:
                reason = f"download failed: {err}"
        if f.required:
            missing.append((f, reason))
    if missing:
        lines = [f"{len(missing)} data file(s) missing from {root}:"]
        lines += [f"  {root / f.relpath}  ({why}; source: {f.url}; sha256 {f.sha256})" for f, why in missing]
        lines.append("Copy them there (or set $XNER_DATA_DIR to a directory holding them) and run again.")
        raise DataUnavailableError("\n".join(lines))
    return root


def available(files: Sequence[DataFile], data_dir: Path) -> list[DataFile]:
    """The members of ``files`` present in ``data_dir``."""
    return [f for f in files if (data_dir / f.relpath).is_file()]
