"""Device placement and mixed precision (issue 16), tested on a CPU: how ``auto``/``cpu``/``cuda``/``cuda:N``
resolve (CUDA monkeypatched), the autocast and GradScaler choice as pure functions, a training step under CPU
bf16 autocast, that nothing outside ``xner_lib/device.py`` places tensors on a GPU, the fail-fast messages (a GPU
this machine lacks, the paper's encoder offline), and a tiny BERT saved to a folder through the ``paper``
profile's code path."""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from xner_lib import device as dev
from xner_lib.batches import prepare
from xner_lib.cli import main as cli_main
from xner_lib.config import from_params, load_profile, notebook_parameters
from xner_lib.data import load
from xner_lib.device import (
    DeviceUnavailableError,
    autocast_dtype,
    check_device_setting,
    describe_device,
    mixed_precision,
    needs_grad_scaler,
    resolve_device,
    seed_everything,
    to_device,
)
from xner_lib.encoders import EncoderUnavailableError, check_encoder_available, load_encoder, tiny_encoder
from xner_lib.experiment import UNLABELLED_SETS, experiment_from_params, resolve_variants, text_only
from xner_lib.train import TrainConfig, key_config, train

REPO = Path(__file__).resolve().parents[1]


def _fake_cuda(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


# --- resolving the setting ---------------------------------------------------------------------------------

def test_auto_and_explicit_devices_resolve_with_and_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cuda(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    for spec in ("cuda", "cuda:0", "cuda:1"):
        with pytest.raises(DeviceUnavailableError) as info:
            resolve_device(spec)
        msg = str(info.value)
        assert repr(spec) in msg and "'auto'" in msg and "train_device" in msg and "\n" not in msg
    _fake_cuda(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda", 0)) == torch.device("cuda", 0)
    with pytest.raises(DeviceUnavailableError, match="2 CUDA GPU"):
        resolve_device("cuda:2")
    assert resolve_device("cpu") == torch.device("cpu")  # a GPU is there, and cpu still means the CPU


def test_cpu_never_asks_cuda_and_bad_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> bool:
        raise AssertionError("device 'cpu' must not query CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", boom)
    assert resolve_device("cpu").type == "cpu"
    assert mixed_precision(torch.device("cpu")).dtype is None
    for bad in ("gpu", "cuda:", "cuda:x", "CPU", "", "mps"):
        with pytest.raises(ValueError, match="auto, cpu, cuda, cuda:N"):
            check_device_setting(bad)
        with pytest.raises(ValueError, match="device must be one of"):
            TrainConfig(device=bad)
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="half")


# --- precision ------------------------------------------------------------------------------------------------

def test_autocast_and_grad_scaler_choice() -> None:
    assert autocast_dtype("cpu", "auto") is None and autocast_dtype("cpu", "auto", bf16_supported=True) is None
    assert autocast_dtype("cuda", "auto", bf16_supported=True) is torch.bfloat16
    assert autocast_dtype("cuda", "auto", bf16_supported=False) is torch.float16
    assert autocast_dtype("cuda", "fp32", True) is None and autocast_dtype("cpu", "fp32") is None
    assert autocast_dtype("cpu", "bf16") is torch.bfloat16 and autocast_dtype("cuda", "fp16", True) is torch.float16
    with pytest.raises(ValueError, match="needs a CUDA device"):
        autocast_dtype("cpu", "fp16")
    with pytest.raises(ValueError, match="does not support bfloat16"):
        autocast_dtype("cuda", "bf16", bf16_supported=False)
    assert needs_grad_scaler("cuda", torch.float16)
    assert not needs_grad_scaler("cuda", torch.bfloat16) and not needs_grad_scaler("cuda", None)
    assert not needs_grad_scaler("cpu", torch.bfloat16) and not needs_grad_scaler("cpu", None)


def test_mixed_precision_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    off = mixed_precision(torch.device("cpu"))
    assert (off.name, off.scaler) == ("fp32", None)
    with off.autocast():
        assert not torch.is_autocast_enabled("cpu")
    cpu_bf16 = mixed_precision(torch.device("cpu"), "bf16")
    with cpu_bf16.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    bf16 = mixed_precision(torch.device("cuda"))
    assert (bf16.device_type, bf16.name, bf16.scaler) == ("cuda", "bf16", None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CPU build warns that a CUDA GradScaler is disabled
        fp16 = mixed_precision(torch.device("cuda"))
    assert fp16.name == "fp16" and isinstance(fp16.scaler, torch.amp.GradScaler)
    assert mixed_precision(torch.device("cuda"), "fp32").dtype is None


def _small(data_dir: Path, n: int = 24):
    enc = load_encoder("tiny-random-bert")
    tr = prepare(load("conll2003/train.txt", data_dir, max_sentences=n), enc, frozen=False, zh_units="char")
    dv = prepare(load("conll2003/dev.txt", data_dir, max_sentences=n), enc, frozen=False, zh_units="char")
    target = prepare(text_only([load(p, data_dir, max_sentences=8) for p in UNLABELLED_SETS]), enc, frozen=False,
                     zh_units="char")
    return enc, tr, dv, target


def test_a_training_step_under_cpu_bf16_autocast_gives_finite_losses(data_dir: Path) -> None:
    """The mixed-precision path of the loop (autocast around the forward passes, the CRF and the discriminator in
    float32 outside it) on the CPU in bfloat16: finite losses, a different run from float32, weights float32."""
    torch.set_num_threads(1)
    cfg = TrainConfig(encoder="tiny-random-bert", epochs=1, batch_size=8, lr=1e-3, head_lr=1e-2, evals_per_epoch=1,
                      head={"attention": "double"}, adversarial={"weight": 0.1, "tokens": 32, "batch_size": 4})
    runs = {}
    for precision in ("bf16", "fp32"):
        enc, tr, dv, target = _small(data_dir)
        runs[precision] = train(replace(cfg, precision=precision), enc, tr, dv, progress=False, target=target)
    bf16 = runs["bf16"]
    assert len(bf16.history) == 3
    for row in bf16.history:
        assert all(math.isfinite(row[k]) for k in ("loss", "loss_adversarial", "dis_loss")), row
    assert [h["loss"] for h in bf16.history] != [h["loss"] for h in runs["fp32"].history]  # autocast was on
    assert bf16.device["precision"] == "bf16" and runs["fp32"].device["precision"] == "fp32"
    assert all(p.dtype == torch.float32 for p in bf16.tagger.parameters())
    assert math.isfinite(bf16.best_dev_f1)


# --- one module places tensors --------------------------------------------------------------------------------

FORBIDDEN = {
    r"\.cuda\(": ".cuda()",
    r"""["']cuda""": "a CUDA device named in a string (.to(\"cuda\"), device=\"cuda\", torch.device(\"cuda\"))",
    r"\.to\(\s*(self\.)?device\b": ".to(device): use device.to_device",
    r"pin_memory|DataLoader": "DataLoader / pinned memory (the loop builds its own batches)",
}


def test_device_placement_lives_in_one_module() -> None:
    hits = []
    for path in sorted((REPO / "xner_lib").rglob("*.py")):
        if path.name == "device.py":
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#", 1)[0]
            for pattern, what in FORBIDDEN.items():
                if re.search(pattern, code):
                    hits.append(f"{path.relative_to(REPO)}:{lineno}: {what}: {line.strip()}")
    assert not hits, "\n".join(hits)
    text = (REPO / "xner_lib" / "device.py").read_text(encoding="utf-8")
    assert "def to_device" in text and "def resolve_device" in text


def test_to_device_on_the_cpu_moves_nothing() -> None:
    t, m = torch.randn(3, 2), torch.ones(3, dtype=torch.bool)
    assert to_device(t, "cpu") is t
    pair = to_device((t, m), torch.device("cpu"))
    assert isinstance(pair, tuple) and pair[0] is t and pair[1] is m
    assert to_device(None, "cpu") is None and to_device({"a": [t]}, "cpu")["a"][0] is t
    module = torch.nn.Linear(2, 2)
    weight = module.weight
    assert to_device(module, "cpu") is module and module.weight is weight


def test_seeds_reach_cuda_and_keep_the_cpu_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    def draws() -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    before = draws()  # what train.set_seed drew before the device module
    seeded: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeded.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    seed_everything(7)
    assert draws() == before
    seeded.clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    seed_everything(7)
    assert seeded and set(seeded) == {7}  # every GPU's generator (torch.manual_seed queues it too)
    assert draws() == before


def test_the_device_record_for_metrics_json() -> None:
    rec = describe_device(torch.device("cpu"), mixed_precision(torch.device("cpu")), "auto")
    assert rec["requested"] == "auto" and rec["type"] == "cpu" and rec["precision"] == "fp32"
    assert rec["torch"] == torch.__version__ and rec["cuda"] == torch.version.cuda and rec["name"]
    json.dumps(rec)


def test_the_new_fields_are_neutral_in_run_keys() -> None:
    assert "device" not in key_config(TrainConfig()) and "precision" not in key_config(TrainConfig())
    assert key_config(TrainConfig(device="auto"))["device"] == "auto"
    assert key_config(TrainConfig(precision="fp32"))["precision"] == "fp32"


# --- fail fast -------------------------------------------------------------------------------------------------

def test_cuda_without_a_gpu_stops_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_cuda(monkeypatch, 0)
    enc = tiny_encoder()
    with pytest.raises(DeviceUnavailableError, match="'cuda'"):
        train(TrainConfig(device="cuda"), enc, None, None, progress=False)  # type: ignore[arg-type]
    # the notebooks' experiment checks the device before it loads an encoder or reads any data
    params = {"profile": "smoke", "encoder": "no/such/encoder/dir", "train_device": "cuda:0",
              "data_dir": str(tmp_path / "nothing")}
    with pytest.raises(DeviceUnavailableError, match="'cuda:0'"):
        experiment_from_params(params)


def _offline_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_the_paper_encoder_offline_names_the_model_and_the_local_copy(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    _offline_env(monkeypatch, tmp_path)
    name = load_profile("paper")["encoder"]
    assert name == "bert-base-multilingual-cased"
    for check in (lambda: check_encoder_available(name), lambda: load_encoder(name)):
        with pytest.raises(EncoderUnavailableError) as info:
            check()
        msg = str(info.value)
        assert repr(name) in msg and "offline" in msg and "encoder: /path/to/model" in msg
        assert f"hf download {name}" in msg and "\n" not in msg
    with pytest.raises(EncoderUnavailableError, match="no config.json"):
        check_encoder_available(tmp_path)
    check_encoder_available("tiny-random-bert")


def test_preflight_stops_a_profile_this_machine_cannot_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    _fake_cuda(monkeypatch, 0)
    _offline_env(monkeypatch, tmp_path)
    assert cli_main(["preflight", "smoke"]) == 0
    assert "device cpu (auto, fp32)" in capsys.readouterr().out
    assert cli_main(["preflight", "smoke", "--set", "train_device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "smoke.yaml: device 'cuda' asks for a CUDA GPU" in err and len(err.splitlines()) == 1
    assert cli_main(["preflight", "paper"]) == 2
    err = capsys.readouterr().err.strip()
    assert "paper.yaml: cannot load encoder 'bert-base-multilingual-cased'" in err and len(err.splitlines()) == 1
    folder = _tiny_folder(tmp_path)
    assert cli_main(["preflight", "paper", "--set-raw", "encoder", str(folder)]) == 0


def _tiny_folder(tmp_path: Path) -> Path:
    """The tiny random BERT saved as a Hugging Face folder: a stand-in for a local copy of M-BERT."""
    folder = tmp_path / "tiny-bert"
    if not folder.is_dir():
        tiny = tiny_encoder()
        tiny.model.save_pretrained(folder)
        tiny.tokenizer.save_pretrained(folder)
    return folder


PYTHON_SHIM = """#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "test: refusing pip" >&2; exit 97; fi
case "$*" in *"print(sys.prefix)"*) echo "{prefix}"; exit 0 ;; esac
exec {python} "$@"
"""
PAPERMILL_SHIM = """#!/bin/sh
echo "$@" >> {log}
"""


def test_run_all_paper_offline_stops_before_any_notebook(tmp_path: Path) -> None:
    """``./run_all.sh --profile paper`` on an offline machine without M-BERT: exit 2 and one message before any
    notebook runs; pointed at a local copy (``-p encoder DIR``) it goes on to the notebooks."""
    import hashlib

    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("run_all.sh", "pyproject.toml", "requirements.lock"):
        shutil.copy2(REPO / name, repo / name)
    for name in ("notebooks", "configs"):
        shutil.copytree(REPO / name, repo / name)
    (repo / "xner_lib").symlink_to(REPO / "xner_lib")
    prefix, bin_dir, log = tmp_path / "prefix", tmp_path / "bin", tmp_path / "papermill.log"
    prefix.mkdir()
    bin_dir.mkdir()
    stamp = hashlib.sha256((repo / "pyproject.toml").read_bytes() + (repo / "requirements.lock").read_bytes())
    (prefix / ".xner-installed").write_text(stamp.hexdigest() + "\n")
    for name, text in (("python", PYTHON_SHIM.format(prefix=prefix, python=sys.executable)),
                       ("papermill", PAPERMILL_SHIM.format(log=log))):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "VIRTUAL_ENV": str(prefix), "PATH": f"{bin_dir}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
           "HF_HUB_CACHE": str(tmp_path / "empty-hf-cache"), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", str(repo / "run_all.sh"), "--profile", "paper"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)
    assert "refusing pip" not in proc.stderr
    assert proc.returncode == 2 and not log.exists(), proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("configs/paper.yaml: cannot load encoder 'bert-base-multilingual-cased'")
    assert "encoder: /path/to/model" in lines[0] and "nothing was run" in lines[-1] and len(lines) == 2
    folder = _tiny_folder(tmp_path)
    proc = subprocess.run(["bash", str(repo / "run_all.sh"), "--profile", "paper", "--", "-p", "encoder",
                           str(folder)], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == len(list((REPO / "notebooks").glob("[0-9]*.ipynb")))
    takers = [nb for nb in sorted((REPO / "notebooks").glob("[0-9]*.ipynb")) if "encoder" in notebook_parameters(nb)]
    assert len(takers) >= 5 and sum(f"-p encoder {folder}" in c for c in calls) == len(takers)


# --- the paper profile's code path -----------------------------------------------------------------------------

def test_a_tiny_local_bert_runs_through_the_paper_profiles_code_path(tmp_path: Path, data_dir: Path) -> None:
    """The ``paper`` profile as notebook 03 reads it (``device: auto``, its Table 2 settings, checkpoints kept),
    with the hub name replaced by a folder holding a tiny BERT and the data cut to a few sentences: one baseline
    seed trains, scores, records its device and reloads."""
    torch.set_num_threads(1)
    params = {**load_profile("paper"), "encoder": str(_tiny_folder(tmp_path)), "max_sentences": 20,
              "results_root": str(tmp_path), "data_dir": str(data_dir)}
    assert params["train_device"] == "auto" and params["train_batch_size"] == 20 and params["train_epochs"] == 3
    exp = experiment_from_params(params)
    exp.progress = False
    base = from_params(TrainConfig, params, "train_")
    assert (base.device, base.lr, base.head["dropout"], base.head["proj_dim"]) == ("auto", 4e-5, 0.5, 100)
    metrics = exp.run_all(resolve_variants(base, {"baseline": {}}), [1])
    m = metrics[0]
    assert m["extra"]["steps"] == 3 and m["config"]["device"] == "auto"
    assert m["extra"]["run_key_parts"]["config"]["device"] == "auto"
    rec = m["extra"]["device"]
    assert rec["requested"] == "auto" and rec["type"] == resolve_device("auto").type and rec["torch"]
    ckpt = tmp_path / "results" / "paper" / "checkpoints" / "baseline-seed1"
    saved = json.loads((ckpt / "config.json").read_text())
    assert saved["train"]["device"] == "auto"
    from xner_lib.tagger import Tagger

    tagger = Tagger.from_pretrained(ckpt, device="auto")
    assert tagger.device.type == resolve_device("auto").type
    assert len(tagger.tag(["Mr Smith lives in Berlin ."])) == 1


def test_dev_module_has_no_dataloader_settings() -> None:
    """DataLoader workers and pinned memory matter only to a DataLoader, and the code uses none (the module says
    so, and the grep above keeps it so)."""
    assert "DataLoader" in (dev.__doc__ or "")


def test_the_gpu_environment_is_the_locked_one_with_a_cuda_torch() -> None:
    env = yaml.safe_load((REPO / "environment-gpu.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "-c requirements.lock" in pip and "-e .[dev]" in pip and "python=3.11" in env["dependencies"]
    torch_pin = next(p for p in pip if p.startswith("torch=="))
    locked = next(line for line in (REPO / "requirements.lock").read_text().splitlines() if line.startswith("torch=="))
    assert torch_pin.startswith(locked + "+cu")  # the lock's torch, CUDA build (a local label the pin admits)
    assert any(p.startswith("--extra-index-url") for p in pip)
    readme = (REPO / "README.md").read_text()
    assert "environment-gpu.yml" in readme and "--extra-index-url" in readme


def test_adamw_is_fused_where_the_kernel_exists_and_keeps_the_update_rule() -> None:
    """``fused_adamw``: CPU float parameters take the fused kernel, integer, meta or no parameters do not; the
    loop's optimizer is built fused on the CPU, and fused steps move the weights as the loop's rule does."""
    from xner_lib.model import HeadConfig
    from xner_lib.tagger import build_tagger
    from xner_lib.train import _optimizer

    assert dev.fused_adamw([torch.nn.Parameter(torch.randn(3, 3)), torch.nn.Parameter(torch.randn(3))])
    assert not dev.fused_adamw([])
    assert not dev.fused_adamw([torch.zeros(3, dtype=torch.long)])
    assert not dev.fused_adamw([torch.zeros(3, device="meta")])
    enc = tiny_encoder()
    tagger = build_tagger(HeadConfig(input_dim=enc.hidden_size), enc, finetune=True)
    opt, _ = _optimizer(tagger, TrainConfig(encoder="tiny-random-bert"), 10)
    assert opt.defaults["fused"] is True

    torch.manual_seed(0)
    init = [torch.randn(16, 16), torch.randn(16)]
    moved = {}
    for fused in (None, True):
        params = [torch.nn.Parameter(t.clone()) for t in init]
        opt = torch.optim.AdamW([{"params": params[:1], "weight_decay": 0.01},
                                 {"params": params[1:], "weight_decay": 0.0}], lr=1e-2, fused=fused)
        grads = torch.Generator().manual_seed(1)
        for _ in range(20):
            for p in params:
                p.grad = torch.randn(p.shape, generator=grads)
            opt.step()
        moved[fused] = [p.detach() for p in params]
    for loop, fused in zip(moved[None], moved[True], strict=True):
        assert torch.allclose(loop, fused, rtol=0, atol=1e-6)
        assert not torch.allclose(loop, init[0] if loop.dim() == 2 else init[1], atol=1e-3)  # the steps moved them
