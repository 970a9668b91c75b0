"""Does a causal model use its context? Teacher-forced x0 error per chunk on world clips, three contexts.

For n clips of the default model's world (21 frames = 7 chunks from stream frame 0, fixed phase, speed U[0.5,
1.5]), every chunk is noised to one sigma and the model predicts its x0 through the inference cache
(`train.stages.rollout.teacher_forced_flow`, sink 3 + window 9, EMA sink 0.999) with the cache written from
  true:  the clip's own clean chunks (what a continuation sees);
  other: another clip's clean chunks (another prompt: colour, shape, motion differ);
  zeros: mid-grey frames.
Reported: mean squared x0 error per chunk ([-1, 1] units, all pixels), and as a reference the error of copying
the last frame of the previous chunk (what a model that stalls would draw). Chunk 0 sees no context, so its
three rows agree. A model that continues its context has a true-context error well below the other two from chunk 1
on; a model that draws from its prompt alone (and stalls once window-relative positions stop telling the time)
has three similar rows.

Usage: python -m train.context_eval --model DIR [DIR ...] [--n 32] [--sigma 0.9]
"""
from __future__ import annotations

import argparse
import sys

import torch

from train.config import RolloutSection
from train.data.synthetic_world import SyntheticWorld
from train.stages.common import load_dit, load_text
from train.stages.rollout import teacher_forced_flow, training_policy


@torch.no_grad()
def context_errors(model_dir: str, n: int = 32, sigma: float = 0.9, seed: int = 777) -> dict[str, list[float]]:
    """{context name: x0 MSE per chunk} (see module docstring)."""
    world = SyntheticWorld(16, 16, 21, 1, seed, "canonical", phase="fixed")
    video = torch.stack([world[i][0] for i in range(n)])
    prompts = [world[i][1] for i in range(n)]
    policy = training_policy(RolloutSection(num_frames=21, sink_ema_during_training=True))
    dit, text = load_dit(model_dir, "model").eval(), load_text(model_dir, "model").eval()
    cross = dit.cross_kv(text.encode(prompts))
    eps = torch.randn(video.shape, generator=torch.Generator().manual_seed(seed))
    noisy = (1 - sigma) * video + sigma * eps
    chunks = video.shape[1] // policy.chunk_frames
    out = {}
    for name, context in (("true", video), ("other", video.roll(1, dims=0)), ("zeros", torch.zeros_like(video))):
        v = teacher_forced_flow(dit, cross, noisy, torch.full((n, chunks), sigma), context, policy, 1000)
        err = ((noisy - sigma * v - video) ** 2).mean(dim=(0, 2, 3, 4)).reshape(chunks, -1).mean(1)
        out[name] = err.tolist()
    return out


def copy_errors(n: int = 32, seed: int = 777) -> list[float]:
    """x0 error per chunk 1.. of predicting every frame of a chunk as the last frame of the chunk before."""
    world = SyntheticWorld(16, 16, 21, 1, seed, "canonical", phase="fixed")
    video = torch.stack([world[i][0] for i in range(n)])
    chunk = 3
    return [((video[:, c * chunk - 1:c * chunk] - video[:, c * chunk:(c + 1) * chunk]) ** 2).mean().item()
            for c in range(1, video.shape[1] // chunk)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", required=True)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--sigma", type=float, default=0.9)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("copy the last context frame, chunks 1..: " + " ".join(f"{e:.3f}" for e in copy_errors(args.n)))
    for m in args.model:
        for name, errs in context_errors(m, args.n, args.sigma).items():
            print(f"{m} {name:5s} " + " ".join(f"{e:.3f}" for e in errs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
