"""FP8 (e4m3) linear layers for the DiT's transformer blocks, with an exact CPU emulation.

Quantisation (the usual recipe for inference GEMMs): weights are quantised once, activations on every call
(dynamic scaling), both to float8_e4m3fn with scale = amax / 448 (448: e4m3fn's largest finite value), either
one scale per tensor or one per row (per output feature for the weight, per token for the activation). The
product is y = (q_x @ q_w^T) * s_x * s_w^T + bias.
- CUDA: `torch._scaled_mm` (cuBLASLt / CUTLASS FP8 GEMM on Hopper): fp8 operands, fp32 accumulation,
  scales applied in the epilogue, bf16 output; the bias is added afterwards in the output dtype so both paths
  round the same way.
- Elsewhere: the same quantised operands, converted exactly to fp32 (every e4m3 value is an fp32 value and
  every product of two is exact in fp32), multiplied in fp32 and scaled after the sum, as the GPU does. This
  emulation differs from `_scaled_mm` only by summation order (and Hopper's FP8 accumulator width), so it is
  the CPU-testable model of the FP8 numerics.

Which layers: in every block the self-attention q/k/v (fused) /o, the cross-attention q/o and the two FFN linears run
once per token per forward (all but ~2 % of the linear FLOPs). The cross-attention k/v (once per prompt), the
text / time embeddings (run in fp32 by the DiT), the patch embedding and the 64-wide head stay as they are.
Swap after loading weights: the FP8 layers hold `weight_fp8` / `weight_scale` instead of `weight`, so the
state dict no longer matches a checkpoint.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from rfrt.fast.config import FP8_SCALINGS

__all__ = ["FP8Linear", "quantize_fp8", "fused_quantizer", "swap_dit_linears", "relative_error",
           "fp8_forward_error", "E4M3_MAX", "FP8_TARGETS"]

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448
FP8_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.o",
               "ffn.0", "ffn.2")


def quantize_fp8(x: Tensor, scaling: str) -> tuple[Tensor, Tensor]:
    """x [M, K] -> (q float8_e4m3fn [M, K], scale fp32 [M, 1] ("row") or [1, 1] ("tensor")), x ~= q * scale.

    An all-zero row gets scale 1 (any scale represents it) instead of dividing by zero.
    """
    if scaling not in FP8_SCALINGS:
        raise ValueError(f"FP8 scaling must be one of {FP8_SCALINGS}, got {scaling!r}")
    if x.ndim != 2:
        raise ValueError(f"quantize_fp8 expects a 2-D [M, K] tensor, got shape {tuple(x.shape)}")
    xf = x.float()
    amax = xf.abs().amax(dim=1, keepdim=True) if scaling == "row" else xf.abs().amax().reshape(1, 1)
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    q = (xf / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return q, scale


def _quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    # quantize_fp8(x, "row") in the form inductor fuses: |x| and its max on x's own dtype (exact), the rest in
    # fp32 inside one pointwise kernel.
    amax = x.abs().amax(dim=1, keepdim=True).float()
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


def _quantize_tensor(x: Tensor) -> tuple[Tensor, Tensor]:
    amax = x.abs().amax().float().reshape(1, 1)
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


def fused_quantizer(scaling: str) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """quantize_fp8(·, scaling) compiled by torch.compile into one reduction and one pointwise kernel per shape
    (the same values bit for bit; x must be 2-D). The first call per shape compiles."""
    if scaling not in FP8_SCALINGS:
        raise ValueError(f"FP8 scaling must be one of {FP8_SCALINGS}, got {scaling!r}")
    fn = _quantize_rows if scaling == "row" else _quantize_tensor
    return torch.compile(fn, fullgraph=True, dynamic=False)


class FP8Linear(nn.Module):
    """Drop-in for nn.Linear: x [..., in] -> [..., out] in x's dtype, through FP8 operands (see module doc).

    emulate: None = `_scaled_mm` on CUDA tensors and the exact emulation elsewhere; True forces the emulation
    (the GPU test compares the two on the same operands). quantizer: the activation quantiser, x [M, K] ->
    (q, scale) (default: `quantize_fp8`; swap_dit_linears passes a `fused_quantizer` on CUDA).
    """

    def __init__(self, linear: nn.Linear, scaling: str = "row", emulate: bool | None = None,
                 quantizer: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"FP8Linear replaces an nn.Linear, got {type(linear).__name__}")
        out_f, in_f = linear.weight.shape
        if in_f % 16 or out_f % 16:
            # _scaled_mm needs both GEMM dims of the weight to be multiples of 16.
            raise ValueError(f"FP8Linear needs in/out features divisible by 16, got {in_f} -> {out_f}")
        self.in_features, self.out_features, self.scaling, self.emulate = in_f, out_f, scaling, emulate
        self.quantizer = quantizer
        self._epilogue_bias = True  # False after _scaled_mm refused a bias (then it is added after the GEMM)
        with torch.no_grad():
            q, s = quantize_fp8(linear.weight.detach(), scaling)
        self.register_buffer("weight_fp8", q)
        self.register_buffer("weight_scale", s)  # [out, 1] or [1, 1]
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(),
                                                                  requires_grad=False)

    def _apply(self, fn, recurse=True):
        # nn.Module.to(dtype) casts every floating buffer, fp8 included: the quantised weight and its fp32 scales
        # only follow device moves (found by applying fn to an empty probe tensor).
        w, s = self.weight_fp8, self.weight_scale
        super()._apply(fn, recurse)
        device = fn(torch.empty(0, device=w.device)).device
        self.weight_fp8, self.weight_scale = w.to(device), s.to(device)
        return self

    def dequantized_weight(self) -> Tensor:
        """fp32 [out, in]: the weight this layer actually multiplies by."""
        return self.weight_fp8.float() * self.weight_scale

    @classmethod
    def concat(cls, linears: list[nn.Linear], scaling: str = "row", emulate: bool | None = None,
               quantizer=None) -> "FP8Linear":
        """One FP8 layer computing [l(x) for l in linears] concatenated on the last dim (same input)."""
        if not linears or any(not isinstance(lin, nn.Linear) for lin in linears):
            raise TypeError("FP8Linear.concat needs a non-empty list of nn.Linear")
        if len({lin.in_features for lin in linears}) != 1 or len({lin.bias is None for lin in linears}) != 1:
            raise ValueError("FP8Linear.concat needs linears with the same input size, all with or without bias")
        fused = nn.Linear(linears[0].in_features, sum(lin.out_features for lin in linears),
                          bias=linears[0].bias is not None, device=linears[0].weight.device,
                          dtype=linears[0].weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([lin.weight for lin in linears]))
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([lin.bias for lin in linears]))
        return cls(fused, scaling, emulate, quantizer)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        quantize = self.quantizer or (lambda a: quantize_fp8(a, self.scaling))
        qx, sx = quantize(x.reshape(-1, self.in_features))
        emulate = self.emulate if self.emulate is not None else x.device.type != "cuda"
        if emulate:
            y = (qx.float() @ self.weight_fp8.float().t()) * (sx * self.weight_scale.t())
            if self.bias is not None:
                y = y + self.bias.float()  # in fp32 before the one rounding, as the GPU epilogue
            y = y.to(x.dtype)
        else:
            row = self.scaling == "row"
            bias = None if self.bias is None else self.bias.to(torch.bfloat16)
            kw = dict(scale_a=sx if row else sx.reshape(()),
                      scale_b=self.weight_scale.t() if row else self.weight_scale.reshape(()), out_dtype=torch.bfloat16)
            if bias is not None and self._epilogue_bias:
                try:
                    y = torch._scaled_mm(qx, self.weight_fp8.t(), bias=bias, **kw).to(x.dtype)
                except RuntimeError:  # this torch / scaling has no bias epilogue: add it after the GEMM
                    self._epilogue_bias = False
            if bias is None or not self._epilogue_bias:
                y = torch._scaled_mm(qx, self.weight_fp8.t(), **kw)
                y = (y if bias is None else y + bias).to(x.dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scaling={self.scaling}"


def swap_dit_linears(dit: nn.Module, scaling: str = "row", emulate: bool | None = None,
                     fuse: bool | None = None) -> int:
    """Replace, in place, the FP8_TARGETS linears of every transformer block of `dit` by FP8Linear; the
    self-attention q/k/v become one fused FP8 layer (`_Attention.fused_qkv`, q/k/v set to None).

    fuse: quantise activations with `fused_quantizer` (None: when the DiT's weights are on CUDA).
    Returns how many nn.Linear layers were replaced (0 when they already are FP8, so a second call is harmless).
    """
    if scaling not in FP8_SCALINGS:
        raise ValueError(f"FP8 scaling must be one of {FP8_SCALINGS}, got {scaling!r}")
    blocks = getattr(dit, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"swap_dit_linears expects a CausalWanDiT (with .blocks), got {type(dit).__name__}")
    if fuse is None:
        fuse = next(dit.parameters()).device.type == "cuda"
    quantizer = fused_quantizer(scaling) if fuse else None
    swapped = 0
    for block in blocks:
        sa = block.self_attn
        if all(isinstance(getattr(sa, n), nn.Linear) for n in ("q", "k", "v")):
            sa.fused_qkv = FP8Linear.concat([sa.q, sa.k, sa.v], scaling, emulate, quantizer)
            sa.q = sa.k = sa.v = None
            swapped += 3
        for target in FP8_TARGETS[3:]:
            parent_name, child = target.rsplit(".", 1)
            parent = block.get_submodule(parent_name)
            layer = parent._modules[child] if isinstance(parent, nn.Sequential) else getattr(parent, child)
            if isinstance(layer, nn.Linear):
                setattr(parent, child, FP8Linear(layer, scaling, emulate, quantizer))
                swapped += 1
    return swapped


def relative_error(candidate: Tensor, reference: Tensor) -> float:
    """||candidate - reference||_2 / ||reference||_2, computed in fp64 (NaN anywhere gives NaN)."""
    if candidate.shape != reference.shape:
        raise ValueError(f"relative_error: shapes {tuple(candidate.shape)} and {tuple(reference.shape)} differ")
    ref = reference.detach().double()
    return float((candidate.detach().double() - ref).norm() / ref.norm())


@dataclass(frozen=True)
class FP8Error:
    """fp8_forward_error's result: relative error of the FP8 DiT's output against the original one, and the
    number of swapped layers."""

    relative_error: float
    swapped_layers: int


@torch.no_grad()
def fp8_forward_error(dit: nn.Module, x: Tensor, t: Tensor, text, backend: Callable[[], object],
                      scaling: str = "row", emulate: bool | None = None) -> FP8Error:
    """Quality check: run `dit` and an FP8 copy of it on the same inputs, each with a fresh backend.

    x [B, F, C, H, W], t [B, F/pt], text (raw states or CrossKV), backend() -> a fresh attention backend (e.g. a
    RingCache after begin_chunk()). The original DiT is not modified (the copy costs its memory once more).
    """
    reference = dit(x, t, text, backend())
    quantised = copy.deepcopy(dit)
    swapped = swap_dit_linears(quantised, scaling, emulate)
    out = quantised(x, t, text, backend())
    return FP8Error(relative_error(out, reference), swapped)
