"""The chunk-forward protocol the loop drives, and its PyTorch implementation.

A ChunkForward is "one DiT forward of the current chunk, with the stream's cache behind it". Three exist:
  * `TorchForward(dit, cache)`: the DiT over an attention-backend cache, a `RingCache` at inference and a
    `ReferenceCache` (differentiable, plain PyTorch) in the training rollout;
  * the CUDA-graph runner's forward (`rfrt.runtime.graphs`): a TorchForward whose cursors come from a device
    counter and whose text sits in static buffers;
  * `rfrt.engine.EngineForward`: an exported chunk step (TensorRT, ONNX Runtime) carrying the cache tensors.
The loop (`rfrt.runtime.chunk.sample_chunk`) cannot tell them apart.
"""
from __future__ import annotations

from typing import Protocol

from torch import Tensor

from rfrt.models.dit import CrossKV

__all__ = ["ChunkForward", "TorchForward"]


class ChunkForward(Protocol):
    """reset() forgets the stream; begin_chunk() moves to the next chunk (slots, positions, sink fold);
    set_text(cross) sets the prompt's cross-attention K/V; forward(x [B, F, C, h, w], t fp32 [B, F / pt]) ->
    flow [B, F, C, h, w], and the cache moves on by one forward."""

    def reset(self) -> None: ...

    def begin_chunk(self) -> None: ...

    def set_text(self, cross: CrossKV) -> None: ...

    def __call__(self, x: Tensor, t: Tensor) -> Tensor: ...


class TorchForward:
    """The DiT `dit` over `cache`, an attention backend with reset() / begin_chunk() (RingCache,
    ReferenceCache). The model ignores frame positions with these caches: the cache places every key."""

    def __init__(self, dit, cache) -> None:
        self.dit, self.cache = dit, cache
        self.cross: CrossKV | None = None

    def reset(self) -> None:
        self.cache.reset()

    def begin_chunk(self) -> None:
        self.cache.begin_chunk()

    def set_text(self, cross: CrossKV) -> None:
        if not isinstance(cross, CrossKV):
            raise TypeError(f"set_text takes the DiT's CrossKV (dit.cross_kv(states)), got {type(cross).__name__}")
        self.cross = cross

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self.cross is None:
            raise RuntimeError("TorchForward: call set_text(cross) before the first forward")
        return self.dit(x, t, self.cross, self.cache)
