"""Command line: ``python -m xner_lib validate FILE --format conll|weibo|peoples_daily``."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xner_lib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    val = sub.add_parser("validate", help="check a corpus file; print its counts or FILE:LINE: reason lines")
    val.add_argument("file")
    val.add_argument("--format", required=True, choices=FORMATS)
    val.set_defaults(func=_validate)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
