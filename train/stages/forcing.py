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
"""
from __future__ import annotations

import torch

from rfrt.sampling import shift_sigma

from train.losses import flow_matching_loss
from train.stages.common import autocast
from train.stages.rollout import teacher_forced_flow
from train.stages.teacher import drop_prompts
from train.stages.world_student import WorldStudentTrainer


class ForcingTrainer(WorldStudentTrainer):
    """model.student_init: the causal model to start from (its text encoder stays frozen)."""

    def loss(self, video: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Flow-matching loss of video [B, F, 3, H, W] in [-1, 1], every chunk at its own sigma, clean context."""
        B, n_f = video.shape[:2]
        chunk = self.policy.chunk_frames * self.student.config.patch_size[0]
        sigma = shift_sigma(torch.rand(B, n_f // chunk, device=video.device), self.cfg.stage.teacher_shift)
        eps = torch.randn_like(video)
        per_frame = sigma.repeat_interleave(chunk, dim=1)[..., None, None, None]
        noisy = (1 - per_frame) * video + per_frame * eps
        text = self.text.encode(drop_prompts(prompts, self.cfg.stage.text_dropout))
        with autocast(self.cfg, self.info):
            v = teacher_forced_flow(self.student, self.student.cross_kv(text), noisy, sigma, video, self.policy,
                                    self.cfg.sampler.num_train_timesteps)
        return flow_matching_loss(v.float(), video, eps)
