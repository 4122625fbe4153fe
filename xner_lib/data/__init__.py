"""The data layer: corpus readers, label harmonisation, data-directory resolution and download."""

from __future__ import annotations

import os

from .corpus import FORMATS, DataFormatError, Dataset, Sentence, allowed_tags, read_file, repair_orphans
from .labels import HARMONISATION, MODEL_LABELS, MODEL_TYPES, SHARED_TYPES, VIEWS, harmonise
from .sources import (
    CORPUS_FILES,
    DataFile,
    DataUnavailableError,
    corpus_file,
    ensure_files,
    resolve_data_dir,
)


def load(relpath: str, data_dir: str | os.PathLike[str] | None = None, *,
         max_sentences: int | None = None, download_missing: bool = True) -> Dataset:
    """Read a registered corpus file (e.g. ``"weibo/test.txt"``), downloading it first if missing.

    ``max_sentences`` keeps only the first sentences (the smoke profile).
    """
    f = corpus_file(relpath)
    root = ensure_files([f], data_dir, download_missing=download_missing)
    return read_file(root / f.relpath, f.format, name=f.name, split=f.split).head(max_sentences)


__all__ = [
    "CORPUS_FILES", "FORMATS", "HARMONISATION", "MODEL_LABELS", "MODEL_TYPES", "SHARED_TYPES", "VIEWS",
    "DataFile", "DataFormatError", "DataUnavailableError", "Dataset", "Sentence", "allowed_tags",
    "corpus_file", "ensure_files", "harmonise", "load", "read_file", "repair_orphans", "resolve_data_dir",
]
