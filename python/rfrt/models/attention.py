"""Self-attention backends injected into the DiT (SPEC §5.1).

The model computes q, k (after RMSNorm, before RoPE) and v, and hands them to a backend:

    backend(layer, q, k, v, grid) -> out        q, k, v, out: [B, L, H, D], L = grid.tokens

The backend applies RoPE itself because the right positions depend on what it attends to: the runtime ring
cache (``rfrt.cache``) rotates keys by window-relative positions, while the backends here use absolute frame
positions ``grid.frame_offset + i``. RoPE is the reference in ``rfrt.rope`` (fp64), softmax scale 1/sqrt(D).

- ``FullAttention``: bidirectional over the tokens of the call (the teacher / diffusers-parity mode).
- ``BlockCausalAttention(chunk_frames)``: a frame sees every frame of its own chunk and of earlier chunks.
  With ``incremental=True`` it keeps the rotated K/V of earlier calls per layer, so the model can be run
  chunk by chunk and give the same result as one call over all frames.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from .._checks import positive_int
from ..rope import apply_rope, rope_angles


@dataclass(frozen=True)
class FrameGrid:
    """The tokens of one attention call: ``frames`` x ``h`` x ``w`` patches ordered (frame, h, w).

    frame_offset is the time position of the first frame (the chunk start when running chunk by chunk).
    """

    frames: int
    h: int
    w: int
    frame_offset: int = 0

    def __post_init__(self) -> None:
        for name in ("frames", "h", "w"):
            positive_int(f"FrameGrid.{name}", getattr(self, name))
        off = self.frame_offset
        if not isinstance(off, int) or isinstance(off, bool) or off < 0:
            raise ValueError(f"FrameGrid.frame_offset must be a non-negative int, got {off!r}")

    @property
    def tokens_per_frame(self) -> int:
        return self.h * self.w

    @property
    def tokens(self) -> int:
        return self.frames * self.h * self.w


class AttentionBackend(Protocol):
    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 grid: FrameGrid) -> torch.Tensor:
        """q, k (RMS-normed, un-rotated), v: [B, L, H, D] -> out [B, L, H, D]."""
        ...


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: FrameGrid) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"attention backend: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                         "must all be [B, L, H, D]")
    if q.shape[1] != grid.tokens:
        raise ValueError(f"attention backend: {q.shape[1]} tokens do not match {grid}")


class _RopeTable:
    """Angles of the latest (grid, head_dim, device): every layer of a forward reuses them.

    Only a few entries are kept because chunk-by-chunk runs see a new frame_offset every chunk.
    """

    _MAX_ENTRIES = 4

    def __init__(self) -> None:
        self._cache: dict[tuple, torch.Tensor] = {}

    def angles(self, grid: FrameGrid, head_dim: int, device: torch.device) -> torch.Tensor:
        """float64 [grid.tokens, head_dim // 2] for absolute frame positions."""
        key = (grid, head_dim, device)
        if key not in self._cache:
            if len(self._cache) >= self._MAX_ENTRIES:
                self._cache.pop(next(iter(self._cache)))
            pos = torch.arange(grid.frame_offset, grid.frame_offset + grid.frames)
            self._cache[key] = rope_angles(head_dim, pos, grid.h, grid.w).to(device)
        return self._cache[key]


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # SDPA wants [B, H, L, D]; the protocol is [B, L, H, D].
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask)
    return out.transpose(1, 2)


class FullAttention:
    """Bidirectional self-attention with absolute RoPE positions frame_offset .. frame_offset+frames-1."""

    def __init__(self) -> None:
        self._rope = _RopeTable()

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 grid: FrameGrid) -> torch.Tensor:
        _check(q, k, v, grid)
        ang = self._rope.angles(grid, q.shape[-1], q.device)
        return _sdpa(apply_rope(q, ang), apply_rope(k, ang), v, None)


def block_causal_mask(q_grid: FrameGrid, kv_start_frame: int, kv_frames: int, chunk_frames: int,
                      device: torch.device | None = None) -> torch.Tensor:
    """Boolean [Lq, Lk] mask, True = attend: query frame f sees key frame g iff g // chunk <= f // chunk.

    Queries are the frames of q_grid (absolute frames from q_grid.frame_offset); keys are the absolute frames
    kv_start_frame .. kv_start_frame + kv_frames - 1, both with q_grid's tokens per frame.
    """
    tpf = q_grid.tokens_per_frame
    q_chunk = torch.arange(q_grid.frame_offset, q_grid.frame_offset + q_grid.frames, device=device) // chunk_frames
    k_chunk = torch.arange(kv_start_frame, kv_start_frame + kv_frames, device=device) // chunk_frames
    frame_mask = k_chunk[None, :] <= q_chunk[:, None]
    return frame_mask.repeat_interleave(tpf, dim=0).repeat_interleave(tpf, dim=1)


class BlockCausalAttention:
    """Chunk-wise causal self-attention (the student's training / reference mask).

    chunk_frames: latent frames per chunk (3 in the release). Frame f attends to frame g iff
    g // chunk_frames <= f // chunk_frames, frames counted absolutely (grid.frame_offset included).

    incremental=False: each call is self-contained (the whole video so far in one call).
    incremental=True: per layer, the rotated K/V of frames [0, grid.frame_offset) from earlier calls are
    kept and attended to; K/V at or after frame_offset are replaced by this call's, so re-running a chunk
    (several denoising steps, then the clean re-run that commits it) is simply calling again with the same
    offset. Call ``reset()`` before a new video. Memory grows with the video: this is the reference, the
    bounded ring cache lives in ``rfrt.cache``.
    """

    def __init__(self, chunk_frames: int, incremental: bool = False) -> None:
        positive_int("chunk_frames", chunk_frames)
        self.chunk_frames = chunk_frames
        self.incremental = incremental
        self._rope = _RopeTable()
        self._kv: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def reset(self) -> None:
        """Forget every cached frame (start of a new video)."""
        self._kv.clear()

    def cached_frames(self, layer: int) -> int:
        """Frames of K/V held for ``layer``."""
        return self._kv[layer][2] if layer in self._kv else 0

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 grid: FrameGrid) -> torch.Tensor:
        _check(q, k, v, grid)
        ang = self._rope.angles(grid, q.shape[-1], q.device)
        q, k = apply_rope(q, ang), apply_rope(k, ang)
        kv_start = grid.frame_offset
        if self.incremental:
            k, v = self._extend(layer, k, v, grid)
            kv_start = 0
        kv_frames = k.shape[1] // grid.tokens_per_frame
        mask = block_causal_mask(grid, kv_start, kv_frames, self.chunk_frames, q.device)
        return _sdpa(q, k, v, mask)

    def _extend(self, layer: int, k: torch.Tensor, v: torch.Tensor,
                grid: FrameGrid) -> tuple[torch.Tensor, torch.Tensor]:
        held = self.cached_frames(layer)
        if grid.frame_offset > held:
            raise ValueError(f"BlockCausalAttention layer {layer}: call starts at frame {grid.frame_offset} "
                             f"but only frames [0, {held}) are cached; run the earlier chunks first")
        if grid.frame_offset > 0:
            old_k, old_v, _ = self._kv[layer]
            if old_k.shape[0] != k.shape[0] or old_k.shape[1] % grid.tokens_per_frame:
                raise ValueError(f"BlockCausalAttention layer {layer}: cached K/V {tuple(old_k.shape)} do not "
                                 f"match this call's batch / tokens per frame ({grid})")
            keep = grid.frame_offset * grid.tokens_per_frame
            k = torch.cat([old_k[:, :keep], k], dim=1)
            v = torch.cat([old_v[:, :keep], v], dim=1)
        self._kv[layer] = (k, v, grid.frame_offset + grid.frames)
        return k, v
