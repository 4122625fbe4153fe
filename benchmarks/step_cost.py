"""Seconds per training step of each variant of the paper's model against the baseline (issue 11's target: a
variant costs at most 1.5x the baseline per seed), with the profile's encoder and settings.

Each variant trains ``--steps`` steps on the first CoNLL sentences (the teacher's features and the renderings
for those only) with the same seed; the transfer variants read a saved baseline as teacher (``--teacher``, a
checkpoint directory written by a run with ``save_checkpoints: true``). Prints one row per variant and writes
``results/<profile>/bench_steps.json`` (with the git commit and package versions). Run it alone: a second
CPU-heavy job halves every figure.

    python benchmarks/step_cost.py --profile cpu --teacher results/cpu/checkpoints/baseline-seed1 --steps 40
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from xner_lib.config import from_params, load_profile, results_dir
from xner_lib.encoders import load_encoder
from xner_lib.evaluate import write_metrics
from xner_lib.experiment import Experiment, experiment_from_params, resolve_variants
from xner_lib.train import TrainConfig, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--teacher", type=Path, required=True, help="a saved baseline (checkpoint directory)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--variants", nargs="+", default=["baseline", "adv_att_pos", "without_transfer",
                                                      "without_adversarial"])
    args = ap.parse_args()
    params = load_profile(args.profile)
    batch = int(params["train_batch_size"])
    params["max_sentences"] = batch * args.steps  # one epoch of --steps steps; every test set cut the same way
    exp: Experiment = experiment_from_params(params)
    base = from_params(TrainConfig, params, "train_")
    variants = resolve_variants(base, params["variants"])
    meta = json.loads((args.teacher / "config.json").read_text())
    teacher = (args.teacher, {"extra": {"run_key": meta.get("run_key")}})
    rows = []
    for name in args.variants:
        vcfg = variants[name]
        assert isinstance(vcfg, TrainConfig), f"{name} names another variant"
        cfg = replace(vcfg, encoder=exp.encoder_name, seed=1, epochs=1.0, evals_per_epoch=1)
        corpora = exp.corpora(frozen=False)
        t0 = time.perf_counter()
        corpora, streams = exp.streams(cfg, corpora, teacher if cfg.transfer else None, frozen=False)
        prep = time.perf_counter() - t0
        encoder = load_encoder(exp.encoder_name)  # each variant fine-tunes its own fresh copy
        result = train(cfg, encoder, corpora.conll_train, corpora.conll_dev, progress=False, rendered=streams.rendered,
                       target=streams.target, teacher=streams.teacher, mapping=streams.mapping)
        steps = result.history
        # seconds per step from the loop's own clock, excluding the evaluation at the end
        per_step = (steps[-1]["seconds"] - steps[0]["seconds"]) / max(1, len(steps) - 1)
        rows.append({"variant": name, "steps": len(steps), "seconds_per_step": per_step, "prepare_seconds": prep})
        print(f"{name:22s} {per_step:6.3f} s/step  ({len(steps)} steps; streams built in {prep:.1f} s)", flush=True)
    ref = rows[0]["seconds_per_step"]
    for r in rows:
        r["ratio_to_first"] = r["seconds_per_step"] / ref
        print(f"{r['variant']:22s} x{r['ratio_to_first']:.2f}")
    write_metrics(results_dir(args.profile) / "bench_steps.json", variant="bench_steps", encoder=params["encoder"],
                  seed=1, config={"steps": args.steps, "threads": torch.get_num_threads()},
                  scores={"rows": rows}, extra={})


if __name__ == "__main__":
    main()
