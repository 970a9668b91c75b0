"""What stages forcing and regress share: a causal student trained on the world's own clips.

The student comes from model.student_init with its text encoder frozen; the cache is the rollout's training
policy (train.stages.rollout.training_policy); clips are data.num_frames == rollout.num_frames long, since the
whole clip is the target. A subclass defines `loss(video, prompts)` and may add per-step metrics.
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import torch

from train.data.synthetic_world import SyntheticWorldDataset
from train.stages.base import StageTrainer
from train.stages.common import Batches, accumulate, load_dit, load_text, make_optimizer, optimizer_step, save_model_dir
from train.stages.parallel import full_state_dict, model_state, optimizer_state, shard_trained
from train.stages.rollout import training_policy


class WorldStudentTrainer(StageTrainer):
    """model.student_init: the causal student to start from (its text encoder stays frozen)."""

    def longer_clips(self) -> bool:
        """Whether the stage trains on windows of data clips longer than the rollout (default: the whole clip)."""
        return False

    def build(self) -> None:
        cfg, dev = self.cfg, self.info.device
        if self.longer_clips():
            if cfg.data.num_frames <= cfg.rollout.num_frames:
                raise ValueError(f"data.num_frames ({cfg.data.num_frames}) must exceed rollout.num_frames "
                                 f"({cfg.rollout.num_frames}): the stage trains on later windows of the clip")
        elif cfg.data.num_frames != cfg.rollout.num_frames:
            raise ValueError(f"data.num_frames ({cfg.data.num_frames}) must equal rollout.num_frames "
                             f"({cfg.rollout.num_frames}): the stage trains on the whole clip")
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

    @abc.abstractmethod
    def loss(self, video: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """The stage's loss of one micro-batch of world clips video [B, F, 3, H, W] and their prompts."""

    def step_metrics(self) -> dict[str, float]:
        """Extra metrics of the step just taken (none by default)."""
        return {}

    def train_step(self, step: int) -> dict[str, float]:
        total = accumulate(lambda: self.loss(*self.data.next(self.info.device)), self.cfg.run.grad_accum)
        norm = optimizer_step(self.opt, self.params, self.cfg, self.info)
        return {"loss": total, "grad_norm": norm, **self.step_metrics()}

    def export(self, directory: Path) -> None:
        export_student(self, directory)


def export_student(trainer: StageTrainer, directory: Path) -> None:
    """Write trainer.student (gathered when sharded) with trainer.text as the stage's model directory."""
    weights = full_state_dict(trainer.student)
    if trainer.info.is_main:
        save_model_dir(directory, trainer.cfg, trainer.student, trainer.text, state=weights)
