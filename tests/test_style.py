"""The code base stays `ruff` clean (pyproject.toml's rules), notebooks included."""

from __future__ import annotations

import shutil
import subprocess
import sys

from xner_lib.config import REPO_ROOT


def test_ruff_reports_nothing() -> None:
    ruff = shutil.which("ruff") or f"{sys.prefix}/bin/ruff"
    proc = subprocess.run([ruff, "check", "--no-cache", "."], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
