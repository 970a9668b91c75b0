"""Does the object keep moving? Long streams of a model through `rfrt.StreamGenerator`, tracked per second.

For held-out single-object prompts (world seed --world-seed, canonical layout) and noise seeds, the model
streams `--seconds` seconds at its fps through the runtime (the path `rfrt generate` takes), and
train/stream_metrics.py tracks the prompted object per second: presence and speed along the prompted way
(px/frame; the world draws speeds from U[0.5, 1.5], mean 1.0). A second "moves the prompted way" when the
object is present in >= half its frames at >= --min-speed px/frame along the prompted way (for "stays still":
moves less than --min-speed). The stall onset is the first second after which that never holds again.
The README's main prompt is always included. The first 5 s of a stream are the README main job's video
(same prompt and seed: the stream is causal), so one 30-s stream per (prompt, seed) gives both.

Usage: python -m train.stream_eval --model python/rfrt/default_model [--prompts 16] [--seeds 0 1 2]
           [--seconds 30] --out train/results/stream_default.md
       (--model may also be a student directory dit/ + text_encoder/; it is exported to a temporary
       rfrt-model/1 directory with the default cache first)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from train.data.synthetic_world import SyntheticWorld, describe_scene, parse_single_object
from train.stream_metrics import bootstrap_ci, moving_seconds, per_second, stall_onset, track

MAIN_PROMPT = "a large red circle moves right on a blue background"


def make_generator(model_dir: str, sink_precision: str | None = None, alpha: float | None = None):
    """A CPU fp32 StreamGenerator of the model dir, optionally with the cache's sink precision / alpha replaced."""
    import dataclasses

    from rfrt.generator import StreamGenerator
    from rfrt.model_dir import load_model_dir

    bundle = load_model_dir(model_dir, device=torch.device("cpu"), dtype=torch.float32)
    cache = bundle.cache
    if sink_precision is not None:
        cache = dataclasses.replace(cache, sink_precision=sink_precision)
    if alpha is not None:
        cache = dataclasses.replace(cache, sink_ema_alpha=alpha)
    return StreamGenerator(bundle, device="cpu", dtype=torch.float32, cache=cache)


def stream(gen, prompt: str, seed: int, frames: int) -> torch.Tensor:
    """[frames, 3, H, W] in [-1, 1] of one stream of `gen` (a StreamGenerator)."""
    gen.reset(prompt, seed=seed)
    out, n = [], 0
    while n < frames:
        chunk = gen.step()
        out.append(chunk.video.float().cpu())
        n += chunk.video.shape[0]
    return torch.cat(out)[:frames]


def evaluate(model_dir: str, n_prompts: int, seeds: list[int], seconds: int, fps: int = 16,
             world_seed: int = 12345, min_speed: float = 0.25, **stream_kw) -> dict:
    world = SyntheticWorld(16, 16, seconds * fps, 1, world_seed, "canonical")
    scenes = [world.scene(i) for i in range(n_prompts)]
    main = parse_single_object(MAIN_PROMPT, 16, 16, seconds * fps)
    gen = make_generator(model_dir, **stream_kw)
    rows = []
    for scene in [main] + scenes:
        prompt = describe_scene(scene)
        for seed in seeds:
            t0 = time.perf_counter()
            video = stream(gen, prompt, seed, seconds * fps)
            sec = per_second(track(video, scene), fps)
            ok = moving_seconds(sec, min_speed) if scene.objects[0].motion != "still" else \
                (sec["presence"] >= 0.5) & (np.nan_to_num(sec["speed"], nan=-1) > -min_speed)
            rows.append({"prompt": prompt, "seed": seed, "motion": scene.objects[0].motion,
                         "main": scene is main, "speed": sec["speed"].tolist(), "presence": sec["presence"].tolist(),
                         "ok": ok.astype(float).tolist(), "stall": stall_onset(ok),
                         "wall_s": time.perf_counter() - t0})
    return {"model": str(model_dir), "seconds": seconds, "fps": fps, "seeds": seeds, "min_speed": min_speed,
            "world_seed": world_seed, "rows": rows}


def _fmt(ci: tuple[float, float, float], digits: int = 2) -> str:
    m, lo, hi = ci
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def report(res: dict, title: str) -> str:
    rows, S = res["rows"], res["seconds"]
    held = [r for r in rows if not r["main"]]
    lines = [f"### {title}", "",
             f"`{res['model']}`, {len(held) // len(res['seeds'])} held-out prompts (world seed {res['world_seed']}) "
             f"+ the README prompt, noise seeds {res['seeds']}, {S} s at {res['fps']} fps through StreamGenerator. "
             f"Speed in px/frame along the prompted way (world: U[0.5, 1.5]); \"moving\" = present and >= "
             f"{res['min_speed']} px/frame; 95 % bootstrap intervals over streams.", "",
             "| prompts | streams | moving seconds, first 5 s | moving seconds, 30 s | presence, 30 s | speed s 0-4 | "
             "speed last 5 s | late/early | never stalls |", "|---|---|---|---|---|---|---|---|---|"]
    groups = [("all moving (moves/appears/turns/bounces)", [r for r in held if r["motion"] != "still"])]
    groups += [(m, [r for r in held if r["motion"] == m]) for m in ("moves", "appears", "turns", "bounces", "still")]
    groups.append((f"README prompt ({MAIN_PROMPT})", [r for r in rows if r["main"]]))
    for name, rs in groups:
        if not rs:
            continue
        ok = np.array([r["ok"] for r in rs])
        sp = np.array([r["speed"] for r in rs], dtype=np.float64)
        pres = np.array([r["presence"] for r in rs])
        early, late = np.nanmean(sp[:, :5], 1), np.nanmean(sp[:, -5:], 1)
        ratio = late / np.where(np.abs(early) > 1e-6, early, np.nan)
        lines.append(f"| {name} | {len(rs)} | {_fmt(bootstrap_ci(ok[:, :5].mean(1)))} | "
                     f"{_fmt(bootstrap_ci(ok.mean(1)))} | {_fmt(bootstrap_ci(pres.mean(1)))} | "
                     f"{_fmt(bootstrap_ci(early))} | {_fmt(bootstrap_ci(late))} | {_fmt(bootstrap_ci(ratio))} | "
                     f"{np.mean([r['stall'] == S for r in rs]):.2f} |")
    movers = [r for r in held if r["motion"] != "still"]
    if movers:
        sp = np.array([r["speed"] for r in movers], dtype=np.float64)
        pres = np.array([r["presence"] for r in movers])
        marks = [s for s in (0, 1, 2, 3, 4, 5, 10, 15, 20, 25, S - 1) if s < S]
        lines += ["", "Per second, all held-out moving prompts (mean speed px/frame / presence):", "",
                  "| second | " + " | ".join(str(s) for s in marks) + " |", "|---|" + "---|" * len(marks),
                  "| speed | " + " | ".join(f"{np.nanmean(sp[:, s]):.2f}" for s in marks) + " |",
                  "| presence | " + " | ".join(f"{pres[:, s].mean():.2f}" for s in marks) + " |"]
    main = [r for r in rows if r["main"]]
    if main:
        lines += ["", "README prompt, speed per second (px/frame), per seed:", ""]
        for r in main:
            lines.append(f"- seed {r['seed']}: " + " ".join(f"{v:.2f}" for v in r["speed"]))
    wall = sum(r["wall_s"] for r in rows)
    lines += ["", f"({len(rows)} streams, {wall:.0f} s wall on this CPU)", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--world-seed", type=int, default=12345)
    ap.add_argument("--title", default=None)
    ap.add_argument("--out", type=Path, default=None, help="markdown report (appended to when it exists)")
    ap.add_argument("--json", type=Path, default=None, help="per-stream rows")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = Path(args.model)
    if not (model / "rfrt.json").is_file():
        raise SystemExit(f"{model} is not an rfrt model directory (no rfrt.json): pass a stage's export or "
                         "python/rfrt/default_model; an old per-stage export is re-exported by re-running its stage")
    res = evaluate(str(model), args.prompts, args.seeds, args.seconds, world_seed=args.world_seed)
    res["model"] = args.model
    text = report(res, args.title or args.model)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
