"""RuntimeConfig: which GPU fast paths a StreamGenerator uses (all off = the plain eager path)."""
from __future__ import annotations

from dataclasses import dataclass

FP8_SCALINGS = ("row", "tensor")
MODULATIONS = ("fp32", "bf16")
SDPA_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")


@dataclass(frozen=True)
class RuntimeConfig:
    """Fast-path switches of the streaming runtime.

    cuda_graphs:    capture each chunk (4 denoising forwards + the context pass) as a CUDA graph and replay it
                    (rfrt.runtime.graphs). On a CPU the same static-buffer runner executes eagerly, same results.
    fp8:            replace the transformer blocks' linear layers by FP8 (e4m3) ones (rfrt.fast.fp8), in place,
                    on the generator's DiT; fp8_scaling picks per-row ("row") or per-tensor ("tensor") scales.
    overlap_decode: decode chunk k on a side CUDA stream (a worker thread on a CPU) while chunk k+1 denoises
                    (rfrt.fast.overlap); each chunk's latents go to the decoder before its context pass; the
                    first chunk is returned as soon as it is decoded, then the generator works one chunk ahead.
    modulation:     "fp32" (default: the diffusers-exact adaLN arithmetic) or "bf16" (in the weights' dtype, as
                    the released pipeline; ~3.5x less elementwise traffic per block on a GPU). See
                    rfrt.models.dit.BlockMath and docs/design.md for the measured error.
    fuse_helpers:   torch.compile the DiT's pure elementwise helpers (modulate, gated residual, RMSNorm) into
                    one kernel each; never the cache ops. Costs a compile on the first chunk; off by default.
    sdpa_backend:   the self-attention SDPA kernel: "auto" (torch's choice) or force "cudnn" / "flash" /
                    "efficient" / "math" (rfrt.fast.attention; an unavailable one raises at the first chunk).
    """

    cuda_graphs: bool = False
    fp8: bool = False
    overlap_decode: bool = False
    fp8_scaling: str = "row"
    modulation: str = "fp32"
    fuse_helpers: bool = False
    sdpa_backend: str = "auto"

    def __post_init__(self) -> None:
        for name in ("cuda_graphs", "fp8", "overlap_decode", "fuse_helpers"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(f"RuntimeConfig.{name} must be a bool, got {value!r}")
        if self.fp8_scaling not in FP8_SCALINGS:
            raise ValueError(f"RuntimeConfig.fp8_scaling must be one of {FP8_SCALINGS}, got {self.fp8_scaling!r}")
        if self.modulation not in MODULATIONS:
            raise ValueError(f"RuntimeConfig.modulation must be one of {MODULATIONS}, got {self.modulation!r}")
        if self.sdpa_backend not in SDPA_BACKENDS:
            raise ValueError(f"RuntimeConfig.sdpa_backend must be one of {SDPA_BACKENDS}, got {self.sdpa_backend!r}")
