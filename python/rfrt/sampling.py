"""Flow-matching schedule of SPEC §2.1: the shifted sigma table, warped denoising steps, x0/flow conversion.

Pure functions over a frozen :class:`SamplerConfig`. The released checkpoint was distilled with the
Self-Forcing ``FlowMatchScheduler`` (shift 5, ``extra_one_step``): a 1000-entry table built from
``u = linspace(1, 0, 1001)[:-1]``, onto which the few denoising steps are *warped* by indexing the table at
``num_train_timesteps - step``. The values fed to the model therefore come from the table, never from the
step numbers themselves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rfrt._checks import positive_int

__all__ = [
    "SamplerConfig",
    "shift_sigma",
    "sigma_table",
    "warped_timesteps",
    "warped_sigmas",
    "timestep_tensor",
    "flow_to_x0",
    "renoise",
]


@dataclass(frozen=True)
class SamplerConfig:
    """Few-step flow-matching sampler.

    num_train_timesteps: entries of the sigma table (1000 in the release).
    shift:               timestep shift s in sigma = s*u / (1 + (s-1)*u) (5.0 in the release).
    denoising_steps:     strictly decreasing steps in [1, num_train_timesteps], warped onto the table at index
                         num_train_timesteps - step ((1000, 750, 500, 250) in the release).
    """

    num_train_timesteps: int = 1000
    shift: float = 5.0
    denoising_steps: tuple[int, ...] = (1000, 750, 500, 250)

    def __post_init__(self) -> None:
        n = positive_int("SamplerConfig.num_train_timesteps", self.num_train_timesteps)
        if isinstance(self.shift, bool) or not isinstance(self.shift, (int, float)) \
                or not math.isfinite(self.shift) or self.shift <= 0:
            raise ValueError(f"SamplerConfig.shift must be a finite float > 0, got {self.shift!r}")
        steps = self.denoising_steps
        if not isinstance(steps, (tuple, list)) or len(steps) == 0:
            raise ValueError(f"SamplerConfig.denoising_steps must be a non-empty tuple of ints, got {steps!r}")
        for s in steps:
            if not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= n:
                raise ValueError(
                    f"SamplerConfig.denoising_steps: every step must be an int in [1, {n}] "
                    f"(num_train_timesteps), got {s!r} in {steps!r}")
        if any(a <= b for a, b in zip(steps, steps[1:])):
            raise ValueError(f"SamplerConfig.denoising_steps must be strictly decreasing, got {steps!r}")
        # Accept a list (e.g. from YAML) but store a tuple so the config stays hashable and immutable.
        object.__setattr__(self, "shift", float(self.shift))
        object.__setattr__(self, "denoising_steps", tuple(steps))

    @property
    def num_steps(self) -> int:
        return len(self.denoising_steps)


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """The flow-matching time shift sigma' = shift * sigma / (1 + (shift - 1) * sigma), elementwise (any shape)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def sigma_table(config: SamplerConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The full schedule: (timesteps, sigmas), both fp32 of shape [num_train_timesteps], decreasing from
    (num_train_timesteps, 1.0). timesteps = num_train_timesteps * sigma, computed in fp32 as the reference does."""
    n = config.num_train_timesteps
    u = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float32)[:-1]
    sigmas = shift_sigma(u, config.shift)
    return sigmas * n, sigmas


def _warp_indices(config: SamplerConfig) -> torch.Tensor:
    return torch.tensor([config.num_train_timesteps - s for s in config.denoising_steps], dtype=torch.long)


def warped_timesteps(config: SamplerConfig) -> torch.Tensor:
    """Model-facing timesteps of the denoising steps, fp32 [num_steps] ([1000, 937.5, 833.33, 625] in the
    release)."""
    return sigma_table(config)[0][_warp_indices(config)]


def warped_sigmas(config: SamplerConfig) -> torch.Tensor:
    """Noise levels of the denoising steps, fp32 [num_steps] ([1, 0.9375, 0.8333, 0.625] in the release)."""
    return sigma_table(config)[1][_warp_indices(config)]


def timestep_tensor(t: float | torch.Tensor, batch: int, frames: int,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """The per-frame timestep the DiT takes: fp32 [batch, frames], every entry equal to t.

    A tensor t stays a tensor (no .item(): reading a device value back would sync the host every step)."""
    if isinstance(t, torch.Tensor):
        if t.numel() != 1:
            raise ValueError(f"timestep_tensor takes one timestep, got a tensor of shape {tuple(t.shape)}")
        return t.reshape(1, 1).to(device=device, dtype=torch.float32).expand(batch, frames).contiguous()
    return torch.full((batch, frames), float(t), dtype=torch.float32, device=device)


def _broadcast_sigma(sigma: float | torch.Tensor, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """sigma as a tensor of `dtype` broadcastable to `like` [N, ...]: a scalar, a 0-d tensor, a [N] tensor
    (one sigma per leading entry) or an already broadcastable tensor."""
    s = torch.as_tensor(sigma, dtype=dtype, device=like.device)
    if s.ndim == 1 and like.ndim > 1:
        if s.shape[0] not in (1, like.shape[0]):
            raise ValueError(f"sigma of shape {tuple(s.shape)} does not match the leading dim of "
                             f"{tuple(like.shape)}")
        s = s.reshape(-1, *([1] * (like.ndim - 1)))
    return s


def flow_to_x0(x_t: torch.Tensor, flow: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """x0 = x_t - sigma * flow, for the flow prediction v = noise - x0.

    x_t, flow: same shape [N, ...]; sigma: scalar, [N] or broadcastable. Computed in fp64 as the reference does
    (the subtraction of two nearly equal bf16 quantities loses less there), returned in x_t's dtype.
    """
    if x_t.shape != flow.shape:
        raise ValueError(f"flow_to_x0: x_t {tuple(x_t.shape)} and flow {tuple(flow.shape)} differ in shape")
    s = _broadcast_sigma(sigma, x_t, torch.float64)
    return (x_t.double() - s * flow.double()).to(x_t.dtype)


def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Next step's input (1 - sigma) * x0 + sigma * noise, computed in fp32, returned in x0's dtype.

    x0, noise: same shape [N, ...]; sigma: scalar, [N] or broadcastable.
    """
    if x0.shape != noise.shape:
        raise ValueError(f"renoise: x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} differ in shape")
    s = _broadcast_sigma(sigma, x0, torch.float32)
    return ((1 - s) * x0.float() + s * noise.float()).to(x0.dtype)
