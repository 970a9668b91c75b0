"""ChunkGraphs: one chunk of SPEC §2.1 (4 denoising forwards + the context pass) as a replayable CUDA graph.

What the graph holds. Everything a chunk reads or writes lives at a fixed address: the four fp32 noise
buffers, the per-step timestep tensors and sigmas (the generator's device scalars), a static copy of the
prompt's cross-attention K/V, the RingCache (`kv`, `sink_acc` and its three device cursors) and the output
latents. The graph body is `rfrt.runtime.chunk.sample_chunk` itself (cursor update -> (fold) -> 4 forwards
with x0 / renoise -> context pass) over a forward whose begin_chunk takes its cursors from a device counter,
then: copy x0 to the output -> chunk counter + 1.

Cursors without a host sync. `RingCache.begin_chunk` computes the chunk's slot and RoPE positions on the host
and uploads them (a pinned non-blocking copy, which refuses to run under capture: a captured copy would
freeze a host address the allocator reuses). Inside the graph the cache computes them instead from a device
chunk counter (`RingCache.load_cursors`: the same arithmetic as `CachePolicy` as tensor ops), so the step path
never waits for the device; before each replay the cache's host half (`RingCache.enter_chunk`) moves its two
plain counters. The runner asks the cache for both halves and writes none of the cache's state itself.

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

import torch
from torch import Tensor

from rfrt.cache.ring import RingCache
from rfrt.models.dit import CrossKV
from rfrt.runtime.chunk import context_pass, sample_chunk
from rfrt.runtime.forward import TorchForward
from rfrt.runtime.plan import ChunkPlan

__all__ = ["ChunkGraphs"]


class _GraphForward(TorchForward):
    """The DiT over a RingCache, for capture: cursors from the runner's device counter, text in static
    buffers (a graph reads fixed addresses, so a new prompt is copied in, not swapped)."""

    def __init__(self, dit, cache: RingCache, counter: Tensor) -> None:
        super().__init__(dit, cache)
        self.counter = counter
        self._source: CrossKV | None = None

    def begin_chunk(self) -> None:
        self.cache.load_cursors(self.counter)

    def set_text(self, cross: CrossKV) -> None:
        if cross is self._source:
            return
        if self.cross is None:
            super().set_text(CrossKV(tuple(k.clone() for k in cross.keys), tuple(v.clone() for v in cross.values)))
        else:
            for dst, src in zip(self.cross.keys + self.cross.values, cross.keys + cross.values):
                if dst.shape != src.shape:
                    raise ValueError(f"cross-attention K/V changed shape {tuple(dst.shape)} -> {tuple(src.shape)}")
                dst.copy_(src)
        self._source = cross


class ChunkGraphs:
    """Samples chunks like the eager StreamGenerator, replaying one CUDA graph per cache phase.

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
        self._counter = torch.zeros(1, dtype=torch.int64, device=device)
        self._counter_chunk = None  # host mirror of the device counter's value (None: unknown)
        self._forward = _GraphForward(dit, cache, self._counter)
        self._noise = [torch.empty(plan.latent_shape, dtype=torch.float32, device=device) for _ in plan.timesteps]
        self._out = torch.empty(plan.latent_shape, dtype=plan.dtype, device=device)
        # per phase: (denoise graph, context graph); the latents leave between the two
        self._graphs: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph]] = {}
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

    def set_text(self, cross: CrossKV) -> None:
        """Copy a (new) prompt's cross K/V into the static buffers the graphs read (once per prompt)."""
        self._forward.set_text(cross)

    @torch.no_grad()
    def sample_chunk(self, noise: torch.Generator, before_context=None) -> Tensor:
        """Generate the cache's next chunk -> latents [1, F, C, h, w] (a fresh tensor, DiT dtype).

        before_context(latents): called with that tensor between the denoising graph and the context-pass graph
        (each phase is captured as those two graphs), e.g. to start decoding the chunk while its context pass
        runs."""
        if self._forward.cross is None:
            raise RuntimeError("ChunkGraphs: call set_text(cross) before the first chunk")
        nxt = self.cache.chunk + 1
        if self._counter_chunk != nxt:
            # After reset() or a prompt re-cache the eager cache moved on its own: resync the device counter
            # with a fill kernel (the value is a kernel argument, so this does not wait for the device either).
            self._counter.fill_(nxt)
        self.plan.draw(noise, out=self._noise)
        phase = self._phase(nxt)
        self.cache.enter_chunk(nxt)
        graphs = self._graphs.get(phase)
        if graphs is not None:
            graphs[0].replay()
            out = self._out.clone()
            if before_context is not None:
                before_context(out)
            graphs[1].replay()
        else:
            self._denoise()
            out = self._out.clone()
            if before_context is not None:
                before_context(out)
            self._context()
            if self.capture and phase not in self._seen:
                self._record(phase)
            self._seen.add(phase)
        self._counter_chunk = nxt + 1
        return out

    def _record(self, phase: tuple[int, bool]) -> None:
        denoise, context = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        # torch.cuda.graph synchronises, captures on its own side stream and gives the graph a private memory
        # pool; the body's temporaries live there and nothing captured outlives the graph except the static
        # buffers allocated above. The two halves of a phase always run in turn, so they share one pool.
        with torch.cuda.graph(denoise):
            self._denoise()
        with torch.cuda.graph(context, pool=denoise.pool()):
            self._context()
        self._graphs[phase] = (denoise, context)

    def _denoise(self) -> None:
        """The chunk's cursors, fold and 4 denoising forwards on the static buffers, x0 into `_out` (device ops
        only: this is what the first graph of a phase records)."""
        self._out.copy_(sample_chunk(self._forward, self._noise, self.plan, context=False))

    def _context(self) -> None:
        """The context pass over `_out`, then the chunk counter (the second graph)."""
        context_pass(self._forward, self._out, self.plan)
        self._counter.add_(1)
