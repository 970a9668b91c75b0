"""The causal Wan2.1 DiT (SPEC §1), defined once for runtime, training and export.

Causality is not in the model: self-attention is an injected backend (``rfrt.models.attention``), so the
same module is the bidirectional teacher (``FullAttention``), the block-causal student
(``BlockCausalAttention``) and the streaming runtime (the ring cache of ``rfrt.cache``).

Parameter names are Wan's original ones (SPEC §1.1), so ``state_dict()`` matches Wan checkpoints.

Precision. The residual stream, every Linear and the attention run in the weights' dtype (bf16 or fp32).
Timestep conditioning runs in fp32 regardless of the weights' dtype: the sinusoid is computed in fp64 from the
fp32 t and cast to fp32, and ``time_embedding`` / ``time_projection`` use fp32 copies of their (small,
~16M-parameter) weights, made once and reused while the weights are unchanged (recast every forward only when
autograd needs the graph through them). The adaLN arithmetic (``modulation + e0``, ``LN(x)*(1+scale)+shift``,
``x + y*gate``) has two modes (``BlockMath``): "fp32" (the default) does it in fp32 before casting back, as
diffusers does; "bf16" does it in the weights' dtype, as the released pipeline does (Wan's fp32 autocast is
disabled there), which moves about 3.5x fewer bytes per block on a GPU. LayerNorm and RMSNorm compute in fp32
internally in both modes. fp32 stays the default because the oracle, parity and training paths are defined by
it; the bf16 mode's error against it is measured in docs/design.md and bounded in tests/test_model_precision.py.
``BlockMath(compile=True)`` additionally fuses each pure helper (modulate, gated residual, RMSNorm) into one
kernel with torch.compile; the attention backend (the cache ops) is never inside a compiled region.

Per-frame timesteps: t is [B, F]; e = time_embedding(sinusoid(t)) is [B, F, dim] and e0 is
[B, F, 6, dim], broadcast over the tokens of each frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionBackend, FrameGrid
from .config import ModelConfig


@dataclass(frozen=True, eq=False)
class CrossKV:
    """Per-layer cross-attention keys / values of one text embedding, each [B, Ltext, H, D].

    Computed once per prompt by ``CausalWanDiT.cross_kv`` and passed to ``forward`` instead of the text.
    """

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.values) or not self.keys:
            raise ValueError(f"CrossKV needs one (k, v) pair per layer, got {len(self.keys)} keys and "
                             f"{len(self.values)} values")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, normalised in fp32 then scaled in the input dtype (Wan's order)."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return normed.to(x.dtype) * weight


class RMSNorm(nn.Module):
    """RMSNorm over the last dim (``rms_norm``; ``BlockMath`` may swap in a fused version of it)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.fn = rms_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, self.weight, self.eps)


def _layer_norm(x: torch.Tensor, eps: float, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """LayerNorm over the last dim in fp32; returns fp32 (callers cast after modulating)."""
    w = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    return F.layer_norm(x.float(), x.shape[-1:], w, b, eps)


# The pure elementwise helpers of a block. h: [B, L, dim] with L = frames * tokens_per_frame; shift / scale /
# gate: [B, frames, 1, dim] (fp32 in "fp32" mode, the weights' dtype in "bf16" mode).
def modulate_fp32(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, frames: int) -> torch.Tensor:
    """LN(h) * (1 + scale) + shift in fp32, cast to h's dtype."""
    B, L, dim = h.shape
    per_frame = _layer_norm(h, eps).view(B, frames, -1, dim)
    return (per_frame * (1 + scale) + shift).view(B, L, dim).to(h.dtype)


def modulate_bf16(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, frames: int) -> torch.Tensor:
    """LN(h) (fp32 inside, h's dtype out) * (1 + scale) + shift, in h's dtype (the released pipeline's order)."""
    B, L, dim = h.shape
    per_frame = F.layer_norm(h, (dim,), eps=eps).view(B, frames, -1, dim)
    return torch.addcmul(shift, per_frame, 1 + scale).view(B, L, dim)


def gated_add_fp32(h: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, frames: int) -> torch.Tensor:
    """h + y * gate in fp32, cast to h's dtype."""
    B, L, dim = h.shape
    out = h.float().view(B, frames, -1, dim) + y.float().view(B, frames, -1, dim) * gate
    return out.view(B, L, dim).to(h.dtype)


def gated_add_bf16(h: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, frames: int) -> torch.Tensor:
    """h + y * gate in h's dtype."""
    B, L, dim = h.shape
    return torch.addcmul(h.view(B, frames, -1, dim), y.view(B, frames, -1, dim), gate).view(B, L, dim)


def norm3_fp32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    return _layer_norm(x, eps, weight, bias).to(x.dtype)


def norm3_bf16(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


MODULATION_PRECISIONS = ("fp32", "bf16")


class BlockMath:
    """Which precision the adaLN modulation uses and whether its pure helpers are fused (see module docstring).

    precision: "fp32" (default) or "bf16" (the weights' dtype, as the released pipeline); compile: wrap each
    helper in torch.compile(fullgraph=True, dynamic=False): one kernel per helper on a GPU. The first forward
    compiles (tens of seconds); under CUDA graphs that is the eager pass before capture. Never the cache ops.
    """

    def __init__(self, precision: str = "fp32", compile: bool = False) -> None:
        if precision not in MODULATION_PRECISIONS:
            raise ValueError(f"modulation precision must be one of {MODULATION_PRECISIONS}, got {precision!r}")
        if not isinstance(compile, bool):
            raise TypeError(f"BlockMath.compile must be a bool, got {compile!r}")
        self.precision, self.compile = precision, compile
        bf16 = precision == "bf16"
        fns = dict(modulate=modulate_bf16 if bf16 else modulate_fp32,
                   gated_add=gated_add_bf16 if bf16 else gated_add_fp32,
                   norm3=norm3_bf16 if bf16 else norm3_fp32, rms_norm=rms_norm)
        if compile:
            fns = {k: torch.compile(f, fullgraph=True, dynamic=False) for k, f in fns.items()}
        self.modulate, self.gated_add = fns["modulate"], fns["gated_add"]
        self.norm3, self.rms_norm = fns["norm3"], fns["rms_norm"]

    def mod_dtype(self, x: torch.Tensor) -> torch.dtype:
        """dtype of the modulation vectors for residual x."""
        return x.dtype if self.precision == "bf16" else torch.float32

    def __repr__(self) -> str:
        return f"BlockMath(precision={self.precision!r}, compile={self.compile})"


class _Attention(nn.Module):
    """q/k/v/o projections with RMSNorm on q and k over all heads (names as Wan's self_attn / cross_attn)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.k = nn.Linear(cfg.dim, cfg.dim)
        self.v = nn.Linear(cfg.dim, cfg.dim)
        self.o = nn.Linear(cfg.dim, cfg.dim)
        self.norm_q = RMSNorm(cfg.dim, cfg.eps)
        self.norm_k = RMSNorm(cfg.dim, cfg.eps)
        # Optional single [3*dim, dim] projection replacing q/k/v (rfrt.fast.fp8 installs one, so the input is
        # quantised once for one GEMM instead of three times).
        self.register_module("fused_qkv", None)

    def qkv(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """y [B, L, dim] -> q, k (both normed, un-rotated) and v, each [B, L, H, D]."""
        if self.fused_qkv is not None:
            q, k, v = self.fused_qkv(y).chunk(3, dim=-1)
            return self.heads(self.norm_q(q)), self.heads(self.norm_k(k)), self.heads(v)
        return (self.heads(self.norm_q(self.q(y))),) + self.kv(y)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, dim] -> [B, L, H, D]."""
        return x.unflatten(-1, (self.num_heads, -1))

    def kv(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ctx [B, L, dim] -> k (normed, un-rotated), v, each [B, L, H, D]."""
        return self.heads(self.norm_k(self.k(ctx))), self.heads(self.v(ctx))


class WanBlock(nn.Module):
    """One adaLN-zero transformer block: self-attention, cross-attention, FFN."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.self_attn = _Attention(cfg)
        self.cross_attn = _Attention(cfg)
        self.norm3 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.zeros(1, 6, cfg.dim))
        self.math = BlockMath()

    def forward(self, x: torch.Tensor, e0: torch.Tensor, ck: torch.Tensor, cv: torch.Tensor,
                backend: AttentionBackend, layer: int, grid: FrameGrid) -> torch.Tensor:
        """x: [B, L, dim] (weights' dtype); e0: fp32 [B, F, 6, dim]; ck, cv: [B, Ltext, H, D]."""
        m, f = self.math, grid.frames
        md = m.mod_dtype(x)
        mod = (self.modulation.to(md)[:, None] + e0.to(md)).unbind(2)  # six [B, F, dim]
        shift1, scale1, gate1, shift2, scale2, gate2 = (t[:, :, None] for t in mod)  # [B, F, 1, dim]

        sa = self.self_attn
        y = m.modulate(x, shift1, scale1, self.eps, f)
        q, k, v = sa.qkv(y)
        attn = backend(layer, q, k, v, grid).flatten(2)
        x = m.gated_add(x, sa.o(attn), gate1, f)

        ca = self.cross_attn
        y = m.norm3(x, self.norm3.weight, self.norm3.bias, self.eps)
        q = ca.heads(ca.norm_q(ca.q(y)))
        out = F.scaled_dot_product_attention(q.transpose(1, 2), ck.transpose(1, 2), cv.transpose(1, 2))
        x = x + ca.o(out.transpose(1, 2).flatten(2))

        x = m.gated_add(x, self.ffn(m.modulate(x, shift2, scale2, self.eps, f)), gate2, f)
        return x


class WanHead(nn.Module):
    """Output head: LN(x)*(1+s)+sh -> Linear, (sh, s) = modulation + e (the time_embedding output)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.head = nn.Linear(cfg.dim, cfg.out_dim * cfg.patch_volume)
        self.modulation = nn.Parameter(torch.zeros(1, 2, cfg.dim))
        self.math = BlockMath()

    def forward(self, x: torch.Tensor, e: torch.Tensor, frames: int) -> torch.Tensor:
        """x: [B, L, dim]; e: fp32 [B, F, dim] -> [B, L, out_dim * pt*ph*pw]."""
        md = self.math.mod_dtype(x)
        shift, scale = (self.modulation.to(md)[:, None] + e.to(md)[:, :, None]).unbind(2)  # [B, F, dim]
        return self.head(self.math.modulate(x, shift[:, :, None], scale[:, :, None], self.eps, frames))


class CausalWanDiT(nn.Module):
    """The Wan2.1 DiT with an injected self-attention backend.

    forward(x [B, F, C, H, W], t [B, F/pt], text, backend, frame_offset=0) -> flow [B, F, out_dim, H, W].
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"CausalWanDiT needs a ModelConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = WanHead(cfg)
        if cfg.pos_grid is not None:  # not in Wan: see ModelConfig.pos_grid
            self.pos_embedding = nn.Parameter(torch.randn(cfg.pos_grid[0] * cfg.pos_grid[1], cfg.dim) * 0.02)
        self._fp32_time = _Fp32Weights()

    @property
    def block_math(self) -> BlockMath:
        return self.head.math

    def set_block_math(self, math: BlockMath) -> None:
        """Use `math` (modulation precision, fused helpers) in every block and the head; weights are unchanged."""
        if not isinstance(math, BlockMath):
            raise TypeError(f"set_block_math needs a BlockMath, got {type(math).__name__}")
        for blk in self.blocks:
            blk.math = math
            for norm in (blk.self_attn.norm_q, blk.self_attn.norm_k, blk.cross_attn.norm_q, blk.cross_attn.norm_k):
                norm.fn = math.rms_norm
        self.head.math = math

    def cross_kv(self, text: torch.Tensor) -> CrossKV:
        """Embed text [B, Ltext, text_dim] and project it to every layer's cross-attention K/V.

        Ltext shorter than config.text_len is zero-padded like Wan does; all positions (padding included)
        are attended, as in the released model.
        """
        cfg = self.config
        if text.dim() != 3 or text.shape[-1] != cfg.text_dim or text.shape[1] > cfg.text_len:
            raise ValueError(f"text must be [B, Ltext <= {cfg.text_len}, {cfg.text_dim}], got {tuple(text.shape)}")
        if text.shape[1] < cfg.text_len:
            text = F.pad(text, (0, 0, 0, cfg.text_len - text.shape[1]))
        ctx = self.text_embedding(text.to(self.text_embedding[0].weight.dtype))
        pairs = [blk.cross_attn.kv(ctx) for blk in self.blocks]
        return CrossKV(tuple(k for k, _ in pairs), tuple(v for _, v in pairs))

    def time_conditioning(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t: [B, F] -> e fp32 [B, F, dim] (time_embedding output), e0 fp32 [B, F, 6, dim]."""
        half = self.config.freq_dim // 2
        omega = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
        arg = t.to(torch.float32).to(torch.float64)[..., None] * omega
        sinusoid = torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1).float()
        e = self._fp32_time(self.time_embedding, sinusoid)
        e0 = self._fp32_time(self.time_projection, e)
        return e, e0.unflatten(-1, (6, self.config.dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor | CrossKV,
                backend: AttentionBackend, frame_offset: int = 0) -> torch.Tensor:
        """Flow prediction for latents x.

        x:    [B, F, C, H, W] latents (F frames of C = in_dim channels); F, H, W divisible by the patch.
        t:    [B, F // pt] float timesteps, one per (token) frame.
        text: raw text states [B, Ltext, text_dim] or ``CrossKV`` from ``cross_kv``.
        backend: self-attention backend; frame_offset: time position of the first frame (in token frames).
        Returns [B, F, out_dim, H, W] in the weights' dtype.
        """
        cfg = self.config
        pt, ph, pw = cfg.patch_size
        if x.dim() != 5 or x.shape[2] != cfg.in_dim:
            raise ValueError(f"x must be [B, F, {cfg.in_dim}, H, W], got {tuple(x.shape)}")
        B, n_f, _, H, W = x.shape
        if n_f % pt or H % ph or W % pw:
            raise ValueError(f"x frames/height/width {n_f}x{H}x{W} not divisible by patch {cfg.patch_size}")
        grid = FrameGrid(n_f // pt, H // ph, W // pw, frame_offset)
        if tuple(t.shape) != (B, grid.frames):
            raise ValueError(f"t must be [B, F // pt] = [{B}, {grid.frames}], got {tuple(t.shape)}")
        ctx = text if isinstance(text, CrossKV) else self.cross_kv(text)
        if len(ctx.keys) != len(self.blocks):
            raise ValueError(f"CrossKV has {len(ctx.keys)} layers, the model {len(self.blocks)}")

        h = self._patchify(x.to(self.patch_embedding.weight.dtype), grid)
        e, e0 = self.time_conditioning(t)
        for i, block in enumerate(self.blocks):
            h = block(h, e0, ctx.keys[i], ctx.values[i], backend, i, grid)
        return self._unpatchify(self.head(h, e, grid.frames), grid)

    def _patchify(self, x: torch.Tensor, grid: FrameGrid) -> torch.Tensor:
        """[B, F, C, H, W] -> [B, L, dim]; the Conv3d with stride = kernel is a Linear over (C, pt, ph, pw)."""
        pt, ph, pw = self.config.patch_size
        B, _, C = x.shape[:3]
        p = x.reshape(B, grid.frames, pt, C, grid.h, ph, grid.w, pw)
        p = p.permute(0, 1, 4, 6, 3, 2, 5, 7).reshape(B, grid.tokens, C * pt * ph * pw)
        w = self.patch_embedding.weight
        h = F.linear(p, w.flatten(1), self.patch_embedding.bias)
        if self.config.pos_grid is not None:
            if (grid.h, grid.w) != self.config.pos_grid:
                raise ValueError(f"this model's position embedding is for a {self.config.pos_grid} token grid "
                                 f"({self.config.pos_grid[0] * ph}x{self.config.pos_grid[1] * pw} latents), "
                                 f"got {grid.h}x{grid.w} tokens")
            h = (h.view(B, grid.frames, grid.h * grid.w, -1) + self.pos_embedding.to(h.dtype)).view_as(h)
        return h

    def _unpatchify(self, y: torch.Tensor, grid: FrameGrid) -> torch.Tensor:
        """[B, L, pt*ph*pw*C] with C fastest -> [B, F, C, H, W]."""
        pt, ph, pw = self.config.patch_size
        B = y.shape[0]
        y = y.view(B, grid.frames, grid.h, grid.w, pt, ph, pw, self.config.out_dim)
        y = y.permute(0, 1, 4, 7, 2, 5, 3, 6)  # B, f, pt, C, h, ph, w, pw
        return y.reshape(B, grid.frames * pt, self.config.out_dim, grid.h * ph, grid.w * pw)


def _fp32_mlp(mlp: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run a Linear/activation Sequential in fp32 whatever its weights' dtype (see module docstring)."""
    for layer in mlp:
        x = F.linear(x, layer.weight.float(), layer.bias.float()) if isinstance(layer, nn.Linear) else layer(x)
    return x


class _Fp32Weights:
    """fp32 copies of the time MLPs' weights, made once and reused while the weights are unchanged.

    Keyed by each parameter's storage address, dtype and in-place version counter, so an optimizer step, a
    load_state_dict or a .to() rebuilds them. When autograd must reach the weights (grad enabled and a weight
    requires grad) the MLP casts every call instead, so training gradients are unchanged. For fp32 weights
    .float() is the weight itself: nothing is copied. The copies are plain tensors (not in state_dict()).
    """

    def __init__(self) -> None:
        self._cache: dict[int, tuple[tuple, list[tuple[torch.Tensor, torch.Tensor] | None]]] = {}

    def __call__(self, mlp: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        params = [p for p in mlp.parameters()]
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return _fp32_mlp(mlp, x)
        key = tuple((p.data_ptr(), p.dtype, p.device, p._version) for p in params)
        hit = self._cache.get(id(mlp))
        if hit is None or hit[0] != key:
            with torch.no_grad():
                weights = [(m.weight.float(), m.bias.float()) if isinstance(m, nn.Linear) else None for m in mlp]
            hit = (key, weights)
            self._cache[id(mlp)] = hit
        for layer, wb in zip(mlp, hit[1]):
            x = F.linear(x, *wb) if wb is not None else layer(x)
        return x
