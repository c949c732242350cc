"""Device and precision: the user's strings ("cpu", "cuda:1", "auto"; "bfloat16", ...) checked
against this machine before any weights load, so a device that is not there, a dtype it
cannot run or 4-bit weights it cannot load is one line (a DeviceError; the CLI exits 2), never a
CUDA traceback mid-load.
"""
from __future__ import annotations

import importlib.util
from typing import get_args

import torch

from .config import Quantization
from .errors import DeviceError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_CHOICES = "cpu, cuda, cuda:N, mps or auto"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> cpu; "auto" -> the first CUDA device, else Apple's mps, else cpu."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"unknown device '{device}'; use {DEVICE_CHOICES}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)"
            raise DeviceError(f"device '{device}' is not available: {why}; use --device cpu (device='cpu') or 'auto'")
        count = torch.cuda.device_count()
        index = 0 if dev.index is None else dev.index
        if index >= count:
            raise DeviceError(f"device '{device}' does not exist: this machine has {count} CUDA device"
                              f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1}); pick one of those")
        return torch.device("cuda", index)
    if dev.type == "mps":
        if not _mps_available():
            raise DeviceError(f"device '{device}' is not available on this machine; use --device cpu or 'auto'")
        return dev
    raise DeviceError(f"device '{device}' is not supported; use {DEVICE_CHOICES}")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The torch dtype for a name, refused where `device` cannot compute in it."""
    if isinstance(dtype, torch.dtype):
        found = [k for k, v in DTYPES.items() if v == dtype]
        if not found:
            raise DeviceError(f"unsupported dtype {dtype}; use one of {', '.join(DTYPES)}")
        dtype = found[0]
    if dtype not in DTYPES:
        raise DeviceError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}")
    if dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise DeviceError(f"{name} ({device}) has no bfloat16 support; use --dtype float16 (or float32)")
    # float16 on CPU runs (torch 2.x has CPU kernels for it), only slowly: allowed.
    return DTYPES[dtype]


def check_attn_implementation(impl: str | None, device: torch.device, dtype: torch.dtype, part: str) -> None:
    """flash_attention_2 needs the flash-attn package, a CUDA device and a half-precision dtype."""
    if impl != "flash_attention_2":
        return
    if importlib.util.find_spec("flash_attn") is None:
        raise DeviceError(f"{part}.attn_implementation is flash_attention_2 but flash-attn is not installed; "
                          "pip install flash-attn (CUDA only), or use sdpa")
    if device.type != "cuda":
        raise DeviceError(f"{part}.attn_implementation flash_attention_2 runs on CUDA only (device is {device}); use sdpa")
    if dtype == torch.float32:
        raise DeviceError(f"{part}.attn_implementation flash_attention_2 needs dtype bfloat16 or float16, not float32")


QUANTIZATIONS = get_args(Quantization)  # ("none", "4bit"): the config's own choices


def check_quantization(quantization: str, device: torch.device, part: str = "decoder") -> None:
    """4-bit base weights need the bitsandbytes package and a CUDA device: checked before any
    weights load, so a missing package is one line, not an ImportError deep inside transformers."""
    if quantization not in QUANTIZATIONS:
        raise DeviceError(f"unknown quantization '{quantization}'; use one of {', '.join(QUANTIZATIONS)}")
    if quantization == "none":
        return
    if device.type != "cuda":
        raise DeviceError(f"{part}.quantization 4bit needs a CUDA GPU (device is {device}); "
                          "use quantization: none on the CPU (--quantize none)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise DeviceError(f"{part}.quantization 4bit needs bitsandbytes, which is not installed; "
                          "pip install bitsandbytes, or use quantization: none")


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


# CPU classes as the speed work names them (docs/speed.md): each takes a different path.
CPU_CLASSES = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16"), ("avx512f", "AVX-512 (no BF16)"), ("avx2", "AVX2 only"))


def cpu_class(flags: set[str], kernels: str = "AVX512") -> str:
    """The CPU's class from its /proc/cpuinfo flags: the first of CPU_CLASSES it has. kernels is
    ATen's CPU capability (torch.backends.cpu.get_cpu_capability()): capped at AVX2 (by
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2) a bigger CPU runs the AVX2-only path, and
    the line says so, so that such a run is never mistaken for the hardware's own."""
    name = next((name for flag, name in CPU_CLASSES if flag in flags), "no AVX2")
    if kernels in ("AVX2", "DEFAULT") and name not in ("AVX2 only", "no AVX2"):
        return f"{name} capped to AVX2 only"
    return name


def cpu_line() -> str:
    """One line naming this machine's CPU, its class, and whether bf16 products run on it, for
    every printed timing (these machines differ: AMX, AVX-512 BF16, AVX2-only)."""
    import os
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:  # not Linux: the model name platform gives
        pass
    from .decoding import cpu_has_bf16

    bf16 = "bf16 products" if cpu_has_bf16() else "float32 products (no bf16 units)"
    kind = cpu_class(flags, torch.backends.cpu.get_cpu_capability()) if flags else "flags unknown"
    return f"CPU: {model}, {kind}, {os.cpu_count()} cores; {bf16}"
