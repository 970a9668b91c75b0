"""ChunkGraphs: one chunk of SPEC §2.1 (4 denoising forwards + the context pass) as a replayable CUDA graph.

What the graph holds. Everything a chunk reads or writes lives at a fixed address: the four fp32 noise
buffers, the per-step timestep tensors and sigmas (the generator's device scalars), a static copy of the
prompt's cross-attention K/V, the RingCache (`kv`, `sink_acc` and its three device cursors) and the output
latents. The graph body is: cursor update -> (fold) -> 4 forwards with x0 / renoise -> context pass -> copy
x0 to the output -> chunk counter + 1.

Cursors without a host sync. `RingCache.begin_chunk` computes the chunk's slot and RoPE positions on the host
and uploads them (a pinned non-blocking copy, which must never be captured: it would freeze a host address the
allocator reuses, so `_upload` refuses to run under capture). Here a device
chunk counter feeds the same arithmetic as `CachePolicy` (slot_frame, evicted_chunk, sink_position) written
as tensor ops, inside the graph, so the step path never waits for the device. The host only mirrors the two
plain counters (`cache.chunk`, `cache.keys`) it already knows.

Phases. What differs between chunks as far as a graph is concerned is (attended key frames, fold or not):
(3, no), (6, no), (9, no), then (9, fold) for every later chunk in the release layout. Each phase gets its own
graph, captured the first time the phase occurs: that first chunk runs eagerly for real (it also serves as the
warm-up capture needs: cuBLAS handles, SDPA kernel choice), then the same body is captured, which records but
does not execute, so the stream state advances exactly once. Later streams (reset) replay the filling graphs.

Noise: pre-drawn, not drawn in the graph. Before each replay the stream's torch.Generator fills the four static
fp32 buffers with exactly the calls of the eager path (`torch.randn(shape, generator=g)`, in SPEC order: the
initial noise, then the three renoise draws). Four small kernels per chunk cost microseconds, while this keeps
the noise bitwise equal to the eager generator without relying on graph-registered generator state (a
non-default generator needs `CUDAGraph.register_generator_state`, whose offsets would then be owned by the
graph). They go on the current stream: a side stream would need a second set of buffers (the graph of chunk k
still reads its noise while chunk k+1's is drawn) for a saving below a kernel launch.

On a CPU (or with capture disabled) the same body runs eagerly on the same static buffers: the CPU tests check
the cursor arithmetic, the buffers and the body against the eager StreamGenerator, bit for bit.
Invalidation: the graphs capture parameter and buffer addresses; do not move or re-create the DiT, the cache
or the generator's timestep tensors after the first chunk.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rfrt.cache.ring import RingCache
from rfrt.models.dit import CrossKV
from rfrt.sampling import flow_to_x0, renoise

__all__ = ["ChunkGraphs", "ChunkPlan", "device_cursors"]


@dataclass(frozen=True)
class ChunkPlan:
    """The fixed inputs of one chunk's sampling (all tensors on the generator's device).

    latent_shape: [1, F, C, h, w] of the chunk's latents; dtype: the DiT dtype.
    timesteps:    one fp32 [1, chunk_frames] tensor per denoising step; t_context: the context pass's (zeros).
    sigma64 / sigma32: per-step sigmas as fp64 / fp32 0-d tensors (for flow_to_x0 / renoise).
    """

    latent_shape: tuple[int, ...]
    dtype: torch.dtype
    timesteps: tuple[Tensor, ...]
    t_context: Tensor
    sigma64: tuple[Tensor, ...]
    sigma32: tuple[Tensor, ...]

    def __post_init__(self) -> None:
        n = len(self.timesteps)
        if n == 0 or len(self.sigma64) != n or len(self.sigma32) != n:
            raise ValueError(f"ChunkPlan needs one timestep and sigma per denoising step, got {n} timesteps, "
                             f"{len(self.sigma64)} fp64 and {len(self.sigma32)} fp32 sigmas")
        if len(self.latent_shape) != 5 or self.latent_shape[0] != 1:
            raise ValueError(f"ChunkPlan.latent_shape must be [1, F, C, h, w], got {self.latent_shape}")


def _slot_frame(frame: Tensor, sink: int, ring: int) -> Tensor:
    """CachePolicy.slot_frame as tensor ops: the sink is fixed, the rest a ring of `ring` frames."""
    return torch.where(frame < sink, frame, sink + torch.remainder(frame - sink, ring))


def device_cursors(cache: RingCache, chunk: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The RingCache cursors of chunk `chunk` (int64 [1] on the cache's device), computed on the device.

    Returns (write [slot_token, time_pos], query [time_pos], fold [evicted_slot_token, evicted_time_pos,
    new_sink_time_pos]), the values `RingCache.begin_chunk` uploads (the fold cursor is meaningful only for
    chunks that evict).
    """
    p = cache.policy
    tpf, cf, sink = p.tokens_per_frame, p.chunk_frames, p.sink_frames
    ring = p.window_frames - p.sink_frames
    pos = chunk * cf
    write = torch.cat([_slot_frame(pos, sink, ring) * tpf, pos])
    victim = chunk - p.ring_chunks
    evicted = victim * cf
    if p.rope_rule == "absolute":
        sink_pos = torch.zeros_like(chunk)
    else:
        oldest = torch.clamp(chunk - p.ring_chunks + 1, min=1)
        sink_pos = torch.where(chunk == 0, torch.zeros_like(chunk), oldest * cf - sink)
    fold = torch.cat([_slot_frame(evicted.clamp(min=0), sink, ring) * tpf, evicted, sink_pos])
    return write, pos, fold


def _cursor_tensors(cache: RingCache) -> tuple[Tensor, Tensor, Tensor]:
    """The cache's device cursors (write, query, fold), updated in place by the graph (fixed addresses)."""
    return cache.cursors


class ChunkGraphs:
    """Samples chunks like `StreamGenerator._sample_chunk`, replaying one CUDA graph per cache phase.

    dit: the CausalWanDiT; cache: the stream's RingCache (reset()/recache between chunks are detected through
    `cache.chunk`); plan: the chunk's fixed inputs; capture: record CUDA graphs (only on a CUDA cache; False
    runs the same body eagerly).
    """

    def __init__(self, dit, cache: RingCache, plan: ChunkPlan, *, capture: bool = True) -> None:
        if not isinstance(cache, RingCache):
            raise TypeError(f"ChunkGraphs needs a RingCache, got {type(cache).__name__}")
        if not isinstance(plan, ChunkPlan):
            raise TypeError(f"ChunkGraphs needs a ChunkPlan, got {type(plan).__name__}")
        self.dit, self.cache, self.plan = dit, cache, plan
        device = cache.kv.device
        self.capture = bool(capture) and device.type == "cuda"
        self._cursors = _cursor_tensors(cache)
        self._counter = torch.zeros(1, dtype=torch.int64, device=device)
        self._counter_chunk = None  # host mirror of the device counter's value (None: unknown)
        self._noise = [torch.empty(plan.latent_shape, dtype=torch.float32, device=device) for _ in plan.timesteps]
        self._out = torch.empty(plan.latent_shape, dtype=plan.dtype, device=device)
        self._cross: CrossKV | None = None
        self._cross_source: CrossKV | None = None
        self._graphs: dict[tuple[int, bool], torch.cuda.CUDAGraph] = {}
        self._seen: set[tuple[int, bool]] = set()

    @property
    def mode(self) -> str:
        """"graphs" when chunks replay CUDA graphs, "eager" otherwise."""
        return "graphs" if self.capture else "eager"

    @property
    def captured_phases(self) -> tuple[tuple[int, bool], ...]:
        """(attended key frames, folds) of each captured graph."""
        return tuple(self._graphs)

    def _phase(self, chunk: int) -> tuple[int, bool]:
        p = self.cache.policy
        return p.valid_frames(chunk), p.evicted_chunk(chunk) is not None

    def _set_cross(self, cross: CrossKV) -> None:
        """Copy a (new) prompt's cross K/V into the static buffers the graphs read (once per prompt)."""
        if cross is self._cross_source:
            return
        if self._cross is None:
            self._cross = CrossKV(tuple(k.clone() for k in cross.keys), tuple(v.clone() for v in cross.values))
        else:
            for dst, src in zip(self._cross.keys + self._cross.values, cross.keys + cross.values):
                if dst.shape != src.shape:
                    raise ValueError(f"cross-attention K/V changed shape {tuple(dst.shape)} -> {tuple(src.shape)}")
                dst.copy_(src)
        self._cross_source = cross

    @torch.no_grad()
    def sample_chunk(self, noise: torch.Generator, cross: CrossKV) -> Tensor:
        """Generate the cache's next chunk -> latents [1, F, C, h, w] (a fresh tensor, DiT dtype)."""
        cache, plan = self.cache, self.plan
        nxt = cache.chunk + 1
        if self._counter_chunk != nxt:
            # After reset() or a prompt re-cache the eager cache moved on its own: resync the device counter
            # with a fill kernel (the value is a kernel argument, so this does not wait for the device either).
            self._counter.fill_(nxt)
        for buf in self._noise:
            torch.randn(plan.latent_shape, generator=noise, out=buf)
        self._set_cross(cross)
        phase = self._phase(nxt)
        cache.chunk, cache.keys = nxt, phase[0] * cache.policy.tokens_per_frame
        graph = self._graphs.get(phase)
        if graph is not None:
            graph.replay()
        else:
            self._body(phase[1])
            if self.capture and phase not in self._seen:
                self._record(phase)
            self._seen.add(phase)
        self._counter_chunk = nxt + 1
        return self._out.clone()

    def _record(self, phase: tuple[int, bool]) -> None:
        graph = torch.cuda.CUDAGraph()
        # torch.cuda.graph synchronises, captures on its own side stream and gives the graph a private memory
        # pool; the body's temporaries live there and nothing captured outlives the graph except the static
        # buffers allocated above.
        with torch.cuda.graph(graph):
            self._body(phase[1])
        self._graphs[phase] = graph

    def _body(self, fold: bool) -> None:
        """One chunk on the static buffers; device ops only (this is what a graph records)."""
        cache, plan, dit, cross = self.cache, self.plan, self.dit, self._cross
        write, query, fold_cursor = device_cursors(cache, self._counter)
        self._cursors[0].copy_(write)
        self._cursors[1].copy_(query)
        self._cursors[2].copy_(fold_cursor)
        cache.time_rows()  # this chunk's RoPE time rows, from the cursors just written
        if fold:
            cache.fold()
        x = self._noise[0].to(plan.dtype)
        steps = len(plan.timesteps)
        for i, t in enumerate(plan.timesteps):
            flow = dit(x, t, cross, cache)
            x0 = flow_to_x0(x, flow, plan.sigma64[i])
            if i + 1 < steps:
                x = renoise(x0, self._noise[i + 1].to(plan.dtype), plan.sigma32[i + 1])
        dit(x0, plan.t_context, cross, cache)  # context pass: rewrites this chunk's K/V
        self._out.copy_(x0)
        self._counter.add_(1)
