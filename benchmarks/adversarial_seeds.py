"""How often does the adversarial stage alone (paper eqs 4-7, from U = I) recover check (a)'s planted rotation?

Check (a) of notebook 02 on real encoder vectors, with the aligner restricted to the paper's start
(``starts="identity"``) and a longer adversarial schedule, once per training seed. Each run writes
``results/<profile>/alignment/adversarial/seed<N>[-shrink<x>].json`` (P@1 on the identity pairs, ``||U - R||``, the
criterion and the per-epoch history, with the git commit and package versions) and prints one line.

    python benchmarks/adversarial_seeds.py --profile cpu --seeds 1 2 --epochs 8 --epoch-size 160000

Runs are independent: start one process per core (``--threads 1``) to use both.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from xner_lib.aligner import AlignConfig
from xner_lib.alignment_checks import rotation_recovery
from xner_lib.config import from_params, load_profile, results_dir
from xner_lib.data import load
from xner_lib.encoders import load_encoder
from xner_lib.evaluate import write_metrics
from xner_lib.vectors import occurrence_vectors, type_vectors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--epochs", type=int, default=8, help="adversarial epochs")
    ap.add_argument("--epoch-size", type=int, default=160_000, help="words per epoch (steps = words / batch)")
    ap.add_argument("--lr-shrink", type=float, default=None,
                    help="override the profile's align_lr_shrink (1: never halve the lr when the criterion drops)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_profile(args.profile)
    base = from_params(AlignConfig, params, "align_")
    if args.lr_shrink is not None:
        base = dataclasses.replace(base, lr_shrink=args.lr_shrink)
    enc = load_encoder(params["encoder"])
    tokens = [s.tokens for s in load("conll2003/train.txt", params.get("data_dir"),
                                     max_sentences=params.get("max_sentences"))]
    feats = occurrence_vectors(enc, tokens, progress=False)
    halves = [type_vectors(tokens, feats, min_count=params["recovery_min_count"],
                           max_types=params["recovery_max_types"], lowercase=params["vec_lowercase_en"], part=p)
              for p in (0, 1)]
    out = results_dir(args.profile, params.get("results_root")) / "alignment" / "adversarial"
    tag = "" if args.lr_shrink is None else f"-shrink{args.lr_shrink:g}"
    for seed in args.seeds:
        cfg = dataclasses.replace(base, starts="identity", seed=seed, n_epochs=args.epochs,
                                  epoch_size=args.epoch_size, progress=False)
        start = time.time()
        rec = rotation_recovery(halves[0].vectors, halves[1].vectors, cfg, seed=base.seed)  # check (a)'s R
        minutes = (time.time() - start) / 60
        history = [{k: v for k, v in row.items() if isinstance(v, (int, float, str))} for row in rec.alignment.history]
        scores = {"p_at_1_csls": rec.p_at_1, "p_at_1_nn": rec.p_at_1_nn, "frobenius": rec.frobenius,
                  "frobenius_identity": rec.frobenius_identity, "criterion": rec.criterion,
                  "steps": args.epochs * (args.epoch_size // cfg.batch_size), "words": len(halves[0])}
        write_metrics(out / f"seed{seed}{tag}.json", variant="adversarial-identity", encoder=params["encoder"],
                      seed=seed, config=cfg.to_dict(), scores=scores,
                      extra={"history": history, "minutes": minutes, "threads": args.threads})
        print(f"seed {seed}{tag}: P@1 {rec.p_at_1:.4f} ||U-R|| {rec.frobenius:.2f} "
              f"(start {rec.frobenius_identity:.2f}) criterion {rec.criterion:.3f} in {minutes:.1f} min", flush=True)


if __name__ == "__main__":
    main()
