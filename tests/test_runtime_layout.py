"""The runtime / engine layering: old import paths still name the moved objects (for one release), importing
the packages does no heavy work, and the chunk loop's own checks."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from rfrt.runtime import ChunkPlan, sample_chunk
from rfrt.sampling import SamplerConfig


def test_old_import_paths_re_export_the_moved_objects():
    import export.ort_chunk_step
    import rfrt.chunk_step
    import rfrt.fast.graphs
    import rfrt.generator
    import rfrt.trt_backend
    from rfrt import StreamGenerator
    from rfrt.engine import onnxruntime, stream, tensorrt
    from rfrt.runtime import generator, graphs

    assert StreamGenerator is rfrt.generator.StreamGenerator is generator.StreamGenerator
    assert rfrt.fast.graphs.ChunkGraphs is graphs.ChunkGraphs
    assert rfrt.chunk_step.StepCache is stream.EngineForward
    assert rfrt.chunk_step.TorchChunkStep is stream.TorchChunkStep
    assert rfrt.trt_backend.TensorRTChunkStep is tensorrt.TensorRTChunkStep
    assert export.ort_chunk_step.OnnxRuntimeChunkStep is onnxruntime.OnnxRuntimeChunkStep


def test_importing_runtime_and_engine_loads_no_engine_library():
    code = ("import sys, rfrt.engine, rfrt.runtime, rfrt.engine.interface; "
            "print(sorted(m for m in ('tensorrt', 'onnxruntime', 'rfrt.runtime.generator') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


class _Recording:
    """A chunk forward that records what the loop asks of it and returns a fixed flow."""

    def __init__(self) -> None:
        self.calls = []

    def begin_chunk(self) -> None:
        self.calls.append("begin")

    def __call__(self, x, t):
        self.calls.append((float(t.flatten()[0]), torch.is_grad_enabled()))
        return torch.ones_like(x)


def test_sample_chunk_order_exit_step_and_grad_switch():
    plan = ChunkPlan.build(SamplerConfig(), (1, 3, 2, 2, 2), 3, torch.float32, "cpu")
    draws = [torch.full(plan.latent_shape, float(i)) for i in range(4)]
    fwd = _Recording()
    x0 = sample_chunk(fwd, draws, plan, exit_step=1, grad=True)
    assert fwd.calls == ["begin", (1000.0, False), (937.5, True), (0.0, False)]
    # closed form: x0_0 = d0 - 1 * 1 = -1; x1 = (1 - s1) x0_0 + s1 d1; x0_1 = x1 - s1 * 1
    s1 = 0.9375
    assert torch.allclose(x0, torch.full_like(x0, (1 - s1) * -1 + s1 * 1 - s1))
    with pytest.raises(ValueError, match="exit_step"):
        sample_chunk(fwd, draws, plan, exit_step=4)
    with pytest.raises(ValueError, match="noise draws"):
        sample_chunk(fwd, draws[:2], plan)
