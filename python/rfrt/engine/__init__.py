"""Engines: the exported chunk step's interface and its runners, and the chunk forward that drives them.

    interface.py    tensor names, ChunkStepRunner, step_feeds / step_input_shapes / check_*      (no heavy imports)
    stream.py       EngineForward (a rfrt.runtime chunk forward over a runner), TorchChunkStep
    tensorrt.py     TensorRTChunkStep (TensorRT imported on construction only)
    onnxruntime.py  OnnxRuntimeChunkStep, ort_session (ONNX Runtime imported on construction only)
    select.py       BACKENDS, check_backend / load_runner: the generator's backend argument -> a runner

Names load on first use, so ``import rfrt.engine`` imports neither TensorRT nor ONNX Runtime.
"""
from __future__ import annotations

import importlib

_HOMES = {
    "interface": ("MASK_INPUT", "STEP_CONTROL_INPUTS", "STEP_INPUTS", "STEP_OUTPUTS", "ChunkStepRunner",
                  "check_interface", "check_runner", "check_step_shapes", "step_feeds", "step_input_shapes"),
    "stream": ("EngineForward", "TorchChunkStep", "chunk_step_forward"),
    "tensorrt": ("TENSORRT_INSTALL_HINT", "TensorRTChunkStep", "TensorRTUnavailable", "import_tensorrt"),
    "onnxruntime": ("OnnxRuntimeChunkStep", "ort_session"),
    "select": ("BACKENDS", "check_backend", "load_runner"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'rfrt.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rfrt.engine.{_HOME[name]}"), name)
