"""FLOP cost model of one DiT forward over the ring cache (SPEC §2.4), derived from the configs.

Counted: the per-token linears of every block (self-attention q/k/v/o, cross-attention q/o, the two FFN
layers), self-attention (QK^T and PV over the attended keys) and cross-attention over the text tokens, at
2 FLOP per multiply-add. Left out, as in SPEC §2.4: the cross-attention K/V (once per prompt), the patch
embedding, the head, norms, modulation and softmax (together well under 1 % at the release shape).
At 832x480 with the release cache this gives 11.70 + 12.11 + 0.44 = 24.26 TFLOP per forward.
"""
from __future__ import annotations

from dataclasses import dataclass

from rfrt.cache.layout import CacheLayout
from rfrt.models.config import ModelConfig

__all__ = ["ForwardCost", "forward_cost", "chunk_flop"]


@dataclass(frozen=True)
class ForwardCost:
    """FLOP of one forward, by part."""

    linear: float
    self_attention: float
    cross_attention: float

    @property
    def total(self) -> float:
        return self.linear + self.self_attention + self.cross_attention


def forward_cost(cfg: ModelConfig, layout: CacheLayout, key_frames: int | None = None) -> ForwardCost:
    """One forward of a chunk (layout.chunk_tokens queries) attending to key_frames frames (default: the full
    window, the steady state; a filling chunk attends to policy.valid_frames(chunk))."""
    policy = layout.policy
    frames = policy.window_frames if key_frames is None else key_frames
    if not 0 < frames <= policy.window_frames:
        raise ValueError(f"key_frames must be in [1, {policy.window_frames}], got {key_frames}")
    queries, keys, d = layout.chunk_tokens, frames * layout.tokens_per_frame, cfg.dim
    per_token_macs = 6 * d * d + 2 * d * cfg.ffn_dim  # q, k, v, o, cross q, cross o; FFN up and down
    linear = 2.0 * queries * per_token_macs * cfg.num_layers
    self_attention = 4.0 * queries * keys * d * cfg.num_layers
    cross_attention = 4.0 * queries * cfg.text_len * d * cfg.num_layers
    return ForwardCost(linear, self_attention, cross_attention)


def chunk_flop(cfg: ModelConfig, layout: CacheLayout, forwards: int = 5, key_frames: int | None = None) -> float:
    """FLOP of one chunk: `forwards` forwards (4 denoising steps + the context pass in the release)."""
    return forwards * forward_cost(cfg, layout, key_frames).total
