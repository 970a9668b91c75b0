"""rfrt: a streaming video-generation runtime for Reward Forcing.

Importing rfrt does no work: no CUDA initialisation, no compiled-core load, no weights. Heavy pieces load on
first use.
"""
from __future__ import annotations

__version__ = "0.1.0"


def build_info() -> dict:
    """How the compiled core was built: version, CUDA on/off, CUDA architectures."""
    from rfrt import _C

    return {"version": _C.__version__, "cuda": bool(_C.cuda), "cuda_architectures": _C.cuda_architectures}


def __getattr__(name: str):
    # `from rfrt import StreamGenerator` without importing torch / the model at `import rfrt` time.
    if name == "StreamGenerator":
        from rfrt.runtime.generator import StreamGenerator

        return StreamGenerator
    raise AttributeError(f"module 'rfrt' has no attribute {name!r}")
