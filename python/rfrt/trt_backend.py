"""Moved to `rfrt.engine.tensorrt`; this path re-exports it for one release."""
from rfrt.engine.interface import check_interface
from rfrt.engine.tensorrt import (TENSORRT_INSTALL_HINT, TensorRTChunkStep, TensorRTUnavailable, import_tensorrt,
                                  torch_dtype)

__all__ = ["TENSORRT_INSTALL_HINT", "TensorRTChunkStep", "TensorRTUnavailable", "check_interface", "import_tensorrt",
           "torch_dtype"]
