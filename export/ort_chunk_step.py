"""Moved to `rfrt.engine.onnxruntime` (a runtime backend belongs in the package, not in the build scripts);
this path re-exports it for one release."""
from rfrt.engine.onnxruntime import OnnxRuntimeChunkStep, ort_session

__all__ = ["OnnxRuntimeChunkStep", "ort_session"]
