"""PixelDecoder: for models whose latents are the RGB frames themselves (the tiny embedded default model).

Latent frame f is video frame f, channels (R, G, B) in [-1, 1]: no spatial or temporal upsampling and no
state, so it streams trivially. Values outside [-1, 1] are clamped, as every decoder's output is.
"""
from __future__ import annotations

import torch

from .base import StreamingDecoder, StreamingEncoder

__all__ = ["PixelDecoder", "PixelEncoder"]


class PixelDecoder(StreamingDecoder):
    """Latents [B, F, 3, h, w] -> frames [B, F, 3, h, w] (float, clamped to [-1, 1], same dtype/device)."""

    first_latent_frames = 1

    @property
    def temporal_upsample(self) -> int:
        return 1

    @property
    def spatial_upsample(self) -> int:
        return 1

    @property
    def latent_channels(self) -> int:
        return 3

    def encoder(self) -> "PixelEncoder":
        return PixelEncoder()

    def _reset_state(self) -> None:
        pass  # stateless: every latent frame is decoded on its own

    def _decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.clamp(-1.0, 1.0)


class PixelEncoder(StreamingEncoder):
    """The pixel model's encode path, the identity: frames [B, T, 3, h, w] in [-1, 1] are the latents."""

    @property
    def temporal_downsample(self) -> int:
        return 1

    @property
    def spatial_downsample(self) -> int:
        return 1

    @property
    def latent_channels(self) -> int:
        return 3

    def _reset_state(self) -> None:
        pass

    def _encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.clone()
