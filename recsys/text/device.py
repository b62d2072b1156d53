"""Where the text model runs and in which precision.

One place decides, so training and encoding agree:

* device: ``"auto"`` picks CUDA when present, else the CPU;
* precision: ``"auto"`` uses bfloat16 on a GPU that has it and on a CPU with native bf16 matmuls
  (AVX-512 BF16 or AMX, where they run ~4x faster than fp32), fp32 elsewhere; ``"bf16"`` and
  ``"fp32"`` force the choice (``"bf16"`` on a CPU without it is allowed, only slow).

Training hands :func:`lightning_precision` to the Trainer (``"bf16-mixed"`` is ``torch.autocast`` on
either device). Inference uses :func:`inference_context`: autocast over fp32 weights while training
(the weights keep changing), or bf16 weights outright for a one-off catalogue encode on the CPU
(:func:`inference_weight_dtype`; measured cosine 0.9999 to fp32 and ~1.7x faster than autocast).
:func:`quiet_lightning` keeps the Trainer's banners ("GPU available", tips) out of the output.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from recsys.errors import RecsysError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
# Lightning's logger names: their INFO lines are banners ("GPU available", tips, "`Trainer.fit` stopped").
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")


@functools.cache
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX-512 BF16 or AMX)."""
    try:
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return True
    except (AttributeError, RuntimeError):  # older builds without the probe: fall back to cpuinfo
        pass
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device for ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``.

    Raises:
        RecsysError: ``"cuda"`` asked for on a machine without a GPU, or an unknown name.
    """
    if device not in DEVICES and not device.startswith("cuda:"):
        raise RecsysError(f"device {device!r} unknown; use one of {DEVICES}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RecsysError(f"device {device!r} asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(device)


def use_bf16(device: torch.device, precision: str = "auto") -> bool:
    """Whether to compute in bfloat16 on ``device`` for the ``precision`` setting.

    Raises:
        RecsysError: unknown precision name.
    """
    if precision not in PRECISIONS:
        raise RecsysError(f"precision {precision!r} unknown; use one of {PRECISIONS}")
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_supports_bf16()


def lightning_precision(device: torch.device, precision: str = "auto") -> str:
    """The Trainer's ``precision`` argument: ``"bf16-mixed"`` or ``"32-true"``."""
    return "bf16-mixed" if use_bf16(device, precision) else "32-true"


def lightning_accelerator(device: torch.device) -> str:
    """The Trainer's ``accelerator`` argument for ``device``."""
    return "gpu" if device.type == "cuda" else "cpu"


def inference_weight_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """Weight dtype for a one-off encode: bf16 weights on a bf16 CPU, fp32 otherwise.

    On GPU the weights stay fp32 and :func:`inference_context` autocasts, as PyTorch users expect.
    """
    return torch.bfloat16 if device.type == "cpu" and use_bf16(device, precision) else torch.float32


@contextlib.contextmanager
def inference_context(device: torch.device, precision: str = "auto") -> Iterator[None]:
    """``inference_mode`` plus bf16 autocast when bf16 is chosen for ``device``."""
    with torch.inference_mode():
        if use_bf16(device, precision):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                yield
        else:
            yield


def pin_memory(device: torch.device) -> bool:
    """DataLoader ``pin_memory``: only worth it when batches travel to a GPU."""
    return device.type == "cuda"


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning without its INFO banners for the block; its warnings and the progress bar stay."""
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        # Lightning's pytree helper builds a class newer torch deprecates, on every trainer call: not ours to act on.
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        for lg in loggers:
            lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
