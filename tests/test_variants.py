"""The paper's model (issue 11): every variant of the smoke profile trains, scores and reloads; the adversarial
loss keeps U orthogonal and trains the discriminator; the transfer reads a teacher; the baseline's run key is
what it was before these fields existed.

Runs use the tiny random encoder on the first sentences of the real corpora and the committed cpu lexicon.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from seqeval.metrics.sequence_labeling import get_entities

from xner_lib.batches import prepare
from xner_lib.config import ConfigError
from xner_lib.data import load
from xner_lib.data.sources import sha256_cached
from xner_lib.decoding import DecodeConfig
from xner_lib.encoders import load_encoder
from xner_lib.evaluate import score_dataset
from xner_lib.experiment import SPLITS, UNLABELLED_SETS, Experiment, resolve_variants, text_only
from xner_lib.objectives import AdversarialConfig, majority_tags
from xner_lib.rendering import surface_forms
from xner_lib.tagger import Tagger, Teacher, load_checkpoint, predict, save_checkpoint
from xner_lib.train import KEY_NEUTRAL, TrainConfig, key_config, train

REPO = Path(__file__).resolve().parents[1]
PAPER_VARIANTS = ("baseline", "adv_att", "adv_att_pos", "without_attention", "without_position",
                  "without_transfer", "without_adversarial", "u_from_alignment", "self_training", "self_training_vote",
                  "freeze_lower", "translate_train", "checkpoint_average")


def _profile(name: str) -> dict:
    return yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())


def _base(**kw: object) -> TrainConfig:
    settings = {"encoder": "tiny-random-bert", "epochs": 1, "batch_size": 8, "lr": 1e-3, "head_lr": 1e-2,
                "evals_per_epoch": 1, "threads": 1, **kw}
    return TrainConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Experiment:
    out = tmp_path_factory.mktemp("results") / "smoke"
    (out / "alignment").mkdir(parents=True)
    shutil.copy(REPO / "results" / "cpu" / "alignment" / "lexicon.tsv", out / "alignment" / "lexicon.tsv")
    enc = load_encoder("tiny-random-bert")  # 02's map for u_from_alignment: a rotation of the tiny encoder's space
    q, _ = torch.linalg.qr(torch.randn(enc.hidden_size, enc.hidden_size, generator=torch.Generator().manual_seed(5)))
    np.save(out / "alignment" / "mapping.npy", q.numpy())
    data = {k: load(p, data_dir, max_sentences=24) for k, p in SPLITS.items()}
    unlabelled = [load(p, data_dir, max_sentences=12) for p in UNLABELLED_SETS]
    torch.set_num_threads(1)
    return Experiment(data, enc, "tiny-random-bert", out, DecodeConfig(),
                      unlabelled=unlabelled, save_checkpoints=True, progress=False)


def test_every_variant_of_the_smoke_profile_trains_scores_and_records_its_streams(experiment: Experiment) -> None:
    blocks = _profile("smoke")["variants"]
    assert set(blocks) == set(PAPER_VARIANTS)
    variants = resolve_variants(_base(), blocks)
    metrics = experiment.run_all(variants, [1])
    by = {m["variant"]: m for m in metrics}
    assert set(by) == set(PAPER_VARIANTS)
    for name, m in by.items():
        assert set(m["scores"]) == {"conll_dev", "conll_test", "weibo_test", "peoples_daily_test"}, name
        history = m["extra"]["history"]
        cfg = variants[name] if isinstance(variants[name], TrainConfig) else variants[variants[name]]
        assert isinstance(cfg, TrainConfig)
        assert ("dis_accuracy" in history[0]) == bool(cfg.adversarial), name
        assert ("loss_rendered" in history[0]) == bool(cfg.transfer), name
        inputs = m["extra"]["run_key_parts"].get("inputs", {})
        assert ("teacher" in inputs) == bool(cfg.transfer) and ("unlabelled" in inputs) == bool(cfg.adversarial)
    # the transfer variants read the baseline of the same seed as their teacher, and report the coverage
    assert by["adv_att_pos"]["extra"]["run_key_parts"]["inputs"]["teacher"] == by["baseline"]["extra"]["run_key"]
    coverage = by["adv_att_pos"]["extra"]["streams"]["coverage"]
    assert 0 < coverage["peoples_daily_test"]["share_translated"] < 1
    # a string block shares the runs of the variant it names
    assert by["without_position"]["extra"]["same_as"] == "adv_att"
    assert by["without_position"]["scores"] == by["adv_att"]["scores"]
    # checkpoint averaging: scored with its mean weights, the evaluation best beside them ("selected"); at the
    # smoke settings (one evaluation, at the last step) the mean is of that one evaluation
    ca = by["checkpoint_average"]["extra"]
    assert ca["averaged_steps"] == [ca["steps"]] and ca["averaged_dev_f1"] == by["checkpoint_average"]["scores"][
        "conll_dev"]["conll"]["strict"]["f1"]
    assert set(ca["variant_scores"]["selected"]) == set(by["checkpoint_average"]["scores"])
    assert "averaged_steps" not in by["baseline"]["extra"]
    assert "selected" not in by["baseline"]["extra"]["variant_scores"]
    # U started from 02's map: keyed by the map's checksum
    assert "mapping" in by["u_from_alignment"]["extra"]["run_key_parts"]["inputs"]
    # different models, different numbers: the full model is not the baseline under another name
    assert by["adv_att_pos"]["extra"]["history"] != by["baseline"]["extra"]["history"]
    # a second pass reads every run back
    again = experiment.run_all(variants, [1], only=["adv_att_pos"])
    assert again[0]["extra"]["run_key"] == by["adv_att_pos"]["extra"]["run_key"]
    assert again[0]["timestamp_utc"] == by["adv_att_pos"]["timestamp_utc"]


def test_a_saved_full_model_reloads_and_predicts_exactly_as_before(experiment: Experiment) -> None:
    variants = resolve_variants(_base(), _profile("smoke")["variants"])
    experiment.run_all(variants, [1], only=["adv_att_pos"])
    ckpt = experiment.out / "checkpoints" / "adv_att_pos-seed1"
    meta = json.loads((ckpt / "config.json").read_text())
    assert meta["mapping"] and meta["teacher"]["directory"] == "teacher" and meta["head"]["attention"] == "double"
    tagger = Tagger.from_pretrained(ckpt, experiment.out / "cache")
    assert tagger.teacher is not None and tagger.mapping is not None
    # U of eq. 2 is still orthogonal after training (snapped back by SVD after every step, eq. 3)
    U = tagger.mapping.U.detach()
    assert torch.allclose(U @ U.T, torch.eye(U.shape[0]), atol=1e-3)
    # the reloaded model predicts on every test set exactly what the run scored
    run = json.loads((experiment.out / "runs" / "adv_att_pos-seed1" / "metrics.json").read_text())
    for name in ("conll_dev", "weibo_test", "peoples_daily_test"):
        preds = tagger.predict_dataset(experiment.data[name])
        from xner_lib.evaluate import score_dataset
        assert score_dataset(experiment.data[name], preds) == run["scores"][name], name
    # and raw text goes through the teacher's rendering
    spans = tagger.tag(["他在北京说", "Mr Smith lives in Berlin ."])
    assert len(spans) == 2


def _teacher_checkpoint(experiment: Experiment) -> Path:
    """The baseline of seed 1, the transfer variants' teacher (trained here when no earlier test did)."""
    variants = resolve_variants(_base(), _profile("smoke")["variants"])
    experiment.run_all(variants, [1], only=["baseline"])
    return experiment.out / "checkpoints" / "baseline-seed1"


def test_transfer_training_needs_the_teachers_features_everywhere(experiment: Experiment) -> None:
    enc = experiment.encoder
    data = experiment.corpora(frozen=False)
    cfg = _base(transfer={"rendered_weight": 0.0})
    ckpt = _teacher_checkpoint(experiment)
    from xner_lib.tagger import load_checkpoint
    teacher = Teacher(load_checkpoint(ckpt)[0], experiment.lexicon_path("alignment"), ckpt)
    with pytest.raises(ValueError, match="teacher's features are missing"):
        train(cfg, enc, data.conll_train, data.conll_dev, progress=False, teacher=teacher)
    with pytest.raises(ValueError, match="goes with the transfer section"):
        train(_base(), enc, data.conll_train, data.conll_dev, progress=False, teacher=teacher)


def test_teacher_reads_chinese_through_a_cased_rendering(experiment: Experiment) -> None:
    ckpt = _teacher_checkpoint(experiment)
    from xner_lib.tagger import load_checkpoint
    casing = surface_forms([s.tokens for s in experiment.data["conll_train"].sentences])
    teacher = Teacher(load_checkpoint(ckpt)[0], experiment.lexicon_path("alignment"), ckpt, casing)
    zh = experiment.data["peoples_daily_test"]
    feats = teacher.features(zh)
    assert len(feats) == len(zh)
    assert all(f.shape[1] == teacher.dim and f.shape[0] >= 1 for f in feats)
    # features are rounded to fp16 precision, as the cache stores them: a fresh pass equals a cached one
    assert all(torch.equal(f, f.half().float()) for f in feats)
    en = experiment.data["conll_dev"]
    assert [f.shape[0] for f in teacher.features(en)] == [len(s) for s in en]


@pytest.mark.parametrize("profile", ["smoke", "cpu"])
def test_u_stays_orthogonal_at_the_profiles_settings(profile: str, data_dir: Path) -> None:
    blocks = _profile(profile)["variants"]
    adv = blocks["adv_att_pos"]["adversarial"]
    enc = load_encoder("tiny-random-bert")
    conll = load("conll2003/train.txt", data_dir, max_sentences=32)
    zh = text_only([load(p, data_dir, max_sentences=16) for p in UNLABELLED_SETS])
    src, tgt = prepare(conll, enc, frozen=False), prepare(zh, enc, frozen=False)
    # a rotated start, far from I, and a large map learning rate: the projection must hold U orthogonal
    q, _ = torch.linalg.qr(torch.randn(enc.hidden_size, enc.hidden_size, generator=torch.Generator().manual_seed(0)))
    cfg = _base(epochs=3, adversarial={**adv, "map_lr": 1e-2})
    result = train(cfg, enc, src, src, progress=False, target=tgt, mapping=q)
    U = result.tagger.mapping.U.detach()
    assert not torch.allclose(U, q)  # U trained
    assert torch.allclose(U @ U.T, torch.eye(U.shape[0]), atol=1e-3)
    accuracy = [h["dis_accuracy"] for h in result.history if "dis_accuracy" in h]
    every = AdversarialConfig(**adv).every  # the discriminator steps on every ``every``-th step, from the first
    assert len(accuracy) == -(-len(result.history) // every) and all(0.0 <= a <= 1.0 for a in accuracy)


def test_the_discriminator_learns_to_tell_shifted_vectors_apart() -> None:
    from xner_lib.objectives import Adversary, sample_units
    adv = Adversary(AdversarialConfig(dis_hidden=32, dis_lr=0.5), dim=8, seed=0)
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.randn(4, 10, 8, generator=g), torch.randn(4, 10, 8, generator=g) + 2.0
    mask = torch.ones(4, 10, dtype=torch.bool)
    accuracy = []
    for _ in range(60):
        x, is_target = sample_units(src, mask, tgt, mask, 32, adv.generator)
        accuracy.append(adv.discriminator_step(x, is_target)["dis_accuracy"])
    assert sum(accuracy[-10:]) / 10 > 0.9 > sum(accuracy[:1])
    # the generator loss reaches the vectors, never the discriminator
    x, is_target = sample_units(src.requires_grad_(), mask, tgt, mask, 32, adv.generator)
    adv.optimizer.zero_grad(set_to_none=True)
    adv.generator_loss(x, is_target).backward()
    assert src.grad is not None and src.grad.abs().sum() > 0
    assert all(p.grad is None for p in adv.discriminator.parameters())


def test_variant_blocks_merge_dicts_and_refuse_unknown_keys() -> None:
    base = _base(head={"dropout": 0.3})
    v = resolve_variants(base, {"baseline": {}, "a": {"head": {"attention": "double"}}, "b": "a"})
    assert v["baseline"] == base and v["b"] == "a"
    assert isinstance(v["a"], TrainConfig) and v["a"].head == {"dropout": 0.3, "attention": "double"}
    with pytest.raises(ConfigError, match="unknown key 'adverserial'"):
        resolve_variants(base, {"a": {"adverserial": {"weight": 1}}})
    with pytest.raises(ConfigError, match="not a variant with its own block"):
        resolve_variants(base, {"a": "b", "b": "a"})
    with pytest.raises(ConfigError, match="unknown key 'wieght'"):
        resolve_variants(base, {"a": {"adversarial": {"wieght": 1}}})


def test_new_config_fields_leave_the_committed_baseline_keys_unchanged() -> None:
    checked = 0
    for path in sorted((REPO / "results" / "cpu" / "runs").glob("*/metrics.json")):
        parts = json.loads(path.read_text())["extra"].get("run_key_parts")
        if parts is None or "encoder" not in parts:
            continue  # made before run keys, or a static row of Table 3 (keyed by its aligned space, no encoder)
        cfg = TrainConfig(**parts["config"])  # the committed config reads into today's TrainConfig
        assert key_config(cfg) == parts["config"], path  # and keys as it did
        checked += 1
    assert checked >= 2
    assert set(KEY_NEUTRAL) <= set(asdict(_base()))
    assert key_config(_base(adversarial={"weight": 0.2}))["adversarial"] == {"weight": 0.2}


def test_saving_a_transfer_model_without_its_teacher_is_refused(tmp_path: Path) -> None:
    enc = load_encoder("tiny-random-bert")
    from xner_lib.model import BiLstmCrfHead, HeadConfig
    head = BiLstmCrfHead(HeadConfig(input_dim=enc.hidden_size, teacher_dim=5))
    with pytest.raises(ValueError, match="saved with its teacher"):
        save_checkpoint(Tagger(head, enc), tmp_path / "m", asdict(_base()))
    assert not (tmp_path / "m").exists()


def test_a_variant_block_can_switch_a_section_off() -> None:
    base = _base(adversarial={"weight": 0.3})
    v = resolve_variants(base, {"with": {}, "without": {"adversarial": {}}, "more": {"adversarial": {"every": 2}}})
    assert v["with"].adversarial == {"weight": 0.3} and v["without"].adversarial == {}
    assert v["more"].adversarial == {"weight": 0.3, "every": 2}


def test_the_baseline_trains_bitwise_as_before_the_engine_split(data_dir: Path) -> None:
    """Losses of the tiny-encoder baseline recorded with the code before the split (commit 634517b): the
    split and the new streams must not change a step of the baseline (same batches, same RNG draws)."""
    torch.set_num_threads(1)
    enc = load_encoder("tiny-random-bert")
    tr = load("conll2003/train.txt", data_dir, max_sentences=120)
    dv = load("conll2003/dev.txt", data_dir, max_sentences=60)
    ptr, pdv = (prepare(d, enc, frozen=False, zh_units="char") for d in (tr, dv))
    cfg = TrainConfig(encoder="tiny-random-bert", epochs=2, batch_size=8, lr=1e-3, head_lr=1e-2, seed=3,
                      evals_per_epoch=2, finetune=True, freeze_layers=1)
    result = train(cfg, enc, ptr, pdv, progress=False, snapshot_epoch=1.0)
    before = [64.55367279052734, 5.908308029174805, 30.41383934020996, 4.287130832672119, 5.621816635131836,
              3.1214308738708496, 12.538671493530273, 8.321638107299805, 10.21929931640625, 6.086270332336426]
    got = [h["loss"] for h in result.history]
    assert len(got) == 30 and got[-1] == pytest.approx(9.624581336975098, rel=1e-4)
    assert got[:10] == pytest.approx(before, rel=1e-4)
    assert (result.best_step, result.snapshot[0] if result.snapshot else None) == (8, 8)


def test_the_shared_protocol_trains_heads_over_the_seeds_fine_tuned_baseline_encoder(experiment: Experiment
                                                                                      ) -> None:
    variants = resolve_variants(_base(), _profile("smoke")["variants"])
    shared = resolve_variants(_base(finetune=False, lr=0.0), {k: v for k, v in _profile("smoke")["variants"].items()
                                                               if k != "baseline"})
    metrics = experiment.run_shared(variants, shared, [1], only=["adv_att_pos", "without_position", "self_training"])
    names = [m["variant"] for m in metrics]
    assert names == ["shared-adv_att_pos", "shared-without_position", "shared-self_training"]
    full = metrics[0]
    ckpt = experiment.out / "checkpoints" / "baseline-seed1"
    # frozen over the baseline's fine-tuned encoder, its teacher the joint baseline of the same seed
    # named from the profile's directory on, so a clone or worktree reads the run back (its weights' sha256 beside)
    assert full["config"]["encoder"] == str(ckpt / "encoder")  # what was read, as it was
    portable = f"{experiment.out.name}/checkpoints/baseline-seed1/encoder"
    assert full["extra"]["run_key_parts"]["encoder"]["name"] == portable
    assert full["extra"]["run_key_parts"]["config"]["encoder"] == portable
    assert full["config"]["finetune"] is False
    baseline = json.loads((experiment.out / "runs" / "baseline-seed1" / "metrics.json").read_text())
    assert full["extra"]["run_key_parts"]["inputs"]["teacher"] == baseline["extra"]["run_key"]
    # the pseudo-labels too come from the joint baseline, not from a shared-protocol head
    assert metrics[2]["extra"]["run_key_parts"]["inputs"]["self_training"]["teacher"] == baseline["extra"]["run_key"]
    assert not (experiment.out / "runs" / "shared-baseline-seed1").exists()
    assert metrics[1]["extra"]["same_as"] == "shared-adv_att"
    assert (experiment.out / "runs" / "shared-adv_att-seed1" / "metrics.json").is_file()


def test_a_full_model_predicts_the_same_tags_after_save_and_reload(experiment: Experiment, tmp_path: Path) -> None:
    variants = resolve_variants(_base(), _profile("smoke")["variants"])
    cfg = replace(variants["adv_att_pos"], seed=1)  # type: ignore[arg-type]
    teacher = experiment._teacher_run("adv_att_pos", cfg, variants)
    corpora, streams = experiment.streams(cfg, experiment.corpora(frozen=False), teacher, frozen=False)
    enc = load_encoder("tiny-random-bert")
    result = train(cfg, enc, corpora.conll_train, corpora.conll_dev, progress=False, rendered=streams.rendered,
                   target=streams.target, teacher=streams.teacher, mapping=streams.mapping)
    before = {k: predict(result.tagger, getattr(corpora, k), progress=False)
              for k in ("conll_dev", "weibo_test", "peoples_daily_test")}
    save_checkpoint(result.tagger, tmp_path / "full", asdict(cfg), scoring={"zh_units": "char"})
    loaded = Tagger.from_pretrained(tmp_path / "full")
    for name, tags in before.items():
        assert loaded.predict_dataset(experiment.data[name]) == tags, name


# --- few-shot (issue 14, beyond the paper): labelled Chinese sentences as a stream of their own ---------------
def test_few_shot_samples_are_nested_seeded_and_never_a_test_split(data_dir: Path) -> None:
    from xner_lib.experiment import few_shot_sample
    from xner_lib.objectives import FewShotConfig

    dev = load("peoples_daily/dev.txt", data_dir, max_sentences=200)
    s10, s50 = few_shot_sample(dev, 10, 0), few_shot_sample(dev, 50, 0)
    assert [x.tokens for x in s50.sentences[:10]] == [x.tokens for x in s10.sentences]
    assert [x.tokens for x in few_shot_sample(dev, 10, 0).sentences] == [x.tokens for x in s10.sentences]
    assert [x.tokens for x in few_shot_sample(dev, 10, 1).sentences] != [x.tokens for x in s10.sentences]
    drawn = [next(i for i, d in enumerate(dev.sentences) if d is x) for x in s50.sentences]
    assert len(set(drawn)) == 50 and drawn != sorted(drawn)  # 50 distinct dev sentences, shuffled
    with pytest.raises(ValueError, match="outside 0..200"):
        few_shot_sample(dev, 201, 0)
    with pytest.raises(ValueError, match="test split"):
        FewShotConfig(size=10, source="peoples_daily/test.txt")
    with pytest.raises(ConfigError, match="unknown key 'sise'"):
        _base(few_shot={"sise": 10})
    assert _base(few_shot={"size": 0}).few_shot_config is None


def test_few_shot_variants_alias_size_zero_and_keep_the_plain_key() -> None:
    from xner_lib.experiment import few_shot_variants

    variants = resolve_variants(_base(), _profile("smoke")["variants"])
    fs = few_shot_variants(variants, ["baseline", "adv_att_pos"], [0, 10], {"batch_size": 4})
    assert list(fs) == ["baseline", "baseline-fs0", "baseline-fs10", "adv_att_pos", "adv_att_pos-fs0",
                        "adv_att_pos-fs10"]
    assert fs["baseline-fs0"] == "baseline" and fs["baseline"] == variants["baseline"]
    ten = fs["adv_att_pos-fs10"]
    assert isinstance(ten, TrainConfig) and ten.few_shot == {"batch_size": 4, "size": 10}
    assert ten.few_shot_config is not None and ten.few_shot_config.batch_size == 4
    assert "few_shot" not in key_config(variants["baseline"])  # the plain runs keep their keys
    with pytest.raises(ValueError, match="own block"):
        few_shot_variants(variants, ["without_position"], [10], {})


def test_few_shot_sentences_train_as_their_own_stream_and_key_the_run(experiment: Experiment) -> None:
    variants = resolve_variants(_base(), _profile("smoke")["variants"])
    from xner_lib.experiment import few_shot_variants

    fs = few_shot_variants(variants, ["baseline", "adv_att_pos"], [0, 6], {"batch_size": 3, "every": 1})
    metrics = experiment.run_all(fs, [1], only=["baseline-fs0", "baseline-fs6", "adv_att_pos-fs6"])
    plain, six, full6 = metrics
    assert plain["extra"]["same_as"] == "baseline" and "few_shot" not in plain["extra"]["run_key_parts"].get(
        "inputs", {})
    inputs = six["extra"]["run_key_parts"]["inputs"]["few_shot"]
    assert inputs["sentences"] == 6 and inputs["file"] is None and len(inputs["content_sha256"]) == 64
    assert six["extra"]["streams"]["few_shot"]["sentences"] == 6
    losses = [h for h in six["extra"]["history"] if "loss_few_shot" in h]
    assert len(losses) == len(six["extra"]["history"]) > 0  # every step (every: 1)
    assert six["extra"]["label_counts"]["few_shot.entities"] == six["extra"]["streams"]["few_shot"]["entities"]
    assert six["extra"]["run_key"] != plain["extra"]["run_key"]
    assert all("loss_few_shot" in h for h in full6["extra"]["history"])  # with the teacher's features too
    cfg = replace(fs["baseline-fs6"], seed=1)  # type: ignore[arg-type]
    corpora = experiment.corpora(frozen=False)
    with pytest.raises(ValueError, match="few_shot"):
        train(cfg, experiment.encoder, corpora.conll_train, corpora.conll_dev, progress=False)


def test_self_training_trains_on_the_teachers_tags_of_the_unlabelled_text(experiment: Experiment,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    variants = resolve_variants(_base(), _profile("smoke")["variants"])
    st, base = experiment.run_all(variants, [1], only=["self_training", "baseline"])
    n_text = sum(len(d) for d in experiment.unlabelled)
    inputs = st["extra"]["run_key_parts"]["inputs"]["self_training"]
    assert inputs["teacher"] == base["extra"]["run_key"]  # the same seed's baseline labels the text
    assert [u["sentences"] for u in inputs["unlabelled"]] == [len(d) for d in experiment.unlabelled]
    summary = st["extra"]["streams"]["self_training"]
    assert summary["sentences"] == n_text
    assert st["extra"]["label_counts"].get("self_training.entities", 0) == summary["entities"] == sum(
        summary["entity_types"].values())
    history = st["extra"]["history"]
    every = variants["self_training"].self_training_config.every  # type: ignore[union-attr]
    assert [h["step"] for h in history if "loss_self_training" in h] == [
        h["step"] for h in history if (h["step"] - 1) % every == 0]
    # the pseudo-labels are the teacher checkpoint's tags under the experiment's decoding, never the gold tags
    labeller = (experiment.out / "checkpoints" / "baseline-seed1", base)
    pseudo = experiment.pseudo_labelled([labeller])
    teacher = Tagger.from_pretrained(labeller[0])
    teacher.inference = replace(teacher.inference, decode=experiment.decode)
    assert [s.tags for s in pseudo.sentences] == teacher.predict_dataset(text_only(experiment.unlabelled))
    assert [s.tokens for s in pseudo.sentences] == [s.tokens for d in experiment.unlabelled for s in d.sentences]
    assert not any(t.endswith("MISC") for s in pseudo.sentences for t in s.tags)  # the target's labels only
    # their cleanliness against the unlabelled sets' gold, recorded for information, per set in order
    first = experiment.unlabelled[0]
    recorded = summary["pseudo_label_scores"][f"{first.name}_{first.split}"]
    assert set(summary["pseudo_label_scores"]) == {f"{d.name}_{d.split}" for d in experiment.unlabelled}
    expect = score_dataset(first, [s.tags for s in pseudo.sentences[:len(first)]])
    assert recorded == {v: expect[v]["strict"] for v in recorded} and recorded
    # read back from its cache: no teacher is loaded a second time
    monkeypatch.setattr(Tagger, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("labelled again")))
    assert [s.tags for s in experiment.pseudo_labelled([labeller]).sentences] == [s.tags for s in pseudo.sentences]


def test_an_ensemble_of_teacher_seeds_labels_by_majority(experiment: Experiment) -> None:
    vote = {"teacher": "baseline", "teacher_seeds": [1, 2, 3], "batch_size": 2}
    variants = resolve_variants(_base(), {"baseline": {}, "st_vote": {"self_training": vote}})
    (st,) = experiment.run_all(variants, [2], only=["st_vote"])
    bases = experiment.run_all(variants, [1, 2, 3], only=["baseline"])  # read back: the student ran them first
    inputs = st["extra"]["run_key_parts"]["inputs"]["self_training"]
    assert inputs["teachers"] == [b["extra"]["run_key"] for b in bases] and "teacher" not in inputs
    labellers = [(experiment.out / "checkpoints" / f"baseline-seed{b['seed']}", b) for b in bases]
    votes = [[s.tags for s in experiment.pseudo_labelled([lab]).sentences] for lab in labellers]
    pseudo = experiment.pseudo_labelled(labellers)
    assert [s.tags for s in pseudo.sentences] == [majority_tags(v) for v in zip(*votes, strict=True)]
    assert st["extra"]["streams"]["self_training"]["entities"] == sum(
        len(get_entities(s.tags)) for s in pseudo.sentences)
    with pytest.raises(ValueError, match="repeat"):
        _ = TrainConfig(self_training={"teacher_seeds": [1, 1]}).self_training_config


def test_majority_keeps_the_entities_more_than_half_the_teachers_predict_exactly() -> None:
    a = ["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG"]
    b = ["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG"]
    c = ["B-PER", "O", "O", "B-LOC", "I-LOC", "B-LOC"]
    # a span (PER 0-1, LOC 3-3) or a type (ORG 5) that two of three predict stays; c's other spans and type go
    assert majority_tags([a, b, c]) == a
    assert majority_tags([a, c]) == ["O"] * 6  # two of two needed: a and c share no entity exactly
    assert majority_tags([a, b, c, c]) == ["O"] * 6  # a tie (two of four) is not a majority
    assert majority_tags([c]) == c
    with pytest.raises(ValueError, match="one length"):
        majority_tags([a, a[:-1]])


def test_self_training_refuses_itself_as_teacher_a_cycle_and_a_missing_stream(experiment: Experiment) -> None:
    variants = resolve_variants(_base(), {"baseline": {}, "loop": {"self_training": {"teacher": "loop"}},
                                          "a": {"self_training": {"teacher": "b"}},
                                          "b": {"self_training": {"teacher": "a"}}})
    with pytest.raises(ValueError, match="must be another variant"):
        experiment.run_all(variants, [1], only=["loop"])
    with pytest.raises(ValueError, match="a cycle of teacher sections"):
        experiment.run_all(variants, [1], only=["a"])
    assert not experiment._running  # the guard leaves nothing behind
    cfg = replace(variants["loop"], seed=1)  # type: ignore[arg-type]
    corpora = experiment.corpora(frozen=False)
    with pytest.raises(ValueError, match="self_training"):
        train(cfg, experiment.encoder, corpora.conll_train, corpora.conll_dev, progress=False)
    with pytest.raises(ConfigError, match="unknown key 'batch'"):
        TrainConfig(self_training={"batch": 4})


def test_translate_train_trains_on_conll_rendered_through_the_lexicon(experiment: Experiment) -> None:
    variants = resolve_variants(_base(), _profile("smoke")["variants"])
    (tt,) = experiment.run_all(variants, [1], only=["translate_train"])
    lexicon = experiment.out / "alignment" / "lexicon.tsv"
    assert tt["extra"]["run_key_parts"]["inputs"] == {"translate_train": {"lexicon": sha256_cached(lexicon)}}
    summary = tt["extra"]["streams"]["translate_train"]
    assert summary["sentences"] == len(experiment.data["conll_train"])
    assert 0 < summary["coverage"]["share_translated"] < 1 and summary["entities"] > 0
    every = variants["translate_train"].translate_train_config.every  # type: ignore[union-attr]
    history = tt["extra"]["history"]
    assert [h["step"] for h in history if "loss_translate_train" in h] == [
        h["step"] for h in history if (h["step"] - 1) % every == 0]
    with pytest.raises(ValueError, match="translate_train and transfer do not go together"):
        _base(translate_train={"batch_size": 4}, transfer={"teacher": "baseline"})


def test_missing_runs_skip_reads_back_what_is_made_trains_nothing_and_names_the_rest(
        experiment: Experiment, caplog: pytest.LogCaptureFixture) -> None:
    """``missing='skip'`` (``./run_all.sh --made-only``): a notebook executed before a long profile is finished
    tabulates the runs made so far. A run with no metrics.json, a stale one, and a student whose teacher is not
    made are left out and named; nothing trains and no file is written."""
    variants = resolve_variants(_base(), _profile("smoke")["variants"])
    made = experiment.run_all(variants, [1], only=["baseline"])[0]
    runs = experiment.out / "runs"
    # a stale record (another seed's key) and a student without its teacher's run
    for name in ("baseline-seed9", "adv_att_pos-seed8"):
        (runs / name).mkdir()
        shutil.copy(runs / "baseline-seed1" / "metrics.json", runs / name / "metrics.json")
    before = {p: p.read_bytes() for p in runs.rglob("metrics.json")}
    checkpoints = sorted(p.name for p in (experiment.out / "checkpoints").iterdir())

    skip = replace(experiment, missing="skip")
    got = skip.run_all(variants, [1, 8, 9], only=["baseline"]) + skip.run_all(variants, [8, 9], only=["adv_att_pos"])
    assert [(m["variant"], m["seed"]) for m in got if m["variant"] == "baseline"] == [("baseline", 1)]
    assert got[0]["extra"]["run_key"] == made["extra"]["run_key"]
    assert ("adv_att_pos", 8) not in [(m["variant"], m["seed"]) for m in got]
    reasons = dict(s.split(": ", 1) for s in skip.skipped)
    assert reasons["baseline seed 8"] == "no metrics.json"
    assert reasons["baseline seed 9"].startswith("its metrics.json is stale")
    assert ("baseline-seed9: not read back, left out (read only): its run key differs: config.seed: 1 -> 9"
            in caplog.text)
    assert reasons["adv_att_pos seed 8"] == "a teacher's run is not made"
    assert reasons["adv_att_pos seed 9"] == "no metrics.json"
    assert len(skip.skipped) == len(set(skip.skipped)) == 4  # baseline 8 once, though asked for twice
    assert skip.skipped_summary().startswith("4 runs not made yet")
    blocks = {"without_transfer": _profile("smoke")["variants"]["without_transfer"]}
    shared = resolve_variants(_base(finetune=False, lr=0.0), blocks)
    assert skip.run_shared(variants, shared, [1, 8]) == []  # seed 1 over the made baseline, seed 8 without one
    assert "shared-without_transfer seed 1: no metrics.json" in skip.skipped
    assert "shared-without_transfer seed 8: the seed's fine-tuned baseline is not made" in skip.skipped
    after = {p: p.read_bytes() for p in runs.rglob("metrics.json")}
    assert after == before
    assert sorted(p.name for p in (experiment.out / "checkpoints").iterdir()) == checkpoints
    for name in ("baseline-seed9", "adv_att_pos-seed8"):
        shutil.rmtree(runs / name)
    with pytest.raises(ValueError, match="missing_runs must be one of train, skip"):
        replace(experiment, missing="later")
    with pytest.raises(ValueError, match="set one of the two"):
        replace(experiment, missing="skip", fresh=True)


def test_missing_runs_skip_reads_shared_runs_back_on_a_machine_without_the_seeds_fine_tuned_encoder(
        experiment: Experiment, caplog: pytest.LogCaptureFixture) -> None:
    """A fresh clone has the records but not the checkpoints (kept outside git): with ``missing='skip'`` the
    shared protocol's runs are read back, the encoder's checksum in their run key taken from the baseline's
    record, which gives it as the encoder was saved (a baseline record made before records did so: each run's
    own, each such run named as unverified, and a run older than the baseline's record left out); a record that
    differs in any other part is still left out, and nothing trains or is written."""
    variants = resolve_variants(_base(), _profile("smoke")["variants"])
    blocks = {k: v for k, v in _profile("smoke")["variants"].items() if k != "baseline"}
    shared = resolve_variants(_base(finetune=False, lr=0.0), blocks)
    made = experiment.run_shared(variants, shared, [1], only=["adv_att_pos", "without_adversarial"])
    runs = experiment.out / "runs"
    # the baseline's record gives the identity of the encoder it saved, as a run over it is keyed
    baseline_path = runs / "baseline-seed1" / "metrics.json"
    baseline = json.loads(baseline_path.read_text())
    identity = made[0]["extra"]["run_key_parts"]["encoder"]["identity"]
    assert baseline["extra"]["saved_encoder_identity"] == identity
    assert load_checkpoint(experiment.out / "checkpoints" / "baseline-seed1")[1].identity == identity
    before = {p: p.read_bytes() for p in runs.rglob("metrics.json")}
    encoder_dir = experiment.out / "checkpoints" / "baseline-seed1" / "encoder"
    away = encoder_dir.with_name("encoder-away")
    encoder_dir.rename(away)
    try:
        verified = replace(experiment, missing="skip")
        back = verified.run_shared(variants, shared, [1], only=["adv_att_pos", "without_adversarial"])
        assert [m["timestamp_utc"] for m in back] == [m["timestamp_utc"] for m in made]
        assert not verified.skipped and not verified.unverified  # keyed by the identity the baseline saved
        # and that identity is what keys them: another one in the baseline's record leaves both out
        baseline_path.write_text(json.dumps({**baseline, "extra": {**baseline["extra"],
                                                                   "saved_encoder_identity": "0" * 64}}))
        other_encoder = replace(experiment, missing="skip")
        assert other_encoder.run_shared(variants, shared, [1], only=["adv_att_pos", "without_adversarial"]) == []
        assert len(other_encoder.skipped) == 2 and not other_encoder.unverified
        # a baseline record made before records gave that identity: each run's own, named as unverified
        old = {**baseline, "extra": {k: v for k, v in baseline["extra"].items() if k != "saved_encoder_identity"}}
        baseline_path.write_text(json.dumps(old))
        skip = replace(experiment, missing="skip")
        back = skip.run_shared(variants, shared, [1], only=["adv_att_pos", "without_adversarial"])
        assert [m["timestamp_utc"] for m in back] == [m["timestamp_utc"] for m in made]
        assert not skip.skipped
        assert skip.unverified == [f"shared-adv_att_pos seed 1: encoder {identity[:16]} as recorded",
                                   f"shared-without_adversarial seed 1: encoder {identity[:16]} as recorded"]
        assert "2 runs read back with their encoder's checksum unchecked" in skip.skipped_summary()
        # a run older than its seed's baseline record was made over an encoder since replaced: left out
        baseline_path.write_text(json.dumps({**old, "timestamp_utc": "2999-01-01T00:00:00Z"}))
        later = replace(experiment, missing="skip")
        assert later.run_shared(variants, shared, [1], only=["adv_att_pos"]) == [] and not later.unverified
        assert "before its seed's baseline record (2999-01-01T00:00:00Z)" in later.skipped[0]
        baseline_path.write_text(json.dumps(old))
        # any other part of the key still counts: another head learning rate is a stale record, left out
        other = resolve_variants(_base(finetune=False, lr=0.0, head_lr=0.5), blocks)
        stale = replace(experiment, missing="skip")
        assert stale.run_shared(variants, other, [1], only=["without_adversarial"]) == []
        assert stale.skipped == ["shared-without_adversarial seed 1: its metrics.json is stale (the log line says what "
                                 "differs)"] and not stale.unverified
        assert "config.head_lr: 0.01 -> 0.5" in caplog.text
        assert not encoder_dir.exists()  # nothing was trained or saved in its place
    finally:
        away.rename(encoder_dir)
        baseline_path.write_bytes(before[baseline_path])
    assert {p: p.read_bytes() for p in runs.rglob("metrics.json")} == before
    # with the encoder there, its checksum is checked as before
    checked = replace(experiment, missing="skip")
    assert len(checked.run_shared(variants, shared, [1], only=["adv_att_pos"])) == 1 and not checked.unverified
