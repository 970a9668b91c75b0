"""RingCache: the runtime's [sink | ring] KV cache over the compiled core, an attention backend for the DiT.

One allocation holds K and V of every layer (`kv`), and a second the unrotated EMA accumulator of the sink
(`sink_acc`, fp32 by default). Ring K is stored rotated at its absolute frame position and queries are rotated
at theirs (option (b) of SPEC §2.3): RoPE depends only on position differences, so relative distances equal
the window-relative positions 0..window_frames-1 of the reference, while the buffer never needs re-rotation
except the sink, which the fused fold re-rotates once per chunk. Attention is then plain softmax(QK^T)V over a
prefix of the buffer (filling chunks see a shorter prefix, never an empty slot), so the best available
attention kernel (SDPA: FlashAttention / cuDNN on a GPU) reads the ring in place.

Per forward and layer: one fused RoPE+write kernel, one in-place RoPE on the queries, one attention call.
Per chunk: host-computed positions are copied into small device cursors, and at most one fold kernel covers
all layers. Nothing on the step path reads device values back to the host.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from rfrt import ops
from rfrt.cache.policy import CachePolicy

ATTENTION_KERNELS = ("sdpa", "core")


class RingCache:
    """Stream state of the self-attention cache of all layers (callable as the DiT's attention backend).

    Call `begin_chunk()` before the forwards of each chunk (0, 1, 2, ... in order), then every forward calls
    `cache(layer, q, k, v, grid)` with q and k after RMSNorm and before RoPE, all [B, L, H, D]; it returns the
    attention output [B, L, H, D].
    """

    def __init__(self, policy: CachePolicy, *, layers: int, heads: int, head_dim: int, grid_h: int, grid_w: int,
                 batch: int = 1, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 rope_theta: float = 10000.0, attention: str = "sdpa") -> None:
        if grid_h * grid_w != policy.tokens_per_frame:
            raise ValueError(f"grid {grid_h}x{grid_w} has {grid_h * grid_w} tokens but the policy says "
                             f"tokens_per_frame={policy.tokens_per_frame}")
        for name, value in (("layers", layers), ("heads", heads), ("batch", batch)):
            if value <= 0:
                raise ValueError(f"RingCache.{name} must be positive, got {value}")
        if head_dim % 2 or head_dim < 6:
            raise ValueError(f"RingCache.head_dim must be even and >= 6, got {head_dim}")
        if attention not in ATTENTION_KERNELS:
            raise ValueError(f"RingCache.attention must be one of {ATTENTION_KERNELS}, got {attention!r}")
        self.policy, self.grid_h, self.grid_w = policy, grid_h, grid_w
        self.rope_theta, self.attention, self.scale = rope_theta, attention, 1.0 / math.sqrt(head_dim)
        device = torch.device(device)
        self.kv = torch.zeros(2, layers, batch, policy.window_tokens, heads, head_dim, dtype=dtype, device=device)
        acc_dtype = torch.float32 if policy.sink_precision == "fp32" else dtype
        self.sink_acc = torch.zeros(2, layers, batch, policy.sink_tokens, heads, head_dim, dtype=acc_dtype,
                                    device=device)
        # [slot_token, time_pos], [time_pos], [evicted_slot_token, evicted_time_pos, new_sink_time_pos]
        self._write_cursor = torch.zeros(2, dtype=torch.int64, device=device)
        self._query_cursor = torch.zeros(1, dtype=torch.int64, device=device)
        self._fold_cursor = torch.zeros(3, dtype=torch.int64, device=device)
        self.chunk = -1
        self.keys = 0

    @property
    def layers(self) -> int:
        return self.kv.shape[1]

    @property
    def cursors(self) -> tuple[Tensor, Tensor, Tensor]:
        """The device cursors the kernels read: write [slot_token, time_pos], query [time_pos], fold
        [evicted_slot_token, evicted_time_pos, new_sink_time_pos]. Fixed addresses: a CUDA graph may update them
        in place."""
        return self._write_cursor, self._query_cursor, self._fold_cursor

    def reset(self) -> None:
        """Forget the stream: the next chunk is chunk 0."""
        self.kv.zero_()
        self.sink_acc.zero_()
        self.chunk, self.keys = -1, 0

    def begin_chunk(self, chunk: int | None = None) -> None:
        """Move to the next chunk: set its slots and positions, and fold the evicted chunk into the sink.

        The fold happens here, before the chunk's first forward, for all layers at once; the evicted chunk
        holds its context-pass K/V, which no later forward changes, so this equals folding each layer just
        before that layer's first attention (SPEC §2.2).
        """
        self.enter_chunk(self.chunk + 1 if chunk is None else chunk)
        p, tpf, nxt = self.policy, self.policy.tokens_per_frame, self.chunk
        pos = nxt * p.chunk_frames
        _upload(self._write_cursor, [p.chunk_slot_frame(nxt) * tpf, pos])
        _upload(self._query_cursor, [pos])
        victim = p.evicted_chunk(nxt)
        if victim is not None:
            _upload(self._fold_cursor, [p.chunk_slot_frame(victim) * tpf, victim * p.chunk_frames,
                                        p.sink_position(nxt)])
            self._fold()

    def enter_chunk(self, chunk: int) -> None:
        """The host half of begin_chunk: the chunk counter and the attended key count, no device work.

        For a caller that sets the device half with `load_cursors` (a CUDA graph records that half once and
        replays it; this half runs on the host before every replay).
        """
        nxt = self.chunk + 1
        if chunk != nxt:
            raise ValueError(f"chunks must be generated in order: expected chunk {nxt}, got {chunk}")
        self.chunk, self.keys = nxt, self.policy.valid_frames(nxt) * self.policy.tokens_per_frame

    def load_cursors(self, counter: Tensor) -> None:
        """The device half of begin_chunk for the chunk `enter_chunk` entered: the cursors computed from
        `counter` (int64 [1] on the cache's device, holding that chunk's index) by tensor ops, then the fold if
        the chunk evicts. Nothing waits for the device, so a CUDA graph can record it."""
        if self.chunk < 0:
            raise RuntimeError("RingCache.load_cursors: call enter_chunk(chunk) first")
        for cursor, value in zip(self.cursors, self.device_cursors(counter)):
            cursor.copy_(value)
        if self.policy.evicted_chunk(self.chunk) is not None:
            self._fold()

    def device_cursors(self, chunk: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The cursors of chunk `chunk` (int64 [1] on the device), computed on the device: CachePolicy's
        slot_frame / evicted_chunk / sink_position as tensor ops, the values begin_chunk uploads.

        Returns (write [slot_token, time_pos], query [time_pos], fold [evicted_slot_token, evicted_time_pos,
        new_sink_time_pos]); the fold cursor is meaningful only for chunks that evict.
        """
        p = self.policy
        tpf, cf, sink = p.tokens_per_frame, p.chunk_frames, p.sink_frames
        ring = p.window_frames - p.sink_frames
        pos = chunk * cf
        write = torch.cat([_slot_frame(pos, sink, ring) * tpf, pos])
        evicted = (chunk - p.ring_chunks) * cf
        if p.rope_rule == "absolute":
            sink_pos = torch.zeros_like(chunk)
        else:
            oldest = torch.clamp(chunk - p.ring_chunks + 1, min=1)
            sink_pos = torch.where(chunk == 0, torch.zeros_like(chunk), oldest * cf - sink)
        fold = torch.cat([_slot_frame(evicted.clamp(min=0), sink, ring) * tpf, evicted, sink_pos])
        return write, pos, fold

    def _fold(self) -> None:
        """sink <- a * sink + (1 - a) * evicted for every layer, at the fold cursor (one kernel)."""
        p = self.policy
        ops.sink_fold(self.kv, self.sink_acc, self._fold_cursor, float(p.sink_ema_alpha), p.tokens_per_frame,
                      self.grid_w, self.rope_theta)

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor, grid=None) -> Tensor:
        if self.chunk < 0:
            raise RuntimeError("RingCache: call begin_chunk() before the first forward of a chunk")
        if k.shape[1] != self.policy.chunk_tokens:
            raise ValueError(f"RingCache expects a chunk of {self.policy.chunk_tokens} tokens, got {k.shape[1]}")
        tpf = self.policy.tokens_per_frame
        ops.cache_write(self.kv, self.sink_acc, k.contiguous(), v.contiguous(), self._write_cursor, layer, tpf,
                        self.grid_w, self.rope_theta)
        q = ops.rope_apply(q.contiguous(), self._query_cursor, tpf, self.grid_w, self.rope_theta)
        if self.attention == "core":
            return ops.ring_attention(self.kv, q, layer, self.keys, self.scale)
        keys = self.kv[0, layer, :, : self.keys].transpose(1, 2)
        values = self.kv[1, layer, :, : self.keys].transpose(1, 2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, scale=self.scale)
        return out.transpose(1, 2)


def _slot_frame(frame: Tensor, sink: int, ring: int) -> Tensor:
    """CachePolicy.slot_frame as tensor ops: the sink is fixed, the rest a ring of `ring` frames."""
    return torch.where(frame < sink, frame, sink + torch.remainder(frame - sink, ring))


def _upload(cursor: Tensor, values: list[int]) -> None:
    """Copy host-computed positions into a device cursor (once per chunk, never per forward).

    On a GPU the values go through pinned memory with a non-blocking copy, so the host never waits for the
    stream; torch's caching host allocator keeps the pinned block alive until the copy has run.
    """
    host = torch.tensor(values, dtype=torch.int64)
    if cursor.is_cuda:
        cursor.copy_(host.pin_memory(), non_blocking=True)
    else:
        cursor.copy_(host)
