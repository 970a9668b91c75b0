"""CacheLayout: the one geometry value of a stream's self-attention cache.

It joins the resolution-free `CachePolicy` (frames, alpha, RoPE rule, sink precision) with what the model and
the resolution fix: layers, heads, head_dim, the token grid of one latent frame, the RoPE base (all from
`ModelConfig`; `CacheLayout.for_model`). The ring cache, the reference oracle, the functional (export) cache,
the engine runners and the export spec all take this one value, and every token count (1560 tokens per frame,
4680 per chunk, 14040 per window at 832x480 in the release) is derived here, never stored.
"""
from __future__ import annotations

from dataclasses import dataclass

from rfrt._checks import positive_int
from rfrt.cache.policy import CachePolicy
from rfrt.models.config import ModelConfig
from rfrt.rope import ROPE_THETA, axis_pairs

__all__ = ["CacheLayout"]


@dataclass(frozen=True)
class CacheLayout:
    """Static geometry of one cache: everything its buffers' shapes and its kernels' positions depend on.

    policy: the sink / window / chunk layout in frames. layers, heads, head_dim: of the DiT (head_dim even and
    >= 6 for the 3-axis RoPE). grid_h x grid_w: the token grid of one latent frame. batch: videos per stream.
    rope_theta: RoPE base (the model's; `for_model` takes it from ModelConfig).
    """

    policy: CachePolicy
    layers: int
    heads: int
    head_dim: int
    grid_h: int
    grid_w: int
    batch: int = 1
    rope_theta: float = ROPE_THETA

    def __post_init__(self) -> None:
        if not isinstance(self.policy, CachePolicy):
            raise TypeError(f"CacheLayout.policy must be a CachePolicy, got {type(self.policy).__name__}")
        for name in ("layers", "batch", "heads", "head_dim", "grid_h", "grid_w"):
            positive_int(f"CacheLayout.{name}", getattr(self, name))
        axis_pairs(self.head_dim)  # raises a clear error for an odd or too small head_dim
        if isinstance(self.rope_theta, bool) or not isinstance(self.rope_theta, (int, float)) or self.rope_theta <= 0:
            raise ValueError(f"CacheLayout.rope_theta must be a positive number, got {self.rope_theta!r}")

    @classmethod
    def for_model(cls, cfg: ModelConfig, policy: CachePolicy, grid_h: int, grid_w: int, batch: int = 1
                  ) -> CacheLayout:
        """The layout of model `cfg`'s cache under `policy` for a grid_h x grid_w token grid."""
        return cls(policy, layers=cfg.num_layers, heads=cfg.num_heads, head_dim=cfg.head_dim, grid_h=grid_h,
                   grid_w=grid_w, batch=batch, rope_theta=cfg.rope_theta)

    # ---- derived sizes (no magic numbers: 1560 / 4680 / 14040 come from here) ----
    @property
    def tokens_per_frame(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def chunk_tokens(self) -> int:
        return self.policy.chunk_frames * self.tokens_per_frame

    @property
    def sink_tokens(self) -> int:
        return self.policy.sink_frames * self.tokens_per_frame

    @property
    def window_tokens(self) -> int:
        """Tokens of the whole [sink | ring] buffer."""
        return self.policy.window_frames * self.tokens_per_frame

    def valid_tokens(self, chunk: int) -> int:
        """Keys chunk `chunk`'s queries attend to: a prefix of the buffer (policy.valid_frames frames)."""
        return self.policy.valid_frames(chunk) * self.tokens_per_frame

    @property
    def time_pairs(self) -> int:
        return axis_pairs(self.head_dim)[0]

    def kv_shape(self) -> tuple[int, ...]:
        return (2, self.layers, self.batch, self.window_tokens, self.heads, self.head_dim)

    def sink_acc_shape(self) -> tuple[int, ...]:
        return (2, self.layers, self.batch, self.sink_tokens, self.heads, self.head_dim)
