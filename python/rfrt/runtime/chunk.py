"""sample_chunk: the SPEC §2.1 chunk loop, written once.

Inference (StreamGenerator, eager or inside a captured CUDA graph) and the training rollout run this function;
only the forward it drives and two options differ. "Train as you infer" is therefore a property of the code:
the rollout is this loop with an exit step and a gradient switch, not a copy of it.

The body is device work only (no `.item()`, no Python value read from a tensor), so a CUDA graph can record it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rfrt.runtime.forward import ChunkForward
from rfrt.runtime.plan import ChunkPlan
from rfrt.sampling import flow_to_x0, renoise

__all__ = ["sample_chunk"]


def sample_chunk(forward: ChunkForward, draws: Sequence[Tensor], plan: ChunkPlan, *, exit_step: int | None = None,
                 grad: bool = False, context: Tensor | None = None) -> Tensor:
    """One chunk: begin it, denoise at the plan's warped steps, then the context pass. -> x0 [B, F, C, h, w].

    forward:   the DiT forward of the current chunk (`rfrt.runtime.forward.ChunkForward`), its text already set.
    draws:     draws[0] the initial noise, draws[i] the renoise noise after forward i (each latent_shape; cast
               to plan.dtype); at least exit_step + 1 of them.
    exit_step: the step whose x0 the chunk outputs (default the last, as at inference; training draws one).
    grad:      record the autograd graph of the exit forward only; every other forward and the context pass
               run without gradient, so the cache never holds a graph.
    After forward i < exit_step the next input is (1 - sigma_{i+1}) x0 + sigma_{i+1} draws[i+1]; the context
    pass runs the (detached) output at t = 0 and rewrites the chunk's K/V in the cache; its flow is discarded.
    context:   what the context pass runs instead of the output (training's teacher forcing on a ground-truth
               chunk, same shape); None at inference.
    """
    steps = plan.num_steps
    k = steps - 1 if exit_step is None else exit_step
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < steps:
        raise ValueError(f"exit_step must be an int in [0, {steps}), got {exit_step!r}")
    if len(draws) < k + 1:
        raise ValueError(f"sample_chunk needs {k + 1} noise draws for exit step {k}, got {len(draws)}")
    forward.begin_chunk()
    x = draws[0].to(plan.dtype)
    for i in range(k + 1):
        with torch.set_grad_enabled(grad and i == k):
            x0 = flow_to_x0(x, forward(x, plan.timesteps[i]), plan.sigma64[i])
        if i < k:
            x = renoise(x0, draws[i + 1].to(plan.dtype), plan.sigma32[i + 1])
    with torch.no_grad():
        forward(x0.detach() if context is None else context.to(plan.dtype), plan.t_context)
    return x0
