"""What a model learned about the synthetic world, measured on its samples against the prompted scene.

For a generated video [T, 3, H, W] in [-1, 1] and the Scene its prompt describes (single-object scenes):
  background_ok: the per-frame median colour's nearest palette colour is the prompted background (mean over T);
  object_ok:     frames (after the object appears) whose count of pixels with the object's nearest palette
                 colour lies within [0.4, 2.5] x the rendered object's area (mean over those frames);
  position_err:  mean distance (pixels) of those pixels' circular centroid from the prompted place *across*
                 the axis of motion (the world draws the phase along it at random; both axes for still objects);
  direction_ok:  for "moves" / "appears" objects, the tracked centroid (train/stream_metrics.py, wrap-aware)
                 steps along the prompted direction by > 0.25 px/frame on average; NaN for other motions;
  motion_mean / motion_std: the motion reward's raw score (mean optical-flow magnitude, px/frame) over the
                 generated videos: the z-scoring statistics a Re-DMD config's `reward.mean` / `reward.std` take.
Reference levels on the endless world: train/results/default_model.md.

Usage: python -m train.world_eval --model runs/default/ode/export --kind student|teacher|causal [--n 64]
           [--size H W T] [--layout L] [--phase P]
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import torch

from train.data.synthetic_world import COLOURS, Scene, SyntheticWorld, trajectory
from train.stream_metrics import circular_centroids, object_area, prompted_direction, track

COLOUR_NAMES = list(COLOURS)
_PALETTE = torch.tensor([COLOURS[c] for c in COLOUR_NAMES]) * 2 - 1  # [10, 3] in [-1, 1]


def nearest_colour(pixels: torch.Tensor) -> torch.Tensor:
    """pixels [..., 3] in [-1, 1] -> palette index [...]."""
    return torch.cdist(pixels.reshape(-1, 3).float(), _PALETTE).argmin(-1).reshape(pixels.shape[:-1])


def scene_scores(video: torch.Tensor, scene: Scene) -> dict[str, float]:
    """Scores of one video [T, 3, H, W] against its scene (see module docstring)."""
    T = video.shape[0]
    pix = video.permute(0, 2, 3, 1)  # [T, H, W, 3]
    median = pix.reshape(T, -1, 3).median(dim=1).values
    bg = (nearest_colour(median) == COLOUR_NAMES.index(scene.background)).float().mean().item()
    obj = scene.objects[0]
    mask = nearest_colour(pix) == COLOUR_NAMES.index(obj.colour)
    area = object_area(scene)
    frames = [t for t in range(T) if scene.start_frame + t >= obj.appear_frame]
    present = [t for t in frames if 0.4 * area <= mask[t].sum() <= 2.5 * area and mask[t].any()]
    found = len(present) / max(1, len(frames))
    # The phase along the axis of motion is chance; the prompt fixes the place across it (canonical layout:
    # the middle), so the error is measured across the axis only (both axes for still objects).
    c = circular_centroids(mask)
    truth = trajectory(obj, scene)
    size = np.array([scene.width, scene.height], dtype=np.float64)
    d = c - truth
    d = d - size * np.round(d / size)
    direction_vec, mode = prompted_direction(obj)
    if mode == "still":
        errs = np.hypot(d[:, 0], d[:, 1])
    else:
        across = np.array([1.0, 0.0]) if (direction_vec[0] == 0) else np.array([0.0, 1.0])
        errs = np.abs(d @ across)
    seen = [t for t in present if not np.isnan(errs[t])]
    err = float(np.mean(errs[seen])) if seen else math.nan
    direction = math.nan
    if obj.motion in ("moves", "appears") and len(present) >= 2:
        along = track(video, scene)["along"]
        along = along[~np.isnan(along)]
        direction = float(len(along) > 0 and along.mean() > 0.25)
    return {"background_ok": bg, "object_ok": found, "position_err": err, "direction_ok": direction}


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    out = {}
    for k in rows[0]:
        vals = [r[k] for r in rows if not math.isnan(r[k])]
        out[k] = sum(vals) / len(vals) if vals else math.nan
        out[k + "_n"] = float(len(vals))
    return out


@torch.no_grad()
def evaluate(model_dir: str, kind: str, n: int, height: int, width: int, frames: int, seed: int = 12345,
             guidance: float = 3.0, layout: str = "random", phase: str = "random") -> dict[str, float]:
    """Generate n held-out prompts (world seed `seed`) with the teacher ODE (kind teacher: bidirectional; causal:
    a stage-forcing teacher chunk by chunk) or the student rollout (kind student); score them."""
    from train.config import RolloutSection
    from train.stages.common import load_dit, load_text
    from train.stages.ode import causal_teacher_ode, teacher_ode
    from train.stages.rollout import rollout, training_policy
    from rfrt.sampling import SamplerConfig

    world = SyntheticWorld(height, width, frames, 1, seed, layout, phase=phase)
    dit, text = load_dit(model_dir, "model").eval(), load_text(model_dir, "model").eval()
    sampler = SamplerConfig()
    torch.manual_seed(seed)
    from train.rewards.base import to_unit_range
    from train.rewards.motion import MotionReward

    motion = MotionReward()
    rows, motions = [], []
    for i in range(0, n, 16):
        scenes = [world.scene(j) for j in range(i, min(n, i + 16))]
        prompts = [world[j][1] for j in range(i, min(n, i + 16))]
        noise = torch.randn(len(prompts), frames, 3, height, width)
        if kind == "teacher":
            _, video = teacher_ode(dit, text.encode(prompts), text.encode([""] * len(prompts)), noise, sampler,
                                   24, guidance)
        elif kind == "causal":  # a causal teacher (stage forcing), streamed with the inference cache
            policy = training_policy(RolloutSection(num_frames=frames, sink_ema_during_training=True))
            _, video, _ = causal_teacher_ode(dit, text.encode(prompts), text.encode([""] * len(prompts)), noise,
                                          policy, sampler, 24, guidance)
        else:
            policy = training_policy(RolloutSection(num_frames=frames))
            video = rollout(dit, text.encode(prompts), noise, policy, sampler)
        rows += [scene_scores(v.clamp(-1, 1), s) for v, s in zip(video, scenes)]
        motions.append(motion.score(to_unit_range(video)))
    raw = torch.cat(motions)
    return {**summarise(rows), "motion_mean": raw.mean().item(), "motion_std": raw.std().item()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--kind", choices=("teacher", "causal", "student"), required=True)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--size", type=int, nargs=3, default=(16, 16, 9), metavar=("H", "W", "T"))
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--layout", choices=("random", "canonical"), default="canonical",
                    help="synthetic-world layout of the held-out prompts (the default model's is canonical)")
    ap.add_argument("--phase", choices=("random", "fixed"), default="random",
                    help="synthetic-world phase of the held-out prompts (the default model's is fixed)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(evaluate(args.model, args.kind, args.n, *args.size, guidance=args.guidance, layout=args.layout,
                   phase=args.phase))
    return 0


if __name__ == "__main__":
    sys.exit(main())
