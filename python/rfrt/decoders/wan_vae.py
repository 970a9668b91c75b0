"""Streaming Wan2.1 VAE decoder and encoder over diffusers' `AutoencoderKLWan` (SPEC §1.2).

diffusers decodes a whole video by running `vae.decoder` one latent frame at a time with a list of causal-conv
feature caches (`_feat_map`, two cached time steps per conv) that it clears before and after every `decode`
call. Streaming needs that list to outlive a call, so this class owns its own list and drives `vae.decoder`
the same way `AutoencoderKLWan._decode` does, carrying the list across chunks. The VAE object itself is never
modified, so one VAE can serve several streams. The encoder does the same with `vae.encoder`: diffusers encodes
frame 0 alone, then groups of 4 frames, with its own feature-cache list; `WanVAEEncoder` keeps that list across
calls, so a clip encoded in pieces equals one `AutoencoderKLWan.encode`.
"""
from __future__ import annotations

import os

import torch

from .base import StreamingDecoder, StreamingEncoder

__all__ = ["WanVAEDecoder", "WanVAEEncoder"]


def _diffusers_wan():
    try:
        from diffusers.models.autoencoders import autoencoder_kl_wan
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("WanVAEDecoder needs diffusers (pip install 'rfrt[hf]')") from e
    return autoencoder_kl_wan


class _WanVAEPart:
    """What the streaming decoder and encoder of one `AutoencoderKLWan` share: the VAE, its per-channel latent
    statistics (kept on the VAE's device, so normalising a chunk copies nothing from the host), its patch size,
    and one feature-cache entry per causal conv of its `decoder` or `encoder` half."""

    def _bind(self, vae, half: str, expected: str) -> None:
        wan = _diffusers_wan()
        who = type(self).__name__
        if not isinstance(vae, wan.AutoencoderKLWan):
            raise TypeError(f"{who}: expected {expected}, got {type(vae).__name__}")
        self.vae = vae.eval()
        cfg = vae.config
        for name in ("latents_mean", "latents_std"):
            if len(getattr(cfg, name)) != cfg.z_dim:
                raise ValueError(f"{who}: config.{name} has {len(getattr(cfg, name))} entries, z_dim is {cfg.z_dim}")
        vae_device = next(vae.parameters()).device
        self._mean = torch.tensor(cfg.latents_mean, dtype=torch.float32, device=vae_device).view(1, -1, 1, 1, 1)
        self._std = torch.tensor(cfg.latents_std, dtype=torch.float32, device=vae_device).view(1, -1, 1, 1, 1)
        self._num_causal_convs = sum(isinstance(m, wan.WanCausalConv3d) for m in getattr(vae, half).modules())
        self._patch_size = cfg.patch_size
        self._feat_cache: list = [None] * self._num_causal_convs

    @property
    def latent_channels(self) -> int:
        return self.vae.config.z_dim

    def _spatial_factor(self) -> int:
        # One spatial x2 per stage transition, times the patch size of the patchified (Wan2.2) variant.
        return 2 ** (len(self.vae.config.dim_mult) - 1) * (self._patch_size or 1)

    def _reset_state(self) -> None:
        self._feat_cache = [None] * self._num_causal_convs

    def _stats_on_vae(self) -> torch.Tensor:
        """A parameter of the VAE (its device and dtype); the latent statistics are moved to its device first if
        the VAE was moved after construction."""
        p = next(self.vae.parameters())
        if self._mean.device != p.device:
            self._mean, self._std = self._mean.to(p.device), self._std.to(p.device)
        return p


class WanVAEDecoder(_WanVAEPart, StreamingDecoder):
    """Wan2.1 VAE decoder, latent frame by latent frame, with the causal-conv cache carried across chunks.

    vae:    an `AutoencoderKLWan` instance, or a directory holding one (`from_pretrained` layout; the
            Wan2.1-T2V `vae/` folder).
    device, dtype: where/in what to run it when loading from a directory (default: CPU, fp32).

    Latents are in the DiT's normalised space; they are de-normalised with the config's per-channel
    latents_mean / latents_std (z = latents * std + mean) before decoding, as diffusers' Wan pipeline does.
    """

    def __init__(self, vae, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        wan = _diffusers_wan()
        if isinstance(vae, (str, os.PathLike)):
            if not os.path.isdir(vae):
                raise FileNotFoundError(f"WanVAEDecoder: VAE directory {os.fspath(vae)!r} does not exist")
            vae = wan.AutoencoderKLWan.from_pretrained(os.fspath(vae), torch_dtype=dtype or torch.float32)
        if (device is not None or dtype is not None) and isinstance(vae, wan.AutoencoderKLWan):
            vae = vae.to(device=device, dtype=dtype)
        self._bind(vae, "decoder", "an AutoencoderKLWan or a directory")
        self._unpatchify = wan.unpatchify

    def encoder(self) -> "WanVAEEncoder":
        """The encode path of the same VAE (a new encoder stream sharing the weights)."""
        return WanVAEEncoder(self.vae)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, subfolder: str | None = None, device=None,
                        dtype=None) -> "WanVAEDecoder":
        """Load from a diffusers directory; subfolder="vae" for a whole Wan2.1-T2V-1.3B-Diffusers checkout."""
        path = os.fspath(path)
        return cls(os.path.join(path, subfolder) if subfolder else path, device=device, dtype=dtype)

    @property
    def temporal_upsample(self) -> int:
        return 2 ** sum(bool(u) for u in self.vae.temperal_upsample)

    @property
    def spatial_upsample(self) -> int:
        return self._spatial_factor()

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, F, C, h, w] -> VAE latents [B, C, F, h, w] (z = latents * std + mean), in the
        VAE's dtype and device."""
        p = self._stats_on_vae()
        z = latents.to(device=p.device, dtype=torch.float32).permute(0, 2, 1, 3, 4)
        return (z * self._std + self._mean).to(p.dtype)

    def _decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        # post_quant_conv is a 1x1x1 causal conv: it needs no cache, so it runs on the chunk at once.
        x = self.vae.post_quant_conv(self.denormalize(latents))
        outs = []
        for i in range(x.shape[2]):
            # Each call walks the convs in the same order, so the cache index restarts at 0 per latent frame.
            outs.append(self.vae.decoder(x[:, :, i:i + 1], feat_cache=self._feat_cache, feat_idx=[0],
                                         first_chunk=(self._latent_frames_seen + i == 0)))
        out = torch.cat(outs, dim=2)
        if self._patch_size is not None:
            out = self._unpatchify(out, patch_size=self._patch_size)
        return out.clamp(-1.0, 1.0).permute(0, 2, 1, 3, 4)


class WanVAEEncoder(_WanVAEPart, StreamingEncoder):
    """Wan2.1 VAE encoder: frames [B, T, 3, H, W] in [-1, 1] -> normalised latents [B, F, C, H/8, W/8].

    Causal: frame 0 alone gives latent frame 0, each next 4 frames one more latent frame (1 + 4k frames -> 1 + k
    latent frames). The posterior's mean is taken (no sampling: priming is deterministic) and normalised with the
    config's latents_mean / latents_std ((mu - mean) / std), the inverse of `WanVAEDecoder.denormalize`.
    Encoding runs frame group by frame group, so memory does not grow with the clip; diffusers' spatial tiling is
    not used.
    """

    def __init__(self, vae) -> None:
        super().__init__()
        self._bind(vae, "encoder", "an AutoencoderKLWan")
        self._patchify = _diffusers_wan().patchify

    @property
    def temporal_downsample(self) -> int:
        return 2 ** sum(bool(d) for d in self.vae.config.temperal_downsample)

    @property
    def spatial_downsample(self) -> int:
        return self._spatial_factor()

    def _encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        p = self._stats_on_vae()
        x = frames.to(device=p.device, dtype=p.dtype).permute(0, 2, 1, 3, 4)  # [B, 3, T, H, W]
        if self._patch_size is not None:
            x = self._patchify(x, patch_size=self._patch_size)
        # The groups diffusers' _encode feeds: frame 0 alone at stream start, then 4 frames at a time (the
        # encoder's strided time convs expect exactly that split).
        bounds, start, step = [], 0, self.temporal_downsample
        if self._frames_seen == 0:
            bounds.append((0, self.first_latent_frames))
            start = self.first_latent_frames
        bounds += [(a, a + step) for a in range(start, x.shape[2], step)]
        outs = [self.vae.encoder(x[:, :, a:b], feat_cache=self._feat_cache, feat_idx=[0]) for a, b in bounds]
        # quant_conv is a 1x1x1 causal conv: time-local, so it runs on the whole piece at once.
        moments = self.vae.quant_conv(torch.cat(outs, dim=2))
        mu = moments[:, : self.latent_channels].float()
        return ((mu - self._mean) / self._std).to(p.dtype).permute(0, 2, 1, 3, 4)
