"""How well priming carries a synthetic-world context into the stream of a pixel-space model (the default one).

For single-object "moves" scenes of the canonical world (16x16): the object's centroid (pixels nearest its
palette colour) in generated frames against the world's truth (`trajectory`), both on the torus the world wraps
its movers around (`centroids`, `torus_offset`, `travel`):
  seam:     1 s (16 frames) of context from stream frame 0, continued under the scene's own prompt, the
            opposite direction's prompt, and with no context: error at the first generated frame (frame 16),
            and travel along the prompted direction over the next 6 frames;
  lengths:  contexts of n frames ending at stream frame 20: error at the next frame, per n;
  held:     one image from stream frame 20: the model's own x0 of the held frame per denoising step, before the
            replacement (mean |x0 - image|, [-1, 1] units).
tests/test_prime_default_model.py asserts the measured levels; this prints them.

Usage: python train/prime_eval.py [--model DIR] [--scenes 8] [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

_ROOT = Path(__file__).resolve().parent.parent
for _p in (_ROOT, _ROOT / "python"):  # runnable from a source checkout (appended: an installed rfrt wins)
    if str(_p) not in sys.path:
        sys.path.append(str(_p))

from train.data.synthetic_world import (COLOURS, DIRECTIONS, SyntheticWorld, describe_scene,  # noqa: E402
                                       render_scene, trajectory)
from train.stream_metrics import circular_centroids, torus_offset  # noqa: E402
from train.world_eval import nearest_colour  # noqa: E402  (an index into the palette, in COLOURS' order)

SIZE = (16, 16)  # (width, height) of the canonical world measured here
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """float [T, 3, H, W] in [-1, 1] -> uint8 [T, H, W, 3]."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def centroids(frames: torch.Tensor, colour: str) -> np.ndarray:
    """uint8 [T, H, W, 3] -> [T, 2] (x, y) centroid on the torus (circular mean per axis) of the pixels nearest the
    palette colour, NaN if none. The world wraps its movers around the edges, so an object split over an edge is
    one object here, where a plain mean would put it mid-frame."""
    video = frames.float() / 127.5 - 1
    return circular_centroids(nearest_colour(video) == list(COLOURS).index(colour))


def travel(pos: np.ndarray, direction: np.ndarray, frames: int = 6, size: tuple[int, int] = SIZE) -> float:
    """px travelled along `direction` from pos[0] to pos[frames], summed over wrapped single-frame steps (an
    object crossing an edge keeps its travel); NaN where a frame lost the object."""
    steps = torus_offset(pos[1:frames + 1], pos[:frames], size)
    return float(steps.sum(0) @ direction)


def mover_scenes(seed: int, frames: int, n: int, window: range, size: int = 16):
    """The first n single-object "moves" scenes of `frames` frames of the canonical world whose true centre stays
    within [radius, size - 1 - radius] on both axes over the frames `window` (no wrap or wall in the measurement).
    -> [(index, scene, truth [frames, 2])]."""
    world = SyntheticWorld(height=size, width=size, num_frames=frames, max_objects=1, seed=seed, layout="canonical")
    found = []
    for i in range(400):
        scene = world.scene(i)
        obj = scene.objects[0]
        if obj.motion != "moves":
            continue
        truth = trajectory(obj, scene)
        seen = truth[list(window)]
        if seen.min() >= obj.radius - 1e-6 and seen.max() <= size - 1 - obj.radius + 1e-6:
            found.append((i, scene, truth))
        if len(found) == n:
            break
    if len(found) < n:
        raise RuntimeError(f"the world gave {len(found)} usable mover scenes of {n}")
    return found


@torch.no_grad()
def seam(gen, scenes, context: int = 16, chunks: int = 3) -> dict[str, tuple[float, float]]:
    """{own, other, none: (mean error at the first generated frame px, mean travel along the direction px over 6
    frames, fraction of scenes that travel more than 0.5 px: test_continuation_keeps_moving_the_prompted_way's
    measure)}."""
    out = {k: ([], []) for k in ("own", "other", "none")}
    for index, scene, truth in scenes:
        obj = scene.objects[0]
        prompt = describe_scene(scene)
        other = prompt.replace(f"moves {obj.direction}", f"moves {OPPOSITE[obj.direction]}")
        ctx = to_uint8(render_scene(scene)[:context])
        for name, p, c in (("own", prompt, ctx), ("other", other, ctx), ("none", prompt, None)):
            gen.reset(p, seed=index, context=c)
            frames = torch.cat([gen.step().frames for _ in range(chunks)])
            frames = frames[gen.primed.held_output_frames:] if c is not None else frames
            pos = centroids(frames, obj.colour)
            out[name][0].append(np.linalg.norm(torus_offset(pos[0], truth[context], SIZE)))
            out[name][1].append(travel(pos, np.array(DIRECTIONS[obj.direction], float)))
    return {k: (round(float(np.nanmean(e)), 2), round(float(np.nanmean(m)), 2),
                round(float(np.mean(np.array(m) > 0.5)), 2)) for k, (e, m) in out.items()}


@torch.no_grad()
def lengths(gen, scenes, end: int = 20, ns=(1, 2, 3, 4, 6, 9, 12)) -> dict[int, float]:
    """{context frames: mean error of the next frame after a context ending at stream frame `end`}."""
    out = {}
    for n in ns:
        errs = []
        for index, scene, truth in scenes:
            gen.reset(describe_scene(scene), seed=index, context=to_uint8(render_scene(scene)[end + 1 - n:end + 1]))
            frames = gen.step().frames[gen.primed.held_output_frames:]
            pos = centroids(frames[:1], scene.objects[0].colour)[0]
            errs.append(np.linalg.norm(torus_offset(pos, truth[end + 1], SIZE)))
        out[n] = round(float(np.nanmean(errs)), 2)
    return out


@torch.no_grad()
def held_drift(gen, scenes, frame: int = 20) -> list[float]:
    """Mean |x0 - image| of a held image per denoising step (the model's own prediction, before replacement)."""
    import rfrt.runtime.chunk as chunk_mod

    rows, seen = [], []
    original = chunk_mod.flow_to_x0

    def spy(x, flow, sigma):
        x0 = original(x, flow, sigma)
        seen.append(x0[:, :1].clone())
        return x0

    chunk_mod.flow_to_x0 = spy
    try:
        for index, scene, _ in scenes:
            image = to_uint8(render_scene(scene)[frame:frame + 1])[0]
            seen.clear()
            gen.reset(describe_scene(scene), seed=index, context=image)
            gen.step()
            known = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1
            rows.append([(x0[0, 0] - known).abs().mean().item() for x0 in seen])  # one per step
    finally:
        chunk_mod.flow_to_x0 = original
    return np.mean(np.array(rows), axis=0).tolist()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: the embedded default model)")
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="world seed of the seam scenes (seed + 1 for the others)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from rfrt import StreamGenerator

    gen = StreamGenerator(args.model, device="cpu")
    scenes = mover_scenes(args.seed, 25, args.scenes, range(15, 23))
    print("seam (error px at frame 16, travel px over 6 frames, fraction moving > 0.5 px):", seam(gen, scenes))
    later = mover_scenes(args.seed + 1, 25, args.scenes, range(20, 24))
    print("context length -> next-frame error px (context ends at frame 20):", lengths(gen, later))
    print("held image: model's own x0 error per step:", [round(d, 3) for d in held_drift(gen, later)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
