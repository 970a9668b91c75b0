"""ChunkPlan: the fixed inputs of sampling one chunk (SPEC §2.1), derived from the schedule once.

The generator, the CUDA-graph runner and the training rollout all sample with one plan: the model-facing
timesteps, the sigmas in the two dtypes the loop computes in, and the shape of a chunk's latents. Everything
is a device tensor made once, so the step path never uploads a scalar or reads one back (`.item()`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rfrt.sampling import SamplerConfig, timestep_tensor, warped_sigmas, warped_timesteps

__all__ = ["ChunkPlan"]


@dataclass(frozen=True, eq=False)
class ChunkPlan:
    """The fixed inputs of one chunk's sampling (all tensors on one device).

    latent_shape: [B, F, C, h, w] of a chunk's latents (F latent frames); dtype: the DiT input dtype.
    timesteps:    one fp32 [B, token_frames] tensor per denoising step; t_context: the context pass's (zeros).
    sigma64 / sigma32: per-step sigmas as fp64 / fp32 0-d tensors (flow_to_x0 computes in fp64, renoise in fp32).
    """

    latent_shape: tuple[int, ...]
    dtype: torch.dtype
    timesteps: tuple[Tensor, ...]
    t_context: Tensor
    sigma64: tuple[Tensor, ...]
    sigma32: tuple[Tensor, ...]

    def __post_init__(self) -> None:
        n = len(self.timesteps)
        if n == 0 or len(self.sigma64) != n or len(self.sigma32) != n:
            raise ValueError(f"ChunkPlan needs one timestep and sigma per denoising step, got {n} timesteps, "
                             f"{len(self.sigma64)} fp64 and {len(self.sigma32)} fp32 sigmas")
        if len(self.latent_shape) != 5:
            raise ValueError(f"ChunkPlan.latent_shape must be [B, F, C, h, w], got {self.latent_shape}")

    @classmethod
    def build(cls, sampler: SamplerConfig, latent_shape: tuple[int, ...], token_frames: int, dtype: torch.dtype,
              device: torch.device | str) -> ChunkPlan:
        """The plan of `sampler`'s warped steps for chunks of `latent_shape` ([B, F, C, h, w]) whose F latent
        frames are `token_frames` DiT frames (F / patch_t; the per-frame timestep has that many entries)."""
        shape = tuple(int(s) for s in latent_shape)
        batch = shape[0] if shape else 0
        sigmas = warped_sigmas(sampler)
        return cls(shape, dtype,
                   tuple(timestep_tensor(float(t), batch, token_frames, device) for t in warped_timesteps(sampler)),
                   timestep_tensor(0.0, batch, token_frames, device),
                   tuple(s.to(device=device, dtype=torch.float64) for s in sigmas),
                   tuple(s.to(device=device) for s in sigmas))

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def draw(self, generator: torch.Generator, out: list[Tensor] | None = None) -> list[Tensor]:
        """The chunk's noise in SPEC order (the initial noise, then one renoise draw per later step): num_steps
        fp32 tensors of latent_shape from `generator`, into the buffers `out` when given (same values)."""
        if out is None:
            return [torch.randn(self.latent_shape, generator=generator, device=generator.device,
                                dtype=torch.float32) for _ in self.timesteps]
        for buf in out:
            torch.randn(self.latent_shape, generator=generator, out=buf)
        return out
