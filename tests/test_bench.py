"""The bench (issue 15): FLOP counting, the peer's label alignment, and a smoke run appending to bench.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xner_lib.bench import (
    BenchConfig,
    _peer_features,
    _wall_clock_stop,
    encoder_flops,
    layer_shape_gflops,
    matmul_gflops,
    ours_baseline,
    profile_steps,
    run_bench,
)
from xner_lib.config import load_profile
from xner_lib.encoders import load_encoder


def test_encoder_flops_count_layer_weights_and_attention_at_the_real_lengths() -> None:
    enc = load_encoder("tiny-random-bert")
    layers = enc.model.encoder.layer
    weights = sum(p.numel() for p in layers.parameters() if p.dim() > 1)
    h, n_layers = enc.model.config.hidden_size, len(layers)
    assert encoder_flops(enc.model, [5]) == 2 * weights * 5 + 4 * n_layers * 25 * h
    assert encoder_flops(enc.model, [5, 7]) == encoder_flops(enc.model, [5]) + encoder_flops(enc.model, [7])
    assert weights < sum(p.numel() for p in enc.model.parameters())  # embeddings are a lookup, not counted


def test_the_peer_labels_the_first_piece_of_each_word_only() -> None:
    enc = load_encoder("tiny-random-bert")
    words = ["Washington", "visited", "Xyzzyqwerty"]
    rows, word_ids = _peer_features(enc.tokenizer, [words], [["B-LOC", "O", "B-PER"]],
                                    {"O": 0, "B-LOC": 1, "B-PER": 2}, 64)
    wid, labels = word_ids[0], rows[0]["labels"]
    assert len(labels) == len(rows[0]["input_ids"]) == len(wid)
    firsts = [p for p, w in enumerate(wid) if w is not None and (p == 0 or wid[p - 1] != w)]
    assert [labels[p] for p in firsts] == [1, 0, 2]
    assert all(labels[p] == -100 for p in range(len(wid)) if p not in firsts)


def test_matmul_limit_is_a_positive_rate_and_one_timed_step_is_refused() -> None:
    assert 0 < matmul_gflops(128, seconds=0.05) < 1e5
    with pytest.raises(ValueError, match="steps >= 2"):
        BenchConfig(steps=1)
    for bad in (0, -1.0, float("nan"), "soon"):
        with pytest.raises(ValueError):
            BenchConfig(peer_minutes=bad)
    assert BenchConfig(peer_minutes="ours").peer_minutes == "ours"
    with pytest.raises(ValueError, match="profile_steps < steps"):
        BenchConfig(steps=3, profile_steps=3)  # its warm-up step needs one batch more than the timed ones


def test_the_layer_limit_weighs_each_product_by_its_share_of_the_layer_flops(monkeypatch: pytest.MonkeyPatch
                                                                             ) -> None:
    import xner_lib.bench as bench

    h, i, heads, rows, seq = 32, 128, 4, 64, 16
    flops = {"projection": 2 * rows * h * h, "ffn_in": 2 * rows * h * i, "ffn_out": 2 * rows * i * h,
             "scores": 2 * rows * seq * h, "context": 2 * rows * seq * h}  # one call of each
    out = layer_shape_gflops(h, i, heads, rows, seq, seconds=0.05)
    assert set(out["gflops"]) == set(flops) and all(r > 0 for r in out["gflops"].values())
    per_layer = {**flops, "projection": 4 * flops["projection"]}  # Q, K, V and the output projection
    assert out["flop_share"] == pytest.approx({k: v / sum(per_layer.values()) for k, v in per_layer.items()})
    # every product timed at 1 ms a call: a layer makes 8 calls (4 projections), so it runs at its FLOPs / 8 ms
    monkeypatch.setattr(bench, "_best_gflops", lambda product, f, seconds: f / 1e-3 / 1e9)
    fixed = layer_shape_gflops(h, i, heads, rows, seq)
    assert fixed["layer_mix_gflops"] == pytest.approx(sum(per_layer.values()) / 8e-3 / 1e9)


def _toy_tagger_and_data(tmp_path: Path, finetune: bool):  # noqa: ANN202
    from xner_lib.batches import prepare
    from xner_lib.data import Dataset, Sentence
    from xner_lib.model import HeadConfig
    from xner_lib.tagger import build_tagger
    from xner_lib.train import TrainConfig

    enc = load_encoder("tiny-random-bert")
    words = [["Angela", "Merkel", "visited", "Paris", "today"], ["John", "lives", "in", "Berlin"]] * 4
    tags = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-PER", "O", "O", "B-LOC"]] * 4
    sentences = [Sentence(w, t, list(range(1, len(w) + 1))) for w, t in zip(words, tags, strict=True)]
    data = prepare(Dataset("toy", "train", "conll", tmp_path / "toy.txt", sentences), enc, frozen=False)
    tagger = build_tagger(HeadConfig(input_dim=enc.hidden_size), enc, finetune=finetune)
    return tagger, data, TrainConfig(encoder="tiny-random-bert", batch_size=2, seed=1)


def test_the_step_profile_times_an_encoder_backward_only_where_the_encoder_learns(tmp_path: Path) -> None:
    tagger, data, cfg = _toy_tagger_and_data(tmp_path, finetune=True)
    before = [p.detach().clone() for p in tagger.encoder_model.parameters()]
    prof = profile_steps(tagger, data, cfg, steps=3)
    assert prof["steps"] == 3 and prof["device"] == "cpu"
    assert all(v > 0 for v in prof["mean_seconds"].values())  # a fine-tuned encoder has a backward of its own
    assert any(not torch.equal(a, b) for a, b in zip(before, tagger.encoder_model.parameters(), strict=True))
    with pytest.raises(ValueError, match="need 5 batches, the data has 4"):
        profile_steps(tagger, data, cfg, steps=4)
    layers = tagger.encoder_model.encoder.layer
    for p in list(tagger.encoder_model.embeddings.parameters()) + list(layers[0].parameters()):
        p.requires_grad_(False)  # the lower part frozen: the gradient still runs through the upper layers
    assert profile_steps(tagger, data, cfg, steps=2)["mean_seconds"]["encoder_backward"] > 0
    for p in tagger.encoder_model.parameters():
        p.requires_grad_(False)  # all of it frozen: the unit vectors need no gradient, nothing runs past the head
    frozen = profile_steps(tagger, data, cfg, steps=2)["mean_seconds"]
    assert frozen["encoder_backward"] == 0.0 and frozen["head_backward"] > 0


def test_only_a_variant_with_the_baseline_step_is_profiled() -> None:
    from xner_lib.bench import plain_step
    from xner_lib.config import from_params
    from xner_lib.experiment import resolve_variants
    from xner_lib.train import TrainConfig

    params = load_profile("smoke")
    variants = resolve_variants(from_params(TrainConfig, params, "train_"), params["variants"])
    plain = {n for n, v in variants.items() if isinstance(v, TrainConfig) and plain_step(v)}
    assert {"baseline", "freeze_lower", "checkpoint_average"} <= plain
    assert not plain & {"adv_att_pos", "without_transfer", "without_adversarial", "self_training", "translate_train"}
    assert BenchConfig(steps=5).profile_steps == 4 and BenchConfig().profile_steps == 10


def test_the_peer_stops_at_the_first_step_end_past_its_wall_time() -> None:
    from transformers import TrainerControl, TrainerState

    state, control = TrainerState(), TrainerControl()
    late = _wall_clock_stop(60.0)
    late.on_train_begin(None, state, control)
    state.global_step = 5
    late.on_step_end(None, state, control)
    assert not control.should_training_stop and late.stopped_at_step is None
    now = _wall_clock_stop(0.0)
    now.on_train_begin(None, state, control)
    now.on_step_end(None, state, control)
    assert control.should_training_stop and now.stopped_at_step == 5


def _record(runs: Path, seed: int, seconds: float, pd: float, weibo: float) -> None:
    d = runs / f"baseline-seed{seed}"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({
        "extra": {"seconds": {"train": seconds}, "steps": 10},
        "scores": {"peoples_daily_test": {"peoples_daily": {"strict": {"f1": pd}}},
                   "weibo_test": {"weibo_nam": {"strict": {"f1": weibo}}}}}))


def test_ours_is_every_made_baseline_seed_and_their_mean(tmp_path: Path) -> None:
    assert ours_baseline(tmp_path, [1, 2]) == {"seeds": {}, "mean": None}
    _record(tmp_path, 1, 600.0, 0.5, 0.4)
    _record(tmp_path, 3, 1200.0, 0.6, 0.3)
    _record(tmp_path, 9, 6000.0, 0.0, 0.0)  # not a profile seed
    ours = ours_baseline(tmp_path, [1, 2, 3])
    assert sorted(ours["seeds"]) == [1, 3] and ours["seeds"][3]["train_minutes"] == 20.0
    assert ours["mean"] == pytest.approx({"train_minutes": 15.0, "peoples_daily_f1": 0.55, "weibo_f1": 0.35})


@pytest.mark.slow
def test_a_smoke_bench_measures_every_stage_and_keeps_a_history(tmp_path: Path, data_dir: Path) -> None:
    params = load_profile("smoke") | {"data_dir": str(data_dir)}
    config = BenchConfig(matmul_size=128, extraction_sentences=8, inference_sentences=8, steps=2,
                         variants=("baseline", "adv_att_pos"), peer_steps=3, peer_minutes=1e-6,
                         profile_steps=1)
    lines: list[str] = []
    first = run_bench(params, config, out=tmp_path, log=lines.append)
    assert first["extraction"]["tokens"] > 0 and 0 < first["extraction"]["share_of_limit"]
    assert [r["variant"] for r in first["training"]] == ["baseline"]
    assert first["training_skipped"] == {"adv_att_pos": "no saved baseline to be its teacher"}
    assert first["inference"]["sentences"] == 8
    assert first["step_profile"]["variant"] == "baseline" and first["step_profile"]["steps"] == 1
    assert set(first["step_profile"]["share"]) == {"encoder_forward", "head_forward", "head_backward",
                                                   "encoder_backward", "optimizer"}
    prof = first["extraction"]["profile"]
    assert 0 < prof["matmul_share"] < 1 and prof["wall_seconds"] > 0
    assert prof["matmul_share"] + sum(prof["top_other_ops"].values()) + prof["outside_ops_share"] <= 1 + 1e-6
    shape = first["extraction"]["shape_limit"]
    assert shape["layer_mix_gflops"] > 0 and shape["seq_len"] >= 1
    assert first["extraction"]["share_of_shape_limit"] == pytest.approx(
        first["extraction"]["gflops"] / shape["layer_mix_gflops"])
    # stopped by the clock after its first step, its schedule planned over 3
    assert first["peer"]["steps"] == 1 and first["peer"]["planned_steps"] == 3 and first["peer"]["stopped_by_clock"]
    assert first["ours_baseline"] == {"seeds": {}, "mean": None}
    assert set(first["peer"]["scores"]) == {"peoples_daily_test", "weibo_test"}
    assert first["git"]["commit"] and first["versions"]["torch"]
    assert any(line.startswith("peer (HF Trainer)") for line in lines)
    run_bench(params, BenchConfig(matmul_size=128, extraction_sentences=4, inference_sentences=4, steps=2,
                                  variants=("baseline",), peer_steps=0, profile_steps=0), out=tmp_path,
              log=lines.append)
    history = json.loads((tmp_path / "bench.json").read_text())
    assert len(history) == 2 and "peer" not in history[1] and "step_profile" not in history[1]
    assert "profile" not in history[1]["extraction"]
    with pytest.raises(ValueError, match="no baseline run"):
        run_bench(params, BenchConfig(matmul_size=128, extraction_sentences=4, inference_sentences=4, steps=2,
                                      variants=("baseline",), peer_steps=2, peer_minutes="ours", profile_steps=0),
                  out=tmp_path)


def test_chinese_characters_take_the_tag_of_their_piece_and_continue_its_entity() -> None:
    from xner_lib.bench import piece_tags_to_tokens

    # pieces: 0 = "北京" (B-LOC), 1 = "人" (O), 2 = "毛泽" (B-PER), 3 = "东" (I-PER); the last character cut off
    assert piece_tags_to_tokens([0, 0, 1, 2, 2, 3, None, 9], ["B-LOC", "O", "B-PER", "I-PER"]) == [
        "B-LOC", "I-LOC", "O", "B-PER", "I-PER", "I-PER", "O", "O"]
    assert piece_tags_to_tokens([0, 0], ["O"]) == ["O", "O"]


def test_the_peer_reads_chinese_as_a_string_one_tag_per_character(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from xner_lib.bench import peer_predict
    from xner_lib.data import Dataset, Sentence
    from xner_lib.units import encode_sentences

    class PositionModel(torch.nn.Module):
        """Arg-max label at input position j: j mod 3, so each character's tag names the position it was read at."""

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
            j = torch.arange(input_ids.shape[1]).expand(input_ids.shape[0], -1)
            return SimpleNamespace(logits=torch.nn.functional.one_hot(j % 3, 3).float())

    enc = load_encoder("tiny-random-bert")
    chars = list("上司会以为你不尊重他")
    sentence = Sentence(chars, ["O"] * len(chars), list(range(1, len(chars) + 1)))
    data = Dataset("toy", "test", "peoples_daily", tmp_path / "toy.txt", [sentence])
    labels = ["O", "B-PER", "I-PER"]
    pos = encode_sentences(enc.tokenizer, data.sentences, "zh", zh_units="char")[0].unit_pos
    tags, cut = peer_predict(PositionModel(), enc.tokenizer, data, labels, 64)
    assert cut == 0 and tags[0] == [labels[(p + 1) % 3] for p in pos]  # piece p sits at p + 1, after [CLS]
    short, cut = peer_predict(PositionModel(), enc.tokenizer, data, labels, 5)  # [CLS], 3 pieces, [SEP]
    assert cut == sum(p >= 3 for p in pos) > 0
    assert short[0] == [labels[(p + 1) % 3] if p < 3 else "O" for p in pos]
