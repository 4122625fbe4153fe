"""Where tensors live and in what precision they compute: the one module that places anything on a device.

One setting, ``device`` (``TrainConfig.device``, the profiles' ``train_device``), says where a run computes:

* ``auto``: the first CUDA GPU when PyTorch sees one, else the CPU;
* ``cpu``; ``cuda`` (the current CUDA device); ``cuda:N`` (GPU number ``N``).

:func:`resolve_device` turns it into a :class:`torch.device` and stops with one clear message
(:class:`DeviceUnavailableError`) when a GPU is asked for and there is none. :func:`to_device` moves a module,
a tensor or a (nested) tuple, list or dict of them, and is what every other module calls: nothing else in
``xner_lib`` calls ``.cuda()`` or names a CUDA device (a test greps for it). On the CPU every move is a no-op
(``Tensor.to`` returns the tensor itself), so CPU runs compute bitwise what they computed before this module.

Mixed precision (``TrainConfig.precision``): ``auto`` is off on the CPU and, on CUDA, ``torch.autocast`` in
bfloat16 where the GPU supports it (Ampere and later), else float16 with a :class:`torch.amp.GradScaler`
(:func:`autocast_dtype`, :func:`needs_grad_scaler`: pure functions, tested on any machine). ``fp32`` switches
autocast off everywhere; ``bf16`` asks for bfloat16 (on the CPU too: that is how the tests run an autocast
step without a GPU); ``fp16`` needs CUDA. :class:`MixedPrecision` is the resolved choice with its autocast
context and its scaler-aware ``backward``/``step``.

:func:`seed_everything` seeds Python, NumPy and PyTorch on the CPU and on every CUDA device;
:func:`describe_device` is what ``metrics.json`` records about the machine (``extra.device``).

There are no ``DataLoader`` workers or pinned memory to configure: batches are built in the training loop from
sentences already encoded in memory (:mod:`~xner_lib.batches`), not by a ``DataLoader``.
"""

from __future__ import annotations

import contextlib
import platform
import random
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

#: the forms of the device setting (``cuda:N`` with any GPU number)
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "cuda:N")
#: the precision setting: ``auto`` (off on CPU; bf16, else fp16 + GradScaler, on CUDA) or one fixed choice
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
_NAMES: dict[torch.dtype | None, str] = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}

T = TypeVar("T")


class DeviceUnavailableError(RuntimeError):
    """A device setting this machine cannot honour (``cuda`` without a GPU, a GPU number out of range)."""


def check_device_setting(spec: str) -> str:
    """``spec`` if it is a device setting (:data:`DEVICES`), else ``ValueError`` naming the valid forms. Says
    nothing about this machine (:func:`resolve_device` does)."""
    if not isinstance(spec, str) or not _DEVICE_RE.match(spec):
        raise ValueError(f"device must be one of {', '.join(DEVICES)} (N a GPU number), got {spec!r}")
    return spec


def check_precision_setting(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else ``ValueError``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """The :class:`torch.device` of a device setting on this machine: ``auto`` is ``cuda`` when
    ``torch.cuda.is_available()``, else ``cpu``. ``cuda``/``cuda:N`` without such a GPU raise
    :class:`DeviceUnavailableError` with one message saying what PyTorch sees and what to set instead. ``cpu``
    never touches CUDA."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    check_device_setting(spec)
    if spec == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if spec == "auto":
        return torch.device("cuda" if available else "cpu")
    if not available:
        build = (f"this PyTorch {torch.__version__} is a CPU-only build" if torch.version.cuda is None
                 else f"this PyTorch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable GPU")
        raise DeviceUnavailableError(
            f"device {spec!r} asks for a CUDA GPU, but {build}. Set the device to 'auto' or 'cpu' "
            "(train_device in configs/<profile>.yaml, or -- -p train_device auto), or install a CUDA build of "
            "torch (README, GPU)")
    device = torch.device(spec)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceUnavailableError(f"device {spec!r}: this machine has {count} CUDA GPU(s), numbered 0 to "
                                     f"{count - 1}")
    return device


def to_device(obj: T, device: str | torch.device) -> T:
    """``obj`` on ``device``: a module (moved in place and returned), a tensor (``Tensor.to``: the tensor itself
    when it is already there), a tuple, list or dict of those (rebuilt), or anything else (returned as it is,
    e.g. None). The one function that places modules and batches."""
    if isinstance(obj, nn.Module):
        return obj.to(device)  # type: ignore[return-value]
    if isinstance(obj, Tensor):
        return obj.to(device)  # type: ignore[return-value]
    if isinstance(obj, tuple):
        return tuple(to_device(x, device) for x in obj)  # type: ignore[return-value]
    if isinstance(obj, list):
        return [to_device(x, device) for x in obj]  # type: ignore[return-value]
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}  # type: ignore[return-value]
    return obj


def cpu_copy(t: Tensor) -> Tensor:
    """A detached copy of ``t`` in host memory (weights kept aside, features written to disk)."""
    return t.detach().to("cpu", copy=True)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA runs asynchronously), so a wall-clock mark after it times
    the work and not its launch; a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for a module with neither."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def placed(module: nn.Module, device: str | torch.device) -> Iterator[nn.Module]:
    """Move ``module`` to ``device`` for the duration (e.g. a frozen encoder while it extracts features), then
    back to where it was."""
    before = module_device(module)
    to_device(module, device)
    try:
        yield module
    finally:
        to_device(module, before)


# --- mixed precision ----------------------------------------------------------------------------------------

def autocast_dtype(device_type: str, precision: str = "auto", bf16_supported: bool = False) -> torch.dtype | None:
    """The dtype ``torch.autocast`` runs in, or None for full precision (autocast off). ``auto``: None on the
    CPU; on CUDA bfloat16 when ``bf16_supported``, else float16. ``bf16`` on a GPU without it and ``fp16`` on
    the CPU raise ``ValueError``."""
    check_precision_setting(precision)
    if precision == "fp32":
        return None
    if precision == "auto":
        if device_type != "cuda":
            return None
        return torch.bfloat16 if bf16_supported else torch.float16
    if device_type == "cuda" and precision == "bf16" and not bf16_supported:
        raise ValueError("precision 'bf16': this GPU does not support bfloat16; use 'auto' (fp16 with a GradScaler)")
    if device_type != "cuda" and precision == "fp16":
        raise ValueError("precision 'fp16' needs a CUDA device; on the CPU use 'fp32' or 'bf16'")
    return _DTYPES[precision]


def needs_grad_scaler(device_type: str, dtype: torch.dtype | None) -> bool:
    """Whether the loss must be scaled (float16 on CUDA: its gradients underflow without it; bfloat16 has
    float32's range and needs none)."""
    return device_type == "cuda" and dtype == torch.float16


@dataclass(frozen=True)
class MixedPrecision:
    """The precision a run computes in on one device: ``dtype`` None is full precision (autocast off).

    :meth:`autocast` wraps the forward passes; :meth:`backward`, :meth:`unscale_` and :meth:`step` go through
    a :class:`torch.amp.GradScaler` when ``scaler`` is set (float16 on CUDA), else they are
    ``loss.backward()``, nothing and ``optimizer.step()``. Losses that autocast must not touch (the CRF, the
    discriminator's BCE) are computed in float32 by the modules themselves."""

    device_type: str
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None = None

    @property
    def name(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``."""
        return _NAMES[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """``torch.autocast`` in ``dtype`` on this device type, or a context that does nothing."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the loss scale in place (before clipping them)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; with a scaler, skipped when a gradient is not finite, and the scale updated."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()


def mixed_precision(device: torch.device, precision: str = "auto") -> MixedPrecision:
    """The :class:`MixedPrecision` of ``precision`` on ``device`` (:func:`autocast_dtype`; a GradScaler when
    :func:`needs_grad_scaler`)."""
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    dtype = autocast_dtype(device.type, precision, bf16)
    scaler = torch.amp.GradScaler(device.type) if needs_grad_scaler(device.type, dtype) else None
    return MixedPrecision(device.type, dtype, scaler)


#: the device types whose AdamW has a fused kernel (torch 2.4 and later): one pass over every parameter in place
#: of a loop of small operations a tensor
FUSED_ADAMW_DEVICES = frozenset({"cpu", "cuda"})


def fused_adamw(params: Iterable[Tensor]) -> bool:
    """Whether ``torch.optim.AdamW`` over ``params`` can take ``fused=True``: every parameter floating point and
    on a device of :data:`FUSED_ADAMW_DEVICES`. The same update rule as the loop (the last bit of a
    weight-decayed parameter may differ); measured on the ``cpu`` profile's 23M trainable parameters on 2
    cores: 0.055 s a step with the loop, 0.017 s fused (docs/method.md, Where the time goes)."""
    params = list(params)
    return bool(params) and all(p.is_floating_point() and p.device.type in FUSED_ADAMW_DEVICES for p in params)


# --- seeds and the record -------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch: the CPU generator and, when CUDA is there, every GPU's. CUDA runs are
    seeded but not bitwise reproducible (cuDNN's LSTM and atomic adds in backward passes; see
    docs/method.md)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def describe_device(device: torch.device, precision: MixedPrecision | None = None, requested: str | None = None
                    ) -> dict[str, Any]:
    """What ``metrics.json`` records about where a run computed (``extra.device``): the setting asked for, the
    device, its name, the torch, CUDA and cuDNN versions, the precision and, on a GPU, its compute capability
    and memory."""
    out: dict[str, Any] = {"requested": requested, "device": str(device), "type": device.type,
                           "torch": torch.__version__, "cuda": torch.version.cuda,
                           "precision": precision.name if precision is not None else "fp32"}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        out.update(name=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gb=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version(),
                   loss_scaling=precision is not None and precision.scaler is not None)
    else:
        out.update(name=platform.processor() or platform.machine() or "cpu", threads=torch.get_num_threads())
    return out
