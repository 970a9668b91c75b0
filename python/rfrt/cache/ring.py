"""RingCache: the runtime's [sink | ring] KV cache over the compiled core, an attention backend for the DiT.

One allocation holds K and V of every layer (`kv`), and a second the unrotated EMA accumulator of the sink
(`sink_acc`, fp32 by default). Ring K is stored rotated at its absolute frame position and queries are rotated
at theirs (option (b) of SPEC §2.3): RoPE depends only on position differences, so relative distances equal
the window-relative positions 0..window_frames-1 of the reference, while the buffer never needs re-rotation
except the sink, which the fused fold re-rotates once per chunk. Attention is then plain softmax(QK^T)V over a
prefix of the buffer (filling chunks see a shorter prefix, never an empty slot), so the best available
attention kernel (SDPA: FlashAttention / cuDNN on a GPU) reads the ring in place.

Per forward and layer: one fused kernel that rotates Q and K and writes K/V, then one attention call. Per
chunk: host-computed positions are copied into small device cursors, one tiny kernel fills the chunk's RoPE
time rows from them, and at most one fold kernel covers all layers. The h/w half of RoPE is a table built once
here (fp64 angles rounded to fp32, the same code on CPU and GPU). The kernels' params structs are built once
per cache (one per layer); a call only sets its tensors' pointers and the stream. Nothing on the step path
reads device values back to the host; a kernel that meets an out-of-range cursor refuses to write and sets a
bit in `error`, which `check()` (every call with debug=True) turns into an exception.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from rfrt import ops
from rfrt.cache.layout import CacheLayout

ATTENTION_KERNELS = ("sdpa", "core")


class RingCache:
    """Stream state of the self-attention cache of all layers (callable as the DiT's attention backend).

    Call `begin_chunk()` before the forwards of each chunk (0, 1, 2, ... in order), then every forward calls
    `cache(layer, q, k, v, grid)` with q and k after RMSNorm and before RoPE, all [B, L, H, D]; it returns the
    attention output [B, L, H, D].
    """

    def __init__(self, layout: CacheLayout, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", attention: str = "sdpa", debug: bool = False,
                 sdpa_backend: str = "auto") -> None:
        if not isinstance(layout, CacheLayout):
            raise TypeError(f"RingCache takes a CacheLayout (rfrt.cache.CacheLayout.for_model(...)), got "
                            f"{type(layout).__name__}")
        if attention not in ATTENTION_KERNELS:
            raise ValueError(f"RingCache.attention must be one of {ATTENTION_KERNELS}, got {attention!r}")
        from rfrt.fast.config import SDPA_BACKENDS

        if sdpa_backend not in SDPA_BACKENDS:
            raise ValueError(f"RingCache.sdpa_backend must be one of {SDPA_BACKENDS}, got {sdpa_backend!r}")
        self.layout, self.policy = layout, layout.policy
        self.grid_h, self.grid_w, self.rope_theta = layout.grid_h, layout.grid_w, layout.rope_theta
        self.attention, self.scale = attention, 1.0 / math.sqrt(layout.head_dim)
        self.debug, self.sdpa_backend = bool(debug), sdpa_backend
        head_dim, grid_w, rope_theta = layout.head_dim, layout.grid_w, layout.rope_theta
        device = torch.device(device)
        self.kv = torch.zeros(layout.kv_shape(), dtype=dtype, device=device)
        acc_dtype = torch.float32 if layout.policy.sink_precision == "fp32" else dtype
        self.sink_acc = torch.zeros(layout.sink_acc_shape(), dtype=acc_dtype, device=device)
        # [slot_token, time_pos], [time_pos], [evicted_slot_token, evicted_time_pos, new_sink_time_pos]
        self._write_cursor = torch.zeros(2, dtype=torch.int64, device=device)
        self._query_cursor = torch.zeros(1, dtype=torch.int64, device=device)
        self._fold_cursor = torch.zeros(3, dtype=torch.int64, device=device)
        policy, tpf = layout.policy, layout.tokens_per_frame
        self.rope_space = ops.rope_space_table(head_dim, tpf, grid_w, rope_theta, device)
        sink_frames = policy.sink_frames
        self.rope_time = torch.zeros(policy.chunk_frames + 2 * sink_frames, ops._time_pairs(head_dim), 2,
                                     dtype=torch.float32, device=device)
        self.error = torch.zeros(1, dtype=torch.int32, device=device)
        self._write_params = [ops.write_params(self.kv, self.sink_acc, self._write_cursor, self.rope_space,
                                               self.rope_time, layer, layout.chunk_tokens, tpf, self.error)
                              for layer in range(layout.layers)]
        self._fold_params = ops.fold_params(self.kv, self.sink_acc, self._fold_cursor, self.rope_space,
                                            self.rope_time, float(policy.sink_ema_alpha), tpf, self.error)
        self._time_params = ops.time_rows_params(self.rope_time, self._write_cursor, self._fold_cursor, sink_frames,
                                                 head_dim, rope_theta)
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

    def check(self) -> None:
        """Raise if a kernel has refused an out-of-range cursor since the last check (reads one int from the
        device, so it synchronises: tests and debug mode call it, the step path does not)."""
        bits = int(self.error.item())
        if bits:
            self.error.zero_()
            _C = ops._core()
            what = [name for bit, name in ((_C.ERR_WRITE_CURSOR, "a cache write"), (_C.ERR_FOLD_CURSOR, "a sink fold"))
                    if bits & bit]
            raise RuntimeError(f"RingCache: {' and '.join(what)} met an out-of-range device cursor and wrote nothing "
                               f"(error bits {bits:#x}); the cursors were {self._write_cursor.tolist()} (write) and "
                               f"{self._fold_cursor.tolist()} (fold)")

    def begin_chunk(self, chunk: int | None = None) -> None:
        """Move to the next chunk: set its slots and positions, and fold the evicted chunk into the sink.

        The fold happens here, before the chunk's first forward, for all layers at once; the evicted chunk
        holds its context-pass K/V, which no later forward changes, so this equals folding each layer just
        before that layer's first attention (SPEC §2.2).
        """
        self.enter_chunk(self.chunk + 1 if chunk is None else chunk)
        p, tpf, nxt = self.policy, self.layout.tokens_per_frame, self.chunk
        pos = nxt * p.chunk_frames
        _upload(self._write_cursor, [p.chunk_slot_frame(nxt) * tpf, pos])
        _upload(self._query_cursor, [pos])
        victim = p.evicted_chunk(nxt)
        if victim is not None:
            _upload(self._fold_cursor, [p.chunk_slot_frame(victim) * tpf, victim * p.chunk_frames,
                                        p.sink_position(nxt)])
        self.time_rows()
        if victim is not None:
            self.fold()
        if self.debug:
            self.check()

    def enter_chunk(self, chunk: int) -> None:
        """The host half of begin_chunk: the chunk counter and the attended key count, no device work.

        For a caller that sets the device half with `load_cursors` (a CUDA graph records that half once and
        replays it; this half runs on the host before every replay).
        """
        nxt = self.chunk + 1
        if chunk != nxt:
            raise ValueError(f"chunks must be generated in order: expected chunk {nxt}, got {chunk}")
        self.chunk, self.keys = nxt, self.layout.valid_tokens(nxt)

    def load_cursors(self, counter: Tensor) -> None:
        """The device half of begin_chunk for the chunk `enter_chunk` entered: the cursors computed from
        `counter` (int64 [1] on the cache's device, holding that chunk's index) by tensor ops, then the fold if
        the chunk evicts. Nothing waits for the device, so a CUDA graph can record it."""
        if self.chunk < 0:
            raise RuntimeError("RingCache.load_cursors: call enter_chunk(chunk) first")
        for cursor, value in zip(self.cursors, self.device_cursors(counter)):
            cursor.copy_(value)
        self.time_rows()  # this chunk's RoPE time rows, from the cursors just written
        if self.policy.evicted_chunk(self.chunk) is not None:
            self.fold()

    def device_cursors(self, chunk: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The cursors of chunk `chunk` (int64 [1] on the device), computed on the device: CachePolicy's
        slot_frame / evicted_chunk / sink_position as tensor ops, the values begin_chunk uploads.

        Returns (write [slot_token, time_pos], query [time_pos], fold [evicted_slot_token, evicted_time_pos,
        new_sink_time_pos]); the fold cursor is meaningful only for chunks that evict.
        """
        p = self.policy
        tpf, cf, sink = self.layout.tokens_per_frame, p.chunk_frames, p.sink_frames
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

    def time_rows(self) -> None:
        """Fill this chunk's RoPE time rows from the device cursors (after they change: begin_chunk does it,
        a CUDA graph body calls it after its own cursor update)."""
        if torch.compiler.is_compiling():
            ops.rope_time_rows(self.rope_time, self._write_cursor, self._fold_cursor,
                               self.policy.sink_frames, self.kv.shape[5],
                               self.rope_theta)
        else:
            ops.launch(ops._core().rope_time_rows, self._time_params, self.rope_time)

    def fold(self) -> None:
        """The EMA-Sink fold of all layers at the fold cursor (needs time_rows() of the same cursors first)."""
        if torch.compiler.is_compiling():
            ops.sink_fold(self.kv, self.sink_acc, self._fold_cursor, self.rope_space, self.rope_time,
                          float(self.policy.sink_ema_alpha), self.layout.tokens_per_frame, self.error)
        else:
            ops.launch(ops._core().sink_fold, self._fold_params, self.kv)

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor, grid=None) -> Tensor:
        if self.chunk < 0:
            raise RuntimeError("RingCache: call begin_chunk() before the first forward of a chunk")
        if k.shape[1] != self.layout.chunk_tokens:
            raise ValueError(f"RingCache expects a chunk of {self.layout.chunk_tokens} tokens, got {k.shape[1]}")
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        if torch.compiler.is_compiling():  # traced: the custom op (same kernel, same params)
            q = ops.cache_write(self.kv, self.sink_acc, q, k, v, self._write_cursor, self.rope_space, self.rope_time,
                                layer, self.layout.tokens_per_frame, self.error)
        else:
            if not 0 <= layer < self.layers:
                raise ValueError(f"layer {layer} is outside the cache's {self.layers} layers")
            for name, t in (("q", q), ("k", k), ("v", v)):
                ops._check_tokens(name, t, self.kv)
            if q.shape != k.shape or v.shape != k.shape:
                raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} differ")
            q_rot = torch.empty_like(q)
            ops.launch_write(self._write_params[layer], q, q_rot, k, v)
            q = q_rot
        if self.debug:
            self.check()
        if self.attention == "core":
            return ops.ring_attention(self.kv, q, layer, self.keys, self.scale)
        q, keys, values = self.sdpa_inputs(layer, q)
        if self.sdpa_backend == "auto":
            out = F.scaled_dot_product_attention(q, keys, values, scale=self.scale)
        else:
            from rfrt.fast.attention import sdpa

            out = sdpa(q, keys, values, self.scale, self.sdpa_backend)
        return out.transpose(1, 2)

    def sdpa_inputs(self, layer: int, q_rotated: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The BHLD views SDPA reads for layer `layer` (no copies): q [B, H, L, D] and the ring's first
        `keys` K / V [B, H, keys, D] (rfrt.fast.attention.sdpa_choice reports the kernel torch picks for them)."""
        keys = self.kv[0, layer, :, : self.keys].transpose(1, 2)
        values = self.kv[1, layer, :, : self.keys].transpose(1, 2)
        return q_rotated.transpose(1, 2), keys, values


def _slot_frame(frame: Tensor, sink: int, ring: int) -> Tensor:
    """CachePolicy.slot_frame as tensor ops: the sink is fixed, the rest a ring of `ring` frames."""
    return torch.where(frame < sink, frame, sink + torch.remainder(frame - sink, ring))


def _upload(cursor: Tensor, values: list[int]) -> None:
    """Copy host-computed positions into a device cursor (once per chunk, never per forward).

    On a GPU the values go through pinned memory with a non-blocking copy, so the host never waits for the
    stream; torch's caching host allocator keeps the pinned block alive until the copy has run. This must never
    be captured in a CUDA graph: the graph would freeze a pinned host address that the allocator later reuses
    (ChunkGraphs computes its cursors on the device instead).
    """
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("RingCache: the pinned cursor upload (begin_chunk / a prompt re-cache) was called while "
                           "a CUDA graph is being captured; graph bodies must compute cursors on the device "
                           "(rfrt.fast.graphs.ChunkGraphs does)")
    host = torch.tensor(values, dtype=torch.int64)
    if cursor.is_cuda:
        cursor.copy_(host.pin_memory(), non_blocking=True)
    else:
        cursor.copy_(host)
