"""The causal Wan2.1 DiT (SPEC §1), defined once for runtime, training and export.

Causality is not in the model: self-attention is an injected backend (``rfrt.models.attention``), so the
same module is the bidirectional teacher (``FullAttention``), the block-causal student
(``BlockCausalAttention``) and the streaming runtime (the ring cache of ``rfrt.cache``).

Parameter names are Wan's original ones (SPEC §1.1), so ``state_dict()`` matches Wan checkpoints.

Precision. The residual stream, every Linear and the attention run in the weights' dtype (bf16 or fp32).
Timestep conditioning and modulation run in fp32 regardless of the weights' dtype: the sinusoid is computed
in fp64 from the fp32 t and cast to fp32, ``time_embedding`` / ``time_projection`` use fp32 copies of their
(small, ~16M-parameter) weights, and the adaLN arithmetic (``modulation + e0``, ``LN(x)*(1+scale)+shift``,
``x + y*gate``) is done in fp32 before casting back. This is what diffusers does and is more accurate than
the released pipeline, which runs modulation in bf16 (Wan's fp32 autocast is disabled there). LayerNorm and
RMSNorm compute in fp32 internally like the reference.

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


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, normalised in fp32 then scaled in the input dtype (Wan's order)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


def _layer_norm(x: torch.Tensor, eps: float, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """LayerNorm over the last dim in fp32; returns fp32 (callers cast after modulating)."""
    w = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    return F.layer_norm(x.float(), x.shape[-1:], w, b, eps)


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

    def forward(self, x: torch.Tensor, e0: torch.Tensor, ck: torch.Tensor, cv: torch.Tensor,
                backend: AttentionBackend, layer: int, grid: FrameGrid) -> torch.Tensor:
        """x: [B, L, dim] (weights' dtype); e0: fp32 [B, F, 6, dim]; ck, cv: [B, Ltext, H, D]."""
        B, L, dim = x.shape
        mod = (self.modulation.float()[:, None] + e0).unbind(2)  # six fp32 [B, F, dim]
        shift1, scale1, gate1, shift2, scale2, gate2 = (m[:, :, None] for m in mod)  # [B, F, 1, dim]

        def modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            per_frame = _layer_norm(h, self.eps).view(B, grid.frames, -1, dim)
            return (per_frame * (1 + scale) + shift).view(B, L, dim).to(x.dtype)

        def gated_add(h: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
            out = h.float().view(B, grid.frames, -1, dim) + y.float().view(B, grid.frames, -1, dim) * gate
            return out.view(B, L, dim).to(x.dtype)

        sa = self.self_attn
        y = modulate(x, shift1, scale1)
        q = sa.heads(sa.norm_q(sa.q(y)))
        k, v = sa.kv(y)
        attn = backend(layer, q, k, v, grid).flatten(2)
        x = gated_add(x, sa.o(attn), gate1)

        ca = self.cross_attn
        y = _layer_norm(x, self.eps, self.norm3.weight, self.norm3.bias).to(x.dtype)
        q = ca.heads(ca.norm_q(ca.q(y)))
        out = F.scaled_dot_product_attention(q.transpose(1, 2), ck.transpose(1, 2), cv.transpose(1, 2))
        x = x + ca.o(out.transpose(1, 2).flatten(2))

        x = gated_add(x, self.ffn(modulate(x, shift2, scale2)), gate2)
        return x


class WanHead(nn.Module):
    """Output head: LN(x)*(1+s)+sh -> Linear, (sh, s) = modulation + e (the time_embedding output)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.head = nn.Linear(cfg.dim, cfg.out_dim * cfg.patch_volume)
        self.modulation = nn.Parameter(torch.zeros(1, 2, cfg.dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor, frames: int) -> torch.Tensor:
        """x: [B, L, dim]; e: fp32 [B, F, dim] -> [B, L, out_dim * pt*ph*pw]."""
        B, L, dim = x.shape
        shift, scale = (self.modulation.float()[:, None] + e[:, :, None]).unbind(2)  # [B, F, dim]
        y = _layer_norm(x, self.eps).view(B, frames, -1, dim) * (1 + scale[:, :, None]) + shift[:, :, None]
        return self.head(y.view(B, L, dim).to(x.dtype))


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
        e = _fp32_mlp(self.time_embedding, sinusoid)
        e0 = _fp32_mlp(self.time_projection, e)
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
