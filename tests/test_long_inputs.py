"""Long inputs (issue 17, point 2): English sentences of 600 and 5,000 tokens and a Chinese text of 10,000
characters pass through a training step, evaluation (in training, and ``evaluate``) and ``predict`` on the
tiny encoder, windowed, with one prediction per token."""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
from dataclasses import asdict
from pathlib import Path

import pytest

from xner_lib import cli
from xner_lib.batches import prepare
from xner_lib.data import Dataset, Sentence
from xner_lib.data.labels import MODEL_LABELS
from xner_lib.encoders import load_encoder
from xner_lib.tagger import predict, save_checkpoint
from xner_lib.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["the", "man", "said", "that", "Mr", "Smith", "lives", "in", "Berlin", "and", "works", "for", "Siemens"]
HANZI = "我爱北京天安门上司会以为你不尊重他张三在上海说"
LENGTHS = {"en": (600, 5_000), "zh": (10_000,)}


def _tags(tokens: list[str], rng: random.Random) -> list[str]:
    """Some entities, so that training and scoring have chunks to handle: a random B- now and then, I- after."""
    tags, prev = [], "O"
    for _ in tokens:
        r = rng.random()
        if r < 0.8:
            tag = "O"
        elif r < 0.9 or prev == "O":
            tag = f"B-{rng.choice(['PER', 'LOC', 'ORG'])}"
        else:
            tag = "I-" + prev[2:]
        tags.append(tag)
        prev = tag
    return tags


def long_dataset(language: str) -> Dataset:
    rng = random.Random(len(language))
    sentences = []
    for n in LENGTHS[language]:
        tokens = [rng.choice(WORDS) for _ in range(n)] if language == "en" else [rng.choice(HANZI) for _ in range(n)]
        sentences.append(Sentence(tokens, _tags(tokens, rng), list(range(1, n + 1))))
    fmt = "conll" if language == "en" else "peoples_daily"
    return Dataset(f"long_{language}", "test", fmt, Path(f"long_{language}"), sentences)


def write_corpus(ds: Dataset, path: Path) -> Path:
    """``ds`` as a file of its format (CoNLL: four columns; People's Daily: two)."""
    cols = (lambda t, g: f"{t} NN O {g}") if ds.format == "conll" else (lambda t, g: f"{t} {g}")
    path.write_text("\n\n".join("\n".join(cols(t, g) for t, g in zip(s.tokens, s.tags, strict=True)) for s in ds)
                    + "\n", encoding="utf-8")
    return path


def run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = cli.main(argv)
    return rc, out.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One training step on the long English sentences, evaluated in training on the long Chinese text, and
    one step on the Chinese text evaluated on the English; returns the cache and the English run's checkpoint."""
    root = tmp_path_factory.mktemp("long")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XNER_CACHE_DIR", str(root / "cache"))
        enc = load_encoder("tiny-random-bert")
        en, zh = (prepare(long_dataset(lang), enc, frozen=False, zh_units="char") for lang in ("en", "zh"))
        width = enc.max_length - 2
        assert max(len(e.input_ids) for e in en.encoded) > 10 * width  # windowed, many times over
        assert len(zh.encoded[0].input_ids) > 10 * width
        cfg = TrainConfig(encoder="tiny-random-bert", epochs=1, batch_size=2, evals_per_epoch=1, seed=1, lr=1e-3,
                          head_lr=1e-2)
        for train_data, dev_data in ((zh, en), (en, zh)):  # the English run is kept
            result = train(cfg, enc, train_data, dev_data, progress=False)
            assert len(result.history) == 1 and math.isfinite(result.history[0]["loss"])
            assert [r["step"] for r in result.dev_history] == [1]
        for data in (en, zh):
            preds = predict(result.tagger, data, progress=False)
            assert [len(p) for p in preds] == [len(s) for s in data.dataset]
            assert all(t in MODEL_LABELS for p in preds for t in p)
        yield root / "cache", save_checkpoint(result.tagger, root / "model", asdict(cfg))


@pytest.mark.parametrize("language", ["en", "zh"])
def test_evaluate_scores_every_token_of_long_sentences(trained: tuple[Path, Path], tmp_path: Path,
                                                       language: str) -> None:
    cache, model = trained
    ds = long_dataset(language)
    path = write_corpus(ds, tmp_path / "long.txt")
    out_json = tmp_path / "scores.json"
    rc, out = run_cli(["evaluate", "--model", str(model), "--cache-dir", str(cache), "--device", "cpu", "--input",
                       str(path), "--format", ds.format, "--out", str(out_json)])
    assert rc == 0
    record = json.loads(out_json.read_text(encoding="utf-8"))
    assert (record["sentences"], record["tokens"]) == (len(ds), sum(LENGTHS[language]))
    assert record["scores"]["strict"]["support"] == sum(ds.entity_counts().values()) > 0


def test_predict_gives_one_tag_per_token_of_long_texts(trained: tuple[Path, Path], tmp_path: Path) -> None:
    cache, model = trained
    en, zh = long_dataset("en"), long_dataset("zh")
    texts = [" ".join(s.tokens) for s in en] + ["".join(zh.sentences[0].tokens)]
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    rc, out = run_cli(["predict", "--model", str(model), "--cache-dir", str(cache), "--device", "cpu", "--input",
                       str(path), "--format", "conll"])
    assert rc == 0
    blocks = [[line.split("\t") for line in block.splitlines()] for block in out.rstrip("\n").split("\n\n")]
    assert [len(b) for b in blocks] == [600, 5_000, 10_000]
    assert [[tok for tok, _ in b] for b in blocks] == [s.tokens for s in en] + [zh.sentences[0].tokens]
    assert all(tag in MODEL_LABELS for b in blocks for _, tag in b)
