"""The run-naming conventions (xner_lib/run_names.py) and their users agree."""

from __future__ import annotations

from xner_lib.experiment import few_shot_variants
from xner_lib.report_file import compute_table
from xner_lib.run_names import SHARED_PREFIX, few_shot_name, is_few_shot, run_name
from xner_lib.train import TrainConfig


def test_few_shot_names_are_recognised_with_and_without_the_shared_prefix() -> None:
    assert few_shot_name("adv_att_pos", 10) == "adv_att_pos-fs10"
    assert is_few_shot("adv_att_pos-fs10") and is_few_shot(SHARED_PREFIX + few_shot_name("baseline", 500))
    for name in ("adv_att_pos", "shared-adv_att_pos", "lr_1e-4", "adv-fs", "adv-fs10-seed1", "fs10"):
        assert not is_few_shot(name), name
    assert run_name(SHARED_PREFIX + "adv_att", 2) == "shared-adv_att-seed2"


def test_the_curves_variants_are_the_names_the_report_charges_to_the_curve() -> None:
    variants = few_shot_variants({"baseline": TrainConfig()}, ["baseline"], [0, 10, 50], {"every": 2})
    made = [k for k in variants if is_few_shot(k)]
    assert made == ["baseline-fs0", "baseline-fs10", "baseline-fs50"] and variants["baseline-fs0"] == "baseline"
    runs = [{"variant": SHARED_PREFIX + k, "seed": 1, "extra": {"seconds": {"train": 60.0, "score": 0.0}},
             "git": {"commit": "0" * 40}} for k in [*made, "without_attention"]]
    t = compute_table(runs).set_index("table")
    assert t.loc["Few-shot curve (04)", "runs"] == 3 and t.loc["Table 5, shared protocol (04)", "runs"] == 1
