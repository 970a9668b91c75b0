"""Stage 1: the bidirectional teacher, trained by flow matching on synthetic-world videos.

The VocabTextEncoder is trained alongside (the student later reuses it frozen). With probability
stage.text_dropout a sample is trained on the empty prompt, whose embedding is all zeros: that is the
unconditional branch classifier-free guidance needs at sampling and in DMD's real score.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rfrt.models import FullAttention
from rfrt.sampling import shift_sigma
from rfrt.text_vocab import VocabTextEncoder

from train.data.synthetic_world import SyntheticWorldDataset, vocabulary
from train.losses import add_noise, flow_matching_loss
from train.stages.base import StageTrainer
from train.stages.common import (Batches, accumulate, autocast, checkpointed, dit_config, init_dit, load_dit,
                                 load_text, make_optimizer, optimizer_step, save_model_dir)
from train.stages.parallel import full_state_dict, is_sharded, model_state, optimizer_state, shard_trained


def drop_prompts(prompts: list[str], p: float) -> list[str]:
    """Replace each prompt by "" with probability p (drawn from the global torch RNG: resumable)."""
    keep = torch.rand(len(prompts)) >= p
    return [q if k else "" for q, k in zip(prompts, keep.tolist())]


class TeacherTrainer(StageTrainer):
    """Flow matching: x_t = (1 - s) x + s eps, loss mean((v(x_t, t) - (eps - x))^2), s = shift(u), u ~ U(0, 1)."""

    def build(self) -> None:
        cfg, a = self.cfg, self.cfg.arch
        if cfg.model.teacher_init is not None:  # fine-tune: weights (and architecture) from a model directory
            self.dit = load_dit(cfg.model.teacher_init, "model.teacher_init").to(self.info.device).train()
            self.text = load_text(cfg.model.teacher_init, "model.teacher_init").to(self.info.device).train()
            if tuple(self.text.vocab) != vocabulary():
                raise ValueError(f"model.teacher_init={cfg.model.teacher_init}: its text encoder's vocabulary "
                                 "is not the synthetic world's")
        else:
            dit_cfg = dit_config(a, frame_size=(cfg.data.height, cfg.data.width))
            self.dit = init_dit(dit_cfg, cfg.run.seed).to(self.info.device).train()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.run.seed + 1)
                self.text = VocabTextEncoder(vocabulary(), a.text_dim, a.max_words, a.text_layers).to(
                    self.info.device)
        for m in (self.dit, self.text):
            shard_trained(m, cfg, self.info.world_size, self.info.device)
        self.params = list(self.dit.parameters()) + list(self.text.parameters())
        self.opt = make_optimizer(self.params, cfg.optim.lr, cfg)
        self.trained = torch.nn.ModuleDict({"dit": self.dit, "text": self.text})  # names the optimiser's params
        ds = SyntheticWorldDataset.from_config(cfg.data, self.info.rank, self.info.world_size)
        self.data = Batches(ds, cfg.run.batch_size)
        self.backend = FullAttention()

    def state(self) -> dict[str, Any]:
        return {"dit": model_state(self.dit), "text": model_state(self.text),
                "optim": optimizer_state(self.trained, self.opt), "data": self.data}

    def loss(self, video: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Flow-matching loss of one micro-batch; video [B, T, 3, H, W] in [-1, 1]."""
        B, T = video.shape[:2]
        sigma = shift_sigma(torch.rand(B, device=video.device), self.cfg.stage.teacher_shift)
        eps = torch.randn_like(video)
        x_t = add_noise(video, eps, sigma)
        t = (sigma * self.cfg.sampler.num_train_timesteps)[:, None].expand(B, T // self.dit.config.patch_size[0])
        text = self.text.encode(drop_prompts(prompts, self.cfg.stage.text_dropout))
        with autocast(self.cfg, self.info):
            v = checkpointed(lambda x, tt, c: self.dit(x, tt, c, self.backend), self.cfg.run.grad_checkpointing,
                             x_t, t.contiguous(), text)
        return flow_matching_loss(v, video, eps)

    def train_step(self, step: int) -> dict[str, float]:
        total = accumulate(lambda: self.loss(*self.data.next(self.info.device)), self.cfg.run.grad_accum)
        norm = optimizer_step(self.opt, self.params, self.cfg, self.info)
        return {"loss": total, "grad_norm": norm}

    def export(self, directory: Path) -> None:
        dit = full_state_dict(self.dit)
        text = full_state_dict(self.text) if is_sharded(self.text) else None  # else: the encoder saves itself
        if self.info.is_main:
            save_model_dir(directory, self.cfg, self.dit, self.text, state=dit, text_state=text)
