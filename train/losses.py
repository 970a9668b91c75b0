"""Losses of Re-DMD training (SPEC 3), as pure functions of tensors.

Conventions: x is a clean sample (the student's output, x0), eps is Gaussian noise, sigma = t / T in [0, 1],
x_t = (1 - sigma) * x + sigma * eps, and a flow model predicts v = eps - x. Every tensor is batch-first,
[B, ...] (for video latents [B, F, C, H, W]); "per sample" means reduced over every dim but the first.

Re-DMD is plain DMD plus one hook: each sample's DMD loss is multiplied by exp(beta * r) (`reward_weights`).
"""

from __future__ import annotations

import torch

from rfrt.sampling import shift_sigma  # the sampler's own time shift (one formula)


def _sample_dims(x: torch.Tensor) -> list[int]:
    if x.dim() < 1:
        raise ValueError("expected a batch-first tensor [B, ...], got a scalar")
    return list(range(1, x.dim()))


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a [B] tensor so it broadcasts against `like` [B, ...]."""
    if v.dim() != 1 or v.shape[0] != like.shape[0]:
        raise ValueError(f"expected a per-sample tensor of shape [{like.shape[0]}], got {tuple(v.shape)}")
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def sample_dmd_timesteps(batch_size: int, *, min_t: float = 20.0, max_t: float = 980.0, shift: float = 5.0,
                         num_train_timesteps: int = 1000, generator: torch.Generator | None = None,
                         device: torch.device | str = "cpu") -> torch.Tensor:
    """DMD timesteps, one per sample: t ~ U{0..T-1} (integer draw, as the public trainer does), shifted, clamped.

    Returns float32 [B] in [min_t, max_t]. All frames of a sample share its t; expand to [B, F] for the model.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    T = num_train_timesteps
    t = torch.randint(0, T, (batch_size,), generator=generator, device=device).to(torch.float32)
    t = T * shift_sigma(t / T, shift)
    return t.clamp(min_t, max_t)


def add_noise(x: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - sigma) x + sigma eps. x, eps: [B, ...]; sigma: [B] (one per sample) or a scalar."""
    if x.shape != eps.shape:
        raise ValueError(f"x {tuple(x.shape)} and eps {tuple(eps.shape)} differ in shape")
    s = sigma if sigma.dim() == 0 else _per_sample(sigma, x)
    return (1.0 - s) * x + s * eps


def flow_matching_loss(v_pred: torch.Tensor, x: torch.Tensor, eps: torch.Tensor,
                       reduction: str = "mean") -> torch.Tensor:
    """Critic loss mean((v_pred - (eps - x))^2). Shapes [B, ...]; returns a scalar, or [B] with reduction="none"."""
    if not (v_pred.shape == x.shape == eps.shape):
        raise ValueError(f"shape mismatch: v_pred {tuple(v_pred.shape)}, x {tuple(x.shape)}, eps {tuple(eps.shape)}")
    err = (v_pred.float() - (eps.float() - x.float())) ** 2
    if reduction == "mean":
        return err.mean()
    if reduction == "none":
        return err.mean(dim=_sample_dims(err))
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond). Works on x0 or flow predictions alike."""
    if cond.shape != uncond.shape:
        raise ValueError(f"cond {tuple(cond.shape)} and uncond {tuple(uncond.shape)} differ in shape")
    return uncond + guidance_scale * (cond - uncond)


@torch.no_grad()
def dmd_gradient(x: torch.Tensor, x0_fake: torch.Tensor, x0_real_cfg: torch.Tensor,
                 eps: float = 0.0) -> torch.Tensor:
    """DMD gradient g = (x0_fake - x0_real_cfg) / mean|x - x0_real_cfg| (mean per sample over all but dim 0).

    x: the student's output [B, ...]; x0_fake / x0_real_cfg: critic and (guided) teacher x0 predictions of the
    same shape. Computed without gradient in at least fp32 (bf16 inputs are upcast). A zero normaliser gives
    NaN/inf that is mapped to 0 (as the public trainer does with nan_to_num) unless `eps` > 0 is added.
    """
    if not (x.shape == x0_fake.shape == x0_real_cfg.shape):
        raise ValueError(f"shape mismatch: x {tuple(x.shape)}, x0_fake {tuple(x0_fake.shape)}, "
                         f"x0_real_cfg {tuple(x0_real_cfg.shape)}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, fake, real = x.to(dtype), x0_fake.to(dtype), x0_real_cfg.to(dtype)
    normaliser = (x - real).abs().mean(dim=_sample_dims(x), keepdim=True) + eps
    return torch.nan_to_num((fake - real) / normaliser, nan=0.0, posinf=0.0, neginf=0.0)


def dmd_loss(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Per-sample DMD loss 0.5 * mean((x - sg(x - g))^2) -> [B].

    Its value is 0.5 * mean(g^2) and its gradient w.r.t. x is g / N (N = numel per sample), so a descent step
    moves x along -g: towards the teacher's x0 and away from the critic's.
    """
    if x.shape != grad.shape:
        raise ValueError(f"x {tuple(x.shape)} and grad {tuple(grad.shape)} differ in shape")
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    target = (xf - grad.to(xf.dtype)).detach()
    return 0.5 * ((xf - target) ** 2).mean(dim=_sample_dims(xf))


def reward_weights(reward_z: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Re-DMD weights exp(beta * r) of z-scored rewards r [B] -> [B]; detached, not normalised over the batch."""
    if reward_z.dim() != 1:
        raise ValueError(f"reward_z must be [B], got {tuple(reward_z.shape)}")
    return torch.exp(beta * reward_z.detach().float())


def redmd_loss(per_sample_loss: torch.Tensor, reward_z: torch.Tensor | None = None,
               beta: float = 2.0) -> torch.Tensor:
    """Batch loss: mean_i w_i * L_i with w_i = exp(beta * r_i) (w = 1 when reward_z is None: plain DMD).

    per_sample_loss: [B] (from `dmd_loss`); reward_z: [B] z-scored rewards, receiving no gradient.
    """
    if per_sample_loss.dim() != 1:
        raise ValueError(f"per_sample_loss must be [B], got {tuple(per_sample_loss.shape)}")
    if reward_z is None:
        return per_sample_loss.mean()
    if reward_z.shape != per_sample_loss.shape:
        raise ValueError(f"reward_z {tuple(reward_z.shape)} must match per_sample_loss {tuple(per_sample_loss.shape)}")
    w = reward_weights(reward_z, beta).to(per_sample_loss.device, per_sample_loss.dtype)
    return (w * per_sample_loss).mean()
