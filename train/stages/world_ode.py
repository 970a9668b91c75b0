"""The world as its own teacher: the exact flow ODE of the synthetic world (stage.ode_teacher "world").

Why: on the fixed phase with clips from stream frame 0 and the canonical layout, a prompt leaves only the speed
to chance (`deciding_frames`), so the world's distribution given a prompt is known in closed form: the scene
rendered at every speed of U[speed_min, speed_max]. The denoiser of a mixture of point masses X_n with weights
p_n is exact, E[x0 | x] = sum_n w_n X_n with w_n proportional to p_n exp(-|x - (1 - sigma) X_n|^2 / (2 sigma^2))
for x = (1 - sigma) x0 + sigma eps, so its probability-flow ODE needs no learned teacher: it ends on a world clip,
drawn whole at a world speed, which the causal teacher's samples only approximate (train/results/default_model.md:
its plain movers creep, its small objects fade). The speed grid (`ode_world_speeds` points) stands in for the
uniform speed.

Chunk by chunk, as the student streams. A chunk's ODE is the mixture's, with each component's weight also
scored on the context the cache holds (its last `recent_frames`): the teacher treats that context as a world
clip seen through Gaussian pixel noise of std `context_sigma`, so a chunk continues the clip the context shows.
On-policy (stage.ode_context "student") the context is the student's own chunks, whose object is wherever the
student drew it, so the components are also shifted along the motion (a torus of 0.5 px steps, the shift's prior
Gaussian with std `shift_px`) and the chunk continues the world's motion from where the student's object is, at
the world speed that fits it best (a creeping context is continued at the slowest world speed, not at its own
crawl). The first chunk has no context, so it is the world's own start (shift 0), which is what a fresh stream
is trained to draw.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from rfrt.cache import CachePolicy

from train.data.synthetic_world import Scene, render_variants
from train.stages.rollout import OnPolicyStudent


def torus_shifts(scene: Scene, shift_px: float) -> np.ndarray:
    """Shifts (px along the first direction of motion) of the world's components: 0 alone when shift_px is 0, else
    every 0.5 px of one period of the torus along the object's axis, [-P/2, P/2) (half open, unlike
    `train.stages.regress.shift_grid`'s range: a mover shifted by P is the same clip)."""
    if shift_px == 0:
        return np.zeros(1)
    vx, vy = scene.objects[0].velocity
    period = scene.width if abs(vx) >= abs(vy) else scene.height
    return np.arange(-period, period) * 0.5


class WorldPosterior:
    """The components of one batch of scenes and their log prior: clips [B, N, F, C, H, W], shifts [N]."""

    def __init__(self, scenes: list[Scene], speeds: np.ndarray, shift_px: float):
        self.shifts = torus_shifts(scenes[0], shift_px)
        if any(len(torus_shifts(s, shift_px)) != len(self.shifts) for s in scenes):
            raise ValueError("the scenes of one batch need one torus period along their motion (H == W)")
        self.clips = torch.stack([render_variants(s, speeds, torus_shifts(s, shift_px)) for s in scenes])
        shift = torch.from_numpy(np.tile(self.shifts, len(speeds)))
        self.start = torch.where(shift == 0, 0.0, -math.inf).double()  # no context: the world's own start
        self.drift = (-0.5 * (shift / shift_px) ** 2).double() if shift_px > 0 else self.start

    def log_prior(self, context: torch.Tensor | None, frames: slice, context_sigma: float) -> torch.Tensor:
        """[B, N]: the prior of every component given the context [B, f, C, H, W] at stream frames `frames`."""
        if context is None or context.shape[1] == 0:
            return self.start.expand(self.clips.shape[:2])
        return self.drift[None] - squared_distances(context, self.clips[:, :, frames], 1.0) / (2 * context_sigma ** 2)


def squared_distances(x: torch.Tensor, clips: torch.Tensor, scale: float,
                      norms: torch.Tensor | None = None) -> torch.Tensor:
    """[B, N]: |x_b - scale * clips_bn|^2 for x [B, ...] and clips [B, N, ...], in float64 (the ODE divides them
    by 2 sigma^2, so float32's rounding would be worth hundreds of nats at the smallest sigmas). norms: the clips'
    |clips_bn|^2 [B, N] when already known (an ODE reuses them at every step)."""
    xf, cf = x.flatten(1).double(), clips.flatten(2).double()
    norms = (cf * cf).sum(-1) if norms is None else norms
    return (xf * xf).sum(-1, keepdim=True) - 2 * scale * torch.einsum("bp,bnp->bn", xf, cf) + scale * scale * norms


def exact_denoiser(x: torch.Tensor, sigma: float, clips: torch.Tensor, log_prior: torch.Tensor,
                   norms: torch.Tensor | None = None) -> torch.Tensor:
    """E[x0 | x] of the mixture: x [B, ...] at noise sigma in (0, 1], clips [B, N, ...], log_prior [B, N]."""
    w = torch.softmax(log_prior - squared_distances(x, clips, 1 - sigma, norms) / (2 * sigma ** 2), dim=1)
    return torch.einsum("bn,bn...->b...", w, clips.double()).to(x.dtype)


@torch.no_grad()
def world_teacher_ode(scenes: list[Scene], noise: torch.Tensor, policy: CachePolicy, grid: torch.Tensor,
                      where: torch.Tensor, speeds: np.ndarray, shift_px: float, context_sigma: float,
                      student: OnPolicyStudent | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The world's chunk-by-chunk Euler ODE (module docstring) from noise [B, F, C, H, W] of `scenes`, on the grid
    of sigmas `grid` (1 down to 0) whose steps `where` are the sampler's warped sigmas (`train.stages.ode.ode_grid`).

    With `student` the context is the student's chunk from the same noise (on-policy pairs), else the world's.
    Returns (states [B, K, F, C, H, W] at the K warped sigmas, the world's x0, the context video the cache held).
    """
    B, n_f = noise.shape[:2]
    chunk, recent = policy.chunk_frames, max(policy.window_frames - policy.sink_frames, policy.chunk_frames)
    world = WorldPosterior(scenes, speeds, shift_px if student is not None else 0.0)
    clips = world.clips.to(noise)
    record = set(where.tolist())
    states, out, context = [], [], []
    for c in range(n_f // chunk):
        now = slice(c * chunk, (c + 1) * chunk)
        seen_frames = slice(max(0, c * chunk - recent), c * chunk)
        log_prior = world.log_prior(torch.cat(context, 1)[:, seen_frames] if context else None, seen_frames,
                                    context_sigma)
        x, chunk_states, now_clips = noise[:, now], [], clips[:, :, now].double()  # converted once per chunk
        norms = (now_clips.flatten(2) ** 2).sum(-1)
        for j in range(len(grid) - 1):
            if j in record:
                chunk_states.append(x)
            sigma = float(grid[j])
            x0 = exact_denoiser(x, sigma, now_clips, log_prior, norms)
            x = x + (float(grid[j + 1]) - sigma) * (x - x0) / sigma
        seen = x
        if student is not None:
            seen = student.sample(noise[:, now])
            student.hold(seen)
        states.append(torch.stack(chunk_states, dim=1))
        out.append(x)
        context.append(seen)
    return torch.cat(states, dim=2), torch.cat(out, dim=1), torch.cat(context, dim=1)

