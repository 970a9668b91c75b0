"""Wan2.1 3-axis rotary position embedding, reference implementation (SPEC §1).

The head dim's D/2 complex pairs are split (time, h, w) = [c - 2*(c//3), c//3, c//3] with c = D/2, each axis
with its own frequency ladder w_j = theta^(-2j/d_axis). Pairs are adjacent elements (x[2j], x[2j+1]), not
rotate-half. Angles are computed in float64 like the reference; only the time pairs depend on the frame.

This module is the plain-PyTorch judge for the compiled RoPE paths and is what the full / block-causal
attention backends use directly.
"""
from __future__ import annotations

import torch

# Wan2.1's RoPE base. rfrt.models.ModelConfig.rope_theta carries it to every cache (rfrt.cache.CacheLayout);
# the functions below default to it only for the tests and tools that rotate without a model.
ROPE_THETA = 10000.0


def axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Number of complex pairs given to the (time, h, w) axes, e.g. (22, 21, 21) for head_dim 128."""
    if head_dim % 2 != 0 or head_dim < 6:
        raise ValueError(f"RoPE needs an even head_dim >= 6, got {head_dim}")
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def axis_frequencies(head_dim: int, theta: float = ROPE_THETA) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-axis frequency ladders (float64): w_j = theta^(-2j/d_axis), d_axis = 2 * pairs_axis."""
    out = []
    for pairs in axis_pairs(head_dim):
        d_axis = 2 * pairs
        j = torch.arange(pairs, dtype=torch.float64)
        out.append(theta ** (-(2.0 * j) / d_axis))
    return tuple(out)  # type: ignore[return-value]


def rope_angles(head_dim: int, frame_pos: torch.Tensor, grid_h: int, grid_w: int,
                theta: float = ROPE_THETA) -> torch.Tensor:
    """Rotation angles for tokens ordered (frame, h, w).

    frame_pos: [F] time positions (any numeric dtype). Returns float64 [F * grid_h * grid_w, head_dim // 2].
    """
    wt, wh, ww = axis_frequencies(head_dim, theta)
    f = frame_pos.to(torch.float64).reshape(-1)
    n_f = f.numel()
    at = (f[:, None] * wt[None, :])[:, None, None, :].expand(n_f, grid_h, grid_w, -1)
    ah = (torch.arange(grid_h, dtype=torch.float64)[:, None] * wh[None, :])[None, :, None, :]
    ah = ah.expand(n_f, grid_h, grid_w, -1)
    aw = (torch.arange(grid_w, dtype=torch.float64)[:, None] * ww[None, :])[None, None, :, :]
    aw = aw.expand(n_f, grid_h, grid_w, -1)
    return torch.cat([at, ah, aw], dim=-1).reshape(n_f * grid_h * grid_w, head_dim // 2)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of x by angles, in float64, returning x's dtype.

    x: [B, L, H, D]; angles: [L, D/2] (from rope_angles, on any device).
    """
    if x.shape[1] != angles.shape[0] or x.shape[-1] != 2 * angles.shape[1]:
        raise ValueError(f"apply_rope: x {tuple(x.shape)} does not match angles {tuple(angles.shape)}")
    xc = torch.view_as_complex(x.to(torch.float64).reshape(*x.shape[:-1], -1, 2).contiguous())
    rot = torch.polar(torch.ones_like(angles, dtype=torch.float64), angles.to(x.device, torch.float64))
    out = torch.view_as_real(xc * rot[None, :, None, :]).flatten(-2)
    return out.to(x.dtype)
