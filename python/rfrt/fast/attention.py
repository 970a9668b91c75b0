"""Which SDPA kernel runs the cache's self-attention: record torch's choice, or force one.

torch picks among cuDNN, FlashAttention-2, memory-efficient and math kernels from the inputs' shape, dtype,
strides and device (`torch._fused_sdp_choice`); on Hopper with torch >= 2.10 and a recent cuDNN it should pick
cuDNN, else FA2, at about half the speed (docs/design.md). `sdpa_choice` reports the choice for the exact
tensors RingCache passes (strided BHLD views of the ring buffer), so a benchmark can record it; `sdpa` runs
attention with a forced kernel when asked and says clearly when that kernel cannot take the inputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from rfrt.fast.config import SDPA_BACKENDS

_FORCED = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
           "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
_NAMES = {SDPBackend.CUDNN_ATTENTION: "cudnn", SDPBackend.FLASH_ATTENTION: "flash",
          SDPBackend.EFFICIENT_ATTENTION: "efficient", SDPBackend.MATH: "math"}


def sdpa_choice(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> str:
    """The kernel torch's default SDPA would run for q [B, H, Lq, D], k / v [B, H, Lk, D]: one of "cudnn",
    "flash", "efficient", "math" (or "error" when none can)."""
    idx = torch._fused_sdp_choice(q, k, v, scale=scale)
    for member, name in _NAMES.items():
        if int(member.value) == int(idx):
            return name
    return "error"


def sdpa(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, backend: str = "auto") -> Tensor:
    """F.scaled_dot_product_attention(q, k, v, scale=scale) [B, H, Lq, D], with `backend` forced unless "auto"."""
    if backend == "auto":
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if backend not in _FORCED:
        raise ValueError(f"SDPA backend must be one of {SDPA_BACKENDS}, got {backend!r}")
    try:
        with sdpa_kernel([_FORCED[backend]]):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
    except RuntimeError as e:
        raise RuntimeError(f"SDPA backend {backend!r} cannot run q {tuple(q.shape)} {q.dtype} on {q.device} "
                           f"(strides {q.stride()}, {k.stride()}); use sdpa_backend='auto'. torch said: {e}") from e
