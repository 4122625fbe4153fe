"""Profiles (``configs/<profile>.yaml``), the notebooks' parameters and the results layout (DESIGN.md, Profiles).

A profile YAML is a flat mapping of notebook parameters. Every key must be a parameter that some notebook
declares in its ``parameters``-tagged cell, and a profile sets every declared parameter except the few in
:data:`PROFILE_OPTIONAL` (the notebooks' own defaults are the ``smoke`` values, so a key missing from a
larger profile would silently run at smoke scale). ``run_all.sh`` checks a profile once with
:func:`check_profile` before running anything, then gives each notebook only its own parameters
(:func:`notebook_subset`). Stage configs (``TrainConfig``, ``AlignConfig``, ...) are dataclasses built from
those parameters by :func:`from_params`, which refuses a prefixed parameter that is not a field.
"""

from __future__ import annotations

import ast
import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
PROFILES = ("smoke", "cpu", "paper")
#: Notebook parameters a profile may leave to the notebook's default: where results go, the run switches
#: ``fresh`` (``run_all.sh --fresh``) and ``missing_runs`` (``run_all.sh --made-only``), and the notebook's own
#: example queries. Everything else that a notebook declares must have a value in every profile.
PROFILE_OPTIONAL = frozenset({"results_root", "fresh", "missing_runs", "neighbour_queries_en",
                              "neighbour_queries_zh"})

T = TypeVar("T")


class ConfigError(ValueError):
    """A profile or a parameter set names a key nothing declares, or lacks one that is required.

    ``problems`` holds one line per problem; the message is those lines joined.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def nearest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``name`` (``difflib``, ratio >= 0.6), or None."""
    match = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return match[0] if match else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``nearest valid key: 'K'`` for the :func:`nearest` candidate, or ``no valid key is close``."""
    near = nearest(name, candidates)
    return f"nearest valid key: '{near}'" if near else "no valid key is close"


# --- notebooks -----------------------------------------------------------------------------------------

def notebook_paths(directory: str | Path | None = None) -> list[Path]:
    """The numbered notebooks ``NN_*.ipynb`` of ``directory`` (default: the repository's), in run order."""
    root = Path(directory) if directory is not None else NOTEBOOKS_DIR
    paths = sorted(p for p in root.glob("[0-9]*.ipynb") if p.is_file())
    if not paths:
        raise FileNotFoundError(f"{root}: no notebooks NN_*.ipynb")
    return paths


def notebook_parameters(path: str | Path) -> list[str]:
    """The parameter names a notebook declares: the names assigned at top level of its first cell tagged
    ``parameters`` (the cell papermill injects after), in order. A notebook without one declares none."""
    path = Path(path)
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            try:
                tree = ast.parse(source, filename=f"{path} (parameters cell)")
            except SyntaxError as err:
                raise ConfigError([f"{path}: the parameters cell does not parse: {err}"]) from err
            names: list[str] = []
            for node in tree.body:
                targets = node.targets if isinstance(node, ast.Assign) else (
                    [node.target] if isinstance(node, ast.AnnAssign) else [])
                names += [t.id for t in targets if isinstance(t, ast.Name) and t.id not in names]
            return names
    return []


def declared_parameters(notebooks: Iterable[str | Path] | None = None) -> dict[str, list[str]]:
    """Every parameter any of ``notebooks`` (default: the repository's) declares -> the notebook file
    names that declare it."""
    out: dict[str, list[str]] = {}
    for nb in notebook_paths() if notebooks is None else notebooks:
        for name in notebook_parameters(nb):
            out.setdefault(name, []).append(Path(nb).name)
    return out


# --- profiles ------------------------------------------------------------------------------------------

def read_profile(profile: str | Path) -> tuple[dict[str, Any], Path]:
    """The raw mapping of a profile, by name (``configs/<name>.yaml``) or by path, and its path (unchecked)."""
    path = Path(profile)
    if not path.suffix:
        path = REPO_ROOT / "configs" / f"{profile}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such profile; known: {', '.join(PROFILES)}")
    with open(path, encoding="utf-8") as fh:
        params = yaml.safe_load(fh) or {}
    if not isinstance(params, dict):
        raise ConfigError([f"{path}: a profile must be a mapping of parameter names to values"])
    return params, path


def check_profile(params: Mapping[str, Any], source: str | Path, notebooks: Iterable[str | Path] | None = None,
                  *, extra: Iterable[str] = (), complete: bool = True) -> None:
    """Raise :class:`ConfigError` unless every key of ``params`` and every name in ``extra`` (parameters
    given on the command line) is declared by some notebook and, with ``complete``, ``params`` sets every
    declared parameter outside :data:`PROFILE_OPTIONAL`. Each problem names ``source`` (the file), the key
    and the nearest valid key."""
    declared = declared_parameters(notebooks)
    problems = []
    for key in params:
        if key not in declared:
            problems.append(f"{source}: unknown key '{key}': no notebook declares it; {did_you_mean(key, declared)}")
    for key in extra:
        if key not in declared:
            problems.append(f"{source}: unknown parameter '{key}' given on the command line: no notebook declares "
                            f"it; {did_you_mean(key, declared)}")
    if complete:
        for key, where in declared.items():
            if key not in params and key not in PROFILE_OPTIONAL:
                problems.append(f"{source}: no value for '{key}' (declared by {', '.join(where)}); a profile sets "
                                f"every notebook parameter except {', '.join(sorted(PROFILE_OPTIONAL))}")
    if problems:
        raise ConfigError(problems)


def load_profile(profile: str | Path, notebooks: Iterable[str | Path] | None = None,
                 *, check: bool = True) -> dict[str, Any]:
    """The parameters of a profile, by name (``configs/<name>.yaml``) or by path, checked against the
    notebooks' parameters (:func:`check_profile`) unless ``check`` is False."""
    params, path = read_profile(profile)
    if check:
        check_profile(params, path, notebooks)
    return params


def notebook_subset(params: Mapping[str, Any], notebook: str | Path) -> dict[str, Any]:
    """The entries of ``params`` that ``notebook`` declares (what papermill should be given for it)."""
    own = set(notebook_parameters(notebook))
    return {k: v for k, v in params.items() if k in own}


def results_dir(profile: str, root: str | Path | None = None) -> Path:
    """``results/<profile>`` under ``root`` (default: the repository root)."""
    return Path(root or REPO_ROOT) / "results" / profile


# --- stage configs -------------------------------------------------------------------------------------

def from_params(cls: type[T], params: Mapping[str, Any], prefix: str = "", *, exclude: Iterable[str] = (),
                source: str | Path | None = None) -> T:
    """Build dataclass ``cls`` from the ``params`` whose names start with ``prefix`` (the prefix removed).

    Every such name must be a field of ``cls`` once the prefix is removed: an unknown one raises
    :class:`ConfigError` naming it, ``source`` (when given) and the nearest valid parameter. Names in
    ``exclude`` are parameters that share the prefix but are not ``cls``'s (e.g. ``frozen_row`` beside the
    ``frozen_`` TrainConfig); they are skipped. An empty prefix makes every param a field of ``cls``.
    """
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    skip = set(exclude)
    chosen = {k: v for k, v in params.items() if k.startswith(prefix) and k not in skip}
    unknown = [k for k in chosen if k[len(prefix):] not in names]
    if unknown:
        where = f"{source}: " if source is not None else ""
        valid = [prefix + n for n in names]
        raise ConfigError([f"{where}unknown key '{k}': {cls.__name__} has no field '{k[len(prefix):]}'; "
                           f"{did_you_mean(k, valid)}" for k in unknown])
    return cls(**{k[len(prefix):]: v for k, v in chosen.items()})
