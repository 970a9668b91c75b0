"""Functional [sink | ring] cache attention: the RingCache semantics as pure tensor functions, for export.

RingCache mutates its buffers in place through custom ops and keeps its cursors as Python state; an exporter
(torch.export -> ONNX -> TensorRT) needs the opposite: every piece of state an explicit graph input, every
update an explicit output, and static shapes. This module computes exactly what RingCache computes (same
buffer layout, same rotation convention, same fp32 cos/sin from fp64 angles) with ops that lower to plain
ONNX (Gather, Where, MatMul, Softmax):

- ``kv [2, layers, B, window_tokens, H, D]``: K stored rotated at its absolute frame position, V; sink first.
- ``sink_acc [2, layers, B, sink_tokens, H, D]``: the unrotated EMA accumulator of the sink (fp32).
- slots are int64 *tensors* and the per-chunk time-axis cos/sin are *inputs*, so one graph serves every
  chunk of a phase: writes and reads at a data-dependent slot are a Gather plus a Where over the whole
  buffer, never a Python-int slice that the exporter would freeze into the graph.
- the EMA fold runs in every forward with coefficients ``fold = (a, b)``: ``acc <- a*acc + b*evicted``.
  The first forward of a chunk that evicts passes (alpha, 1 - alpha), every other forward (1, 0), which
  leaves the accumulator bit-identical (1*x + 0*y == x for finite y), so no forward needs its own graph.

RoPE: the h/w pairs depend only on the patch grid and are constants (fp32 from fp64 angles); the time pairs
of the three position sets a forward needs (the chunk's frames, the evicted frames, the sink frames) come
from ``time_rope_tables`` on the host, computed in fp64 like the compiled kernels, so positions can grow
without the fp32 angle error an in-graph ``pos * freq`` would accumulate over a long stream.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rfrt.cache.layout import CacheLayout
from rfrt.rope import ROPE_THETA, axis_frequencies

# Rows of the rope_cos / rope_sin inputs.
ROPE_CHUNK, ROPE_EVICTED, ROPE_SINK = 0, 1, 2


@dataclass(frozen=True, eq=False)
class StepControls:
    """Per-forward control inputs of the functional cache (what RingCache keeps in its cursors).

    slots:     int64 [2]: (token index where the chunk is written, token index of the evicted chunk).
    rope_cos, rope_sin: fp32 [3, chunk_frames, time_pairs]: time-axis rotation of the chunk's frames,
               the evicted frames (to un-rotate them) and the sink frames (rows ROPE_CHUNK/EVICTED/SINK).
    fold:      fp32 [2]: EMA coefficients (a, b) of ``acc <- a*acc + b*evicted``; (1, 0) = no fold.
    valid_tokens: int64 [1]: keys attended (a prefix of the buffer; window_tokens in steady state).
    """

    slots: Tensor
    rope_cos: Tensor
    rope_sin: Tensor
    fold: Tensor
    valid_tokens: Tensor


def time_rope_tables(positions: Tensor, head_dim: int, theta: float = ROPE_THETA) -> tuple[Tensor, Tensor]:
    """cos, sin (fp32, computed in fp64) of the time pairs for frame positions [...] -> [..., time_pairs]."""
    wt = axis_frequencies(head_dim, theta)[0]
    ang = positions.to(torch.float64)[..., None] * wt
    return torch.cos(ang).float(), torch.sin(ang).float()


def hw_rope_tables(head_dim: int, grid_h: int, grid_w: int, theta: float = ROPE_THETA) -> tuple[Tensor, Tensor]:
    """cos, sin (fp32, computed in fp64) of the h/w pairs of one frame's tokens (row-major) -> [h*w, pairs]."""
    _, wh, ww = axis_frequencies(head_dim, theta)
    rows = torch.arange(grid_h, dtype=torch.float64).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, dtype=torch.float64).repeat(grid_h)
    ang = torch.cat([rows[:, None] * wh, cols[:, None] * ww], dim=-1)
    return torch.cos(ang).float(), torch.sin(ang).float()


def step_controls(layout: CacheLayout, chunk: int, first_forward: bool, device: torch.device | str = "cpu"
                  ) -> StepControls:
    """The control inputs RingCache.begin_chunk(chunk) sets up, for one forward of `chunk`.

    first_forward: True for the chunk's first denoising forward (the only one that folds the sink).
    """
    p, tpf = layout.policy, layout.tokens_per_frame
    if not isinstance(chunk, int) or chunk < 0:
        raise ValueError(f"chunk must be a non-negative int, got {chunk!r}")
    victim = p.evicted_chunk(chunk)
    fold = victim is not None and first_forward
    # Without a victim the evicted slot is never used (fold weight 0); point it at a valid slot anyway.
    ev_chunk = victim if victim is not None else 0
    frames = torch.arange(p.chunk_frames, dtype=torch.int64)
    starts = torch.tensor([chunk * p.chunk_frames, ev_chunk * p.chunk_frames, p.sink_position(chunk)])
    cos, sin = time_rope_tables(starts[:, None] + frames[None, :], layout.head_dim, layout.rope_theta)
    alpha = float(p.sink_ema_alpha)
    return StepControls(
        slots=torch.tensor([p.chunk_slot_frame(chunk) * tpf, p.chunk_slot_frame(ev_chunk) * tpf],
                           dtype=torch.int64, device=device),
        rope_cos=cos.to(device), rope_sin=sin.to(device),
        fold=torch.tensor([alpha, 1.0 - alpha] if fold else [1.0, 0.0], dtype=torch.float32, device=device),
        valid_tokens=torch.tensor([p.valid_frames(chunk) * tpf], dtype=torch.int64, device=device))


def token_rope(time_cos: Tensor, time_sin: Tensor, hw_cos: Tensor, hw_sin: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token tables: time [F, Pt] and h/w [T, Ph] -> cos, sin [F*T, Pt+Ph] (tokens ordered frame, h, w).

    Each pair belongs to exactly one axis, so the token's table is a concatenation, not a product.
    """
    n_f, n_t = time_cos.shape[0], hw_cos.shape[0]

    def one(t: Tensor, hw: Tensor) -> Tensor:
        t = t[:, None, :].expand(n_f, n_t, t.shape[-1])
        return torch.cat([t, hw[None].expand(n_f, n_t, hw.shape[-1])], dim=-1).reshape(n_f * n_t, -1)

    return one(time_cos, hw_cos), one(time_sin, hw_sin)


def rotate(x: Tensor, cos: Tensor, sin: Tensor, inverse: bool = False) -> Tensor:
    """Rotate adjacent pairs of x [B, L, H, D] by cos/sin [L, D/2] in fp32 (the kernels' arithmetic).

    inverse=True rotates back (sin negated). Returns x's dtype.
    """
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    if inverse:
        s = -s
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).flatten(-2).to(x.dtype)


def _slot_range(start: Tensor, length: int, size: int) -> tuple[Tensor, Tensor]:
    """For a buffer of `size` tokens: (mask [size] of tokens in [start, start+length), source index [size])."""
    pos = torch.arange(size, dtype=torch.int64, device=start.device)
    rel = pos - start
    return (rel >= 0) & (rel < length), rel.clamp(0, length - 1)


def fold_sink(layout: CacheLayout, kv: Tensor, sink_acc: Tensor, controls: StepControls) -> tuple[Tensor, Tensor]:
    """EMA-Sink fold of every layer: acc <- a*acc + b*evicted; sink slots <- acc (K rotated to the sink).

    kv [2, layers, B, window_tokens, H, D], sink_acc [2, layers, B, sink_tokens, H, D] -> new (kv, sink_acc).
    With fold = (1, 0) the accumulator is unchanged and the sink slots are rewritten with the K they hold.
    """
    hw_cos, hw_sin = hw_rope_tables(layout.head_dim, layout.grid_h, layout.grid_w, layout.rope_theta)
    hw_cos, hw_sin = hw_cos.to(kv.device), hw_sin.to(kv.device)
    idx = controls.slots[1] + torch.arange(layout.sink_tokens, dtype=torch.int64, device=kv.device)
    evicted = kv.index_select(3, idx)  # [2, layers, B, sink_tokens, H, D]
    ev_cos, ev_sin = token_rope(controls.rope_cos[ROPE_EVICTED], controls.rope_sin[ROPE_EVICTED], hw_cos, hw_sin)
    sk_cos, sk_sin = token_rope(controls.rope_cos[ROPE_SINK], controls.rope_sin[ROPE_SINK], hw_cos, hw_sin)
    n_l, b = layout.layers, layout.batch
    flat = evicted.flatten(1, 2).float()  # [2, layers*B, sink_tokens, H, D]: rotate() wants [B', L, H, D]
    ev_k = rotate(flat[0], ev_cos, ev_sin, inverse=True)
    a, c = controls.fold[0], controls.fold[1]
    acc = sink_acc.flatten(1, 2).float()
    if sink_acc.dtype == torch.float32:
        new_acc = a * acc + c * torch.stack([ev_k, flat[1]])
    else:  # reference-rounding mode (16-bit accumulator): each product and the sum rounded, like the kernel
        dt = sink_acc.dtype
        new_acc = (a * acc).to(dt).float() + (c * torch.stack([ev_k, flat[1]])).to(dt).float()
    new_acc = new_acc.unflatten(1, (n_l, b)).to(sink_acc.dtype)
    sink_k = rotate(new_acc[0].flatten(0, 1).float(), sk_cos, sk_sin)
    sink = torch.stack([sink_k, new_acc[1].flatten(0, 1).float()]).unflatten(1, (n_l, b)).to(kv.dtype)
    return torch.cat([sink, kv[:, :, :, layout.sink_tokens:]], dim=3), new_acc


class FunctionalCacheAttention:
    """A DiT self-attention backend over explicit cache tensors (see the module docstring).

    Construct it with the (already folded) cache of one forward, run the model with it as ``backend``, then
    read ``updated()`` for the new (kv, sink_acc). Call protocol as RingCache: ``(layer, q, k, v, grid)`` with
    q, k after RMSNorm and before RoPE, all [B, chunk_tokens, H, D] -> out [B, chunk_tokens, H, D].

    masked=False attends to the whole buffer (steady state: every slot is valid); masked=True attends to the
    prefix of ``controls.valid_tokens`` keys (any chunk, filling ones included) through an additive mask.
    """

    def __init__(self, layout: CacheLayout, kv: Tensor, sink_acc: Tensor, controls: StepControls,
                 masked: bool = False) -> None:
        if tuple(kv.shape) != layout.kv_shape():
            raise ValueError(f"kv {tuple(kv.shape)} must be {layout.kv_shape()} for {layout}")
        if tuple(sink_acc.shape) != layout.sink_acc_shape():
            raise ValueError(f"sink_acc {tuple(sink_acc.shape)} must be {layout.sink_acc_shape()}")
        self.layout, self.kv, self.sink_acc, self.controls, self.masked = layout, kv, sink_acc, controls, masked
        hw_cos, hw_sin = hw_rope_tables(layout.head_dim, layout.grid_h, layout.grid_w, layout.rope_theta)
        self._cos, self._sin = token_rope(controls.rope_cos[ROPE_CHUNK], controls.rope_sin[ROPE_CHUNK],
                                          hw_cos.to(kv.device), hw_sin.to(kv.device))
        start = controls.slots[0]
        self._in_window, self._window_src = _slot_range(start, layout.chunk_tokens, layout.window_tokens)
        self._in_sink, self._sink_src = _slot_range(start, layout.chunk_tokens, layout.sink_tokens)
        self._bias = None
        if masked:
            keys = torch.arange(layout.window_tokens, dtype=torch.int64, device=kv.device)
            # [1, keys]: one additive row broadcast over every query; -inf removes the empty slots exactly.
            self._bias = torch.where(keys < controls.valid_tokens, 0.0, float("-inf")).to(kv.dtype)[None, :]
        self._k: dict[int, Tensor] = {}
        self._v: dict[int, Tensor] = {}
        self._acc: dict[int, tuple[Tensor, Tensor]] = {}

    def _write(self, old: Tensor, new: Tensor, mask: Tensor, src: Tensor) -> Tensor:
        """old [B, N, H, D] with new [B, chunk_tokens, H, D] written at the masked tokens (a Gather + Where)."""
        return torch.where(mask[None, :, None, None], new.index_select(1, src).to(old.dtype), old)

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor, grid=None) -> Tensor:
        layout = self.layout
        if k.shape[1] != layout.chunk_tokens:
            raise ValueError(f"functional cache expects a chunk of {layout.chunk_tokens} tokens, got {k.shape[1]}")
        if layer in self._k:
            raise ValueError(f"functional cache: layer {layer} called twice in one forward")
        keys = self._write(self.kv[0, layer], rotate(k, self._cos, self._sin), self._in_window, self._window_src)
        values = self._write(self.kv[1, layer], v, self._in_window, self._window_src)
        # A chunk written into the sink slots (chunk 0) also seeds the unrotated accumulator.
        acc_k = self._write(self.sink_acc[0, layer], k, self._in_sink, self._sink_src)
        acc_v = self._write(self.sink_acc[1, layer], v, self._in_sink, self._sink_src)
        self._k[layer], self._v[layer], self._acc[layer] = keys, values, (acc_k, acc_v)
        out = F.scaled_dot_product_attention(rotate(q, self._cos, self._sin).transpose(1, 2), keys.transpose(1, 2),
                                             values.transpose(1, 2), attn_mask=self._bias,
                                             scale=1.0 / math.sqrt(q.shape[-1]))
        return out.transpose(1, 2)

    def updated(self) -> tuple[Tensor, Tensor]:
        """(kv, sink_acc) after this forward, shaped like the inputs. Every layer must have been called."""
        n = self.layout.layers
        missing = [i for i in range(n) if i not in self._k]
        if missing:
            raise RuntimeError(f"functional cache: layers {missing} were not run in this forward")
        kv = torch.stack([torch.stack([self._k[i] for i in range(n)]), torch.stack([self._v[i] for i in range(n)])])
        acc = torch.stack([torch.stack([self._acc[i][j] for i in range(n)]) for j in (0, 1)])
        return kv, acc
