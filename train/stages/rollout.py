"""Self-Forcing rollout: the causal student generates its own video chunk by chunk, exactly as at inference.

Each chunk runs the warped few-step sampler (SPEC 2.1) against a `rfrt.cache.ReferenceCache` (the runtime's
sink + window semantics in differentiable plain PyTorch), then one context pass at t = 0 writes the chunk's
clean K/V. Training differs from inference in two ways only:
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

from typing import Callable

import torch

from rfrt.cache import CachePolicy, ReferenceCache
from rfrt.models import CausalWanDiT, CrossKV
from rfrt.sampling import SamplerConfig, flow_to_x0, renoise, timestep_tensor, warped_sigmas, warped_timesteps
from train.config import RolloutSection
from train.stages.common import DistInfo, broadcast_int


def training_policy(r: RolloutSection, tokens_per_frame: int) -> CachePolicy:
    """CachePolicy of the training rollout (see module docstring)."""
    alpha = r.sink_ema_alpha if r.sink_ema_during_training else 1.0
    return CachePolicy(sink_frames=r.sink_frames, window_frames=r.window_frames, chunk_frames=r.chunk_frames,
                       tokens_per_frame=tokens_per_frame, sink_ema_alpha=alpha)


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
    cfg = model.config
    pt, ph, pw = cfg.patch_size
    B, n_frames, _, H, W = noise.shape
    chunk = policy.chunk_frames * pt
    if n_frames % chunk:
        raise ValueError(f"rollout of {n_frames} frames is not a multiple of the chunk ({chunk} frames)")
    steps, sigmas = warped_timesteps(sampler), warped_sigmas(sampler)
    k_exit = sampler.num_steps - 1 if exit_step is None else exit_step
    if not 0 <= k_exit < sampler.num_steps:
        raise ValueError(f"exit_step {exit_step} outside [0, {sampler.num_steps})")
    cache = ReferenceCache(policy, layers=cfg.num_layers, head_dim=cfg.head_dim, grid_h=H // ph, grid_w=W // pw,
                           compute_dtype=torch.float32)
    if not isinstance(text, CrossKV):
        with torch.set_grad_enabled(grad):
            text = model.cross_kv(text)
    out = []
    for c in range(n_frames // chunk):
        cache.begin_chunk()
        x = noise[:, c * chunk:(c + 1) * chunk]
        offset = c * policy.chunk_frames
        for i in range(k_exit + 1):
            with torch.set_grad_enabled(grad and i == k_exit and c >= grad_from_chunk):
                t = timestep_tensor(steps[i], B, policy.chunk_frames, noise.device)
                x0 = flow_to_x0(x, model(x, t, text, cache, frame_offset=offset), sigmas[i])
            if i < k_exit:
                x = renoise(x0, fresh_noise(x0), sigmas[i + 1])
        out.append(x0)
        clean = x0.detach() if context is None else context[:, c * chunk:(c + 1) * chunk].to(x0.dtype)
        with torch.no_grad():  # context pass: the chunk's clean K/V for the chunks after it
            model(clean, torch.zeros(B, policy.chunk_frames, device=noise.device), text, cache,
                  frame_offset=offset)
    return torch.cat(out, dim=1)
