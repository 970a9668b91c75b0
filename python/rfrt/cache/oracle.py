"""ReferenceCache: SPEC §2.2 implemented literally in plain PyTorch. The judge of every fast cache path.

Per layer it keeps the sink and each window chunk as separate unrotated tensors; every forward concatenates
[sink | window chunks | current], re-rotates everything at window-relative positions 0..n-1 in float64, and
computes softmax(QK^T/sqrt(d))V in float64 (by default). At the first forward of a chunk that overflows the window it folds
the oldest window chunk into the sink with the EMA, per layer, before that layer's attention. This is slow on
purpose: it shares no code with the ring cache except the reference RoPE. It is also the differentiable cache
of the training rollout; keep it literal all the same (an optimisation made for training would silently change
the judge).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from rfrt.cache.layout import CacheLayout
from rfrt.rope import apply_rope, rope_angles


class _LayerState:
    def __init__(self) -> None:
        self.sink_k: Tensor | None = None
        self.sink_v: Tensor | None = None
        self.window: dict[int, tuple[Tensor, Tensor]] = {}  # chunk index -> its latest K, V
        self.fold_pending = False


class ReferenceCache:
    """Same call protocol as RingCache: begin_chunk(), then cache(layer, q, k, v, grid) -> [B, L, H, D]."""

    def __init__(self, layout: CacheLayout, *, compute_dtype: torch.dtype = torch.float64) -> None:
        """compute_dtype: float64 makes the judge; the cache dtype instead gives PyTorch's own error in that
        dtype (rotated keys rounded to it, attention computed in it), the yardstick for the fast paths."""
        if not isinstance(layout, CacheLayout):
            raise TypeError(f"ReferenceCache takes a CacheLayout, got {type(layout).__name__}")
        self.layout, self.policy = layout, layout.policy
        self.head_dim, self.grid_h, self.grid_w = layout.head_dim, layout.grid_h, layout.grid_w
        self.compute_dtype = compute_dtype
        self.rope_theta = layout.rope_theta
        self._layers = [_LayerState() for _ in range(layout.layers)]
        self.chunk = -1

    def reset(self) -> None:
        self._layers = [_LayerState() for _ in self._layers]
        self.chunk = -1

    def begin_chunk(self, chunk: int | None = None) -> None:
        self.chunk = self.chunk + 1 if chunk is None else chunk
        fold = self.policy.evicted_chunk(self.chunk) is not None
        for st in self._layers:
            st.fold_pending = fold

    def _ema(self, sink: Tensor, evicted: Tensor) -> Tensor:
        a = self.policy.sink_ema_alpha
        if self.policy.sink_precision == "fp32":
            return a * sink.float() + (1 - a) * evicted.float()
        return a * sink + (1 - a) * evicted  # in the cache dtype, rounding like the public code

    def _angles(self, frames: list[int], device) -> Tensor:
        pos = torch.tensor(frames, dtype=torch.float64)
        return rope_angles(self.head_dim, pos, self.grid_h, self.grid_w, self.rope_theta).to(device)

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor, grid=None) -> Tensor:
        p, c, st = self.policy, self.chunk, self._layers[layer]
        if st.fold_pending:
            victim = p.evicted_chunk(c)
            ek, ev = st.window.pop(victim)
            st.sink_k, st.sink_v = self._ema(st.sink_k, ek), self._ema(st.sink_v, ev)
            st.fold_pending = False
        F = p.chunk_frames
        if c == 0:  # chunk 0 is the sink: its current K/V are what later chunks see
            st.sink_k, st.sink_v = k.clone(), v.clone()
            if p.sink_precision == "fp32":
                st.sink_k, st.sink_v = st.sink_k.float(), st.sink_v.float()
            keys, values, key_frames = [k], [v], list(range(F))
            q_frames = list(range(F))
        else:
            st.window[c] = (k.clone(), v.clone())
            chunks = sorted(st.window)
            keys = [st.sink_k.to(k.dtype)] + [st.window[i][0] for i in chunks]
            values = [st.sink_v.to(v.dtype)] + [st.window[i][1] for i in chunks]
            n_frames = p.sink_frames + F * len(chunks)
            if p.rope_rule == "window_relative":
                key_frames = list(range(n_frames))
            else:  # absolute: sink at 0.., window chunks at their own frames
                key_frames = list(range(p.sink_frames)) + [i * F + j for i in chunks for j in range(F)]
            q_frames = key_frames[-F:]
        cd = self.compute_dtype
        kk = apply_rope(torch.cat(keys, dim=1).to(torch.float64), self._angles(key_frames, k.device)).to(cd)
        qq = apply_rope(q.to(torch.float64), self._angles(q_frames, q.device)).to(cd)
        vv = torch.cat(values, dim=1).to(cd)
        scores = torch.einsum("bqhd,bkhd->bhqk", qq, kk) / math.sqrt(self.head_dim)
        out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), vv)
        return out.to(q.dtype)
