"""Stage "regress": the Self-Forcing rollout regressed on the world's own video (a prompt-determined world).

On a world where the prompt determines the whole stream (data.phase "fixed", data.speed_min == speed_max) the
conditional mean is the video itself, so a regression loss is exact supervision with no teacher: the causal
student rolls out its own video exactly as at inference (train.stages.rollout: cache, sink policy, evictions
from chunk 3 of a 21-frame rollout; one exit step per iteration, gradient only through the exit forwards) and
  loss = mean over chunks, pixels of (x0_exit - video)^2
with video the world's rendered stream of the same length. stage.regress_context picks what the context passes
write into the cache: "video" (default, teacher forcing: the world's chunks, so every target is consistent with
the context it is asked to continue) or "own" (the student's x0, as at inference). Measured on the default
model: with "own" the object faded out within 25 steps (the student's chunk 0 sits a little off the world's
phase, so the targets of later chunks disagree with their context and the loss is cut by drawing less object).
Unlike the ODE init (regression on teacher samples with block-causal attention over 9 frames) it trains past the
window: evictions and the sink fold happen as at inference.
On a world with chance left in it the same loss would regress to the mean (smeared objects): use DMD there.
"""
from __future__ import annotations

import torch

from train.stages.common import autocast
from train.stages.rollout import draw_exit_step, rollout
from train.stages.world_student import WorldStudentTrainer


class RegressTrainer(WorldStudentTrainer):
    """model.student_init: the causal student to start from (its text encoder stays frozen)."""

    def build(self) -> None:
        cfg = self.cfg
        if cfg.data.speed_min != cfg.data.speed_max or cfg.data.phase != "fixed":
            raise ValueError("stage.kind regress needs a prompt-determined world: data.phase 'fixed' and "
                             f"data.speed_min == data.speed_max (got {cfg.data.phase!r}, "
                             f"{cfg.data.speed_min}, {cfg.data.speed_max})")
        super().build()
        self.exit_steps: list[int] = []

    def loss(self, video: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """video [B, F, 3, H, W] in [-1, 1]: the rollout's exit x0 regressed on it."""
        k = draw_exit_step(self.sampler.num_steps, self.info)
        self.exit_steps.append(k)
        noise = torch.randn_like(video)
        with autocast(self.cfg, self.info):
            x = rollout(self.student, self.text.encode(prompts), noise, self.policy, self.sampler, k, grad=True,
                        context=video if self.cfg.stage.regress_context == "video" else None)
        return ((x.float() - video) ** 2).mean()

    def step_metrics(self) -> dict[str, float]:
        return {"exit_step": float(self.exit_steps[-1])}
