"""Chunk steps: the DiT's chunk forward as a pure function of the cache tensors, and the state that drives one.

A chunk step runs one DiT forward of one chunk with the self-attention cache passed in and handed back, the
interface of ``rfrt.cache.functional`` that ``export/export_onnx.py`` exports and ``export/build_engine.py``
turns into a TensorRT engine:

    step(x, t, cross_kv, kv, sink_acc, controls) -> (flow, kv_out, sink_acc_out)

``ChunkStepRunner`` is what StreamGenerator needs from one. Three exist: the TensorRT engine runner
(``rfrt.trt_backend.TensorRTChunkStep``), an ONNX Runtime session of the exported graph
(``export/ort_chunk_step.py``: the generator's engine path, runnable on a CPU, which is how it is tested), and
``TorchChunkStep`` here, the same computation in eager PyTorch. ``StepCache`` carries kv / sink_acc from forward
to forward and chunk to chunk, with the same reset / begin_chunk protocol as ``RingCache``, so the generator's
loop does not care which one it drives.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
from torch import Tensor

from rfrt.cache.functional import (MASK_INPUT, CacheLayout, FunctionalCacheAttention, StepControls, fold_sink,
                                   step_controls)
from rfrt.models import CausalWanDiT, CrossKV, ModelConfig

__all__ = ["ChunkStepRunner", "StepCache", "TorchChunkStep", "check_runner", "check_step_shapes",
           "chunk_step_forward", "step_feeds", "step_input_shapes"]


class ChunkStepRunner(Protocol):
    """One DiT chunk forward with the cache in and out (the exported graph's interface).

    masked:       whether it takes the valid_tokens key mask (phase "any": serves every chunk) or attends to the
                  whole buffer (phase "steady": only chunks whose window is full, chunk >= policy.ring_chunks).
    input_shapes: input name -> static shape; input_dtypes: input name -> torch dtype (the cache state is
                  allocated in these dtypes).
    __call__ returns tensors with the shapes of flow / kv / sink_acc; a returned kv_out / sink_acc_out must stay
    valid as the next call's kv / sink_acc (TensorRTChunkStep double-buffers its outputs for this).
    """

    masked: bool
    input_shapes: Mapping[str, tuple[int, ...]]
    input_dtypes: Mapping[str, torch.dtype]

    def __call__(self, x: Tensor, t: Tensor, cross_kv: Tensor, kv: Tensor, sink_acc: Tensor,
                 controls: StepControls) -> tuple[Tensor, Tensor, Tensor]: ...


def check_runner(runner) -> ChunkStepRunner:
    """`runner` if it has the ChunkStepRunner interface, else a TypeError naming what it lacks."""
    missing = [a for a in ("masked", "input_shapes", "input_dtypes") if not hasattr(runner, a)]
    if not callable(runner):
        missing.append("__call__")
    if missing:
        raise TypeError(f"backend {type(runner).__name__} is not a chunk-step runner: it lacks {missing} "
                        "(see rfrt.chunk_step.ChunkStepRunner)")
    return runner


def step_feeds(x: Tensor, t: Tensor, cross_kv: Tensor, kv: Tensor, sink_acc: Tensor, controls: StepControls,
               masked: bool) -> dict[str, Tensor]:
    """The graph inputs of one forward, by name (valid_tokens only for a masked graph)."""
    feeds = {"x": x, "t": t, "cross_kv": cross_kv, "kv": kv, "sink_acc": sink_acc, "slots": controls.slots,
             "rope_cos": controls.rope_cos, "rope_sin": controls.rope_sin, "fold": controls.fold}
    if masked:
        feeds[MASK_INPUT] = controls.valid_tokens
    return feeds


def chunk_step_forward(model: CausalWanDiT, layout: CacheLayout, masked: bool, x: Tensor, t: Tensor,
                       cross_kv: Tensor, kv: Tensor, sink_acc: Tensor, controls: StepControls
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """The chunk step in PyTorch: fold the sink, run the model over the functional cache -> (flow, kv, sink_acc).

    This is exactly what export/export_onnx.py traces (its ChunkStep calls this).
    """
    kv, sink_acc = fold_sink(layout, kv, sink_acc, controls)
    backend = FunctionalCacheAttention(layout, kv, sink_acc, controls, masked=masked)
    text = CrossKV(tuple(cross_kv[0].unbind(0)), tuple(cross_kv[1].unbind(0)))
    flow = model(x, t, text, backend)
    kv_out, acc_out = backend.updated()
    return flow, kv_out, acc_out


def step_input_shapes(cfg: ModelConfig, layout: CacheLayout, masked: bool) -> dict[str, tuple[int, ...]]:
    """The static input shapes of the chunk step of model `cfg` over cache `layout` (what an engine must have)."""
    pt, ph, pw = cfg.patch_size
    p = layout.policy
    shapes = {
        "x": (layout.batch, p.chunk_frames * pt, cfg.in_dim, layout.grid_h * ph, layout.grid_w * pw),
        "t": (layout.batch, p.chunk_frames),
        "cross_kv": (2, cfg.num_layers, layout.batch, cfg.text_len, cfg.num_heads, cfg.head_dim),
        "kv": layout.kv_shape(), "sink_acc": layout.sink_acc_shape(), "slots": (2,),
        "rope_cos": (3, p.chunk_frames, layout.time_pairs), "rope_sin": (3, p.chunk_frames, layout.time_pairs),
        "fold": (2,),
    }
    if masked:
        shapes[MASK_INPUT] = (1,)
    return shapes


def check_step_shapes(runner: ChunkStepRunner, cfg: ModelConfig, layout: CacheLayout, what: str) -> None:
    """Raise ValueError when `runner`'s static shapes are not those of this model, resolution and cache.

    An engine is built for one latent size, chunk length and cache window; running it under another config
    would fail deep inside TensorRT (or, worse, run on misread buffers), so the mismatch is named at load time.
    """
    want = step_input_shapes(cfg, layout, runner.masked)
    got = {n: tuple(s) for n, s in runner.input_shapes.items()}
    bad = [f"{n} {got.get(n, 'missing')} (needs {w})" for n, w in want.items() if got.get(n) != w]
    extra = sorted(set(got) - set(want))
    if bad or extra:
        p, pt = layout.policy, cfg.patch_size
        latent_h, latent_w = layout.grid_h * pt[1], layout.grid_w * pt[2]
        raise ValueError(
            f"{what} does not fit this generator: {'; '.join(bad + [f'unexpected input {n}' for n in extra])}. "
            f"The generator runs latents {latent_h}x{latent_w} ({layout.grid_h}x{layout.grid_w} tokens per frame), "
            f"chunk_frames={p.chunk_frames}, sink_frames={p.sink_frames}, window_frames={p.window_frames}, "
            f"{cfg.num_layers} layers x {cfg.num_heads} heads x {cfg.head_dim}, text_len={cfg.text_len}: export "
            f"with export/export_onnx.py --latent-height {latent_h} --latent-width {latent_w} "
            f"--chunk-frames {p.chunk_frames} --sink-frames {p.sink_frames} --window-frames {p.window_frames} "
            "(the model's own weights) and rebuild the engine, or construct the generator with the engine's "
            "height / width / cache")


class TorchChunkStep:
    """The chunk step in eager PyTorch on the generator's DiT (masked: it serves every chunk).

    The generator uses it for the filling chunks (0 .. ring_chunks - 1) of a "steady" engine, which only
    serves full windows. It computes in the model's dtype and hands the cache back in the dtypes it received,
    so it can share a StepCache whose tensors have an engine's dtypes.
    """

    masked = True

    def __init__(self, model: CausalWanDiT, layout: CacheLayout) -> None:
        self.model, self.layout = model, layout
        dtype = next(model.parameters()).dtype
        self.input_shapes = step_input_shapes(model.config, layout, masked=True)
        acc = torch.float32 if layout.policy.sink_precision == "fp32" else dtype
        self.input_dtypes = {n: torch.float32 for n in self.input_shapes} | {
            "x": dtype, "cross_kv": dtype, "kv": dtype, "sink_acc": acc, "slots": torch.int64,
            MASK_INPUT: torch.int64}

    def __call__(self, x: Tensor, t: Tensor, cross_kv: Tensor, kv: Tensor, sink_acc: Tensor,
                 controls: StepControls) -> tuple[Tensor, Tensor, Tensor]:
        dtype = self.input_dtypes["x"]
        with torch.no_grad():
            flow, kv_out, acc_out = chunk_step_forward(self.model, self.layout, True, x.to(dtype), t,
                                                       cross_kv.to(dtype), kv.to(dtype), sink_acc, controls)
        return flow, kv_out.to(kv.dtype), acc_out.to(sink_acc.dtype)


class StepCache:
    """The self-attention cache as explicit tensors (kv, sink_acc), advanced through a chunk-step runner: the
    chunk-forward protocol of rfrt.runtime.forward (reset / begin_chunk / set_text / forward(x, t) -> flow).

    Per chunk begin_chunk(), then the chunk's forwards, the first of which
    folds the evicted chunk into the sink (``step_controls(first_forward=True)``; RingCache folds in
    begin_chunk, which is the same since the evicted K/V do not change in between). Each forward's kv_out /
    sink_acc_out become the next forward's inputs, exactly as export_onnx.verify_stream drives the graph.

    runner: serves every chunk if masked; a steady runner serves chunks >= policy.ring_chunks and `filling`
    (a masked runner, e.g. TorchChunkStep) the ones before, including those a re-cache replays.
    """

    def __init__(self, runner: ChunkStepRunner, layout: CacheLayout, device: torch.device,
                 filling: ChunkStepRunner | None = None) -> None:
        if not runner.masked and (filling is None or not filling.masked):
            raise ValueError("a steady-phase chunk step serves only full windows: pass a masked `filling` step "
                             "for the first chunks")
        self.runner, self.filling, self.layout, self.device = runner, filling, layout, torch.device(device)
        self.policy = layout.policy
        self.kv = self.sink_acc = None
        self.cross_kv: Tensor | None = None  # the prompt's cross K/V stacked: [2, layers, B, Ltext, H, D]
        self.chunk = -1
        self._controls: tuple[StepControls, StepControls] | None = None
        self._forwards = 0
        self.reset()

    def reset(self) -> None:
        """Forget the stream: a zeroed cache (as RingCache), the next chunk is chunk 0."""
        dtypes = self.runner.input_dtypes
        self.kv = torch.zeros(self.layout.kv_shape(), dtype=dtypes["kv"], device=self.device)
        self.sink_acc = torch.zeros(self.layout.sink_acc_shape(), dtype=dtypes["sink_acc"], device=self.device)
        self.chunk, self._controls, self._forwards = -1, None, 0

    def begin_chunk(self) -> None:
        """Move to the next chunk: its controls, computed once (fp64 RoPE on the host), uploaded once."""
        self.chunk += 1
        # Only the first forward folds; the others pass fold = (1, 0), which leaves the cache unchanged.
        self._controls = tuple(step_controls(self.layout, self.chunk, first_forward=first, device=self.device)
                               for first in (True, False))
        self._forwards = 0

    def set_text(self, cross: CrossKV) -> None:
        """The prompt's cross K/V as the runner's one input, stacked and cast once per prompt, not in every
        forward (~190 MB in fp32 for Wan 1.3B)."""
        stacked = torch.stack([torch.stack(cross.keys), torch.stack(cross.values)])
        self.cross_kv = stacked.to(self.runner.input_dtypes["cross_kv"])

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """One forward of the current chunk -> flow (on x's device); the cache moves on by one forward."""
        if self._controls is None:
            raise RuntimeError("StepCache: call begin_chunk() before the first forward of a chunk")
        if self.cross_kv is None:
            raise RuntimeError("StepCache: call set_text(cross) before the first forward")
        cross_kv = self.cross_kv
        run = self.runner if self.runner.masked or self.chunk >= self.policy.ring_chunks else self.filling
        controls = self._controls[0 if self._forwards == 0 else 1]
        flow, self.kv, self.sink_acc = run(x, t, cross_kv, self.kv, self.sink_acc, controls)
        self._forwards += 1
        return flow.to(x.device)
