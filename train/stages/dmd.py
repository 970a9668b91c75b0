"""Stages 3-6: Self-Forcing rollouts + DMD with a critic, Re-DMD reward weighting, generator weight EMA.

Every step updates the critic ("fake score") by flow matching on a no-grad student rollout; every
dmd.critic_updates_per_generator-th step (step % N == 0, as the public trainer) also updates the generator:
  x = rollout(student, exit step k shared by chunks and ranks)      gradient only through the exit forwards
  t ~ shifted U, clamped [min_t, max_t];  x_t = (1 - s) x + s eps
  x0_fake = critic(x_t),  x0_real = CFG(teacher(x_t | text), teacher(x_t | ""), guidance_scale)
  g = (x0_fake - x0_real) / mean|x - x0_real|;   L_i = 0.5 mean((x_i - sg(x_i - g_i))^2)
  Re-DMD: loss = mean_i exp(beta r_i) L_i with r the z-scored reward of the generated video (no gradient)
Re-DMD is exactly `train.losses.redmd_loss` on top of the per-sample DMD loss; reward.kind "none" is DMD.
dmd.score "causal" (a causal teacher, stage forcing): teacher and critic see each noised chunk of x_t on the
clean rollout's earlier chunks through the inference cache (`teacher_forced_flow`), so the DMD gradient matches
each chunk's distribution given the student's own past, and the critic learns exactly that conditional.

Rollouts longer than the teacher's clip (rollout.score_frames): the rollout spans up to rollout.num_frames (21:
chunks 3.. evict into the sink), but teacher, critic and reward score one window of score_frames (9, the
teacher's training clip) whose start chunk is drawn uniformly per iteration; the rollout stops at the window's
end and only the window's exit forwards carry gradient. This is sound because the world is stationary: every
9-frame window of a long stream is a sample of the distribution the teacher learned (its training clips start
at random stream frames, data.max_start_frame).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rfrt.models import CausalWanDiT, FullAttention
from rfrt.sampling import flow_to_x0
from train.checkpoint import WeightEMA
from train.data.synthetic_world import SyntheticWorldDataset
from train.losses import (add_noise, cfg_combine, dmd_gradient, dmd_loss, flow_matching_loss, redmd_loss,
                          sample_dmd_timesteps)
from train.rewards import build_reward, to_unit_range
from train.stages.base import StageTrainer
from train.stages.common import (Batches, autocast, checkpointed, frozen, load_dit, load_text, make_optimizer,
                                 optimizer_step, save_model_dir)
from train.stages.parallel import full_state_dict, model_state, optimizer_state, shard_trained
from train.stages.rollout import draw_exit_step, draw_window_start, rollout, teacher_forced_flow, training_policy


def generator_loss(x: torch.Tensor, x0_fake: torch.Tensor, x0_real: torch.Tensor,
                   reward_z: torch.Tensor | None, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch loss, per-sample DMD loss [B]) of the student's output x [B, F, C, H, W] (the Re-DMD hook)."""
    per_sample = dmd_loss(x, dmd_gradient(x, x0_fake, x0_real))
    return redmd_loss(per_sample, reward_z, beta), per_sample


class DMDTrainer(StageTrainer):
    """model.student_init: ODE-init model dir; model.teacher: teacher dir; model.critic_init (default teacher)."""

    def build(self) -> None:
        cfg, dev = self.cfg, self.info.device
        self.student = load_dit(cfg.model.student_init, "model.student_init").to(dev).train()
        self.teacher = frozen(load_dit(cfg.model.teacher, "model.teacher")).to(dev)
        self.critic = load_dit(cfg.model.critic_init or cfg.model.teacher, "model.critic_init").to(dev).train()
        self.text = frozen(load_text(cfg.model.student_init, "model.student_init")).to(dev)
        mc = self.student.config
        if cfg.data.height % mc.patch_size[1] or cfg.data.width % mc.patch_size[2]:
            raise ValueError(f"data {cfg.data.height}x{cfg.data.width} not divisible by patch {mc.patch_size}")
        for m in (self.student, self.critic):
            shard_trained(m, cfg, self.info.world_size, dev)
        self.policy = training_policy(cfg.rollout)
        self.sampler = cfg.sampler
        self.gen_params = list(self.student.parameters())
        self.critic_params = list(self.critic.parameters())
        self.gen_opt = make_optimizer(self.gen_params, cfg.optim.lr, cfg)
        self.critic_opt = make_optimizer(self.critic_params, cfg.optim.critic_lr, cfg)
        self.ema = WeightEMA(self.student, cfg.ema.weight_ema_decay, cfg.ema.start_step)
        self.reward = build_reward(cfg.reward, device=dev)
        self.prompts = Batches(SyntheticWorldDataset.from_config(cfg.data, self.info.rank, self.info.world_size),
                               cfg.run.batch_size)
        self.backend = FullAttention()
        if cfg.dmd.score == "causal" and cfg.rollout.score_frames not in (0, cfg.rollout.num_frames):
            raise ValueError("dmd.score causal scores every chunk on its clean past: it needs rollout.score_frames "
                             f"0 (the whole rollout), got {cfg.rollout.score_frames}")
        self.exit_steps: list[int] = []  # per step, for inspection (tests check ranks agree)
        self.window_starts: list[int] = []  # start chunk of each scored window (rollout.score_frames)

    def state(self) -> dict[str, Any]:
        return {"student": model_state(self.student), "critic": model_state(self.critic),
                "gen_optim": optimizer_state(self.student, self.gen_opt),
                "critic_optim": optimizer_state(self.critic, self.critic_opt), "ema": self.ema, "data": self.prompts}

    def _rollout(self, prompts: list[str], grad: bool) -> torch.Tensor:
        """The student's rollout, or its scored window (rollout.score_frames): [B, F_scored, C, H, W]."""
        cfg, dev, r = self.cfg, self.info.device, self.cfg.rollout
        k = draw_exit_step(self.sampler.num_steps, self.info)
        self.exit_steps.append(k)
        cf = r.cache.chunk_frames
        n_chunks, win = r.num_frames // cf, (r.score_frames or r.num_frames) // cf
        w = draw_window_start(n_chunks - win + 1, self.info)
        self.window_starts.append(w)
        noise = torch.randn(len(prompts), (w + win) * cf, self.student.config.in_dim, cfg.data.height,
                            cfg.data.width, device=dev)
        with autocast(cfg, self.info):
            x = rollout(self.student, self.text.encode(prompts), noise, self.policy, self.sampler, k, grad,
                        grad_from_chunk=w)
        return x[:, w * cf:].float()

    def _flow(self, model: CausalWanDiT, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
              clean: torch.Tensor) -> torch.Tensor:
        """model's flow of x_t (noised at t [B]) under dmd.score; clean: the rollout x_t was noised from."""
        T = self.sampler.num_train_timesteps
        with autocast(self.cfg, self.info):
            if self.cfg.dmd.score == "causal":
                chunks = x_t.shape[1] // (self.policy.chunk_frames * model.config.patch_size[0])
                return teacher_forced_flow(model, model.cross_kv(text), x_t, (t / T)[:, None].expand(-1, chunks),
                                           clean.detach(), self.policy, T).float()
            tt = t[:, None].expand(-1, x_t.shape[1] // model.config.patch_size[0]).contiguous()
            return checkpointed(lambda a, b, c: model(a, b, c, self.backend), self.cfg.run.grad_checkpointing,
                                x_t, tt, text).float()

    def _x0(self, model: CausalWanDiT, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
            clean: torch.Tensor) -> torch.Tensor:
        return flow_to_x0(x_t, self._flow(model, x_t, t, text, clean), t / self.sampler.num_train_timesteps)

    def _noised(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d, s = self.cfg.dmd, self.sampler
        t = sample_dmd_timesteps(x.shape[0], min_t=d.min_t, max_t=d.max_t, shift=s.shift,
                                 num_train_timesteps=s.num_train_timesteps, device=x.device)
        eps = torch.randn_like(x)
        return add_noise(x, eps, t / s.num_train_timesteps), t, eps

    def critic_micro(self, prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            x = self._rollout(prompts, grad=False)
        x_t, t, eps = self._noised(x)
        return flow_matching_loss(self._flow(self.critic, x_t, t, self.text.encode(prompts), x), x, eps)

    def generator_micro(self, prompts: list[str]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        x = self._rollout(prompts, grad=True)
        with torch.no_grad():
            x_t, t, _ = self._noised(x.detach())
            text, uncond = self.text.encode(prompts), self.text.encode([""] * len(prompts))
            fake = self._x0(self.critic, x_t, t, text, x)
            real = cfg_combine(self._x0(self.teacher, x_t, t, text, x), self._x0(self.teacher, x_t, t, uncond, x),
                               cfg.dmd.guidance_scale)
            r = None if self.reward is None else self.reward(to_unit_range(x.detach()), prompts).to(x.device)
        loss, per_sample = generator_loss(x, fake, real, r, cfg.reward.beta)
        extra = {"dmd_loss": per_sample.mean().item()}
        if r is not None:
            extra["reward_z"] = r.mean().item()
        return loss, extra

    def train_step(self, step: int) -> dict[str, float]:
        cfg, accum = self.cfg, self.cfg.run.grad_accum
        metrics: dict[str, float] = {}
        if step % cfg.dmd.critic_updates_per_generator == 0:
            total, extras = 0.0, {}
            for _ in range(accum):
                _, prompts = self.prompts.next("cpu")
                loss, extra = self.generator_micro(prompts)
                (loss / accum).backward()
                total += loss.item() / accum
                extras = {k: extras.get(k, 0.0) + v / accum for k, v in extra.items()}
            metrics["gen_grad_norm"] = optimizer_step(self.gen_opt, self.gen_params, cfg, self.info)
            self.ema.update(self.student, step)
            metrics.update(gen_loss=total, **extras)
        total = 0.0
        for _ in range(accum):
            _, prompts = self.prompts.next("cpu")
            loss = self.critic_micro(prompts)
            (loss / accum).backward()
            total += loss.item() / accum
        metrics["critic_grad_norm"] = optimizer_step(self.critic_opt, self.critic_params, cfg, self.info)
        metrics["critic_loss"] = total
        metrics["exit_step"] = float(self.exit_steps[-1])
        return metrics

    def export(self, directory: Path) -> None:
        weights = {**full_state_dict(self.student), **self.ema.full_shadow()}  # the EMA replaces the parameters
        if self.info.is_main:
            save_model_dir(directory, self.cfg, self.student, self.text, state=weights)
