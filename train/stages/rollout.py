"""Self-Forcing rollout: the causal student generates its own video chunk by chunk, exactly as at inference.

Each chunk is the runtime's own loop, `rfrt.runtime.sample_chunk` (the warped few-step sampler of SPEC 2.1,
then one context pass at t = 0 that writes the chunk's clean K/V), over the student and a
`rfrt.cache.ReferenceCache` (the runtime's sink + window semantics in differentiable plain PyTorch). Training
differs from inference in two options of that loop only:
  * one exit step k, drawn once per iteration on rank 0 and broadcast (shared by every chunk and rank): each
    chunk stops after its (k+1)-th forward and outputs that forward's x0;
  * gradient flows only through that exit forward of each chunk; every other forward, and every context
    pass, runs under no_grad, so the cache never holds a graph (the context pass overwrites the chunk's
    grad-step K/V).
Cache policy: the inference window (sink + the last window_frames - sink_frames frames, window-relative RoPE)
with either a static sink (default; the public trainer, whose 21-frame cache never folds anything into the
sink: chunk 0's clean K/V throughout, SPEC 3) or, with rollout.sink_ema_during_training, the inference EMA
sink. A static sink is exactly the EMA with alpha = 1 (sink <- 1 * sink + 0 * evicted), so both run through the
same cache code as inference.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from rfrt.cache import CacheLayout, CachePolicy, ReferenceCache
from rfrt.models import CausalWanDiT, CrossKV
from rfrt.runtime import ChunkPlan, TorchForward, sample_chunk
from rfrt.runtime.chunk import context_pass
from rfrt.sampling import SamplerConfig
from train.config import RolloutSection
from train.stages.common import DistInfo, broadcast_int


def training_policy(r: RolloutSection) -> CachePolicy:
    """CachePolicy of the training rollout (see module docstring): rollout.cache with sink_ema_during_training,
    else the same window with a static sink (alpha 1: a fold leaves the sink as chunk 0's clean K/V)."""
    return r.cache if r.sink_ema_during_training else dataclasses.replace(r.cache, sink_ema_alpha=1.0)


def cache_forward(model: CausalWanDiT, policy: CachePolicy, batch: int, height: int, width: int,
                  cross: CrossKV) -> TorchForward:
    """The model's chunk forward over a fresh fp32 ReferenceCache of `policy` for `batch` streams of
    height x width latents, its text set to `cross`: what every training-side chunk loop streams through."""
    cfg = model.config
    layout = CacheLayout.for_model(cfg, policy, height // cfg.patch_size[1], width // cfg.patch_size[2], batch=batch)
    forward = TorchForward(model, ReferenceCache(layout, compute_dtype=torch.float32))
    forward.set_text(cross)
    return forward


def draw_exit_step(num_steps: int, info: DistInfo) -> int:
    """Exit step in [0, num_steps): drawn from rank 0's torch RNG and broadcast to every rank."""
    k = int(torch.randint(0, num_steps, (1,)).item()) if info.is_main else 0
    return broadcast_int(k, info)


def draw_window_start(num_starts: int, info: DistInfo) -> int:
    """Start chunk of the scored window in [0, num_starts), shared by ranks; no RNG draw when there is one."""
    return 0 if num_starts == 1 else draw_exit_step(num_starts, info)


def rollout(model: CausalWanDiT, text: CrossKV | torch.Tensor, noise: torch.Tensor, policy: CachePolicy,
            sampler: SamplerConfig, exit_step: int | None = None, grad: bool = False,
            fresh_noise: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like,
            grad_from_chunk: int = 0, context: torch.Tensor | None = None) -> torch.Tensor:
    """Generate a video autoregressively with the student and a fresh ReferenceCache.

    model:     the causal student (its attention backend is the cache).
    text:      CrossKV (or raw text [B, Ltext, text_dim]) of the prompts.
    noise:     [B, F, C, H, W] initial noise; F a multiple of policy.chunk_frames.
    exit_step: index of the denoising step whose x0 each chunk outputs (None: the last one, as at inference).
    grad:      record the graph of the exit forwards (the only forwards with gradient) of chunks
               >= grad_from_chunk (earlier chunks are only context for a scored window: no graph).
    fresh_noise: draws the re-noising noise like its argument (default: the global torch RNG, in chunk order).
    context:   None (inference): each chunk's context pass writes its own x0. A video [B, F, C, H, W]: the
               context pass writes that video's chunk instead (teacher forcing on ground truth).
    Returns x0 [B, F, C, H, W].
    """
    B, n_frames, C, H, W = noise.shape
    chunk = policy.chunk_frames * model.config.patch_size[0]
    if n_frames % chunk:
        raise ValueError(f"rollout of {n_frames} frames is not a multiple of the chunk ({chunk} frames)")
    k_exit = sampler.num_steps - 1 if exit_step is None else exit_step
    if not 0 <= k_exit < sampler.num_steps:
        raise ValueError(f"exit_step {exit_step} outside [0, {sampler.num_steps})")
    plan = ChunkPlan.build(sampler, (B, chunk, C, H, W), policy.chunk_frames, noise.dtype, noise.device)
    if not isinstance(text, CrossKV):
        with torch.set_grad_enabled(grad):
            text = model.cross_kv(text)
    forward = cache_forward(model, policy, B, H, W, text)
    out = []
    for c in range(n_frames // chunk):
        x = noise[:, c * chunk:(c + 1) * chunk]
        # The renoise draws come before the chunk's forwards, as at inference; the forwards draw nothing, so
        # the order of the RNG calls is that of a loop drawing each one just before it is used.
        draws = [x] + [fresh_noise(x) for _ in range(k_exit)]
        x0 = sample_chunk(forward, draws, plan, exit_step=k_exit, grad=grad and c >= grad_from_chunk,
                          context=context is None)
        if context is not None:  # teacher forcing: the cache gets the given video's chunk, not the output
            context_pass(forward, context[:, c * chunk:(c + 1) * chunk].to(x0.dtype), plan)
        out.append(x0)
    return torch.cat(out, dim=1)


def teacher_forced_flow(student: CausalWanDiT, cross: CrossKV, noisy: torch.Tensor, sigmas: torch.Tensor,
                        x0: torch.Tensor, policy: CachePolicy, num_train_timesteps: int) -> torch.Tensor:
    """The student's flow of every chunk through the inference cache, teacher-forced with the clean clip x0.

    noisy [B, F, C, H, W]: each chunk c of the clip at its own noise level sigmas[:, c] ([B, n_chunks]; the
    teacher's ODE states, stage ode with ode_attention "cache", or x0 noised, stage forcing); x0 the clean
    clip. Chunk c's forward sees the cache as the runtime leaves it after the context passes of x0's chunks
    0..c-1 (sink, window, evictions, EMA folds) and runs with gradient when grad is enabled; the context
    passes run without. -> v [B, F, C, H, W] (x0_pred = noisy - sigma v).
    """
    cfg = student.config
    B, n_f, C, H, W = noisy.shape
    chunk = policy.chunk_frames * cfg.patch_size[0]
    plan = ChunkPlan.build(SamplerConfig(num_train_timesteps=num_train_timesteps), (B, chunk, C, H, W),
                           policy.chunk_frames, noisy.dtype, noisy.device)
    forward = cache_forward(student, policy, B, H, W, cross)
    flows = []
    for c in range(n_f // chunk):
        frames = slice(c * chunk, (c + 1) * chunk)
        forward.begin_chunk()
        t = (sigmas[:, c].float() * num_train_timesteps)[:, None].expand(B, policy.chunk_frames).contiguous()
        flows.append(forward(noisy[:, frames], t))
        context_pass(forward, x0[:, frames], plan)
    return torch.cat(flows, dim=1)


class OnPolicyStudent:
    """The student streaming a batch of pairs from their chunk noise through its own cache (stage.ode_context
    "student"): `sample` draws a chunk from its first noise (the renoise draws from `gen`, in the order every
    pair source shares, so the student's chunks do not depend on which teacher scores them), `hold` writes the
    chunk the stream keeps into the student's cache."""

    def __init__(self, student: CausalWanDiT, text: torch.Tensor, policy: CachePolicy, sampler: SamplerConfig,
                 chunk_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, gen: torch.Generator | None):
        B, _, _, H, W = chunk_shape
        self.plan = ChunkPlan.build(sampler, chunk_shape, policy.chunk_frames, dtype, device)
        self.forward = cache_forward(student, policy, B, H, W, student.cross_kv(text))
        self.gen = gen

    def sample(self, first: torch.Tensor) -> torch.Tensor:
        renoise = [torch.randn(first.shape, generator=self.gen).to(first) for _ in range(self.plan.num_steps - 1)]
        draws = [first] + renoise
        return sample_chunk(self.forward, draws, self.plan, context=False)

    def hold(self, seen: torch.Tensor) -> None:
        context_pass(self.forward, seen, self.plan)
