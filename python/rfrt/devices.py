"""Device and dtype defaults, in one place for the generator, `rfrt generate` and `rfrt serve`.

Importing this module does not import torch (the CLI builds its parser from DTYPE_NAMES before any heavy
import); the functions import it when called.
"""
from __future__ import annotations

__all__ = ["DTYPE_NAMES", "default_device", "resolve_dtype"]

# Accepted spellings of the DiT dtype -> the torch attribute name.
DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
               "fp16": "float16", "float16": "float16"}


def default_device(device=None, *, check_cuda: bool = True):
    """`device` as a torch.device; None: CUDA when available, else the CPU. Not a device, or (check_cuda) a CUDA
    device that does not exist here: a ValueError saying so (not torch's AssertionError from deep inside the
    first allocation)."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a device (cpu, cuda, cuda:1, ...): {err}") from None
    if dev.type == "cuda" and check_cuda:
        if torch.version.cuda is None:
            raise ValueError(f"device {str(dev)!r} was asked for, but this torch build has no CUDA support "
                             f"(torch {torch.__version__}); use the CPU (--device cpu) or install a CUDA build")
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(f"device {str(dev)!r} was asked for, but no CUDA device is visible (driver, "
                             "CUDA_VISIBLE_DEVICES?); use the CPU (--device cpu)")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {str(dev)!r} does not exist: {count} CUDA device(s) are visible")
    return dev


def resolve_dtype(dtype, device):
    """The DiT dtype: a torch.dtype or one of DTYPE_NAMES; None: bf16 on CUDA, fp32 elsewhere (bf16 matmul on
    a CPU is ~100x slower than fp32)."""
    import torch

    if dtype is None:
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype.lower() not in DTYPE_NAMES:
            raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPE_NAMES)} (or a torch.dtype)")
        return getattr(torch, DTYPE_NAMES[dtype.lower()])
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or one of {sorted(DTYPE_NAMES)}, got {dtype!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be floating point (float32, bfloat16, float16), got {dtype}")
    return dtype
