"""Strict configs (issue 9, point 3): profiles, notebook parameters, from_params, run_all.sh's routing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import papermill as pm
import pytest
import yaml

from xner_lib.aligner import AlignConfig
from xner_lib.cli import main as cli_main
from xner_lib.config import (
    PROFILE_OPTIONAL,
    PROFILES,
    REPO_ROOT,
    ConfigError,
    declared_parameters,
    from_params,
    load_profile,
    notebook_parameters,
    notebook_paths,
    notebook_subset,
    read_profile,
)
from xner_lib.train import TrainConfig


def _misspelt_profile(tmp_path: Path) -> Path:
    text = (REPO_ROOT / "configs" / "cpu.yaml").read_text(encoding="utf-8")
    assert "\ntrain_lr: " in text
    path = tmp_path / "cpu-typo.yaml"
    path.write_text(text.replace("\ntrain_lr: ", "\ntrain_lrr: "), encoding="utf-8")
    return path


# --- profiles against the notebooks ---------------------------------------------------------------------

def test_misspelt_profile_key_stops_naming_key_file_and_nearest_key(tmp_path: Path) -> None:
    path = _misspelt_profile(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    assert f"{path}: unknown key 'train_lrr': no notebook declares it; nearest valid key: 'train_lr'" \
        in err.value.problems
    # the key it replaced is now missing, and that is said too (the notebook default is the smoke value)
    declared = "03_training.ipynb, 04_ablation.ipynb, 05_case_study.ipynb"
    assert any(p.startswith(f"{path}: no value for 'train_lr' (declared by {declared})") for p in err.value.problems)


def test_unknown_key_far_from_every_key_says_so(tmp_path: Path) -> None:
    params, _ = read_profile("smoke")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(params | {"zzzz": 1}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown key 'zzzz': no notebook declares it; no valid key is close"):
        load_profile(path)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_key_is_declared_and_every_parameter_has_a_value(profile: str) -> None:
    """Policy: a profile sets every notebook parameter but PROFILE_OPTIONAL (the notebooks' defaults are the
    smoke values, so a key missing from cpu would run at smoke scale), and nothing else."""
    params = load_profile(profile)  # the same check, raising
    declared = declared_parameters()
    assert set(params) <= set(declared), set(params) - set(declared)
    assert set(declared) - PROFILE_OPTIONAL <= set(params), set(declared) - PROFILE_OPTIONAL - set(params)


@pytest.mark.parametrize("notebook", [p.name for p in notebook_paths()])
def test_declared_parameters_are_what_papermill_sees(notebook: str) -> None:
    """Our reading of a parameters cell equals papermill's, so a profile subset passes with no
    'Passed unknown parameter' warning (a comment with '=' once hid align_starts from papermill)."""
    path = REPO_ROOT / "notebooks" / notebook
    assert notebook_parameters(path) == list(pm.inspect_notebook(str(path)))


@pytest.mark.parametrize("profile", PROFILES)
def test_each_notebook_gets_only_its_own_parameters_and_none_is_dropped(profile: str) -> None:
    params = load_profile(profile)
    given: set[str] = set()
    for nb in notebook_paths():
        subset = notebook_subset(params, nb)
        assert set(subset) <= set(pm.inspect_notebook(str(nb))), nb.name
        given |= set(subset)
    assert given == set(params)


def _parameter_defaults(path: Path) -> dict[str, object]:
    """The values a notebook's parameters cell assigns (its smoke defaults)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    scope: dict[str, object] = {}
    exec("".join(cell["source"]), scope)  # noqa: S102 - our own notebook's literal assignments
    return {k: v for k, v in scope.items() if not k.startswith("__")}


@pytest.mark.parametrize("profile", PROFILES)
def test_every_notebook_that_builds_an_experiment_builds_the_same_one(profile: str) -> None:
    """03 and 04 (and any notebook calling experiment_from_params) see the same experiment parameters and the
    same train_ settings and variants under every profile, so a later notebook reads an earlier one's runs
    back (their run keys hold how they are scored) instead of retraining and overwriting them. 04 once lacked
    compare_units and snapshot_epoch: it would have retrained every baseline 03 made."""
    from xner_lib.experiment import EXPERIMENT_PARAMS

    params = load_profile(profile)
    users = [nb for nb in notebook_paths() if "experiment_from_params(" in nb.read_text(encoding="utf-8")]
    assert {nb.name for nb in users} >= {"03_training.ipynb", "04_ablation.ipynb"}
    seen = {}
    for nb in users:
        values = _parameter_defaults(nb) | notebook_subset(params, nb)
        shared = [k for k in values if k in EXPERIMENT_PARAMS or k.startswith(("decode_", "train_"))
                  or k in ("variants", "seeds")]
        missing = [k for k in EXPERIMENT_PARAMS if k not in values]
        assert not missing, f"{nb.name} does not declare {missing}"
        seen[nb.name] = {k: values[k] for k in shared}
    first, *rest = seen.items()
    for name, values in rest:
        common = set(values) & set(first[1])
        assert {k: values[k] for k in common} == {k: first[1][k] for k in common}, (name, first[0])
        assert {k for k in first[1] if k.startswith(("decode_", "train_"))} <= set(values), name


def test_stage_configs_build_from_every_profile() -> None:
    """The notebooks' from_params calls accept every profile (each prefixed key is a field)."""
    for profile in PROFILES:
        params = load_profile(profile)
        assert from_params(AlignConfig, params, "align_").n_epochs == params["align_n_epochs"]
        assert from_params(AlignConfig, params, "align_").project_every == params["align_project_every"]
        assert from_params(TrainConfig, params, "train_").lr == params["train_lr"]
        assert from_params(TrainConfig, params, "frozen_", exclude=["frozen_row"]).epochs == params["frozen_epochs"]


def test_parameters_cell_reading(tmp_path: Path) -> None:
    cells = [{"cell_type": "markdown", "metadata": {}, "source": "x = 1"},
             {"cell_type": "code", "metadata": {"tags": ["parameters"]},
              "source": ["a = 1  # b = 2\n", "c: int = 3\n", "d = [1,\n", "     2]\n", "if a:\n", "    e = 4\n"]},
             {"cell_type": "code", "metadata": {}, "source": "f = 5"}]
    path = tmp_path / "01_x.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert notebook_parameters(path) == ["a", "c", "d"]


# --- from_params ----------------------------------------------------------------------------------------

@dataclass
class _Cfg:
    epochs: float = 1.0
    lr: float = 0.1
    head: dict = field(default_factory=dict)


def test_from_params_raises_on_an_unknown_prefixed_key() -> None:
    with pytest.raises(ConfigError) as err:
        from_params(_Cfg, {"train_epochs": 2.0, "train_epochz": 3.0}, "train_", source="configs/x.yaml")
    assert err.value.problems == ["configs/x.yaml: unknown key 'train_epochz': _Cfg has no field 'epochz'; "
                                  "nearest valid key: 'train_epochs'"]


def test_from_params_takes_its_prefix_only_and_exactly() -> None:
    params = {"train_epochs": 2.0, "train_lr": 0.5, "frozen_epochs": 9.0, "frozen_row": True, "trainer": 1,
              "epochs": 7.0, "_i1": "ipython"}
    assert from_params(_Cfg, params, "train_") == _Cfg(epochs=2.0, lr=0.5)
    with pytest.raises(ConfigError, match="unknown key 'frozen_row': _Cfg has no field 'row'"):
        from_params(_Cfg, params, "frozen_")
    assert from_params(_Cfg, params, "frozen_", exclude=["frozen_row"]) == _Cfg(epochs=9.0)
    with pytest.raises(ConfigError, match="unknown key 'train_epochs': _Cfg has no field 'train_epochs'"):
        from_params(_Cfg, params)  # no prefix: every param must be a field


# --- command line and run_all.sh ------------------------------------------------------------------------

def test_cli_params_writes_the_notebook_subset_and_its_own_extra_names(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "02.yaml"
    nb = REPO_ROOT / "notebooks" / "02_alignment.ipynb"
    assert cli_main(["params", str(nb), "smoke", "--out", str(out), "--param", "vec_min_count",
                     "--param", "seeds"]) == 0
    assert capsys.readouterr().out.split() == ["vec_min_count"]
    subset = yaml.safe_load(out.read_text())
    assert list(subset) == [k for k in load_profile("smoke") if k in notebook_parameters(nb)]
    assert "seeds" not in subset and "align_project_every" in subset


def test_cli_check_profile_names_file_key_and_nearest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _misspelt_profile(tmp_path)
    assert cli_main(["check-profile", str(path)]) == 2
    assert f"{path}: unknown key 'train_lrr': no notebook declares it; nearest valid key: 'train_lr'" \
        in capsys.readouterr().err
    assert cli_main(["check-profile", "smoke", "--param", "max_sentence"]) == 2
    assert "unknown parameter 'max_sentence' given on the command line" in capsys.readouterr().err
    assert cli_main(["check-profile", "smoke", "--param", "max_sentences"]) == 0


FAKE_PAPERMILL = """#!{python}
import json, sys, yaml
args = sys.argv[1:]
params = yaml.safe_load(open(args[args.index("-f") + 1]))
with open({log!r}, "a") as fh:
    fh.write(json.dumps({{"notebook": args[0], "params": params, "args": args[2:]}}) + "\\n")
"""
# refuses run_all.sh's install step: the test must never install into the shared environment
FAKE_PYTHON = """#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "test: refusing pip (install stamp out of date)" >&2; exit 97; fi
case "$*" in *"print(sys.prefix)"*) echo "{prefix}"; exit 0 ;; esac
exec {python} "$@"
"""


def _run_all(tmp_path: Path, profile_text: str, *args: str) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    """run_all.sh from a copy of the repository's script, configs and notebooks, with papermill faked."""
    repo = tmp_path / "repo"
    (repo / "configs").mkdir(parents=True)
    for name in ("run_all.sh", "pyproject.toml", "requirements.lock"):
        shutil.copy2(REPO_ROOT / name, repo / name)
    shutil.copytree(REPO_ROOT / "notebooks", repo / "notebooks")
    (repo / "xner_lib").symlink_to(REPO_ROOT / "xner_lib")
    (repo / "configs" / "smoke.yaml").write_text(profile_text, encoding="utf-8")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "papermill.log"
    # a stand-in environment prefix whose install stamp is current, so run_all.sh installs nothing
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    stamp = hashlib.sha256((repo / "pyproject.toml").read_bytes() + (repo / "requirements.lock").read_bytes())
    (prefix / ".xner-installed").write_text(stamp.hexdigest() + "\n")
    for name, text in (("papermill", FAKE_PAPERMILL.format(python=sys.executable, log=str(log))),
                       ("python", FAKE_PYTHON.format(python=sys.executable, prefix=str(prefix)))):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "VIRTUAL_ENV": str(prefix),
           "PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin"}
    proc = subprocess.run([str(repo / "run_all.sh"), "--profile", "smoke", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert "refusing pip" not in proc.stderr, "the environment's install stamp is out of date: run ./run_all.sh once"
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


def test_run_all_stops_before_any_notebook_on_a_misspelt_key(tmp_path: Path) -> None:
    text = (REPO_ROOT / "configs" / "smoke.yaml").read_text(encoding="utf-8").replace("\nvec_min_count:",
                                                                                       "\nvec_min_cout:")
    proc, calls = _run_all(tmp_path, text)
    assert proc.returncode == 2 and calls == []
    assert ("configs/smoke.yaml: unknown key 'vec_min_cout': no notebook declares it; "
            "nearest valid key: 'vec_min_count'") in proc.stderr
    proc, calls = _run_all(tmp_path / "p", (REPO_ROOT / "configs" / "smoke.yaml").read_text(), "--", "-p",
                           "max_sentence", "3")
    assert proc.returncode == 2 and calls == []
    assert "unknown parameter 'max_sentence' given on the command line" in proc.stderr


def test_run_all_gives_each_notebook_only_its_own_parameters(tmp_path: Path) -> None:
    proc, calls = _run_all(tmp_path, (REPO_ROOT / "configs" / "smoke.yaml").read_text(), "--", "-p", "max_sentences",
                           "5", "--log-output", "-p", "vec_min_count", "2")
    assert proc.returncode == 0, proc.stderr
    assert [Path(c["notebook"]).name for c in calls] == [p.name for p in notebook_paths()]
    smoke = load_profile("smoke")
    for call in calls:
        own = notebook_parameters(REPO_ROOT / call["notebook"])
        assert call["params"] == {k: v for k, v in smoke.items() if k in own}
        extra = call["args"]
        given = [extra[i + 1] for i, a in enumerate(extra) if a == "-p"]
        assert given == [n for n in ("max_sentences", "vec_min_count") if n in own]
        assert "--log-output" in extra
    assert "01_data.ipynb" in proc.stdout and "ok" in proc.stdout  # the summary table


def test_a_misspelt_head_key_stops_when_the_config_is_built() -> None:
    """``train_head: {dropuot: 0.5}`` stops at from_params, not with a TypeError after the data are loaded."""
    with pytest.raises(ConfigError, match="unknown key 'dropuot' in TrainConfig.head.*nearest valid key: 'dropout'"):
        from_params(TrainConfig, {"train_head": {"dropuot": 0.5}}, "train_")
    assert from_params(TrainConfig, {"train_head": {"dropout": 0.5, "proj_dim": 100}}, "train_").head["dropout"] == 0.5
