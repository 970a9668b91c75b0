"""Which engine a StreamGenerator runs: the backend argument checked before any weights load, and its runner.

backend="torch" is the DiT over the ring cache; "tensorrt" a serialized engine (CUDA only); any object with
the ChunkStepRunner interface (e.g. rfrt.engine.OnnxRuntimeChunkStep) is its own engine.
"""
from __future__ import annotations

from pathlib import Path

import torch

from rfrt.engine.interface import check_runner
from rfrt.fast.config import RuntimeConfig

__all__ = ["BACKENDS", "check_backend", "load_runner"]

BACKENDS = ("torch", "tensorrt")


def check_backend(backend, engine, device: torch.device, runtime: RuntimeConfig) -> Path | None:
    """Validate the backend arguments before any weights load; returns the engine path (tensorrt) or None."""
    if isinstance(backend, str):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} or a chunk-step runner object, got {backend!r}")
        if backend == "torch":
            if engine is not None:
                raise ValueError("engine= is the TensorRT engine of backend='tensorrt'; the torch backend takes "
                                 "none (pass backend='tensorrt' to use it)")
            return None
    else:
        check_runner(backend)
        if engine is not None:
            raise ValueError("engine= goes with backend='tensorrt'; a chunk-step runner object is its own engine")
    # An engine replaces the PyTorch DiT's forwards, so the fast paths that rewrite or capture them do not apply.
    if runtime.cuda_graphs or runtime.fp8:
        raise ValueError(f"RuntimeConfig cuda_graphs / fp8 speed up the PyTorch DiT, which backend "
                         f"{backend if isinstance(backend, str) else type(backend).__name__} does not run; "
                         "turn them off (an FP8 engine is built with export/build_engine.py --fp8)")
    if not isinstance(backend, str):
        return None
    if engine is None:
        raise ValueError("backend='tensorrt' needs engine=PATH, a serialized engine built by export/build_engine.py "
                         "from export/export_onnx.py's graph of this model")
    path = Path(engine)
    if not path.is_file():
        raise FileNotFoundError(f"TensorRT engine {path} does not exist (build it with export/build_engine.py)")
    if device.type != "cuda":
        raise ValueError(f"backend='tensorrt' runs on an NVIDIA GPU, but the generator's device is {device}; pass "
                         "device='cuda' (or use backend='torch' on a CPU)")
    from rfrt.engine.tensorrt import import_tensorrt

    import_tensorrt()  # TensorRTUnavailable, with what to install, before the model loads
    return path


def load_runner(backend, engine_path: Path | None, device: torch.device):
    """The chunk-step runner of an engine backend (None for torch)."""
    if engine_path is not None:
        from rfrt.engine.tensorrt import TensorRTChunkStep

        return TensorRTChunkStep(engine_path, device)
    return None if isinstance(backend, str) else backend
