"""Device and dtype defaults, in one place for the generator, `rfrt generate` and `rfrt serve`.

Importing this module does not import torch (the CLI builds its parser from DTYPE_NAMES before any heavy
import); the functions import it when called.
"""
from __future__ import annotations

__all__ = ["DTYPE_NAMES", "default_device", "resolve_dtype"]

# Accepted spellings of the DiT dtype -> the torch attribute name.
DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
               "fp16": "float16", "float16": "float16"}


def default_device(device=None):
    """`device` as a torch.device; None: CUDA when available, else the CPU."""
    import torch

    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype, device):
    """The DiT dtype: a torch.dtype or one of DTYPE_NAMES; None: bf16 on CUDA, fp32 elsewhere (bf16 matmul on
    a CPU is ~100x slower than fp32)."""
    import torch

    if dtype is None:
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {sorted(DTYPE_NAMES)}, got {dtype!r}")
        return getattr(torch, DTYPE_NAMES[dtype])
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or one of {sorted(DTYPE_NAMES)}, got {dtype!r}")
    return dtype
