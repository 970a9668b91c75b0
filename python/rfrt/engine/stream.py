"""The engine's side of the chunk loop: a chunk forward (rfrt.runtime.forward protocol) over a chunk-step
runner, and the same step in eager PyTorch.

``EngineForward`` carries kv / sink_acc from forward to forward and chunk to chunk and computes each forward's
control inputs, so ``rfrt.runtime.sample_chunk`` drives an exported graph exactly as it drives the DiT over a
RingCache. ``TorchChunkStep`` is the step in eager PyTorch (``chunk_step_forward``, the very function the
exporter traces): it serves the filling chunks of a "steady" engine, and checks the others.
"""
from __future__ import annotations

import torch
from torch import Tensor

from rfrt.cache.functional import CacheLayout, FunctionalCacheAttention, StepControls, fold_sink, step_controls
from rfrt.engine.interface import MASK_INPUT, ChunkStepRunner, step_input_shapes
from rfrt.models import CausalWanDiT, CrossKV

__all__ = ["EngineForward", "TorchChunkStep", "chunk_step_forward"]


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


class EngineForward:
    """The self-attention cache as explicit tensors (kv, sink_acc), advanced through a chunk-step runner: the
    chunk-forward protocol of rfrt.runtime.forward (reset / begin_chunk / set_text / forward(x, t) -> flow).
    It holds the stream's cache state, so StreamGenerator.cache is this object with an engine backend.

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
            raise RuntimeError("EngineForward: call begin_chunk() before the first forward of a chunk")
        if self.cross_kv is None:
            raise RuntimeError("EngineForward: call set_text(cross) before the first forward")
        cross_kv = self.cross_kv
        run = self.runner if self.runner.masked or self.chunk >= self.policy.ring_chunks else self.filling
        controls = self._controls[0 if self._forwards == 0 else 1]
        flow, self.kv, self.sink_acc = run(x, t, cross_kv, self.kv, self.sink_acc, controls)
        self._forwards += 1
        return flow.to(x.device)
