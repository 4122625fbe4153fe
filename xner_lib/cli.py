"""Command line of xner_lib.

``python -m xner_lib validate FILE --format conll|weibo|peoples_daily``: check a corpus file.
``python -m xner_lib check-profile PROFILE [--param NAME ...]``: check a profile against the notebooks.
``python -m xner_lib params NOTEBOOK PROFILE --out FILE [--param NAME ...]``: one notebook's parameters.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, check_profile, notebook_parameters, notebook_paths, notebook_subset, read_profile
from .data import FORMATS, DataFormatError, read_file


def _validate(args: argparse.Namespace) -> int:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = read_file(args.file, args.format)
    except DataFormatError as err:
        for line in err.problems:
            print(line)
        return 1
    except OSError as err:
        print(f"{args.file}:0: cannot read ({err.strerror})")
        return 1
    ents = ds.entity_counts()
    print(f"file: {args.file}")
    print(f"format: {args.format}")
    print(f"sentences: {len(ds)}")
    print(f"tokens: {ds.n_tokens}")
    if ds.format == "conll":
        print(f"docs: {ds.docs}")
    print(f"entities: {sum(ents.values())}")
    for etype in sorted(ents):
        print(f"  {etype}: {ents[etype]}")
    repaired = sum(ds.repaired_orphans.values())
    detail = f" ({dict(sorted(ds.repaired_orphans.items()))})" if repaired else ""
    print(f"orphan I- repaired to B-: {repaired}{detail}")
    return 0


def _checked_profile(args: argparse.Namespace) -> dict[str, Any]:
    """The profile ``args.profile`` checked against the notebooks of ``args.notebooks`` (ConfigError if not)."""
    params, path = read_profile(args.profile)
    check_profile(params, path, notebook_paths(args.notebooks), extra=args.param)
    return params


def _check_profile(args: argparse.Namespace) -> int:
    try:
        params = _checked_profile(args)
    except (ConfigError, FileNotFoundError) as err:
        print(err, file=sys.stderr)
        return 2
    print(f"{args.profile}: {len(params)} keys, each declared by a notebook of {args.notebooks or 'notebooks/'}")
    return 0


def _params(args: argparse.Namespace) -> int:
    if args.notebooks is None:
        args.notebooks = str(Path(args.notebook).parent)
    try:
        params = _checked_profile(args)
    except (ConfigError, FileNotFoundError) as err:
        print(err, file=sys.stderr)
        return 2
    subset = notebook_subset(params, args.notebook)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(subset, sort_keys=False, allow_unicode=True), encoding="utf-8")
    own = set(notebook_parameters(args.notebook))
    for name in args.param:
        if name in own:
            print(name)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xner_lib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    val = sub.add_parser("validate", help="check a corpus file; print its counts or FILE:LINE: reason lines")
    val.add_argument("file")
    val.add_argument("--format", required=True, choices=FORMATS)
    val.set_defaults(func=_validate)
    helps = {"param": "a parameter name also given on the command line (papermill -p NAME VALUE); repeatable",
             "notebooks": "the notebooks directory whose parameters are valid (default: the repository's)"}
    chk = sub.add_parser("check-profile", help="check that every key of a profile is a notebook parameter and that "
                         "the profile sets every required one; exit 2 naming file, key and nearest valid key if not")
    chk.add_argument("profile", help="a profile name (smoke, cpu, paper) or a YAML path")
    chk.add_argument("--param", action="append", default=[], metavar="NAME", help=helps["param"])
    chk.add_argument("--notebooks", default=None, metavar="DIR", help=helps["notebooks"])
    chk.set_defaults(func=_check_profile)
    par = sub.add_parser("params", help="check a profile (as check-profile), write the parameters NOTEBOOK declares "
                         "to --out as YAML and print the --param names NOTEBOOK declares, one a line")
    par.add_argument("notebook")
    par.add_argument("profile", help="a profile name (smoke, cpu, paper) or a YAML path")
    par.add_argument("--out", required=True, help="the YAML file to write (papermill -f)")
    par.add_argument("--param", action="append", default=[], metavar="NAME", help=helps["param"])
    par.add_argument("--notebooks", default=None, metavar="DIR",
                     help="the notebooks directory whose parameters are valid (default: NOTEBOOK's directory)")
    par.set_defaults(func=_params)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
