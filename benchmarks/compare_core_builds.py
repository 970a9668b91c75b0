"""Before/after in one run: the per-layer cache write (+ query RoPE) of two builds of rfrt._C, interleaved.

    python benchmarks/compare_core_builds.py OLD/_C.so NEW/_C.so [--geometry release|small] [--reps 20]

(Two builds of one extension cannot share a process, so each round runs each build in its own child process,
alternating, and the medians over rounds are compared; the children also save their outputs, compared here.)

OLD is a build from before the RoPE tables (commit ec20772: cache_write rotates K with per-call fp64
cos/sin, then rope_apply rotates Q); NEW is this tree's (one fused launch for Q, K, V from the cache's tables).
Both run on the same CPU tensors (same seed), fp32; the outputs are checked equal. CPU
only: on a GPU the old path's cost is fp64 transcendentals per thread (docs/design.md), measured by
gpu_probe.py micro.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time

import torch


def load(path: str):
    spec = importlib.util.spec_from_file_location("_C", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def child(path: str, geometry: str, reps: int, save: str) -> None:
    """Time one build; print the median ms, save (kv, rotated q)."""
    torch.set_num_threads(1)
    mod = load(path)
    is_new = hasattr(mod, "rope_space_table")
    old, new = (None, mod) if is_new else (mod, None)
    args = argparse.Namespace(geometry=geometry, reps=reps)
    gh, gw, heads, hd = (30, 52, 12, 128) if args.geometry == "release" else (8, 8, 4, 64)
    tpf, layers = gh * gw, 2
    chunk, window = 3 * tpf, 9 * tpf
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, chunk, heads, hd, generator=g) for _ in range(3))
    kv = {m: torch.zeros(2, layers, 1, window, heads, hd) for m in ("old", "new")}
    acc = {m: torch.zeros(2, layers, 1, chunk, heads, hd) for m in ("old", "new")}
    cursor = torch.tensor([2 * chunk, 300])  # a ring slot, time position 300
    q_old, q_new = torch.empty_like(q), torch.empty_like(q)

    def geom(mod):
        c = mod.CacheGeometry()
        c.layers, c.batch, c.window_tokens, c.heads, c.head_dim = layers, 1, window, heads, hd
        c.sink_tokens, c.tokens_per_frame, c.grid_w, c.rope_theta = chunk, tpf, gw, 1e4
        return c

    # old: cache_write (K rotated, V copied) + rope_apply (Q)
    if old is not None:
        _old(old, geom, kv, acc, k, v, cursor, q, q_old, chunk, heads, hd, tpf, gw, args, save)
        return
    _new(new, geom, kv, acc, k, v, cursor, q, q_new, chunk, heads, hd, tpf, gw, args, save)


def _timed(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _old(old, geom, kv, acc, k, v, cursor, q, q_old, chunk, heads, hd, tpf, gw, args, save):
    pw = old.CacheWriteParams()
    pw.g = geom(old)
    pw.kv, pw.sink_acc, pw.k, pw.v, pw.cursor = (kv["old"].data_ptr(), acc["old"].data_ptr(), k.data_ptr(),
                                                 v.data_ptr(), cursor.data_ptr())
    pw.layer, pw.chunk_tokens = 1, chunk
    pr = old.RopeApplyParams()
    pr.x, pr.out, pr.cursor = q.data_ptr(), q_old.data_ptr(), cursor[1:].data_ptr()
    pr.batch, pr.tokens, pr.heads, pr.head_dim, pr.tokens_per_frame, pr.grid_w, pr.rope_theta = \
        1, chunk, heads, hd, tpf, gw, 1e4

    def run_old():
        old.cache_write(pw)
        old.rope_apply(pr)

    print(_timed(run_old, args.reps))
    torch.save((kv["old"], q_old), save)


def _new(new, geom, kv, acc, k, v, cursor, q, q_new, chunk, heads, hd, tpf, gw, args, save):
    # new: tables once (space) / per chunk (time), then one fused launch
    space = torch.empty(tpf, 2 * (hd // 2 // 3), 2)
    new.rope_space_table(tpf, gw, hd, 1e4, space.data_ptr())
    c = hd // 2
    time_rows = torch.zeros(3 + 2 * 3, c - 2 * (c // 3), 2)
    fold_cursor = torch.tensor([chunk, 0, 0])
    pt = new.RopeTimeParams()
    pt.rope_time, pt.write_cursor, pt.fold_cursor = time_rows.data_ptr(), cursor.data_ptr(), fold_cursor.data_ptr()
    pt.write_frames, pt.sink_frames, pt.head_dim, pt.rope_theta = 3, 3, hd, 1e4
    new.rope_time_rows(pt)
    pn = new.CacheWriteParams()
    pn.g = geom(new)
    pn.kv, pn.sink_acc, pn.cursor = kv["new"].data_ptr(), acc["new"].data_ptr(), cursor.data_ptr()
    pn.q, pn.q_out, pn.k, pn.v = q.data_ptr(), q_new.data_ptr(), k.data_ptr(), v.data_ptr()
    pn.rope_space, pn.rope_time = space.data_ptr(), time_rows.data_ptr()
    pn.layer, pn.chunk_tokens = 1, chunk

    def run_new():
        new.cache_write(pn)

    print(_timed(run_new, args.reps))
    torch.save((kv["new"], q_new), save)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--geometry", choices=["release", "small"], default="small")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.old, args.geometry, args.reps, args.child)
    ms = {"old": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name in ("old", "new"):
                out = subprocess.run([sys.executable, __file__, getattr(args, name), "-", "--geometry", args.geometry,
                                      "--reps", str(args.reps), "--child", f"{tmp}/{name}.pt"],
                                     check=True, capture_output=True, text=True).stdout
                ms[name].append(float(out.split()[-1]))
        (kv_o, q_o), (kv_n, q_n) = torch.load(f"{tmp}/old.pt"), torch.load(f"{tmp}/new.pt")
    assert torch.allclose(kv_o, kv_n, atol=1e-6) and torch.allclose(q_o, q_n, atol=1e-6), "outputs differ"
    o, n = statistics.median(ms["old"]), statistics.median(ms["new"])
    g = args.geometry
    print(f"{g}: per-layer cache write + query RoPE, fp32, 1 thread, median of {args.rounds} rounds x "
          f"{args.reps}: old {o:.3f} ms, new {n:.3f} ms ({o / n:.2f}x); kv and rotated q equal to 1e-6")


if __name__ == "__main__":
    main()
