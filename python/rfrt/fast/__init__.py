"""GPU fast paths of the streaming runtime: CUDA-graph chunk replay, FP8 linears, overlapped decoding.

Each has a CPU form that computes the same thing (eager replay, exact FP8 emulation, a worker thread), so its
logic is tested on every machine. Importing this package touches no CUDA state.
"""
from .config import RuntimeConfig

__all__ = ["RuntimeConfig"]
