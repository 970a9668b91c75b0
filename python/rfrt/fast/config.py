"""RuntimeConfig: which GPU fast paths a StreamGenerator uses (all off = the plain eager path)."""
from __future__ import annotations

from dataclasses import dataclass

FP8_SCALINGS = ("row", "tensor")


@dataclass(frozen=True)
class RuntimeConfig:
    """Fast-path switches of the streaming runtime.

    cuda_graphs:    capture each chunk (4 denoising forwards + the context pass) as a CUDA graph and replay it
                    (rfrt.runtime.graphs). On a CPU the same static-buffer runner executes eagerly, same results.
    fp8:            replace the transformer blocks' linear layers by FP8 (e4m3) ones (rfrt.fast.fp8), in place,
                    on the generator's DiT; fp8_scaling picks per-row ("row") or per-tensor ("tensor") scales.
    overlap_decode: decode chunk k on a side CUDA stream (a worker thread on a CPU) while chunk k+1 denoises
                    (rfrt.fast.overlap); the generator then works one chunk ahead.
    """

    cuda_graphs: bool = False
    fp8: bool = False
    overlap_decode: bool = False
    fp8_scaling: str = "row"

    def __post_init__(self) -> None:
        for name in ("cuda_graphs", "fp8", "overlap_decode"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(f"RuntimeConfig.{name} must be a bool, got {value!r}")
        if self.fp8_scaling not in FP8_SCALINGS:
            raise ValueError(f"RuntimeConfig.fp8_scaling must be one of {FP8_SCALINGS}, got {self.fp8_scaling!r}")
