"""Device and precision: which device a command runs on, and whether training runs in bf16 autocast there.
Shared by training and sampling."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from charlstm.config import DEVICES
from charlstm.errors import CharlstmError


def pick_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise CharlstmError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CharlstmError("--device cuda: no CUDA GPU is available here (use --device cpu or auto)")
    if name == "mps" and not _mps_available():
        raise CharlstmError("--device mps: Apple MPS is not available here (use --device cpu or auto)")
    return torch.device(name)


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA when asked or (auto) when the GPU supports it; fp32 elsewhere."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX): there oneDNN's bf16 LSTM runs
    faster than fp32 (on a 2-core AMD EPYC with AVX512-BF16, 1 x 384 training went from ~36k to ~49k chars/s,
    benchmarks/train_speed.py --precision bf16); elsewhere bf16 is emulated and slower."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def precision_name(amp: torch.dtype | None) -> str:
    """The precision a run trains in, as the --precision flag spells it."""
    return "bf16" if amp == torch.bfloat16 else "fp32"


def check_autocast(device: torch.device, amp: torch.dtype | None) -> None:
    """Refuse, in one line and before any work, a precision this device cannot run a recurrent layer in
    (oneDNN has bf16 LSTM kernels only on CPUs with bf16 instructions)."""
    if amp is None or device.type == "cuda":
        return
    probe = torch.nn.LSTM(4, 4).to(device)
    try:
        with torch.autocast(device.type, dtype=amp):
            probe(torch.zeros(1, 1, 4, device=device))
    except RuntimeError:
        name = precision_name(amp)
        raise CharlstmError(
            f"--precision {name}: this {device.type} cannot run recurrent layers in {name}; use --precision fp32"
        ) from None


def configure_backends(device: torch.device) -> None:
    """Fast kernels on CUDA: cuDNN picks its fastest algorithms, fp32 matrix multiplies may use TF32."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")


def autocast(device: torch.device, amp: torch.dtype | None) -> AbstractContextManager:
    """The forward pass's autocast context (none in fp32)."""
    return torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()
