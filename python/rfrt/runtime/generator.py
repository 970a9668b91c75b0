"""StreamGenerator: endless chunk-by-chunk video generation with the ring KV cache (SPEC §2).

The generator holds the API and the stream state (cache, noise generator, prompt, counters); the chunk itself
is `rfrt.runtime.chunk.sample_chunk`, the one loop, over a chunk forward (`rfrt.runtime.forward`).
Per chunk c (SPEC §2.1), with F = chunk_frames latent frames and S = len(denoising_steps) (4):
  1. `cache.begin_chunk()` (slots, positions, EMA fold of the evicted chunk);
  2. noise from the stream's torch.Generator, in this order: the initial noise x [1, F, C, h, w], then S - 1
     renoise draws of the same shape (3 in the release): all S draws happen before the first forward;
  3. S denoising forwards at the warped timesteps: x0 = x - sigma_i * flow (fp64); after forwards 1..S-1 the
     next input is (1 - sigma_{i+1}) x0 + sigma_{i+1} eps_i (fp32); the chunk's latents are the x0 of forward S;
  4. one context pass of those latents at t = 0 (output discarded) rewrites the chunk's K/V in the cache;
  5. the decoder turns the latents into frames.
The noise generator lives on the generator's device and is seeded by `seed` at reset(); noise is drawn in
fp32 and cast to the DiT dtype. On the CPU the stream therefore equals a loop that calls
`torch.randn(shape, generator=torch.Generator().manual_seed(seed))` in the order above.

Memory is bounded: the cache is allocated once per reset; per chunk only the chunk's tensors and the latents of
the chunks a re-cache would replay are kept.
"""
from __future__ import annotations

import collections
import dataclasses
import os
from typing import Iterator

import torch

from rfrt.cache.layout import CacheLayout
from rfrt.cache.policy import CachePolicy
from rfrt.cache.ring import ATTENTION_KERNELS, RingCache
from rfrt.checks import FiniteWatch, NonFiniteError, check_seed
from rfrt.decoders.base import to_uint8_frames
from rfrt.devices import default_device, resolve_dtype
from rfrt.engine.interface import check_step_shapes
from rfrt.engine.select import BACKENDS, check_backend, load_runner
from rfrt.engine.stream import EngineForward, TorchChunkStep
from rfrt.fast.config import RuntimeConfig
from rfrt.model_dir import LoadedModel
from rfrt.runtime.chunk import Chunk, sample_chunk
from rfrt.runtime.forward import TorchForward
from rfrt.runtime.loading import apply_runtime, check_resolution, load_bundle
from rfrt.runtime.plan import ChunkPlan
from rfrt.runtime.prime import Primed, context_latents, prime_chunks
from rfrt.runtime.weights import CONTINUATION, STREAM, WeightSets
from rfrt.sampling import SamplerConfig
from rfrt.text import PromptCache

__all__ = ["StreamGenerator", "Chunk", "BACKENDS"]

class StreamGenerator:
    """Generates video chunk by chunk, forever, from a text prompt.

        >>> gen = StreamGenerator()                      # the embedded default model
        >>> gen.reset("a large red circle moves right on a blue background", seed=0)
        >>> for chunk in gen:                            # endless: stop when you like
        ...     frames = chunk.frames                    # uint8 [T, H, W, 3]
        ...     if chunk.index == 4:
        ...         gen.set_prompt("a large red circle stays still on a blue background")
        ...     if chunk.index == 9:
        ...         break
        >>> tail = gen.flush()                           # frames a decoder still holds back

    model:      a model directory (rfrt.json or diffusers layout), an `rfrt.model_dir.LoadedModel`, or None for
                the embedded default model.
    checkpoint: a DiT checkpoint (Reward Forcing / Self-Forcing .pt, ...) replacing the directory's DiT weights;
                use_ema picks a Self-Forcing checkpoint's EMA generator.
    device:     default CUDA when available, else CPU. dtype: DiT dtype (a torch.dtype or "fp32" / "bf16" /
                "fp16", rfrt.devices.DTYPE_NAMES), default bf16 on CUDA, fp32 on CPU.
    height, width: output size in pixels, a multiple of decoder stride x patch (16 for Wan); default the model's.
    cache, sampler: override the model's CachePolicy (frames, EMA alpha, RoPE rule, sink precision; token
                counts follow from the resolution) and SamplerConfig.
    attention:  "sdpa" or "core" (RingCache's attention kernel).
    runtime:    rfrt.fast.RuntimeConfig (default: every fast path off). fp8 swaps the DiT's block linears in
                place; cuda_graphs replays each chunk as a CUDA graph (eager on a CPU, same results);
                overlap_decode decodes chunk k while chunk k+1 denoises, so the stream runs one chunk ahead and
                a set_prompt() shows from the second chunk after it.
    backend:    "torch" (default: the DiT over the RingCache), "tensorrt" (every denoising forward and context
                pass on the serialized engine `engine`, from export/export_onnx.py -> export/build_engine.py,
                for this model, resolution and cache; CUDA only), or a chunk-step runner object
                (rfrt.engine.ChunkStepRunner, e.g. rfrt.engine.OnnxRuntimeChunkStep to run an
                exported ONNX on the CPU). With an engine, text K/V, timesteps, noise and decoding stay in
                PyTorch, the cache is rfrt.engine.EngineForward, and a "steady" engine's filling chunks
                (the first window_frames / chunk_frames - 1) run the same step in eager PyTorch.
    continuation_weights: a stream primed from a context (reset(..., context=...)) runs on the model's
                continuation weights where it ships them (manifest "continuation": the default model does),
                a fresh stream on its own; False: primed streams too run on the stream's weights, as with every
                model without them, and with fp8 or an engine backend (which carry one weight set).
    """

    def __init__(self, model: str | os.PathLike | LoadedModel | None = None, *, checkpoint=None,
                 use_ema: bool = False, device=None, dtype: torch.dtype | None = None, height: int | None = None,
                 width: int | None = None, cache: CachePolicy | None = None, sampler: SamplerConfig | None = None,
                 attention: str = "sdpa", runtime: RuntimeConfig | None = None, backend="torch",
                 engine: str | os.PathLike | None = None, continuation_weights: bool = True) -> None:
        if attention not in ATTENTION_KERNELS:
            raise ValueError(f"attention must be one of {ATTENTION_KERNELS}, got {attention!r}")
        for name, value, cls in (("cache", cache, CachePolicy), ("sampler", sampler, SamplerConfig),
                                 ("runtime", runtime, RuntimeConfig)):
            if value is not None and not isinstance(value, cls):
                raise TypeError(f"{name} must be a {cls.__name__}, got {type(value).__name__}")
        self.device = default_device(device, check_cuda=False)
        # Before any weights load: a wrong backend setting costs a moment, not a model load.
        engine_path = check_backend(backend, engine, self.device, runtime or RuntimeConfig())
        default_device(self.device)  # a CUDA device that does not exist: a clear ValueError, not an AssertionError
        dtype = resolve_dtype(dtype, self.device)
        bundle = load_bundle(model, checkpoint, use_ema, self.device, dtype)
        self.runtime = runtime or RuntimeConfig()
        self.dit, self.decoder = apply_runtime(self.runtime, bundle.dit, bundle.decoder, self.device)
        self.dtype = next(self.dit.parameters()).dtype
        one_set = self.runtime.fp8 or backend != "torch"  # fp8 layers and engines hold the stream's weights only
        self._weights = WeightSets(self.dit, None if one_set or not continuation_weights else bundle.continuation)
        self.text = PromptCache(bundle.text_encoder)
        self.sampler = sampler or bundle.sampler
        self._fps = bundle.video.fps
        self._height, self._width = check_resolution(
            self.dit.config, self.decoder.spatial_upsample,
            bundle.video.height if height is None else height, bundle.video.width if width is None else width)
        cfg = self.dit.config
        pt, ph, pw = cfg.patch_size
        s = self.decoder.spatial_upsample
        self._latent_hw = (self._height // s, self._width // s)
        self._grid = (self._latent_hw[0] // ph, self._latent_hw[1] // pw)
        self.policy = cache or bundle.cache
        # Model-facing timesteps and sigmas as device tensors, derived from the schedule once (never .item() on
        # the step path); CachePolicy counts token frames, the latents have patch_t times as many.
        self._plan = ChunkPlan.build(self.sampler, (1, self.policy.chunk_frames * pt, cfg.in_dim, *self._latent_hw),
                                     self.policy.chunk_frames, self.dtype, self.device)
        self.attention = attention
        self.backend = backend if isinstance(backend, str) else type(backend).__name__
        self._layout = CacheLayout.for_model(cfg, self.policy, *self._grid)
        self._runner = load_runner(backend, engine_path, self.device)
        if self._runner is not None:
            what = f"engine {engine_path}" if engine_path is not None else f"backend {self.backend}"
            check_step_shapes(self._runner, cfg, self._layout, what)
        self._forward = None  # the chunk forward: the DiT over a RingCache, or an engine's EngineForward
        self._cache = None
        self._graphs = None
        self._ahead = None  # overlap_decode: latents of the chunk generated ahead
        self._noise: torch.Generator | None = None
        self._prompt: str | None = None
        self._cross = None
        self._chunk = 0
        self._primed: Primed | None = None
        self._hold: torch.Tensor | None = None  # held context latents [1, r, C, h, w] for the next chunk
        # Latents of the chunks a re-cache replays: the sink chunk plus the ring chunks before the next one.
        replayed = self.policy.window_frames // self.policy.chunk_frames - 1
        self._recent: collections.deque = collections.deque(maxlen=replayed)

    # ---- facts ----
    @property
    def fps(self) -> int:
        return self._fps

    @property
    def height(self) -> int:
        return self._height

    @property
    def width(self) -> int:
        return self._width

    @property
    def chunk_index(self) -> int:
        """Index of the chunk the next step() produces (= chunks generated since reset)."""
        return self._chunk

    @property
    def prompt(self) -> str | None:
        return self._prompt

    @property
    def plan(self) -> ChunkPlan:
        """The chunk plan: timesteps, sigmas and the latent shape [1, F, C, h, w] of one chunk."""
        return self._plan

    @property
    def layout(self) -> CacheLayout:
        """The cache geometry: policy, layers, heads, head_dim, token grid, RoPE base."""
        return self._layout

    @property
    def primed(self) -> Primed | None:
        """What the last reset(..., context=...) primed (rfrt.runtime.prime.Primed), or None without a context."""
        return self._primed

    @property
    def cache(self):
        """The stream's self-attention cache (None before the first reset): a RingCache with the torch backend,
        an rfrt.engine.EngineForward with an engine. Both hold it in .kv and .sink_acc."""
        return self._cache

    @property
    def cross_kv(self):
        """The current prompt's cross-attention K/V (rfrt.models.CrossKV)."""
        return self._cross

    # ---- the stream ----
    def reset(self, prompt: str, seed: int = 0, *, context=None) -> None:
        """Start a new stream: encode the prompt, clear the cache and the decoder, seed the noise.

        context: start from given frames (video continuation, image-to-video): an image or video file, uint8
        frames [T, H, W, C] / [H, W, C] / [H, W], or float latents [F, C, h, w]. They are encoded with the model's
        encoder and written into the cache as if generated (rfrt.runtime.prime); step() continues at chunk
        `primed.chunks`. A context that cannot be used raises rfrt.context.ContextError, stream untouched.
        A primed stream runs on the model's continuation weights where it has them (continuation_weights=;
        `primed.weights` says which set), a fresh stream on the stream's.
        """
        seed = check_seed(seed)
        self.text.encode(prompt)  # a bad prompt raises here, before anything changes (cached for _encode)
        ctx = None
        if context is not None:
            ctx = context_latents(context, decoder=self.decoder, height=self._height, width=self._width,
                                  channels=self.dit.config.in_dim, latent_hw=self._latent_hw,
                                  chunk_latent_frames=self._plan.latent_shape[1], dtype=self.dtype,
                                  device=self.device)
        weights = self._weights.use(STREAM if ctx is None else CONTINUATION)  # before the prompt's cross K/V
        cross = self._encode(prompt)
        if self._forward is None:
            self._build_forward()
        else:
            self._forward.reset()
        self._use_text(prompt, cross)
        self.decoder.reset()
        self._noise = torch.Generator(device=self.device).manual_seed(seed)
        self._chunk = 0
        self._recent.clear()
        self._ahead = None
        self._hold, self._primed = None, None
        if ctx is not None:
            primed, chunks, self._hold = prime_chunks(ctx, self._forward, self._plan, self._noise, self.decoder)
            self._primed = dataclasses.replace(primed, weights=weights)
            self._recent.extend(chunks)
            self._chunk = len(chunks)

    def set_prompt(self, prompt: str, recache: bool = False) -> None:
        """Switch the prompt mid-stream: re-encode it and rebuild the cross-attention K/V.

        recache=False: the self-attention cache (sink and window K/V computed under the old prompt) is kept
        untouched; the next chunk sees the old context through self-attention and the new prompt through
        cross-attention.
        recache=True (as LongLive does): the self-attention cache is cleared and rebuilt from the clean latents
        of the last window_frames / chunk_frames - 1 chunks (2 in the release; fewer early in a stream), oldest
        first, by re-running only their context pass (t = 0) under the new prompt, as if those chunks had
        started a new stream: the oldest becomes the sink (its EMA history is dropped) and the others fill the
        ring, so the next chunk attends to the same frames, now keyed under the new prompt. The noise stream,
        the decoder and chunk_index are not affected.
        """
        if self._cache is None:
            raise RuntimeError("StreamGenerator.set_prompt: call reset(prompt, seed) first")
        self._use_text(prompt, self._encode(prompt))
        if recache:
            self._forward.reset()
            with torch.no_grad():
                for latents in self._recent:
                    self._forward.begin_chunk()
                    self._forward(latents, self._plan.t_context)

    def _build_forward(self) -> None:
        """The stream's cache and the chunk forward over it (once per generator; reset() clears them)."""
        if self._runner is not None:
            filling = None if self._runner.masked else TorchChunkStep(self.dit, self._layout)
            self._forward = self._cache = EngineForward(self._runner, self._layout, self.device, filling=filling)
            return
        self._cache = RingCache(self._layout, dtype=self.dtype, device=self.device, attention=self.attention,
                                sdpa_backend=self.runtime.sdpa_backend)
        self._forward = TorchForward(self.dit, self._cache)
        if self.runtime.cuda_graphs:
            from rfrt.runtime.graphs import ChunkGraphs

            self._graphs = ChunkGraphs(self.dit, self._cache, self._plan)

    def _encode(self, prompt: str):
        """The prompt's cross-attention K/V (rfrt.models.CrossKV); validates the prompt, changes no state."""
        with torch.no_grad():
            return self.dit.cross_kv(self.text.encode(prompt).to(self.device))

    def _use_text(self, prompt: str, cross) -> None:
        self._forward.set_text(cross)
        if self._graphs is not None:
            self._graphs.set_text(cross)
        self._cross, self._prompt = cross, prompt

    def step(self) -> Chunk:
        """Generate the next chunk (SPEC §2.1; see the module docstring for the exact order of operations)."""
        if self._noise is None:
            raise RuntimeError("StreamGenerator.step: call reset(prompt, seed) first")
        if self.runtime.overlap_decode:
            return self._step_ahead()
        with torch.no_grad():
            latents = self._sample_chunk() if self._chunk else self._first_chunk()
            video = self.decoder.decode(latents)
        self._recent.append(latents)
        chunk = Chunk(index=self._chunk, frames=to_uint8_frames(video)[0], video=video[0], latents=latents[0])
        self._chunk += 1
        return chunk

    def _step_ahead(self) -> Chunk:
        """step() with overlap_decode: decode chunk k (side stream / worker) while chunk k+1 denoises.

        Each chunk's latents go to the decoder as soon as they exist, before its context pass (which only feeds
        the next chunk). The first chunk of a stream is returned as soon as it is decoded, without sampling
        chunk 1 first; from the second step on the generator works one chunk ahead. A chunk's latents join
        `_recent` when it is sampled, so a re-cache replays what the cache holds.
        """
        with torch.no_grad():
            if self._ahead is None:
                latents, pending = self._sample_submitting(first=self._chunk == 0)
                if self._chunk > 0:  # steady state: the next chunk denoises while this one decodes
                    self._ahead = self._sample_submitting()
            else:
                latents, pending = self._ahead
                self._ahead = self._sample_submitting()
            video, frames = pending.result()
        chunk = Chunk(index=self._chunk, frames=frames[0], video=video[0], latents=latents[0])
        self._chunk += 1
        return chunk

    def _sample_submitting(self, first: bool = False):
        """Sample the next chunk, submitting its latents to the (overlapped) decoder before its context pass
        (first: chunk 0, finite-checked). -> (latents, PendingFrames)."""
        submitted = []
        sample = self._first_chunk if first else self._sample_chunk
        latents = sample(before_context=lambda x0: submitted.append(self.decoder.submit(x0)))
        self._recent.append(latents)
        return latents, submitted[0]

    def _sample_chunk(self, before_context=None) -> torch.Tensor:
        """-> latents [1, F, C, h, w]: 4 denoising forwards + the context pass over this chunk (a chunk that
        starts with held context frames runs eagerly, holding them)."""
        hold, self._hold = self._hold, None
        if self._graphs is not None and hold is None:
            return self._graphs.sample_chunk(self._noise, before_context)
        return sample_chunk(self._forward, self._plan.draw(self._noise), self._plan, before_context=before_context,
                            hold=hold)

    @torch.no_grad()
    def warmup(self) -> None:
        """Do before the first prompt what the first chunks would otherwise pay for: build the cache, run one
        chunk of every cache phase (3 / 6 / 9 key frames, then the first fold) so SDPA builds its plans for each
        key count and cuBLAS its handles, capture every phase's CUDA graphs (cuda_graphs), compile the fused
        helpers (fuse_helpers) and run the decoder once. Uses zero text states and its own noise, then leaves
        the generator as it was: reset(prompt, seed) is still needed and streams exactly what it streams
        without a warm-up (tests/test_runtime_warmup.py)."""
        if self._forward is None:
            self._build_forward()
        self._hold, self._primed = None, None  # a primed stream is gone too
        cfg = self.dit.config
        cross = self.dit.cross_kv(torch.zeros(1, cfg.text_len, cfg.text_dim, device=self.device))
        self._forward.reset()
        self._forward.set_text(cross)
        if self._graphs is not None:
            self._graphs.set_text(cross)
        self.decoder.reset()
        self._noise = torch.Generator(device=self.device).manual_seed(0)
        phases = self.policy.window_frames // self.policy.chunk_frames + 1  # up to the first folding chunk
        for _ in range(phases):
            latents = self._sample_chunk()
            self.decoder.decode(latents)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._forward.reset()
        self.decoder.reset()
        self._recent.clear()
        # Any stream in progress is gone: the next step needs reset(prompt, seed).
        self._noise, self._chunk, self._ahead = None, 0, None
        if self._cross is not None:
            self._use_text(self._prompt, self._cross)

    def _first_chunk(self, before_context=None) -> torch.Tensor:
        """_sample_chunk() for chunk 0, with a NaN / infinity check that names where it started (one host
        sync per stream; the weights were checked on load, so this catches overflow in the DiT dtype)."""
        watch = FiniteWatch(self.dit) if self._graphs is None and self._runner is None else None
        if watch is None:
            latents = self._sample_chunk(before_context)
        else:
            with watch:
                latents = self._sample_chunk(before_context)
        if bool(torch.isfinite(latents).all()):
            return latents
        where = watch.first_bad() if watch is not None else None
        steps = self._plan.num_steps
        if where is not None:
            forward, module = where
            what = f"denoising step {forward + 1} of {steps}" if forward < steps else "the context pass"
            origin = f"first in module {module!r} during {what}"
        elif watch is not None:
            origin = "the DiT outputs were finite, so the sampler update produced them"
        else:
            origin = f"backend {self.backend} does not report where"
        raise NonFiniteError(f"chunk 0 of the stream has non-finite latents (NaN or infinity), {origin}; "
                             f"dtype {self.dtype}, device {self.device}. Try dtype=torch.float32, or check the "
                             "weights")

    def flush(self) -> torch.Tensor:
        """Frames the decoder still holds back: uint8 [T, H, W, 3] (T = 0 for the causal decoders)."""
        held = self.decoder.flush()
        if held.shape[1] == 0:
            return torch.empty(0, self._height, self._width, 3, dtype=torch.uint8)
        return to_uint8_frames(held)[0]

    def __iter__(self) -> Iterator[Chunk]:
        """Endless: yields step() until the caller stops."""
        while True:
            yield self.step()

