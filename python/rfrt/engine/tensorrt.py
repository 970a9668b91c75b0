"""TensorRT engine runner for the exported chunk forward (``backend="tensorrt"``).

The engine comes from ``export/export_onnx.py`` -> ``export/build_engine.py``; its interface is the exported
chunk step of ``rfrt.engine.interface`` (inputs STEP_INPUTS [+ valid_tokens], outputs STEP_OUTPUTS), so a
stream drives it exactly like the eager ``rfrt.engine.TorchChunkStep``: per forward, ``step_controls(...)``
gives the control inputs and the returned kv_out / sink_acc_out are the next forward's kv / sink_acc.
``StreamGenerator(..., backend="tensorrt", engine=PATH)`` does that through ``rfrt.engine.EngineForward``
(this class is a ``ChunkStepRunner``).

TensorRT is imported lazily, on construction, never at ``import rfrt``; where it is missing the error says what
to install. Written against the TensorRT 10 Python API (``Runtime.deserialize_cuda_engine``, the name-based
tensor API ``num_io_tensors`` / ``get_tensor_name`` / ``set_tensor_address``, ``execute_async_v3``).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from rfrt.engine.interface import check_interface, step_feeds

TENSORRT_INSTALL_HINT = (
    "TensorRT's Python package is not installed. On a machine with an NVIDIA GPU and driver, install it with "
    "`pip install tensorrt` (the wheels come from NVIDIA's package index, https://pypi.nvidia.com, which pip "
    "reaches through the `tensorrt` meta-package) or use an NVIDIA TensorRT container. Without TensorRT, use "
    "the PyTorch backends, or check the exported ONNX with ONNX Runtime (export/export_onnx.py --verify).")

# TensorRT data type names (trt.DataType.<NAME>) -> torch dtypes the runner can bind.
_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                 "INT64": torch.int64, "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}


class TensorRTUnavailable(ImportError):
    """TensorRT (or a GPU to run it on) is missing; the message says what to install."""


def import_tensorrt():
    """Import and return the ``tensorrt`` module, or raise TensorRTUnavailable with install instructions."""
    try:
        import tensorrt
    except ImportError as err:
        raise TensorRTUnavailable(TENSORRT_INSTALL_HINT) from err
    return tensorrt


def torch_dtype(trt_dtype) -> torch.dtype:
    """torch dtype of a TensorRT DataType (or its name, e.g. "FLOAT"); a clear error for unsupported ones."""
    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    if name not in _TORCH_DTYPES:
        raise TypeError(f"engine tensor type {name} has no torch equivalent the runner binds "
                        f"(supported: {sorted(_TORCH_DTYPES)})")
    return _TORCH_DTYPES[name]


class TensorRTChunkStep:
    """One DiT chunk forward on a TensorRT engine, with the self-attention cache in and out.

    ``__call__(x, t, cross_kv, kv, sink_acc, controls)`` -> (flow, kv_out, sink_acc_out), all CUDA tensors with
    the engine's static shapes (see export/export_onnx.py); controls: ``rfrt.cache.functional.StepControls``.
    Outputs live in two buffer sets used alternately, so feeding a call's kv_out back as the next call's kv
    never aliases an input with an output; a returned tensor stays valid until the call after next.
    """

    def __init__(self, engine_path: str | os.PathLike, device: str | torch.device = "cuda") -> None:
        path = Path(engine_path)
        if not path.is_file():
            raise FileNotFoundError(f"TensorRT engine {path} does not exist (build it with export/build_engine.py)")
        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise TensorRTUnavailable("TensorRT engines run on an NVIDIA GPU, and torch sees no CUDA device")
        self.device = torch.device(device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {path}: built by another TensorRT version or for "
                               "another GPU? Rebuild it here with export/build_engine.py")
        self.context = self.engine.create_execution_context()
        inputs, outputs, self._dtypes = {}, {}, {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (inputs if is_input else outputs)[name] = shape
            self._dtypes[name] = torch_dtype(self.engine.get_tensor_dtype(name))
        self.masked = check_interface(inputs, outputs)
        self.input_shapes, self.output_shapes = inputs, outputs
        # Public: StreamGenerator allocates the cache state in the engine's own dtypes (rfrt.engine.EngineForward).
        self.input_dtypes = {n: self._dtypes[n] for n in inputs}
        self._out = [{n: torch.empty(s, dtype=self._dtypes[n], device=self.device) for n, s in outputs.items()}
                     for _ in range(2)]
        self._calls = 0

    def __call__(self, x: Tensor, t: Tensor, cross_kv: Tensor, kv: Tensor, sink_acc: Tensor,
                 controls) -> tuple[Tensor, Tensor, Tensor]:
        feeds = step_feeds(x, t, cross_kv, kv, sink_acc, controls, self.masked)
        out = self._out[self._calls % 2]
        keep = []  # converted inputs must outlive the asynchronous execution
        for name, tensor in feeds.items():
            want_shape, want_dtype = self.input_shapes[name], self._dtypes[name]
            if tuple(tensor.shape) != want_shape:
                raise ValueError(f"TensorRT input {name} has shape {tuple(tensor.shape)}, the engine wants "
                                 f"{want_shape}")
            tensor = tensor.to(self.device, want_dtype).contiguous()
            if any(tensor.data_ptr() == o.data_ptr() for o in out.values()):
                raise ValueError(f"TensorRT input {name} aliases an output buffer of this call; pass the outputs of "
                                 "the previous call only")
            keep.append(tensor)
            self.context.set_tensor_address(name, tensor.data_ptr())
        for name, buf in out.items():
            self.context.set_tensor_address(name, buf.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        # Caching-allocator safety: the converted inputs are in use on this stream until it reaches here.
        for tensor in keep:
            tensor.record_stream(stream)
        self._calls += 1
        return out["flow"], out["kv_out"], out["sink_acc_out"]
