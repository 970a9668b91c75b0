"""Stage "forcing": teacher forcing of the causal student on the world's own video, through the inference cache.

Flow matching as in stage teacher, but causal and chunk by chunk as the runtime streams: each iteration takes
world clips of rollout.num_frames frames (21: 7 chunks, so chunks 3..6 are evicted and, with the EMA training
sink, folded into the sink exactly as when streaming); every chunk c of every clip gets its own noise level
sigma = shift(u), u ~ U(0, 1) (stage.teacher_shift), x_c = (1 - sigma) x0_c + sigma eps, and the model predicts
its flow seeing the cache that the runtime's context passes of the world's *clean* chunks 0..c-1 left
(train.stages.rollout.teacher_forced_flow); loss mean((v - (eps - x0))^2). Prompts are dropped with
stage.text_dropout, so the product supports CFG.

The product is a causal teacher: given clean context a chunk's continuation is nearly determined (the context
shows where the object is and how fast it moves), so it is far easier to learn than the bidirectional teacher's
21-frame clip, which must commit to one speed for all frames at once (that teacher, fine-tuned 1000 steps, drew
a band across the frame: train/results/default_model.md). Only chunk 0 carries the world's chance (the speed).
Sampled with many ODE steps it commits to a speed through its noise; the 4-step student is then distilled from
its ODE pairs (stage ode, ode_teacher causal). Regressing the 4 sampler steps' x0 directly on the world (the
first version of this stage) cannot commit: its chunk 0 is the mean over speeds, a smear that the next chunks
continue as a band (measured, default_model.md).

Later windows (stage.forcing_later_windows > 0): a stream continues from contexts anywhere in the world (a
primed video, or its own chunks long after the start), but clips from frame 0 only ever show the prompt's start.
So that fraction of clips is a window [s, s + R) of a longer clip (s ~ U{1..F - R}), and its first chunk is
context only: its content is the chance of where the window starts, which the prompt does not tell (a loss on
it would learn the mean over starts, the smear above). Every other chunk of it is trained as usual.
"""
from __future__ import annotations

import torch

from rfrt.sampling import shift_sigma

from train.losses import flow_matching_loss
from train.stages.common import autocast
from train.stages.rollout import teacher_forced_flow
from train.stages.teacher import drop_prompts
from train.stages.world_student import WorldStudentTrainer


def later_windows(video: torch.Tensor, frames: int, chunk: int, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips [B, F, ...] -> (windows [B, frames, ...], per-chunk loss weights [B, frames // chunk]): each clip's
    frames [0, frames) (all weights 1) or, with probability p, [s, s + frames) with s ~ U{1..F - frames} and
    weight 0 on its first chunk (context only). Draws from the torch RNG."""
    B, n_f = video.shape[:2]
    later = torch.rand(B) < p
    start = torch.where(later, torch.randint(1, n_f - frames + 1, (B,)), 0)
    index = (start[:, None] + torch.arange(frames)[None]).to(video.device)
    windows = video[torch.arange(B, device=video.device)[:, None], index]
    weights = torch.ones(B, frames // chunk, device=video.device)
    weights[later.to(video.device), 0] = 0.0
    return windows, weights


class ForcingTrainer(WorldStudentTrainer):
    """model.student_init: the causal model to start from (its text encoder stays frozen)."""

    def longer_clips(self) -> bool:
        return self.cfg.stage.forcing_later_windows > 0

    def loss(self, video: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Flow-matching loss of video [B, F, 3, H, W] in [-1, 1], every chunk at its own sigma, clean context."""
        chunk = self.policy.chunk_frames * self.student.config.patch_size[0]
        weights = None
        if self.longer_clips():
            video, weights = later_windows(video, self.cfg.rollout.num_frames, chunk,
                                           self.cfg.stage.forcing_later_windows)
        B, n_f = video.shape[:2]
        sigma = shift_sigma(torch.rand(B, n_f // chunk, device=video.device), self.cfg.stage.teacher_shift)
        eps = torch.randn_like(video)
        per_frame = sigma.repeat_interleave(chunk, dim=1)[..., None, None, None]
        noisy = (1 - per_frame) * video + per_frame * eps
        text = self.text.encode(drop_prompts(prompts, self.cfg.stage.text_dropout))
        with autocast(self.cfg, self.info):
            v = teacher_forced_flow(self.student, self.student.cross_kv(text), noisy, sigma, video, self.policy,
                                    self.cfg.sampler.num_train_timesteps)
        if weights is None:
            return flow_matching_loss(v.float(), video, eps)
        per_chunk = ((v.float() - (eps - video)) ** 2).unflatten(1, (n_f // chunk, chunk)).mean((2, 3, 4, 5))
        return (per_chunk * weights).sum() / weights.sum()
