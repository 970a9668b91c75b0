"""Long-rollout checks of the paper's ablation claims (SPEC 3, its Table 3 in miniature) on the endless world.

Each arm is a (student, sink) pair; for every noise seed the student streams `--chunks` chunks (>= 60) for
each of `--prompts` held-out single-object prompts through the training rollout (`ReferenceCache` in fp32: the
runtime's exact sink + window semantics; rollout == StreamGenerator is tested). Sinks: alpha 0.999 (the
release's EMA sink), alpha 1 (static: chunk 0 forever), alpha 0 (no sink: the "sink" is the last evicted chunk,
a plain sliding window), or any alpha; `sink_precision` "cache" rounds the EMA in the cache dtype.
Metrics per stream (video in [-1, 1]; the tracker is train/stream_metrics.py, seconds of 16 frames):
  speed:      mean speed along the prompted way (px/frame) over the stream (the world draws U[0.5, 1.5]);
  in_range:   fraction of the stream's seconds whose speed lies in the world's range [0.5, 1.5] +- 0.1 (the
              tracker's pixel rounding, train/stream_metrics.py tests);
  late_early: mean speed of the last 3 seconds / of the first 3 seconds (1 = motion persists);
  stall:      the stall onset in seconds (first second after which the object never again moves the prompted
              way at >= 0.25 px/frame; = the stream's length when it never stalls);
  dynamic:    mean optical-flow magnitude (px / frame, the MotionReward) over the whole stream;
  quality / drift: per-frame palette fit (1 - mean distance to the nearest world colour / sqrt(12)) and its
              max - min over 5-chunk segments (lower = more stable);
  copy:       first-chunk copying, 1 - mean |x| distance / 2 between each of the last 10 chunks and chunk 0;
  object:     prompt adherence late in the stream: fraction of the last 10 chunks' frames showing the prompted
              object (area within [0.4, 2.5] x) on the prompted background.
Still prompts count for quality, drift, copy and object only (they have no prompted motion).
And the world-free long-stream metrics of `rfrt inspect` (rfrt.inspect, same definitions as the command, each
stream analysed at 16 fps with its 3-frame chunks), per stream: inspect_late_early (its late/early motion
ratio), inspect_stall_s (its stall onset; NaN when it finds none), copy_ssim (SSIM of the late seconds to the
first), colour_de (Lab dE late vs the first second); `inspect_metrics` gives their means over a batch.
Intervals: 95 % percentile bootstrap over the arm's streams (prompts x seeds).

Usage (one process per arm, then the table):
  python -m train.evaluate_claims run --arm "full=runs/default/redmd/export:0.999" --seeds 0 1 2 \
      --json runs/claims/full.json
  python -m train.evaluate_claims table runs/claims/*.json --out train/results/claims_default.md
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rfrt.cache import CachePolicy
from rfrt.sampling import SamplerConfig
from train.data.synthetic_world import COLOURS, Scene, SyntheticWorld, describe_scene
from train.rewards import to_unit_range
from train.rewards.motion import MotionReward
from train.stages.common import load_dit, load_text
from train.stages.rollout import rollout
from train.stream_metrics import bootstrap_ci, moving_seconds, object_area, per_second, stall_onset, track
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
        area = object_area(scene)
        labels = nearest_colour(clip.clamp(-1, 1).permute(0, 2, 3, 1))  # [T, H, W]
        count = (labels == COLOUR_NAMES.index(obj.colour)).flatten(1).sum(1)
        bg = labels.flatten(1).median(1).values == COLOUR_NAMES.index(scene.background)
        hits.append(((count >= 0.4 * area) & (count <= 2.5 * area) & bg).float())
    return torch.cat(hits).mean().item()


_FPS = 16  # the default model's frame rate (rfrt.json video.fps): stall onsets in seconds of its videos


def _inspect_summaries(video: torch.Tensor, chunk_frames: int, fps: int = _FPS) -> list:
    from rfrt.inspect import inspect_frames

    frames = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
    return [inspect_frames(clip, fps, chunk_frames=chunk_frames).summary for clip in frames]


def inspect_metrics(video: torch.Tensor, chunk_frames: int, fps: int = _FPS) -> dict[str, float | None]:
    """video [B, F, 3, H, W] in [-1, 1] -> rfrt inspect's summary per stream, averaged over B (None: undefined
    for every stream). stalled: fraction of streams with a stall onset; stall_s: their mean onset."""
    sums = _inspect_summaries(video, chunk_frames, fps)

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
    """video [B, F, 3, H, W] of long streams -> the image metrics of the module docstring (means over B)."""
    per = per_stream_metrics(video, chunk_frames, motion, scenes, track_motion=False)
    return {k: float(np.nanmean([r[k] for r in per])) for k in per[0]}


def per_stream_metrics(video: torch.Tensor, chunk_frames: int, motion: MotionReward, scenes: list[Scene],
                       fps: int = 16, track_motion: bool = True) -> list[dict[str, float]]:
    """video [B, F, 3, H, W] -> one dict of the module docstring's metrics per stream."""
    B, F = video.shape[:2]
    n_chunks = F // chunk_frames
    q = palette_quality(video)  # [B, F]
    seg = 5 * chunk_frames
    segments = q[:, : (F // seg) * seg].reshape(B, -1, seg).mean(-1)
    first = video[:, :chunk_frames]
    late = video[:, (n_chunks - 10) * chunk_frames:].reshape(B, 10, chunk_frames, *video.shape[2:])
    copy = 1 - (late - first[:, None]).abs().mean(dim=(2, 3, 4, 5)) / 2
    dyn = motion.score(to_unit_range(video))
    sums = _inspect_summaries(video, chunk_frames) if track_motion else [None] * B
    rows = []
    for b, scene in enumerate(scenes):
        r = {"dynamic": float(dyn[b]), "quality": float(q[b].mean()),
             "drift": float(segments[b].max() - segments[b].min()), "copy": float(copy[b].mean()),
             "object": late_adherence(video[b:b + 1], [scene], 10 * chunk_frames)}
        if track_motion:
            ins = sums[b]

            def num(v):
                return math.nan if v is None else float(v)
            r.update(inspect_late_early=num(ins.motion_late_early), inspect_stall_s=num(ins.stall_onset_s),
                     copy_ssim=num(ins.copy_ssim_late), colour_de=num(ins.colour_de_late))
            sec = per_second(track(video[b], scene), fps)
            still = scene.objects[0].motion == "still"
            sp = sec["speed"]
            early, tail = np.nanmean(sp[:3]), np.nanmean(sp[-3:])
            ok = moving_seconds(sec, 0.25)
            r.update(speed=math.nan if still else float(np.nanmean(sp)),
                     in_range=math.nan if still else float(np.mean((sp >= 0.4) & (sp <= 1.6))),
                     late_early=math.nan if still or not abs(early) > 1e-6 else float(tail / early),
                     stall=math.nan if still else float(stall_onset(ok)))
        rows.append(r)
    return rows


@torch.no_grad()
def run_arm(model_dir: str, alpha: float, chunks: int, scenes: list[Scene], h: int, w: int, seed: int,
            sink_precision: str = "fp32", dtype: torch.dtype = torch.float32) -> list[dict[str, float]]:
    dit, text = load_dit(model_dir, "student").eval(), load_text(model_dir, "student").eval()
    policy = CachePolicy(sink_frames=3, window_frames=9, chunk_frames=3, sink_ema_alpha=alpha,
                         sink_precision=sink_precision)
    torch.manual_seed(seed)
    noise = torch.randn(len(scenes), chunks * 3, dit.config.in_dim, h, w)
    cond = text.encode([describe_scene(s) for s in scenes])
    if dtype != torch.float32:
        dit, noise, cond = dit.to(dtype), noise.to(dtype), cond.to(dtype)
    video = rollout(dit, cond, noise, policy, SamplerConfig()).float()
    return per_stream_metrics(video, 3, MotionReward(), scenes)


COLUMNS = [("speed", "speed px/frame (world 1.00)", 2), ("in_range", "s in world range", 2),
           ("late_early", "late/early speed", 2), ("stall", "stall onset s", 1), ("copy", "first-chunk copy", 3),
           ("drift", "drift", 4), ("object", "late object + bg", 2), ("dynamic", "flow px/frame", 3),
           ("inspect_late_early", "inspect late/early", 2), ("copy_ssim", "inspect copy SSIM", 3),
           ("colour_de", "inspect colour dE", 2)]


def table(results: list[dict]) -> str:
    first = results[0]
    lines = [f"Long rollouts: {first['chunks']} chunks x 3 frames ({first['chunks'] * 3 / 16:.2f} s), "
             f"{first['prompts']} held-out prompts (world seed {first['world_seed']}) x noise seeds "
             f"{first['seeds']}, 16x16; mean [95 % bootstrap interval] over streams", "",
             "| arm | " + " | ".join(c[1] for c in COLUMNS) + " | wall s |", "|---|" + "---|" * (len(COLUMNS) + 1)]
    for res in results:
        cells = []
        for key, _, digits in COLUMNS:
            if key not in res["rows"][0]:
                cells.append("not run")
                continue
            m, lo, hi = bootstrap_ci(np.array([r[key] for r in res["rows"]], dtype=np.float64))
            cells.append(f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]")
        lines.append(f"| {res['arm']} | " + " | ".join(cells) + f" | {res['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def parse_arm(text: str) -> tuple[str, str, float, str, torch.dtype]:
    """"NAME=STUDENT_DIR:ALPHA[:SINK_PRECISION[:fp32|bf16]]" -> (name, dir, alpha, precision, dtype). The name is
    everything before the last "=", so an arm's label may hold one ("ODE init = the shipped model")."""
    usage = f"--arm {text!r}: expected NAME=STUDENT_DIR:ALPHA[:SINK_PRECISION[:fp32|bf16]]"
    name, _, spec = text.rpartition("=")
    fields = spec.split(":")
    if not name.strip() or not 2 <= len(fields) <= 4 or "" in fields:
        raise ValueError(usage)
    try:
        alpha = float(fields[1])
    except ValueError:
        raise ValueError(f"{usage}; ALPHA {fields[1]!r} is not a number") from None
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    dtype = fields[3] if len(fields) > 3 else "fp32"
    if dtype not in dtypes:
        raise ValueError(f"{usage}; DTYPE {dtype!r} is not one of {sorted(dtypes)}")
    return name.strip(), fields[0], alpha, fields[2] if len(fields) > 2 else "fp32", dtypes[dtype]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="stream one arm, write its per-stream metrics as JSON")
    run.add_argument("--arm", required=True, help="NAME=STUDENT_DIR:ALPHA[:SINK_PRECISION[:DTYPE]]")
    run.add_argument("--chunks", type=int, default=60)
    run.add_argument("--prompts", type=int, default=16)
    run.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    run.add_argument("--size", type=int, nargs=2, default=(16, 16))
    run.add_argument("--world-seed", type=int, default=2024)
    run.add_argument("--json", type=Path, required=True)
    tab = sub.add_parser("table", help="combine arm JSON files into the markdown table")
    tab.add_argument("files", type=Path, nargs="+")
    tab.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.cmd == "table":
        text = table([json.loads(f.read_text()) for f in args.files])
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
        print(text)
        return 0
    if args.chunks < 15:
        raise SystemExit("--chunks must be >= 15 (10 late chunks are compared with chunk 0)")
    try:
        name, model_dir, alpha, precision, dtype = parse_arm(args.arm)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    torch.set_num_threads(1)
    world = SyntheticWorld(args.size[0], args.size[1], 9, 1, args.world_seed, "canonical")
    scenes = [world.scene(i) for i in range(args.prompts)]
    t0, rows = time.perf_counter(), []
    for seed in args.seeds:
        rows += run_arm(model_dir, alpha, args.chunks, scenes, *args.size, seed, precision, dtype)
    res = {"arm": name, "model": model_dir, "alpha": alpha, "sink_precision": precision, "chunks": args.chunks,
           "prompts": args.prompts, "seeds": args.seeds, "world_seed": args.world_seed, "rows": rows,
           "wall_s": time.perf_counter() - t0}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res))
    print(table([res]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
