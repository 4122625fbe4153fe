"""Profiles (``configs/<profile>.yaml``) and the results layout (DESIGN.md, Profiles).

A profile YAML is a flat mapping of notebook parameters; papermill injects it with ``-f``. Stage
configs (``TrainConfig``, ``AlignConfig``, ...) are dataclasses built from those parameters.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("smoke", "cpu", "paper")

T = TypeVar("T")


def load_profile(profile: str | Path) -> dict[str, Any]:
    """The parameters of a profile, by name (``configs/<name>.yaml``) or by path."""
    path = Path(profile)
    if not path.suffix:
        path = REPO_ROOT / "configs" / f"{profile}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such profile; known: {', '.join(PROFILES)}")
    with open(path, encoding="utf-8") as fh:
        params = yaml.safe_load(fh) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path}: a profile must be a mapping of parameter names to values")
    return params


def results_dir(profile: str, root: str | Path | None = None) -> Path:
    """``results/<profile>`` under ``root`` (default: the repository root)."""
    return Path(root or REPO_ROOT) / "results" / profile


def from_params(cls: type[T], params: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from the ``params`` whose names (after ``prefix``) are its fields."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    kwargs = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix) and k[len(prefix):] in names}
    return cls(**kwargs)
