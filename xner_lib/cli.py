"""Command line of xner_lib.

``python -m xner_lib validate FILE --format conll|weibo|peoples_daily``: check a corpus file.
``python -m xner_lib check-profile PROFILE [--param NAME ...]``: check a profile against the notebooks.
``python -m xner_lib params NOTEBOOK PROFILE --out FILE [--param NAME ...]``: one notebook's parameters.
``python -m xner_lib preflight PROFILE [--set NAME VALUE ...]``: can this machine run the profile (its device and
its encoder)? One message and exit 2 if not.
``python -m xner_lib predict --model DIR (--text TEXT | --input FILE) [--format json|conll]``: tag raw text.
``python -m xner_lib runs --profile PROFILE VARIANT:SEED ...``: train (or read back) runs of a profile one by one,
where its notebooks read them back.
``python -m xner_lib evaluate --model DIR --input FILE --format conll|weibo|peoples_daily [--scheme NAM|NAM+NOM]
[--out JSON]``: score a saved model on a labelled file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .config import ConfigError, check_profile, notebook_parameters, notebook_paths, notebook_subset, read_profile
from .data import FORMATS, DataFormatError, read_file
from .data.labels import VIEWS

if TYPE_CHECKING:
    from .tagger import Tagger

#: ``--scheme`` of ``evaluate``: the WeiboNER view it selects (nominal mentions dropped or kept).
SCHEMES: dict[str, str] = {"NAM": "weibo_nam", "NAM+NOM": "weibo_nam_nom"}


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


def _preflight(args: argparse.Namespace) -> int:
    """Check, before any notebook runs, what would otherwise stop one after minutes: the device setting
    (``train_device``, ``train_precision``) on this machine and whether the encoder can be loaded (cheap: no
    weights read). ``--set``/``--set-raw`` are the command line's ``-p``/``-r`` overrides."""
    from .device import DeviceUnavailableError, mixed_precision, resolve_device
    from .encoders import EncoderUnavailableError, check_encoder_available

    try:
        params, path = read_profile(args.profile)
    except (ConfigError, FileNotFoundError) as err:
        print(err, file=sys.stderr)
        return 2
    for name, value in args.set:
        params[name] = yaml.safe_load(value)  # as papermill's -p reads a value
    for name, value in args.set_raw:
        params[name] = value
    device_setting = str(params.get("train_device", "cpu"))
    try:
        device = resolve_device(device_setting)
        precision = mixed_precision(device, str(params.get("train_precision", "auto")))
        if "encoder" in params:
            check_encoder_available(str(params["encoder"]))
    except (DeviceUnavailableError, EncoderUnavailableError, ValueError) as err:
        print(f"{path}: {err}", file=sys.stderr)
        return 2
    print(f"{path}: device {device} ({device_setting}, {precision.name}); encoder {params.get('encoder')} available")
    return 0


def _minutes(value: str) -> float | str:
    """An argparse type: a positive number of minutes, or ``ours``."""
    if value == "ours":
        return value
    try:
        m = float(value)
    except ValueError:
        m = 0.0
    if not m > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of minutes or 'ours', got {value!r}")
    return m


def _positive(value: str) -> int:
    """An argparse type: a positive integer."""
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


class _UserError(Exception):
    """An error the user can fix (a file, a flag): printed as one message, exit status 1."""


def _read_texts(path: str) -> list[str]:
    """The lines of a UTF-8 text file (``-``: standard input), one text each; ``FILE:LINE`` errors."""
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as err:
        raise _UserError(f"{path}:0: cannot read ({err.strerror})") from None
    where = "<stdin>" if path == "-" else path
    if not raw.strip():
        raise _UserError(f"{where}:1: empty file (no text to tag)")
    chunks = raw.split(b"\n")
    if chunks[-1] == b"":
        chunks.pop()  # the newline that ends the last line
    texts, problems = [], []
    for lineno, chunk in enumerate(chunks, start=1):
        try:
            line = chunk.decode("utf-8")
        except UnicodeDecodeError as err:
            problems.append(f"{where}:{lineno}: not UTF-8 (byte 0x{chunk[err.start]:02x} at column {err.start + 1})")
            continue
        texts.append(line.removeprefix("\ufeff") if lineno == 1 else line)
    if problems:
        raise _UserError("\n".join(problems))
    return [t.removesuffix("\r") for t in texts]


def _load_tagger(model: str, cache_dir: str | None, device: str = "auto") -> Tagger:
    """``Tagger.from_pretrained`` on ``device`` with a user's errors (missing directory, not a checkpoint,
    encoder, a GPU this machine lacks) as :class:`_UserError`. Imported here: the other commands need no torch."""
    from .device import DeviceUnavailableError
    from .encoders import EncoderUnavailableError
    from .tagger import Tagger

    try:
        return Tagger.from_pretrained(model, cache_dir, device=device)
    except (OSError, ValueError, EncoderUnavailableError, DeviceUnavailableError) as err:
        raise _UserError(f"cannot load the model: {err}") from None


def _predict(args: argparse.Namespace) -> int:
    try:
        texts = [args.text] if args.text is not None else _read_texts(args.input)
        tagger = _load_tagger(args.model, args.cache_dir, args.device)
    except _UserError as err:
        print(err, file=sys.stderr)
        return 1
    tagged = tagger.tag_tokens(texts, args.language, batch_size=args.batch_size)
    if args.format == "json":
        for t in tagged:
            print(json.dumps(t.to_json(), ensure_ascii=False))
    else:
        blocks = ["\n".join(t.conll_lines()) for t in tagged if t.tokens]
        if blocks:
            print("\n\n".join(blocks))
    return 0


def _score_table(scores: dict[str, Any]) -> list[str]:
    """Per-type and overall strict and conlleval P/R/F1 (%) with gold, predicted and correct entity counts."""
    strict, lenient = scores["per_type"], scores["per_type_conlleval"]
    head = (f"{'type':<8} {'strict P':>9} {'R':>6} {'F1':>6}  {'conlleval P':>11} {'R':>6} {'F1':>6}  "
            f"{'gold':>6} {'pred':>6} {'correct':>7}")

    def row(name: str, s: dict[str, Any], c: dict[str, Any]) -> str:
        return (f"{name:<8} {100 * s['precision']:>9.2f} {100 * s['recall']:>6.2f} {100 * s['f1']:>6.2f}  "
                f"{100 * c['precision']:>11.2f} {100 * c['recall']:>6.2f} {100 * c['f1']:>6.2f}  "
                f"{s['support']:>6} {s['n_pred']:>6} {s['n_correct']:>7}")

    zero = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "n_pred": 0, "n_correct": 0}
    lines = [head]
    for etype in sorted(set(strict) | set(lenient)):
        lines.append(row(etype, strict.get(etype, zero), lenient.get(etype, zero)))
    lines.append(row("overall", scores["strict"], scores["conlleval"]))
    return lines


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import score_dataset
    from .files import write_atomic

    if args.scheme == "NAM+NOM" and args.format != "weibo":
        print(f"--scheme NAM+NOM: only --format weibo has nominal mentions to keep ({args.format} has names only)",
              file=sys.stderr)
        return 2
    view = SCHEMES[args.scheme or "NAM"] if args.format == "weibo" else VIEWS[args.format][0]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = read_file(args.input, args.format)
        tagger = _load_tagger(args.model, args.cache_dir, args.device)
    except DataFormatError as err:
        print("\n".join(err.problems), file=sys.stderr)
        return 1
    except OSError as err:
        print(f"{args.input}:0: cannot read ({err.strerror})", file=sys.stderr)
        return 1
    except _UserError as err:
        print(err, file=sys.stderr)
        return 1
    for w in caught:  # orphan I- tags repaired to B- (counted below too)
        print(f"note: {w.message}", file=sys.stderr)
    pred = tagger.predict_dataset(ds, args.batch_size, progress=True)
    views = score_dataset(ds, pred)
    settings = {"zh_units": tagger.inference.zh_units, "decode": dataclasses.asdict(tagger.inference.decode)}
    ents = ds.entity_counts()
    print(f"model: {args.model} (Chinese units {settings['zh_units']}, decode {settings['decode']})")
    print(f"input: {args.input} (format {args.format}: {len(ds)} sentences, {ds.n_tokens} tokens, "
          f"{sum(ents.values())} gold entities, {sum(ds.repaired_orphans.values())} orphan I- repaired to B-)")
    print(f"view: {view}")
    for line in _score_table(views[view]):
        print(line)
    if args.out:
        record = {"model": str(args.model), "input": str(args.input), "format": args.format, "view": view,
                  "scores": views[view], "views": views, "inference": settings, "sentences": len(ds),
                  "tokens": ds.n_tokens, "gold_entities": dict(sorted(ents.items())),
                  "repaired_orphans": dict(sorted(ds.repaired_orphans.items()))}
        try:
            write_atomic(args.out, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        except OSError as err:
            print(f"{args.out}: cannot write ({err.strerror})", file=sys.stderr)
            return 1
        print(f"wrote {args.out}")
    return 0


def _runs(args: argparse.Namespace) -> int:
    """Train or read back the (variant, seed) pairs ``args.runs`` of a profile, in the order given, each under
    the run key its notebooks give it (:func:`~xner_lib.experiment.profile_runs`), so 03 and 04 then read them
    back: a long profile can be run a piece at a time, or seeds spread over machines that share ``results/``."""
    from .experiment import experiment_from_params, profile_all_runs
    from .run_names import SHARED_PREFIX

    try:
        params = _checked_profile(argparse.Namespace(profile=args.profile, notebooks=None, param=[]))
        runs, shared = profile_all_runs(params)  # 04's few-shot curve under its protocol's names
        known = [*runs, *(SHARED_PREFIX + k for k in shared)]
        pairs = []
        for item in args.runs:
            name, _, seed = item.rpartition(":")
            if name not in known or not seed.isdigit():
                raise ConfigError([f"{item!r}: expected VARIANT:SEED with a variant of the profile "
                                   f"({', '.join(known)})"])
            pairs.append((name, int(seed)))
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(err, file=sys.stderr)
        return 2
    params = {**params, "missing_runs": "train"}  # the command trains what it is asked for
    if args.fresh:
        params = {**params, "fresh": True}
    exp = experiment_from_params(params)
    over: dict[int, Any] = {}  # per seed, the shared protocol's experiment (its encoder and features loaded once)
    for name, seed in pairs:
        if name.startswith(SHARED_PREFIX):  # Table 5's shared protocol over this seed's fine-tuned baseline
            if seed not in over:
                over[seed] = exp.shared(seed, runs)
            over[seed].run_all(shared, [seed], only=[name.removeprefix(SHARED_PREFIX)])
        else:
            exp.run_all(runs, [seed], only=[name])
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import BenchConfig, run_bench

    try:
        params = _checked_profile(argparse.Namespace(profile=args.profile, notebooks=None, param=[]))
    except (ConfigError, FileNotFoundError) as err:
        print(err, file=sys.stderr)
        return 2
    config = BenchConfig(steps=args.steps, variants=tuple(args.variants), peer_steps=args.peer_steps,
                         profile_steps=args.profile_steps, peer_minutes=args.peer_minutes,
                         ours_seeds=tuple(args.ours_seeds) if args.ours_seeds else None,
                         **({} if args.sentences is None else {
                             "extraction_sentences": args.sentences,
                             "inference_sentences": min(BenchConfig.inference_sentences, args.sentences)}))
    run_bench(params, config, teacher_dir=Path(args.teacher) if args.teacher else None,
              out=Path(args.out) if args.out else None)
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
    pf = sub.add_parser("preflight", help="check that this machine can run a profile: its device (train_device, "
                        "train_precision) and its encoder (cached, a local folder, or the hub reachable); exit 2 "
                        "with one message if not")
    pf.add_argument("profile", help="a profile name (smoke, cpu, paper) or a YAML path")
    pf.add_argument("--set", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a parameter given on the command line (papermill -p NAME VALUE); repeatable")
    pf.add_argument("--set-raw", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a raw string parameter (papermill -r NAME VALUE); repeatable")
    pf.set_defaults(func=_preflight)
    model_help = "a saved model: the directory save_checkpoint wrote (results/<profile>/checkpoints/<run>)"
    cache_help = "the encoder cache folder (default: $XNER_CACHE_DIR, else ~/.cache/xner)"
    device_help = "where the model runs: auto (a CUDA GPU when there is one, default), cpu, cuda or cuda:N"
    pre = sub.add_parser("predict", help="tag raw English or Chinese text with a saved model; print JSON lines "
                         "(text, language, entities with type and character offsets) or CoNLL columns")
    pre.add_argument("--model", required=True, metavar="DIR", help=model_help)
    src = pre.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="one text to tag")
    src.add_argument("--input", metavar="FILE", help="a UTF-8 file, one text a line ('-': standard input)")
    pre.add_argument("--format", default="json", choices=("json", "conll"),
                     help="json: one object per text; conll: token<TAB>tag lines, a blank line between texts "
                          "(a text without tokens prints none)")
    pre.add_argument("--language", choices=("en", "zh"), default=None,
                     help="force the language (default: zh when the text holds a CJK character, else en)")
    pre.add_argument("--batch-size", type=_positive, default=64)
    pre.add_argument("--cache-dir", default=None, metavar="DIR", help=cache_help)
    pre.add_argument("--device", default="auto", help=device_help)
    pre.set_defaults(func=_predict)
    ev = sub.add_parser("evaluate", help="score a saved model on a labelled file: strict and conlleval P/R/F1 per "
                        "type. A two-column BIO file (token and tag, space or tab separated) with PER/LOC/ORG tags "
                        "is read as Chinese by --format peoples_daily; English needs the CoNLL-2003 columns")
    ev.add_argument("--model", required=True, metavar="DIR", help=model_help)
    ev.add_argument("--input", required=True, metavar="FILE", help="the labelled file")
    ev.add_argument("--format", required=True, choices=FORMATS, help="how to read it (as `validate` does)")
    ev.add_argument("--scheme", choices=tuple(SCHEMES), default=None,
                    help="NAM (default): names only, Weibo's nominal mentions dropped (the primary view); "
                         "NAM+NOM (weibo only) keeps them")
    ev.add_argument("--out", default=None, metavar="JSON", help="also write the scores (every view) here")
    ev.add_argument("--batch-size", type=_positive, default=64)
    ev.add_argument("--cache-dir", default=None, metavar="DIR", help=cache_help)
    ev.add_argument("--device", default="auto", help=device_help)
    ev.set_defaults(func=_evaluate)
    rn = sub.add_parser("runs", help="train (or read back) runs of a profile, VARIANT:SEED each, in the order given, "
                        "under the run keys notebooks 03 and 04 read back; one line per run")
    rn.add_argument("runs", nargs="+", metavar="VARIANT:SEED",
                    help="e.g. adv_att_pos:2 baseline:3 shared-without_transfer:1 (Table 5's shared protocol) "
                    "shared-baseline-fs10:1 (04's few-shot curve, under its protocol's prefix)")
    rn.add_argument("--profile", default="cpu", help="a profile name (smoke, cpu, paper) or a YAML path")
    rn.add_argument("--fresh", action="store_true", help="retrain, ignoring cached runs")
    rn.set_defaults(func=_runs)
    bn = sub.add_parser("bench", help="measure this machine's matmul limit, feature extraction, fine-tuning steps per "
                        "variant, inference and a Hugging Face Trainer peer; print a line each and append to "
                        "results/<profile>/bench.json")
    bn.add_argument("--profile", default="cpu", help="a profile name (smoke, cpu, paper) or a YAML path")
    bn.add_argument("--steps", type=int, default=20, help="fine-tuning steps timed per variant (at least 2)")
    bn.add_argument("--variants", nargs="+", default=["baseline", "adv_att_pos"])
    bn.add_argument("--sentences", type=_positive, default=None,
                    help="sentences for extraction (default: BenchConfig.extraction_sentences); inference takes "
                         "at most BenchConfig.inference_sentences of them")
    bn.add_argument("--profile-steps", type=int, default=None,
                    help="steps of the step profile (of the first variant with the baseline's step; fewer than "
                    "--steps; default min(10, steps - 1)); 0 skips it and the extraction's operator profile")
    bn.add_argument("--peer-steps", type=int, default=200, help="steps of the Hugging Face peer (0: skip it)")
    bn.add_argument("--peer-minutes", default=None, type=_minutes, metavar="M|ours",
                    help="stop the peer after M minutes of training (its schedule still planned over --peer-steps); "
                    "'ours': the mean training minutes of our baseline's made seeds, so both are scored after the "
                    "same wall time")
    bn.add_argument("--ours-seeds", nargs="+", type=int, default=None, metavar="SEED",
                    help="our baseline seeds put beside the peer and averaged by --peer-minutes ours (default: the "
                    "profile's seeds); give those made on this machine")
    bn.add_argument("--teacher", default=None, metavar="DIR",
                    help="a saved baseline for the transfer variants (default: checkpoints/baseline-seed1)")
    bn.add_argument("--out", default=None, metavar="DIR", help="where bench.json goes (default: results/<profile>)")
    bn.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
