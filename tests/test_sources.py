"""Data-directory resolution and the sha256-verified downloader, against a local HTTP server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from xner_lib.data import DataFile, DataUnavailableError, ensure_files, resolve_data_dir


@pytest.fixture()
def server(fixtures: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(fixtures))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_missing_file_is_downloaded_and_verified(tmp_path: Path, server: str, fixtures: Path) -> None:
    f = DataFile("pd/dev.txt", "peoples_daily", f"{server}/peoples_daily_small.txt",
                 _sha(fixtures / "peoples_daily_small.txt"))
    root = ensure_files([f], tmp_path)
    assert (root / "pd/dev.txt").read_bytes() == (fixtures / "peoples_daily_small.txt").read_bytes()
    assert list((root / "pd").iterdir()) == [root / "pd/dev.txt"]  # no partial file left


def test_checksum_mismatch_keeps_nothing_and_names_the_file(tmp_path: Path, server: str) -> None:
    f = DataFile("pd/dev.txt", "peoples_daily", f"{server}/peoples_daily_small.txt", "0" * 64)
    with pytest.raises(DataUnavailableError) as err:
        ensure_files([f], tmp_path)
    assert str(tmp_path / "pd/dev.txt") in str(err.value) and "sha256" in str(err.value)
    assert list((tmp_path / "pd").iterdir()) == []


def test_offline_gives_one_message_naming_every_missing_file(tmp_path: Path) -> None:
    files = [DataFile(f"x/{n}.txt", "conll", f"http://127.0.0.1:9/{n}.txt", "0" * 64) for n in ("a", "b")]
    optional = DataFile("x/c.txt", "conll", "http://127.0.0.1:9/c.txt", "0" * 64, required=False)
    with pytest.raises(DataUnavailableError) as err:
        ensure_files([*files, optional], tmp_path, timeout=2)
    msg = str(err.value)
    assert msg.startswith(f"2 data file(s) missing from {tmp_path}")
    assert str(tmp_path / "x/a.txt") in msg and str(tmp_path / "x/b.txt") in msg and "c.txt" not in msg
    assert "XNER_DATA_DIR" in msg


def test_present_files_are_not_downloaded(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x/a.txt").write_text("a O\n\n")
    f = DataFile("x/a.txt", "conll", "http://127.0.0.1:9/never", "0" * 64)
    assert ensure_files([f], tmp_path, download_missing=False) == tmp_path.resolve()


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit, env, cwd = tmp_path / "explicit", tmp_path / "env", tmp_path / "cwd"
    for d in (explicit, env, cwd / "data"):
        d.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("XNER_DATA_DIR", str(env))
    assert resolve_data_dir(explicit) == explicit.resolve()
    assert resolve_data_dir() == env.resolve()
    monkeypatch.delenv("XNER_DATA_DIR")
    assert resolve_data_dir() == (cwd / "data").resolve()
    monkeypatch.setenv("XNER_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataUnavailableError, match="XNER_DATA_DIR"):
        resolve_data_dir()
