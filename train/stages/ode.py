"""Stage 2: ODE pairs from the teacher, and ODE-regression init of the causal student.

Pairs: from Gaussian noise the teacher (CFG with stage.ode_guidance_scale) integrates the flow ODE
dx/dsigma = v with deterministic Euler steps on a fine grid of the sampler's sigma table that passes through
every warped denoising sigma (stage.ode_teacher "bidirectional", stage teacher: the whole clip at once;
"causal", stage forcing: chunk by chunk through the inference cache on its own earlier chunks). The states at
those sigmas and the final x0 are stored (`ode_pairs` trajectories, generated once on rank 0 and saved
atomically; an existing file is reused).

Regression: the student starts from the teacher's weights, predicts x0 = x_k - sigma_k * v from the stored state
at a denoising step k and regresses the teacher's final x0: loss mean((x0_pred - x0_teacher)^2), the target's
object pixels weighted 1 + stage.ode_object_weight (`train.stages.regress.weighted_mse`; 0: the plain MSE).
How it sees earlier chunks is stage.ode_attention:
  * "block_causal": BlockCausalAttention(chunk_frames) over the whole clip in one forward; each chunk of each
    sample picks its own k, so a chunk sees cleaner or noisier earlier chunks, as in causal rollouts.
  * "cache": the inference loop's cache (rfrt.cache.ReferenceCache with rollout.cache and the rollout's
    training sink), chunk by chunk: the chunk's forward at its k (one k per chunk and sample), then
    the runtime's context pass with the teacher's clean chunk (teacher forcing). Past the window chunks are
    evicted and folded into the sink exactly as at inference, and every frame sits at its window-relative
    position, so a clip longer than the window trains the student the way it streams.
stage.ode_continue_weight > 0 adds stage regress's continuation loss (train/stages/regress.py) on a batch of the
random-phase world per step: the world's video past regress_context_frames of teacher-forced context, which
that context determines, so the student learns to continue any window of a stream (issue 16).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from rfrt.cache import CachePolicy
from rfrt.models import BlockCausalAttention, CausalWanDiT, FullAttention
from rfrt.runtime import ChunkPlan
from rfrt.runtime.chunk import context_pass
from rfrt.sampling import SamplerConfig, flow_to_x0, sigma_table, warped_sigmas

from train.checkpoint import atomic_torch_save
from train.data.synthetic_world import SyntheticWorldDataset, deciding_frames, world_of
from train.losses import cfg_combine
from train.stages.base import StageTrainer
from train.stages.common import (Batches, accumulate, autocast, barrier, checkpointed, frozen, load_dit, load_text,
                                 make_optimizer, optimizer_step)
from train.stages.parallel import model_state, optimizer_state, shard_trained
from train.stages.regress import check_context_frames, rollout_regression, weighted_mse
from train.stages.rollout import (OnPolicyStudent, cache_forward, draw_exit_step, teacher_forced_flow,
                                  training_policy)
from train.stages.world_ode import world_teacher_ode
from train.stages.world_student import export_student


def ode_grid(sampler: SamplerConfig, substeps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(grid sigmas [G+1] from 1 down to 0, indices [K] of the warped sigmas inside it)."""
    _, table = sigma_table(sampler)
    warped = warped_sigmas(sampler)
    fine = table[torch.linspace(0, len(table) - 1, substeps).round().long()]
    grid = torch.unique(torch.cat([fine, warped, torch.zeros(1)])).flip(0)
    where = torch.stack([(grid == s).nonzero()[0, 0] for s in warped])
    return grid, where


@torch.no_grad()
def teacher_ode(teacher: CausalWanDiT, text: torch.Tensor, uncond: torch.Tensor, noise: torch.Tensor,
                sampler: SamplerConfig, substeps: int, guidance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Euler ODE of the teacher from noise [B, F, C, H, W] (sigma 1) to x0 (sigma 0).

    text / uncond: [B, Ltext, text_dim]. Returns (states [B, K, F, C, H, W] at the K warped sigmas, x0).
    """
    grid, where = ode_grid(sampler, substeps)
    backend = FullAttention()
    B, n_f = noise.shape[:2]
    frames = n_f // teacher.config.patch_size[0]
    ctx, unctx = teacher.cross_kv(text), teacher.cross_kv(uncond)
    x, states = noise, []
    for j in range(len(grid) - 1):
        if j in where.tolist():
            states.append(x)
        t = torch.full((B, frames), float(grid[j]) * sampler.num_train_timesteps, device=noise.device)
        v = cfg_combine(teacher(x, t, ctx, backend), teacher(x, t, unctx, backend), guidance)
        x = x + (grid[j + 1] - grid[j]) * v
    return torch.stack(states, dim=1), x


@torch.no_grad()
def causal_teacher_ode(teacher: CausalWanDiT, text: torch.Tensor, uncond: torch.Tensor, noise: torch.Tensor,
                       policy: CachePolicy, sampler: SamplerConfig, substeps: int, guidance: float,
                       student: CausalWanDiT | None = None, gen: torch.Generator | None = None,
                       prime: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`teacher_ode` for a causal teacher (stage forcing): chunk by chunk through the inference cache, each
    chunk's Euler ODE from its noise to x0 on the clean context of the earlier chunks (their context passes).
    CFG runs the conditional and unconditional halves as one batch of 2B (each half its own cache rows).

    The earlier chunks are the teacher's own (as it would stream), or with `student` the student's: it samples
    each chunk from the same noise with `sampler`'s few steps (renoise draws from `gen`) through its own cache, and
    its chunk, not the teacher's, is what both caches then hold (on-policy pairs, stage.ode_context "student").
    `prime` [B, P, C, H, W] (P a multiple of the chunk): the first P frames' context is that video instead (the
    world's own frames, a primed stream: stage.ode_prime_fraction); every chunk still gets its pair.
    Returns (states [B, K, F, C, H, W] at the K warped sigmas, the teacher's x0, the context video: the chunks
    the cache held: x0 itself without a student or a prime).
    """
    grid, where = ode_grid(sampler, substeps)
    cfg = teacher.config
    B, n_f, C, H, W = noise.shape
    chunk = policy.chunk_frames * cfg.patch_size[0]
    plan = ChunkPlan.build(sampler, (2 * B, chunk, C, H, W), policy.chunk_frames, noise.dtype, noise.device)
    forward = cache_forward(teacher, policy, 2 * B, H, W, teacher.cross_kv(torch.cat([text, uncond])))
    if student is not None:
        on_policy = OnPolicyStudent(student, text, policy, sampler, (B, chunk, C, H, W), noise.dtype, noise.device,
                                    gen)
    record = set(where.tolist())
    states, out, context = [], [], []
    for c in range(n_f // chunk):
        forward.begin_chunk()
        x, chunk_states = noise[:, c * chunk:(c + 1) * chunk], []
        for j in range(len(grid) - 1):
            if j in record:
                chunk_states.append(x)
            t = torch.full((2 * B, policy.chunk_frames), float(grid[j]) * sampler.num_train_timesteps,
                           device=noise.device)
            v = forward(torch.cat([x, x]), t)
            x = x + (grid[j + 1] - grid[j]) * cfg_combine(v[:B], v[B:], guidance)
        seen = x
        if student is not None:  # sampled even where primed, so its noise draws do not depend on the prime
            seen = on_policy.sample(noise[:, c * chunk:(c + 1) * chunk])
        if prime is not None and c < prime.shape[1] // chunk:
            seen = prime[:, c * chunk:(c + 1) * chunk].to(x)
        if student is not None:
            on_policy.hold(seen)
        context_pass(forward, torch.cat([seen, seen]), plan)
        states.append(torch.stack(chunk_states, dim=1))
        out.append(x)
        context.append(seen)
    return torch.cat(states, dim=2), torch.cat(out, dim=1), torch.cat(context, dim=1)


class ODETrainer(StageTrainer):
    """ODE-regression init of the causal student (model.teacher: the teacher's model directory)."""

    def build(self) -> None:
        cfg, dev = self.cfg, self.info.device
        self.teacher_dir = cfg.model.teacher
        init = cfg.model.student_init or self.teacher_dir
        by_world = cfg.stage.ode_teacher == "world"  # no teacher model: the world's exact ODE (world_ode.py)
        teacher = None if by_world else frozen(load_dit(self.teacher_dir, "model.teacher")).to(dev)
        self.text = frozen(load_text(init, "model.student_init") if by_world else
                           load_text(self.teacher_dir, "model.teacher"))
        self.sampler = cfg.sampler
        self.student = load_dit(init, "model.student_init").to(dev).train()
        c = self.student.config
        if by_world and (c.in_dim != 3 or c.patch_size[0] != 1):
            raise ValueError(f"stage.ode_teacher \"world\" draws the world's RGB frames as latents: the student "
                             f"needs in_dim 3 and a temporal patch of 1 (a pixel decoder), got {c.in_dim} / "
                             f"{c.patch_size[0]}")
        self.pairs = self._pairs(teacher)
        shard_trained(self.student, cfg, self.info.world_size, dev)
        self.params = list(self.student.parameters())
        self.opt = make_optimizer(self.params, cfg.optim.lr, cfg)
        self.backend = BlockCausalAttention(cfg.rollout.cache.chunk_frames)
        self.continuation = None
        if cfg.stage.ode_continue_weight > 0:
            world = world_of(cfg.data, phase="random", num_frames=cfg.rollout.num_frames, seed=cfg.data.seed + 104729)
            self.chunk = check_context_frames(cfg, self.student, deciding_frames(world))
            self.continuation = Batches(SyntheticWorldDataset(world, self.info.rank, self.info.world_size),
                                        cfg.run.batch_size)

    def _pairs(self, teacher: CausalWanDiT | None) -> dict[str, Any]:
        st = self.cfg.stage
        path = Path(st.ode_pairs_path or self.out_dir / "ode_pairs.pt")
        if self.info.is_main and not path.is_file():
            d = self.cfg.data
            world = world_of(d, num_frames=self.cfg.rollout.num_frames, seed=d.seed + 7919)
            # the same scenes (a scene's start frame is its last draw), shown from a later stream frame
            later = world_of(d, num_frames=self.cfg.rollout.num_frames, seed=d.seed + 7919,
                             max_start_frame=st.ode_prime_max_start)
            chunk = self.cfg.rollout.cache.chunk_frames * self.student.config.patch_size[0]
            prompts = [world[i][1] for i in range(st.ode_pairs)]
            gen = torch.Generator().manual_seed(self.cfg.run.seed + 17)
            policy = training_policy(self.cfg.rollout)
            student = self.student.eval() if st.ode_context == "student" else None
            states, x0s, contexts = [], [], []
            for i in range(0, st.ode_pairs, 16):
                batch = prompts[i:i + 16]
                noise = torch.randn(len(batch), self.cfg.rollout.num_frames, 3, d.height, d.width, generator=gen)
                text, uncond = self.text.encode(batch), self.text.encode([""] * len(batch))
                prime = None
                if st.ode_prime_fraction > 0 and torch.rand(1, generator=gen).item() < st.ode_prime_fraction:
                    n = int(torch.randint(1, st.ode_prime_chunks + 1, (1,), generator=gen)) * chunk
                    prime = torch.stack([later[j][0][:n] for j in range(i, i + len(batch))])
                if st.ode_teacher == "world":
                    scenes = [world.scene(j) for j in range(i, i + len(batch))]
                    speeds = np.linspace(d.speed_min, d.speed_max, st.ode_world_speeds)
                    s, x0, ctx = world_teacher_ode(
                        scenes, noise, policy, *ode_grid(self.sampler, st.ode_substeps), speeds,
                        st.ode_world_shift_px, st.ode_world_context_sigma,
                        None if student is None else OnPolicyStudent(student, text, policy, self.sampler,
                                                                     (len(batch), chunk, 3, d.height, d.width),
                                                                     noise.dtype, noise.device, gen))
                elif st.ode_teacher == "causal":
                    s, x0, ctx = causal_teacher_ode(teacher, text, uncond, noise, policy, self.sampler,
                                                    st.ode_substeps, st.ode_guidance_scale, student, gen, prime)
                else:
                    s, x0 = teacher_ode(teacher, text, uncond, noise, self.sampler, st.ode_substeps,
                                        st.ode_guidance_scale)
                    ctx = x0
                states.append(s.cpu())
                x0s.append(x0.cpu())
                contexts.append(ctx.cpu())
            self.student.train()
            pairs = {"prompts": prompts, "states": torch.cat(states), "x0": torch.cat(x0s)}
            if student is not None or st.ode_prime_fraction > 0:  # else it is x0 itself: not stored twice
                pairs["context"] = torch.cat(contexts)
            atomic_torch_save(pairs, path)
        barrier(self.info)
        pairs = torch.load(path, weights_only=True)
        pairs["text"] = self.text.encode(pairs["prompts"]).detach()
        return pairs

    def state(self) -> dict[str, Any]:
        state = {"student": model_state(self.student), "optim": optimizer_state(self.student, self.opt)}
        if self.continuation is not None:
            state["data"] = self.continuation
        return state

    def loss(self, idx: torch.Tensor) -> torch.Tensor:
        """Regression loss of the pairs `idx` [B]."""
        if self.cfg.stage.ode_attention == "cache":
            return self.cache_loss(idx)
        dev, chunk = self.info.device, self.cfg.rollout.cache.chunk_frames
        states, x0 = self.pairs["states"][idx].to(dev), self.pairs["x0"][idx].to(dev)
        B, K, n_f = states.shape[:3]
        k = torch.randint(0, K, (B, n_f // chunk)).repeat_interleave(chunk, dim=1)  # one step per chunk
        x = states[torch.arange(B)[:, None], k, torch.arange(n_f)[None]]  # [B, F, C, H, W]
        sig = warped_sigmas(self.sampler)[k].to(dev)
        t = sig * self.sampler.num_train_timesteps
        with autocast(self.cfg, self.info):
            v = checkpointed(lambda a, b, c: self.student(a, b, c, self.backend), self.cfg.run.grad_checkpointing,
                             x, t, self.pairs["text"][idx].to(dev))
        pred = flow_to_x0(x, v.float(), sig[..., None, None, None])
        return weighted_mse(pred, x0, self.cfg.stage.ode_object_weight)

    def cache_loss(self, idx: torch.Tensor) -> torch.Tensor:
        """ode_attention "cache": the regression chunk by chunk through the inference cache (module docstring)."""
        dev, chunk = self.info.device, self.cfg.rollout.cache.chunk_frames * self.student.config.patch_size[0]
        states, x0 = self.pairs["states"][idx].to(dev), self.pairs["x0"][idx].to(dev)
        seen = self.pairs["context"][idx].to(dev) if "context" in self.pairs else x0  # what the cache holds
        B, K, n_f = states.shape[:3]
        k = torch.randint(0, K, (B, n_f // chunk))  # one step per chunk and sample
        frames_k = k.repeat_interleave(chunk, dim=1)
        x = states[torch.arange(B)[:, None], frames_k, torch.arange(n_f)[None]]
        sig = warped_sigmas(self.sampler).to(dev)
        with autocast(self.cfg, self.info):
            v = teacher_forced_flow(self.student, self.student.cross_kv(self.pairs["text"][idx].to(dev)), x,
                                    sig[k], seen, training_policy(self.cfg.rollout), self.sampler.num_train_timesteps)
        pred = flow_to_x0(x, v.float(), sig[frames_k][..., None, None, None])
        return weighted_mse(pred, x0, self.cfg.stage.ode_object_weight)

    def train_step(self, step: int) -> dict[str, float]:
        n = self.pairs["x0"].shape[0]
        batch = self.cfg.run.batch_size
        parts: dict[str, float] = {}

        def micro() -> torch.Tensor:
            loss = self.loss(torch.randint(0, n, (batch,)))
            parts["pairs_loss"] = loss.item()
            if self.continuation is not None:
                cont = self.continuation_loss(*self.continuation.next(self.info.device))
                parts["continue_loss"] = cont.item()
                loss = loss + self.cfg.stage.ode_continue_weight * cont
            return loss

        total = accumulate(micro, self.cfg.run.grad_accum)
        norm = optimizer_step(self.opt, self.params, self.cfg, self.info)
        return {"loss": total, "grad_norm": norm, **(parts if self.continuation is not None else {})}

    def continuation_loss(self, video: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """stage.ode_continue_weight's term: stage regress's loss past the context frames of a world batch."""
        k = draw_exit_step(self.sampler.num_steps, self.info)
        with autocast(self.cfg, self.info):
            return rollout_regression(self.student, self.text.encode(prompts), video, training_policy(self.cfg.rollout),
                                      self.sampler, k, self.cfg.stage.regress_context_frames // self.chunk)

    def export(self, directory: Path) -> None:
        export_student(self, directory)
