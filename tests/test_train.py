"""Training loop, batching and checkpoints on the tiny random encoder and small fixtures."""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from xner_lib.batches import length_batches, prepare
from xner_lib.data import Dataset, Sentence, read_file
from xner_lib.encoders import load_encoder
from xner_lib.experiment import Corpora, run_or_load
from xner_lib.tagger import load_checkpoint, predict, save_checkpoint
from xner_lib.train import TrainConfig, train


def _toy(n: int, lang: str) -> Dataset:
    """A learnable toy corpus: capitalised names after 'Mr' are PER, after 'in' LOC."""
    rng = random.Random(0)
    sents = []
    for _ in range(n):
        name = rng.choice(["Smith", "Jones", "Paris", "Berlin", "Brown", "Rome"])
        cue = rng.choice(["Mr", "in"])
        toks = ["the", "man", cue, name, "said"]
        tags = ["O", "O", "O", "B-PER" if cue == "Mr" else "B-LOC", "O"]
        sents.append(Sentence(toks, tags, list(range(1, 6))))
    return Dataset("toy", "train", "conll" if lang == "en" else "peoples_daily", Path("toy"), sents)


def test_length_batches_cover_every_sentence_once() -> None:
    lengths = [random.Random(1).randint(1, 50) for _ in range(203)]
    batches = length_batches(lengths, 16, random.Random(0))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(203))
    assert all(len(b) <= 16 for b in batches)


@pytest.mark.parametrize("finetune", [True, False])
def test_training_learns_and_checkpoint_reloads_to_identical_predictions(tmp_path: Path, finetune: bool,
                                                                         fixtures: Path) -> None:
    torch.set_num_threads(1)
    enc = load_encoder("tiny-random-bert")
    data = _toy(64, "en")
    prep = prepare(data, enc, frozen=not finetune, cache_dir=tmp_path / "cache")
    cfg = TrainConfig(encoder="tiny-random-bert", finetune=finetune, epochs=8, batch_size=8, lr=1e-3,
                      head_lr=1e-2, seed=3, head={"dropout": 0.1})
    result = train(cfg, enc, prep, prep, progress=False)
    assert result.history[-1]["loss"] < result.history[0]["loss"] / 2
    assert result.best_dev_f1 == max(r["dev_f1"] for r in result.dev_history) > 0.9
    before = predict(result.tagger, prep, progress=False)
    ckpt = save_checkpoint(result.tagger, tmp_path / "ckpt", asdict(cfg))
    assert json.loads((ckpt / "config.json").read_text())["labels"][0] == "O"
    tagger, enc2, cfg2 = load_checkpoint(ckpt, tmp_path / "cache")
    assert TrainConfig(**cfg2) == cfg
    zh = read_file(fixtures / "peoples_daily_small.txt", "peoples_daily")
    for ds in (data, zh):
        a = predict(result.tagger, prepare(ds, enc, frozen=not finetune, cache_dir=tmp_path / "cache"), progress=False)
        b = predict(tagger, prepare(ds, enc2, frozen=not finetune, cache_dir=tmp_path / "cache"), progress=False)
        assert a == b and [len(p) for p in a] == [len(s) for s in ds]
    assert before == predict(tagger, prepare(data, enc2, frozen=not finetune, cache_dir=tmp_path / "cache"),
                             progress=False)


def test_same_seed_same_run(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = _toy(32, "en")
    losses = []
    for _ in range(2):
        enc = load_encoder("tiny-random-bert")
        prep = prepare(data, enc, frozen=False)
        cfg = TrainConfig(encoder="tiny-random-bert", epochs=1, batch_size=8, seed=5)
        losses.append([h["loss"] for h in train(cfg, enc, prep, prep, progress=False).history])
    assert losses[0] == losses[1]


def test_run_or_load_resumes_from_metrics(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    enc = load_encoder("tiny-random-bert")
    en, zh = _toy(16, "en"), _toy(8, "zh")
    zh.sentences = [Sentence(list("在北京"), ["O", "B-LOC", "I-LOC"], [1, 2, 3])] * 4
    corpora = Corpora(*(prepare(d, enc, frozen=False) for d in (en, en, en, _weibo(), zh)))
    cfg = TrainConfig(encoder="tiny-random-bert", epochs=1, batch_size=8, seed=2)
    calls = []

    def factory():
        calls.append(1)
        return load_encoder("tiny-random-bert")

    m1 = run_or_load("baseline", cfg, factory, corpora, tmp_path, progress=False, encoder=enc)
    m2 = run_or_load("baseline", cfg, factory, corpora, tmp_path, progress=False, encoder=enc)
    assert len(calls) == 1 and m1 == m2
    assert set(m1["scores"]) == {"conll_dev", "conll_test", "weibo_test", "peoples_daily_test"}
    assert set(m1["scores"]["weibo_test"]) == {"weibo_nam", "weibo_nam_nom"}
    assert m1["extra"]["unk_counts"]["weibo_test"]["tokens"] == 3
    run_or_load("baseline", TrainConfig(encoder="tiny-random-bert", epochs=1, batch_size=4, seed=2), factory,
                corpora, tmp_path, progress=False, encoder=enc)
    assert len(calls) == 2  # a changed config retrains


def _weibo() -> Dataset:
    s = Sentence(list("张三说"), ["B-PER.NAM", "I-PER.NAM", "O"], [1, 2, 3], word_pos=[0, 1, 0])
    return Dataset("weibo", "test", "weibo", Path("w"), [s])


def test_freeze_embeddings_keeps_the_word_table_and_trains_the_rest() -> None:
    torch.set_num_threads(1)
    enc = load_encoder("tiny-random-bert")
    table = enc.model.get_input_embeddings().weight.detach().clone()
    layer = enc.model.encoder.layer[0].attention.self.query.weight.detach().clone()
    data = _toy(16, "en")
    prep = prepare(data, enc, frozen=False)
    cfg = TrainConfig(encoder="tiny-random-bert", epochs=1, batch_size=8, lr=1e-3, freeze_embeddings=True)
    train(cfg, enc, prep, prep, progress=False)
    assert torch.equal(enc.model.get_input_embeddings().weight, table)
    assert not torch.equal(enc.model.encoder.layer[0].attention.self.query.weight, layer)


def test_freezing_the_embedding_layer_and_lower_layers_stops_the_backward_pass_below_them() -> None:
    torch.set_num_threads(1)
    data = _toy(16, "en")
    seen: dict[bool, list[bool]] = {}
    for whole in (False, True):
        enc = load_encoder("tiny-random-bert")
        emb = {k: v.detach().clone() for k, v in enc.model.embeddings.state_dict().items()}
        layers = enc.model.encoder.layer
        low, high = (layers[i].attention.self.query.weight.detach().clone() for i in (0, 1))
        seen[whole] = []
        layers[0].register_forward_hook(lambda m, i, o, out=seen[whole]: out.append(o[0].requires_grad)
                                        if m.training else None)  # training steps, not the dev evaluations
        cfg = TrainConfig(encoder="tiny-random-bert", epochs=1, batch_size=8, lr=1e-3, freeze_embeddings=True,
                          freeze_layers=1, freeze_embedding_layer=whole)
        train(cfg, enc, prepare(data, enc, frozen=False), prepare(data, enc, frozen=False), progress=False)
        after = enc.model.embeddings.state_dict()
        assert torch.equal(after["word_embeddings.weight"], emb["word_embeddings.weight"])
        moved = [k for k in emb if not torch.equal(after[k], emb[k])]
        assert (moved == []) if whole else ("position_embeddings.weight" in moved)
        assert torch.equal(layers[0].attention.self.query.weight, low)
        assert not torch.equal(layers[1].attention.self.query.weight, high)
    # in training, the frozen layer's output needs a gradient only while a trained embedding lies below it
    assert seen[False] and all(seen[False]) and seen[True] and not any(seen[True])


def _misc_toy(n: int) -> Dataset:
    """The toy corpus with a MISC word ('German') in every sentence."""
    base = _toy(n, "en")
    sents = [Sentence([*s.tokens, "German"], [*s.tags, "B-MISC"], list(range(1, 7))) for s in base.sentences]
    return Dataset("toy", "train", "conll", Path("toy"), sents)


def test_evaluations_fall_on_epoch_boundaries_and_patience_stops_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import xner_lib.train as train_module

    torch.set_num_threads(1)
    enc = load_encoder("tiny-random-bert")
    prep = prepare(_toy(40, "en"), enc, frozen=False)  # 5 steps an epoch at batch 8
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.69, 0.9, 0.95])  # a stand-in dev F1 per evaluation
    monkeypatch.setattr(train_module, "score", lambda gold, pred: {"strict": {"f1": next(scores)},
                                                                    "conlleval": {"f1": 0.0}})
    cfg = TrainConfig(encoder="tiny-random-bert", epochs=3, batch_size=8, evals_per_epoch=2, patience=3, seed=1)
    result = train(cfg, enc, prep, prep, progress=False, snapshot_epoch=1.0)
    steps = [r["step"] for r in result.dev_history]
    assert steps == [2, 5, 8, 10, 12]  # round(k * 5 / 2): epoch 1 ends at step 5; stopped after 3 without a best
    assert result.stopped_early and len(result.history) == 12
    assert result.best_step == 5 and result.best_dev_f1 == 0.7
    assert result.snapshot is not None and result.snapshot[0] == 5  # the best up to epoch 1


def test_without_a_misc_class_misc_is_trained_and_selected_as_o() -> None:
    torch.set_num_threads(1)
    enc = load_encoder("tiny-random-bert")
    prep = prepare(_misc_toy(16), enc, frozen=False)
    cfg = TrainConfig(encoder="tiny-random-bert", epochs=4, batch_size=8, lr=1e-3, head_lr=1e-2, seed=3,
                      misc_class=False, head={"dropout": 0.1})
    result = train(cfg, enc, prep, prep, progress=False)
    assert not any("MISC" in x for x in result.tagger.head.config.labels)
    assert result.label_counts["as_o:MISC"] == 16 and result.label_counts["entities"] == 32
    assert result.best_dev_f1 > 0.9  # selection ignores the MISC gold it cannot predict


def test_accumulate_mean_is_the_uniform_mean_of_the_state_dicts() -> None:
    from xner_lib.train import accumulate_mean

    g = torch.Generator().manual_seed(0)
    states = [{"w": torch.randn(3, 4, generator=g), "b": torch.randn(2, generator=g).half(),
               "n": torch.tensor(i)} for i in range(3)]
    mean = None
    for i, s in enumerate(states):
        mean = accumulate_mean(mean, s, i)
    assert mean is not None
    torch.testing.assert_close(mean["w"], torch.stack([s["w"] for s in states]).mean(0))
    torch.testing.assert_close(mean["b"], torch.stack([s["b"].float() for s in states]).mean(0))
    assert mean["b"].dtype == torch.float32 and int(mean["n"]) == 2  # a non-floating entry keeps the latest
    assert states[0]["w"] is not mean["w"]  # the first state dict is copied, not updated in place
    with pytest.raises(ValueError, match="other models"):
        accumulate_mean(mean, {"w": states[0]["w"]}, 3)
    with pytest.raises(ValueError, match="no mean to update"):
        accumulate_mean(None, states[0], 2)


def test_checkpoint_averaging_keeps_the_mean_of_the_evaluations_from_its_epoch_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import xner_lib.train as train_module

    torch.set_num_threads(1)
    enc = load_encoder("tiny-random-bert")
    prep = prepare(_toy(40, "en"), enc, frozen=False)  # 5 steps an epoch at batch 8: evaluations at 2, 5, 8, 10
    seen: dict[int, dict[str, torch.Tensor]] = {}
    real = train_module.accumulate_mean

    def spy(mean, state, n):  # type: ignore[no-untyped-def]
        seen[len(seen)] = {k: v.detach().clone().float() for k, v in state.items() if v.is_floating_point()}
        return real(mean, state, n)

    monkeypatch.setattr(train_module, "accumulate_mean", spy)
    cfg = TrainConfig(encoder="tiny-random-bert", epochs=2, batch_size=8, evals_per_epoch=2, lr=1e-3,
                      head_lr=1e-2, seed=1, average_from_epoch=1.0)
    result = train(cfg, enc, prep, prep, progress=False)
    assert result.averaged_steps == [5, 8, 10]  # the evaluations at epoch 1, 1.6 and 2
    assert len(seen) == 3 and result.averaged_dev_f1 is not None
    state = result.tagger.state_dict()
    for k in seen[0]:
        torch.testing.assert_close(state[k].float(), torch.stack([seen[i][k] for i in range(3)]).mean(0))
    moved = [k for k in seen[0] if not torch.equal(seen[0][k], seen[2][k])]
    assert moved  # the weights moved between the evaluations, so the mean is none of them
    assert result.selected is not None and result.selected[0] == result.best_step
    assert any(not torch.equal(result.selected[1][k].float(), state[k].float()) for k in moved)
    with pytest.raises(ValueError, match="average_from_epoch"):
        TrainConfig(epochs=2, average_from_epoch=3.0)


def test_checkpoint_averaging_before_its_epoch_keeps_the_last_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    import xner_lib.train as train_module

    torch.set_num_threads(1)
    enc = load_encoder("tiny-random-bert")
    prep = prepare(_toy(40, "en"), enc, frozen=False)
    scores = iter([0.9, 0.5, 0.5, 0.5])  # no new best after the first (step 2): patience 2 stops at step 8
    monkeypatch.setattr(train_module, "score", lambda gold, pred: {"strict": {"f1": next(scores)},
                                                                    "conlleval": {"f1": 0.0}})
    cfg = TrainConfig(encoder="tiny-random-bert", epochs=3, batch_size=8, evals_per_epoch=2, patience=2, seed=1,
                      average_from_epoch=2.0)
    result = train(cfg, enc, prep, prep, progress=False)
    assert result.stopped_early and len(result.history) == 8  # epoch 1.6, before average_from_epoch 2
    assert result.averaged_steps == [8] and result.best_step == 2 and result.averaged_dev_f1 == 0.5
