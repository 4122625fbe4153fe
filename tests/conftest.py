from __future__ import annotations

from pathlib import Path

import pytest

from xner_lib.data import CORPUS_FILES, resolve_data_dir

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data directory; a missing required corpus is a failure (CI sets $XNER_DATA_DIR)."""
    root = resolve_data_dir()
    missing = [f.relpath for f in CORPUS_FILES if f.required and not (root / f.relpath).is_file()]
    assert not missing, f"real corpora missing from {root}: {missing} (set $XNER_DATA_DIR)"
    return root


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is several times faster than two on a shared CPU (modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
