"""Stage "forcing": teacher forcing of the causal student on the world's own video, through the inference cache.

Each iteration takes world clips of rollout.num_frames frames (21: 7 chunks, so chunks 3..6 are evicted and,
with the EMA training sink, folded into the sink exactly as when streaming) and, for each chunk c, one of the
sampler's K denoising steps k_c (uniform, shared by the batch). The student predicts chunk c's x0 from the
world's chunk noised to sigma_{k_c} (x_k = (1 - sigma) x0 + sigma eps, the sampler's own renoise), seeing the
cache that the runtime's context passes of the world's *clean* chunks 0..c-1 left (train.stages.rollout.
teacher_forced_x0); loss mean((x0_pred - x0)^2) over chunks and pixels. The student is only ever run at the K
warped timesteps, so these are the only noise levels it is trained at.

Why it learns what a long stream needs where a 21-frame teacher did not: given clean context, a chunk's
continuation is (nearly) determined: the context shows where the object is and how fast it moves, so the
regression target is the conditional mean of an almost deterministic conditional. Only chunk 0 carries the
world's chance (the speed), and its x0 is the mean over speeds (a short smear along the motion). A bidirectional
teacher must instead commit to one speed for all 21 frames at once; the 0.25M-parameter teacher fine-tuned for
900 steps drew a band across the frame (train/results/default_model.md). Unlike stage "regress" (the rollout's
exit x0 regressed on a prompt-determined world), the inputs are the world's noised chunks, not the student's
own denoising path, so chance may stay in the world.
Exposure bias (at inference the context is the student's own output) is what Self-Forcing's DMD stage trains
away; this stage does not, and the measurements say how far its students drift.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rfrt.sampling import renoise, warped_sigmas
from train.data.synthetic_world import SyntheticWorldDataset
from train.stages.base import StageTrainer
from train.stages.common import (Batches, autocast, load_dit, load_text, make_optimizer, optimizer_step,
                                 save_model_dir)
from train.stages.parallel import full_state_dict, model_state, optimizer_state, shard_trained
from train.stages.rollout import draw_exit_step, teacher_forced_x0, training_policy


class ForcingTrainer(StageTrainer):
    """model.student_init: the causal student to start from (its text encoder stays frozen)."""

    def build(self) -> None:
        cfg, dev = self.cfg, self.info.device
        if cfg.data.num_frames != cfg.rollout.num_frames:
            raise ValueError(f"data.num_frames ({cfg.data.num_frames}) must equal rollout.num_frames "
                             f"({cfg.rollout.num_frames}): the student is teacher-forced on the whole clip")
        self.student = load_dit(cfg.model.student_init, "model.student_init").to(dev).train()
        self.text = load_text(cfg.model.student_init, "model.student_init").to(dev)
        self.text.requires_grad_(False)
        shard_trained(self.student, cfg, self.info.world_size, dev)
        self.policy = training_policy(cfg.rollout)
        self.sampler = cfg.sampler
        self.params = list(self.student.parameters())
        self.opt = make_optimizer(self.params, cfg.optim.lr, cfg)
        self.data = Batches(SyntheticWorldDataset.from_config(cfg.data, self.info.rank, self.info.world_size),
                            cfg.run.batch_size)

    def state(self) -> dict[str, Any]:
        return {"student": model_state(self.student), "optim": optimizer_state(self.student, self.opt),
                "data": self.data}

    def loss(self, video: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """video [B, F, 3, H, W] in [-1, 1]: every chunk's x0 from its noised self, on the clean context."""
        chunk = self.policy.chunk_frames * self.student.config.patch_size[0]
        sigmas = warped_sigmas(self.sampler).to(video.device, torch.float32)
        noise = torch.randn_like(video)
        states = torch.stack([renoise(video, noise, s) for s in sigmas], dim=1)  # [B, K, F, C, H, W]
        # One step per chunk, drawn on rank 0 and broadcast (the ranks' chunks see the same noise levels).
        ks = [draw_exit_step(len(sigmas), self.info) for _ in range(video.shape[1] // chunk)]
        with autocast(self.cfg, self.info):
            pred = teacher_forced_x0(self.student, self.student.cross_kv(self.text.encode(prompts)), states, video,
                                     ks, self.policy, self.sampler)
        return ((pred.float() - video) ** 2).mean()

    def train_step(self, step: int) -> dict[str, float]:
        accum, total = self.cfg.run.grad_accum, 0.0
        for _ in range(accum):
            video, prompts = self.data.next(self.info.device)
            loss = self.loss(video, prompts)
            (loss / accum).backward()
            total += loss.item() / accum
        norm = optimizer_step(self.opt, self.params, self.cfg, self.info)
        return {"loss": total, "grad_norm": norm}

    def export(self, directory: Path) -> None:
        student = full_state_dict(self.student)
        if self.info.is_main:
            save_model_dir(directory, self.cfg, self.student, self.text, state=student)
