"""sample_chunk: the SPEC §2.1 chunk loop, written once.

Inference (StreamGenerator, eager or inside a captured CUDA graph) and the training rollout run this function;
only the forward it drives and two options differ. "Train as you infer" is therefore a property of the code:
the rollout is this loop with an exit step and a gradient switch, not a copy of it.

The body is device work only (no `.item()`, no Python value read from a tensor), so a CUDA graph can record it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rfrt.runtime.forward import ChunkForward
from rfrt.runtime.plan import ChunkPlan
from rfrt.sampling import flow_to_x0, renoise

__all__ = ["Chunk", "sample_chunk", "context_pass", "context_chunk"]


@dataclass(frozen=True, eq=False)
class Chunk:
    """One generated chunk.

    index:   chunk number in the stream (0, 1, ...).
    frames:  uint8 [T, H, W, 3] on the CPU (RGB, ready for a video writer).
    video:   float [T, 3, H, W] in [-1, 1] on the generator's device.
    latents: [F, C, h, w], the x0 of the last denoising forward (DiT dtype, generator's device).
    The tensors are shared with the generator (a re-cache replays the latents): treat them as read-only.
    """

    index: int
    frames: torch.Tensor
    video: torch.Tensor
    latents: torch.Tensor


def sample_chunk(forward: ChunkForward, draws: Sequence[Tensor], plan: ChunkPlan, *, exit_step: int | None = None,
                 grad: bool = False, context: bool = True,
                 before_context: Callable[[Tensor], None] | None = None, hold: Tensor | None = None) -> Tensor:
    """One chunk: begin it, denoise at the plan's warped steps, then the context pass. -> x0 [B, F, C, h, w].

    forward:   the DiT forward of the current chunk (`rfrt.runtime.forward.ChunkForward`), its text already set.
    draws:     draws[0] the initial noise, draws[i] the renoise noise after forward i (each latent_shape; cast
               to plan.dtype); at least exit_step + 1 of them.
    exit_step: the step whose x0 the chunk outputs (default the last, as at inference; training draws one).
    grad:      record the autograd graph of the exit forward only; every other forward and the context pass
               run without gradient, so the cache never holds a graph.
    hold:      known latents [B, r, C, h, w] (r < F) of the chunk's first r frames (priming from a context
               shorter than a chunk, rfrt.runtime.prime): after every forward their x0 is replaced by them, so
               the next input carries them re-noised at that step's sigma and the output holds them exactly.
    After forward i < exit_step the next input is (1 - sigma_{i+1}) x0 + sigma_{i+1} draws[i+1]; the context
    pass runs the (detached) output at t = 0 and rewrites the chunk's K/V in the cache; its flow is discarded.
    context=False stops before the context pass (the caller runs `context_pass` itself, e.g. as a second CUDA
    graph); before_context(x0) is called first when given: the context pass only feeds the next chunk, so the
    chunk's latents can go to the decoder before it.
    """
    steps = plan.num_steps
    k = steps - 1 if exit_step is None else exit_step
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < steps:
        raise ValueError(f"exit_step must be an int in [0, {steps}), got {exit_step!r}")
    if len(draws) < k + 1:
        raise ValueError(f"sample_chunk needs {k + 1} noise draws for exit step {k}, got {len(draws)}")
    if hold is not None and not 0 < hold.shape[1] < plan.latent_shape[1]:
        raise ValueError(f"sample_chunk: hold must be [B, r, C, h, w] with 0 < r < {plan.latent_shape[1]} (the "
                         f"chunk's latent frames), got {tuple(hold.shape)}")
    forward.begin_chunk()
    x = draws[0].to(plan.dtype)
    for i in range(k + 1):
        with torch.set_grad_enabled(grad and i == k):
            x0 = flow_to_x0(x, forward(x, plan.timesteps[i]), plan.sigma64[i])
        if hold is not None:
            x0 = torch.cat([hold.to(x0.dtype), x0[:, hold.shape[1]:]], dim=1)
        if i < k:
            x = renoise(x0, draws[i + 1].to(plan.dtype), plan.sigma32[i + 1])
    if before_context is not None:
        before_context(x0.detach())
    if context:
        context_pass(forward, x0, plan)
    return x0


def context_pass(forward: ChunkForward, x0: Tensor, plan: ChunkPlan) -> None:
    """The chunk's context pass: x0 [B, F, C, h, w] (detached) at t = 0 rewrites its K/V; the flow is discarded."""
    with torch.no_grad():
        forward(x0.detach(), plan.t_context)


def context_chunk(forward: ChunkForward, latents: Tensor, plan: ChunkPlan) -> None:
    """A chunk whose latents are given, not sampled (priming, rfrt.runtime.prime): begin it (slots, positions,
    the EMA fold of the chunk it evicts) and run only the loop's context pass. latents: [B, F, C, h, w]."""
    forward.begin_chunk()
    context_pass(forward, latents, plan)
