"""Run an exported chunk-step ONNX with ONNX Runtime as a StreamGenerator backend (CPU).

``OnnxRuntimeChunkStep`` has the interface of ``rfrt.engine.TensorRTChunkStep`` (``rfrt.engine.
ChunkStepRunner``), so the generator drives an export through exactly the code path a TensorRT engine takes:
the cache state carried across forwards and chunks, the controls, the steady/filling split. That validates an
export end to end, decoded frames included, on a machine without a GPU or TensorRT:

    from rfrt.engine import OnnxRuntimeChunkStep
    gen = StreamGenerator(model, device="cpu", backend=OnnxRuntimeChunkStep("chunk.onnx"))

The graph must be exported from the generator's own DiT weights at its resolution and cache layout (the
generator checks the shapes; the weights are the caller's responsibility). fp32 graphs give frames equal to the
torch backend to ~1e-6 (tests/test_generator_engine.py).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["OnnxRuntimeChunkStep", "ort_session"]

from rfrt.cache.functional import StepControls
from rfrt.engine.interface import STEP_OUTPUTS, check_interface, step_feeds

# ONNX Runtime's input type strings -> torch dtypes it can be fed from numpy (numpy has no bfloat16).
_TORCH_DTYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(double)": torch.float64,
                 "tensor(int64)": torch.int64, "tensor(int32)": torch.int32}


def ort_session(path: str | os.PathLike):
    """An ONNX Runtime CPU session of an exported graph (full optimisation, deterministic single stream)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _shape(dims) -> tuple[int, ...]:
    # ORT reports a symbolic or unknown dimension as a string or None: -1, which check_interface rejects.
    return tuple(d if isinstance(d, int) else -1 for d in dims)


class OnnxRuntimeChunkStep:
    """One chunk forward of an exported graph on ONNX Runtime's CPU provider, the cache in and out.

    ``__call__(x, t, cross_kv, kv, sink_acc, controls)`` -> (flow, kv_out, sink_acc_out) as torch tensors on
    x's device; outputs are fresh arrays, so feeding kv_out back as the next kv never aliases.
    """

    def __init__(self, onnx_path: str | os.PathLike, session=None) -> None:
        path = Path(onnx_path)
        if session is None:
            if not path.is_file():
                raise FileNotFoundError(f"ONNX file {path} does not exist (export it with export/export_onnx.py)")
            session = ort_session(path)
        self.path, self.session = path, session
        inputs = {i.name: _shape(i.shape) for i in session.get_inputs()}
        outputs = {o.name: _shape(o.shape) for o in session.get_outputs()}
        self.masked = check_interface(inputs, outputs)
        self.input_shapes = inputs
        unknown = {i.name: i.type for i in session.get_inputs() if i.type not in _TORCH_DTYPES}
        if unknown:
            raise TypeError(f"{path}: input types {unknown} cannot be fed from numpy (supported: "
                            f"{sorted(_TORCH_DTYPES)}); export the graph in fp32 or fp16")
        self.input_dtypes = {i.name: _TORCH_DTYPES[i.type] for i in session.get_inputs()}

    def __call__(self, x: Tensor, t: Tensor, cross_kv: Tensor, kv: Tensor, sink_acc: Tensor,
                 controls: StepControls) -> tuple[Tensor, Tensor, Tensor]:
        feeds = step_feeds(x, t, cross_kv, kv, sink_acc, controls, self.masked)
        arrays = {}
        for name, tensor in feeds.items():
            if tuple(tensor.shape) != self.input_shapes[name]:
                raise ValueError(f"ONNX input {name} has shape {tuple(tensor.shape)}, the graph wants "
                                 f"{self.input_shapes[name]}")
            arrays[name] = tensor.detach().to("cpu", self.input_dtypes[name]).contiguous().numpy()
        outs = self.session.run(list(STEP_OUTPUTS), arrays)
        return tuple(torch.from_numpy(o).to(x.device) for o in outs)
