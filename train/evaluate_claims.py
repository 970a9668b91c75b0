"""Long-rollout checks of the paper's ablation claims (SPEC 3) on a trained student, on CPU.

For each variant the student streams `--chunks` chunks (>= 60) per prompt through the training rollout
(`ReferenceCache`: the runtime's exact sink + window semantics; rollout == StreamGenerator is tested):
  full:        Re-DMD student, EMA sink (alpha 0.999)
  plain_dmd:   a DMD student trained without reward (optional, --plain), EMA sink
  static_sink: Re-DMD student, sink = chunk 0 forever (alpha 1)
  no_sink:     Re-DMD student, alpha 0: the "sink" is just the latest evicted chunk, i.e. a plain sliding window
Metrics (video in [-1, 1]):
  dynamic:   mean optical-flow magnitude (px / frame, the MotionReward) over the whole stream;
  quality:   per-frame palette fit, 1 - mean distance of each pixel to its nearest world colour / sqrt(12)
             (the synthetic world only has flat palette colours: blur, smears and colour drift lower it);
  drift:     max - min over time of the quality of consecutive 5-chunk segments (lower = more stable);
  copy:      first-frame copying, 1 - mean |x| distance / 2 between each of the last 10 chunks and chunk 0
             (1 = identical to the start);
  object:    prompt adherence late in the stream: the fraction of frames of the last 10 chunks holding the
             prompted object (pixels of its palette colour within [0.4, 2.5] x its rendered area, as
             train.world_eval counts) and the prompted background (median pixel's nearest palette colour).
and the world-free long-stream metrics of `rfrt inspect` (rfrt.inspect, same definitions as the command, each
stream analysed at 16 fps with its 3-frame chunks; means over the prompts): late/early motion ratio, streams that
stall (and their mean stall onset), SSIM of the late seconds to the first second, colour dE late vs the first
second, sharpness late/early, chunk-seam ratio.
Usage: python -m train.evaluate_claims --student runs/default/redmd/export [--plain runs/default/dmd/export]
       [--chunks 60] [--prompts 8] --out train/results/claims_default.md
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from rfrt.cache import CachePolicy
from rfrt.sampling import SamplerConfig
from train.data.synthetic_world import COLOURS, Scene, SyntheticWorld, describe_scene, render_scene
from train.rewards import to_unit_range
from train.rewards.motion import MotionReward
from train.stages.common import load_dit, load_text
from train.stages.rollout import rollout
from train.world_eval import COLOUR_NAMES, nearest_colour

_PALETTE = torch.tensor(list(COLOURS.values())) * 2 - 1


def palette_quality(video: torch.Tensor) -> torch.Tensor:
    """video [..., 3, H, W] in [-1, 1] -> per-frame quality [...] in [0, 1] (1 = only palette colours)."""
    pix = video.clamp(-1, 1).movedim(-3, -1)
    d = torch.cdist(pix.reshape(-1, 3), _PALETTE).min(-1).values.reshape(pix.shape[:-1])
    return 1 - d.mean(dim=(-2, -1)) / math.sqrt(12)


def late_adherence(video: torch.Tensor, scenes: list[Scene], late_frames: int) -> float:
    """Fraction of the last `late_frames` frames showing the prompted object on the prompted background."""
    hits = []
    for clip, scene in zip(video[:, -late_frames:], scenes):
        obj = scene.objects[0]
        area = (nearest_colour(render_scene(scene)[-1].permute(1, 2, 0)) == COLOUR_NAMES.index(obj.colour)).sum()
        labels = nearest_colour(clip.clamp(-1, 1).permute(0, 2, 3, 1))  # [T, H, W]
        count = (labels == COLOUR_NAMES.index(obj.colour)).flatten(1).sum(1)
        bg = labels.flatten(1).median(1).values == COLOUR_NAMES.index(scene.background)
        hits.append(((count >= 0.4 * area) & (count <= 2.5 * area) & bg).float())
    return torch.cat(hits).mean().item()


_FPS = 16  # the default model's frame rate (rfrt.json video.fps): stall onsets in seconds of its videos


def inspect_metrics(video: torch.Tensor, chunk_frames: int, fps: int = _FPS) -> dict[str, float | None]:
    """video [B, F, 3, H, W] in [-1, 1] -> rfrt inspect's summary per stream, averaged over B (None: undefined
    for every stream). stalled: fraction of streams with a stall onset; stall_s: their mean onset."""
    from rfrt.inspect import inspect_frames

    frames = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
    sums = [inspect_frames(clip, fps, chunk_frames=chunk_frames).summary for clip in frames]

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    return {"motion_late_early": mean(s.motion_late_early for s in sums),
            "stalled": mean(float(s.stall_onset_s is not None) for s in sums),
            "stall_s": mean(s.stall_onset_s for s in sums),
            "copy_ssim": mean(s.copy_ssim_late for s in sums),
            "colour_de": mean(s.colour_de_late for s in sums),
            "sharpness": mean(s.sharpness_decay for s in sums),
            "seam": mean(s.seam_ratio_mean for s in sums)}


def stream_metrics(video: torch.Tensor, chunk_frames: int, motion: MotionReward,
                   scenes: list[Scene]) -> dict[str, float]:
    """video [B, F, 3, H, W] of long streams -> the metrics of the module docstring (means over B)."""
    B, F = video.shape[:2]
    n_chunks = F // chunk_frames
    q = palette_quality(video)  # [B, F]
    seg = 5 * chunk_frames
    segments = q[:, : (F // seg) * seg].reshape(B, -1, seg).mean(-1)
    first = video[:, :chunk_frames]
    late = video[:, (n_chunks - 10) * chunk_frames:].reshape(B, 10, chunk_frames, *video.shape[2:])
    copy = 1 - (late - first[:, None]).abs().mean(dim=(2, 3, 4, 5)) / 2
    return {"dynamic": motion.score(to_unit_range(video)).mean().item(),
            "quality": q.mean().item(),
            "drift": (segments.max(1).values - segments.min(1).values).mean().item(),
            "copy": copy.mean().item(),
            "object": late_adherence(video, scenes, 10 * chunk_frames),
            **inspect_metrics(video, chunk_frames)}


@torch.no_grad()
def run_variant(model_dir: str, alpha: float, chunks: int, scenes: list[Scene], h: int, w: int,
                seed: int) -> tuple[dict[str, float], float]:
    dit, text = load_dit(model_dir, "student").eval(), load_text(model_dir, "student").eval()
    policy = CachePolicy(sink_frames=3, window_frames=9, chunk_frames=3, sink_ema_alpha=alpha)
    torch.manual_seed(seed)
    noise = torch.randn(len(scenes), chunks * 3, dit.config.in_dim, h, w)
    t0 = time.perf_counter()
    video = rollout(dit, text.encode([describe_scene(s) for s in scenes]), noise, policy, SamplerConfig())
    return stream_metrics(video, 3, MotionReward(), scenes), time.perf_counter() - t0


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", required=True)
    ap.add_argument("--plain", default=None, help="DMD student trained without reward (optional)")
    ap.add_argument("--chunks", type=int, default=60)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--size", type=int, nargs=2, default=(16, 16))
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--layout", choices=("random", "canonical"), default="canonical",
                    help="synthetic-world layout of the prompts (the default model is trained on canonical)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.chunks < 15:
        raise SystemExit("--chunks must be >= 15 (10 late chunks are compared with chunk 0)")
    torch.set_num_threads(1)
    world = SyntheticWorld(args.size[0], args.size[1], 9, 1, args.seed, args.layout)
    scenes = [world.scene(i) for i in range(args.prompts)]
    variants = [("full (EMA sink + Re-DMD)", args.student, 0.999)]
    if args.plain:
        variants.append(("plain DMD (EMA sink)", args.plain, 0.999))
    variants += [("static sink", args.student, 1.0), ("no sink (sliding window)", args.student, 0.0)]
    lines = [f"Long rollouts: {args.chunks} chunks x 3 frames, {args.prompts} prompts, {args.size[0]}x{args.size[1]}",
             "", "| variant | dynamic (px/frame) | quality | drift | first-chunk copy | late object + background "
             "| motion late/early | stalled (onset s) | copy SSIM late | colour dE late | sharpness late/early "
             "| seam ratio | wall s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, model, alpha in variants:
        m, wall = run_variant(model, alpha, args.chunks, scenes, *args.size, args.seed)
        lines.append(f"| {name} | {m['dynamic']:.3f} | {m['quality']:.4f} | {m['drift']:.4f} | {m['copy']:.4f} "
                     f"| {m['object']:.2f} | {_fmt(m['motion_late_early'], '.2f')} "
                     f"| {m['stalled']:.2f} ({_fmt(m['stall_s'], '.1f')}) | {_fmt(m['copy_ssim'], '.3f')} "
                     f"| {_fmt(m['colour_de'], '.2f')} | {_fmt(m['sharpness'], '.2f')} | {_fmt(m['seam'], '.2f')} "
                     f"| {wall:.0f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
