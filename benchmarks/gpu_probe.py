"""The measurements of one GPU session (benchmarks/gpu_session.sh), one JSON line per figure as it comes.

    python benchmarks/gpu_probe.py STAGE [--tiny] [--device cuda|cpu] [--out probe.jsonl] [--deadline EPOCH]

Stages, highest value first in gpu_session.sh:
  stream    the random-weight 1.3B DiT streaming DiT-only (graphs x modulation, eager, FP8): ms/chunk, FPS,
            peak memory, graph-vs-eager difference, first chunk cold and warm, the plain reference loop
  micro     SDPA at the real views (torch's choice and each forced kernel), bf16 GEMMs, FP8 quantise and
            _scaled_mm, the rfrt kernels at the real shape, copy and matmul peaks
  kernels   RingCache on the device against the CPU kernels on the same inputs (real geometry, 2 layers),
            finite outputs, the error flag, opcheck on device tensors
  profile   one torch.profiler chunk: CUDA time per category and the top kernels (--profile-out)
  sanitize  a tiny RingCache workload for compute-sanitizer (memcheck / initcheck)
--tiny shrinks every shape so that `--device cpu --tiny` dry-runs the whole probe on a CPU (tests and CI do).
--no-core measures without rfrt._C (a static-K/V SDPA backend) when the CUDA build failed. --deadline: stop
starting new measurements after this wall-clock time (each stage is also time-boxed by the shell).
Timing: CUDA events (perf_counter on a CPU), warm-ups first, median of the timed repeats, random data.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

ARGS = None


def emit(stage: str, **rec) -> None:
    """Print one JSON line and append it to --out at once (a killed run keeps what it measured)."""
    line = json.dumps({"stage": stage, **rec}, default=str)
    print(line, flush=True)
    if ARGS.out:
        with open(ARGS.out, "a") as f:
            f.write(line + "\n")


def late() -> bool:
    return ARGS.deadline is not None and time.time() > ARGS.deadline


def sync() -> None:
    if ARGS.device == "cuda":
        torch.cuda.synchronize()


def timed(fn, warm: int = 3, reps: int = 20) -> float:
    """Median seconds of fn()."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        if ARGS.device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def geometry() -> dict:
    """The release cache geometry (1560 tokens/frame, 12x128 heads) or a tiny one."""
    if ARGS.tiny:
        return dict(grid_h=4, grid_w=6, heads=2, head_dim=16, dim=32)
    return dict(grid_h=30, grid_w=52, heads=12, head_dim=128, dim=1536)


def dtype() -> torch.dtype:
    return torch.bfloat16 if ARGS.device == "cuda" else torch.float32


# ---------------------------------------------------------------------------------------------------------
def stage_kernels() -> None:
    from rfrt import ops
    from rfrt.cache import CacheLayout, CachePolicy, RingCache

    g = geometry()
    layout = CacheLayout(CachePolicy(), layers=2, heads=g["heads"], head_dim=g["head_dim"], grid_h=g["grid_h"],
                         grid_w=g["grid_w"])
    for dt in ((torch.float32, torch.bfloat16) if ARGS.device == "cuda" else (torch.float32,)):
        kw = dict(dtype=dt)
        dev, ref = RingCache(layout, device=ARGS.device, **kw), RingCache(layout, device="cpu", **kw)
        dev.kv.fill_(float("nan"))  # poison: a slot read before it is written shows up as a non-finite output
        gen = torch.Generator().manual_seed(0)
        worst, finite = 0.0, True
        for chunk in range(5):
            dev.begin_chunk()
            ref.begin_chunk()
            for layer in range(2):
                q, k, v = (torch.randn(1, layout.chunk_tokens, g["heads"], g["head_dim"], generator=gen).to(dt)
                           for _ in range(3))
                out_d = dev(layer, *(t.to(ARGS.device) for t in (q, k, v)))
                out_r = ref(layer, q, k, v)
                finite &= bool(out_d.isfinite().all())
                worst = max(worst, (out_d.float().cpu() - out_r.float()).abs().max().item())
        kv_err = (dev.kv.float().cpu() - ref.kv.float()).abs().max().item()
        acc_err = (dev.sink_acc.float().cpu() - ref.sink_acc.float()).abs().max().item()
        try:
            dev.check()
            flag = "clean"
        except RuntimeError as e:
            flag = str(e)
        emit("kernels", name=f"device-vs-cpu-{str(dt)[6:]}", kv_max_abs=kv_err, sink_acc_max_abs=acc_err,
             out_max_abs=worst, finite=finite, error_flag=flag,
             ok=finite and flag == "clean" and kv_err <= (1e-5 if dt == torch.float32 else 2e-2))
    # a corrupted device cursor must set the flag, not write
    dev = RingCache(layout, device=ARGS.device, **{**kw, "dtype": torch.float32})
    dev.begin_chunk()
    dev.cursors[0].fill_(layout.window_tokens)
    x = torch.randn(1, layout.chunk_tokens, g["heads"], g["head_dim"], device=ARGS.device)
    dev(0, x, x, x)
    try:
        dev.check()
        emit("kernels", name="error-flag", ok=False, detail="no error raised")
    except RuntimeError as e:
        emit("kernels", name="error-flag", ok=bool(dev.kv.abs().sum() == 0), detail=str(e)[:120])
    tests = ("test_schema", "test_faketensor")
    ring = RingCache(layout, device=ARGS.device, **kw)
    ring.begin_chunk()
    q = torch.randn(1, layout.chunk_tokens, g["heads"], g["head_dim"], device=ARGS.device, dtype=kw["dtype"])
    for name, op, args in (
            ("cache_write", ops.cache_write, (ring.kv, ring.sink_acc, q, q, q, ring.cursors[0], ring.rope_space,
                                              ring.rope_time, 1, layout.tokens_per_frame, ring.error)),
            ("rope_apply", ops.rope_apply, (q, ring.cursors[1], layout.tokens_per_frame, g["grid_w"], layout.rope_theta))):
        try:
            torch.library.opcheck(op, args, test_utils=tests)
            emit("kernels", name=f"opcheck-{name}", ok=True)
        except Exception as e:  # noqa: BLE001 - recorded, the session goes on
            emit("kernels", name=f"opcheck-{name}", ok=False, detail=str(e)[:200])


# ---------------------------------------------------------------------------------------------------------
def stage_micro() -> None:
    from rfrt.fast.attention import sdpa, sdpa_choice

    g, dev, dt = geometry(), ARGS.device, dtype()
    tpf, H, D = g["grid_h"] * g["grid_w"], g["heads"], g["head_dim"]
    lq = 3 * tpf
    window = torch.randn(1, 9 * tpf, H, D, device=dev, dtype=dt)  # BLHD ring, viewed as SDPA reads it
    q = torch.randn(1, lq, H, D, device=dev, dtype=dt).transpose(1, 2)
    for frames in (3, 6, 9):
        if late():
            return
        k = window[:, : frames * tpf].transpose(1, 2)
        flop = 4 * lq * frames * tpf * D * H
        rec = dict(name=f"sdpa-keys{frames * tpf}", chosen=sdpa_choice(q, k, k, D ** -0.5))
        for backend in ("auto", "cudnn", "flash", "efficient") + (("math",) if ARGS.tiny else ()):
            try:
                s = timed(lambda: sdpa(q, k, k, D ** -0.5, backend), warm=2, reps=10)
                rec[f"{backend}_ms"], rec[f"{backend}_tflops"] = s * 1e3, flop / s / 1e12
            except RuntimeError as e:
                rec[f"{backend}_ms"] = f"unavailable: {str(e)[:80]}"
        emit("micro", **rec)
    dim, ffn = g["dim"], (8960 if not ARGS.tiny else 64)
    x = torch.randn(lq, dim, device=dev, dtype=dt)
    for n, kdim in ((dim, dim), (3 * dim, dim), (ffn, dim), (dim, ffn)):
        w = torch.randn(n, kdim, device=dev, dtype=dt) * kdim ** -0.5
        xi = x if kdim == dim else torch.randn(lq, kdim, device=dev, dtype=dt)
        s = timed(lambda: F.linear(xi, w), warm=2, reps=10)
        emit("micro", name=f"gemm-{lq}x{kdim}x{n}", ms=s * 1e3, tflops=2 * lq * kdim * n / s / 1e12)
    from rfrt.fast.fp8 import FP8Linear, fused_quantizer, quantize_fp8

    xq = torch.randn(lq, dim, device=dev, dtype=dt)
    rec = dict(name=f"fp8-quantize-{lq}x{dim}", unfused_ms=timed(lambda: quantize_fp8(xq, "row"), 2, 10) * 1e3)
    fq = fused_quantizer("row")
    try:
        rec["fused_ms"] = timed(lambda: fq(xq), 2, 10) * 1e3
    except Exception as e:  # noqa: BLE001 - inductor may be missing a compiler on a dry run
        rec["fused_ms"] = f"failed: {str(e)[:80]}"
    emit("micro", **rec)
    lin = torch.nn.Linear(dim, 3 * dim, device=dev, dtype=dt)
    try:
        layer = FP8Linear(lin, "row", quantizer=None if isinstance(rec["fused_ms"], str) else fq)
        emit("micro", name=f"fp8-qkv-{lq}x{dim}x{3 * dim}", ms=timed(lambda: layer(xq), 2, 10) * 1e3,
             bf16_ms=timed(lambda: lin(xq), 2, 10) * 1e3, bias_in_epilogue=layer._epilogue_bias)
    except Exception as e:  # noqa: BLE001 - recorded, the stage goes on
        emit("micro", name=f"fp8-qkv-{lq}x{dim}x{3 * dim}", error=str(e)[:200])
    if not ARGS.no_core:
        from rfrt.cache import CacheLayout, CachePolicy, RingCache

        layout = CacheLayout(CachePolicy(), layers=30 if not ARGS.tiny else 2, heads=H, head_dim=D,
                             grid_h=g["grid_h"], grid_w=g["grid_w"])
        cache = RingCache(layout, dtype=dt, device=dev)
        for _ in range(4):
            cache.begin_chunk()
        qkv = [torch.randn(1, lq, H, D, device=dev, dtype=dt) for _ in range(3)]
        s = timed(lambda: cache(0, *qkv), 3, 20)
        emit("micro", name="rfrt-write+sdpa-layer", ms=s * 1e3)
        p = cache._write_params[0]
        out = torch.empty_like(qkv[0])
        from rfrt import ops
        s = timed(lambda: ops.launch_write(p, qkv[0], out, qkv[1], qkv[2]), 3, 20)
        moved = 5 * qkv[0].numel() * qkv[0].element_size()  # read q, k, v; write q, k (v copied: +2)
        emit("micro", name="rfrt-cache_write-qkv", ms=s * 1e3, gbs=(moved + 2 * qkv[0].numel() *
                                                                   qkv[0].element_size()) / s / 1e9)
        s = timed(cache.fold, 2, 10)
        n = cache.layers * layout.sink_tokens * H * D
        emit("micro", name="rfrt-sink_fold", ms=s * 1e3, gbs=2 * n * (2 * dt.itemsize + 8 + dt.itemsize) / s / 1e9)
        emit("micro", name="rfrt-time_rows", ms=timed(cache.time_rows, 3, 20) * 1e3)
    if dev == "cuda":
        src = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
        dst = torch.empty_like(src)
        s = timed(lambda: dst.copy_(src), 2, 10)
        a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        m = timed(lambda: a @ a, 3, 10)
        emit("micro", name="peaks", copy_gbs=2 * src.numel() / s / 1e9, matmul_tflops=2 * 8192 ** 3 / m / 1e12)


# ---------------------------------------------------------------------------------------------------------
def _dit_config():
    from rfrt.models import ModelConfig

    if ARGS.tiny:
        return ModelConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=16,
                           freq_dim=16, text_len=8), 4 * 8 * 2, 6 * 8 * 2
    return ModelConfig(), 480, 832


def _generator(runtime, fp8: bool = False):
    import bench_speed as bs

    from rfrt.generator import StreamGenerator
    from rfrt.model_dir import LoadedModel, VideoSpec

    cfg, h, w = _dit_config()
    name = "probe-tiny" if ARGS.tiny else "probe-1.3b"
    bs.CONFIGS.setdefault(name, bs.SpeedConfig(cfg, h, w, ARGS.device, dtype(), bs.TAEHVConfig(), {}, rounds=3))
    model = LoadedModel(dit=bs._random_dit(name, fp8), text_encoder=bs._Text(cfg),
                        decoder=bs._NoDecoder(cfg.out_dim), video=VideoSpec(h, w, 16))
    return StreamGenerator(model, device=ARGS.device, dtype=dtype(), runtime=runtime)


def stage_stream() -> None:
    from rfrt.fast import RuntimeConfig

    if ARGS.no_core:
        return stage_stream_torch_only()
    configs = [("graphs-bf16mod", dict(cuda_graphs=True, modulation="bf16"), False),
               ("graphs-fp32mod", dict(cuda_graphs=True), False),
               ("eager-fp32mod", dict(), False),
               ("graphs-bf16mod-fp8", dict(cuda_graphs=True, modulation="bf16", fp8=True), True)]
    reference = {}
    for name, kw, fp8 in configs:
        if late():
            emit("stream", name=name, skipped="deadline")
            continue
        try:
            _stream_config(name, kw, fp8, configs, reference)
        except Exception as e:  # noqa: BLE001 - one failing config must not cost the others
            emit("stream", name=name, error=f"{type(e).__name__}: {str(e)[:200]}")
    if not late():
        import bench_speed as bs

        name = "probe-tiny" if ARGS.tiny else "probe-1.3b"
        loop = bs._ReferenceLoop(name)
        loop.step()
        s = timed(loop.step, warm=0, reps=2)
        emit("stream", name="reference-loop", ms_per_chunk=s * 1e3,
             fps_dit_only=4 * loop.policy.chunk_frames / s)


def _stream_config(name, kw, fp8, configs, reference) -> None:
    from rfrt.fast import RuntimeConfig

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    gen = _generator(RuntimeConfig(**kw), fp8)
    t0 = time.perf_counter()
    gen.reset("a red ball rolling", seed=0)
    first = gen.step()
    sync()
    cold = time.perf_counter() - t0
    latents = [first.latents.float().cpu()]
    for _ in range(4):
        latents.append(gen.step().latents.float().cpu())
    sync()
    per = []
    for _ in range(3 if ARGS.tiny else 6):
        t1 = time.perf_counter()
        gen.step()
        sync()
        per.append(time.perf_counter() - t1)

    def warm_first():
        gen.reset("a red ball rolling", seed=1)
        gen.step()
        sync()
    warm = timed(warm_first, warm=0, reps=2)
    ms = statistics.median(per)
    frames = 4 * gen.policy.chunk_frames
    rec = dict(name=name, ms_per_chunk=ms * 1e3, fps_dit_only=frames / ms, first_chunk_cold_s=cold,
               first_chunk_warm_s=warm, finite=all(bool(x.isfinite().all()) for x in latents))
    if torch.cuda.is_available():
        rec["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    if name == configs[0][0] and not late():  # a fresh generator warmed up before its first prompt
        fresh = _generator(RuntimeConfig(**kw), fp8)
        t1 = time.perf_counter()
        fresh.warmup()
        sync()
        rec["warmup_s"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        fresh.reset("a red ball rolling", seed=0)
        fresh.step()
        sync()
        rec["first_chunk_after_warmup_s"] = time.perf_counter() - t1
        del fresh
    ref = reference.setdefault(kw.get("modulation", "fp32") + str(fp8), latents)
    if ref is not latents:  # same seed and precision, the other of graphs / eager
        rec["max_abs_graphs_vs_eager"] = max((a - b).abs().max().item() for a, b in zip(latents, ref))
    emit("stream", **rec)
    del gen


def stage_stream_torch_only() -> None:
    """Without rfrt._C: DiT forwards over a static K/V (SDPA), eager, to still time the model."""
    import bench_speed as bs

    cfg, h, w = _dit_config()
    name = "probe-tiny" if ARGS.tiny else "probe-1.3b"
    bs.CONFIGS.setdefault(name, bs.SpeedConfig(cfg, h, w, ARGS.device, dtype(), bs.TAEHVConfig(), {}, rounds=3))
    dit = bs._random_dit(name, False)
    gh, gw = h // 16, w // 16
    keys = [torch.randn(1, cfg.num_heads, 9 * gh * gw, cfg.head_dim, device=ARGS.device, dtype=dtype())
            for _ in range(cfg.num_layers)]

    def backend(layer, q, k, v, grid):
        return F.scaled_dot_product_attention(q.transpose(1, 2), keys[layer], keys[layer]).transpose(1, 2)

    x = torch.randn(1, 3, cfg.in_dim, h // 8, w // 8, device=ARGS.device, dtype=dtype())
    t = torch.full((1, 3), 500.0, device=ARGS.device)
    text = dit.cross_kv(torch.randn(1, cfg.text_len, cfg.text_dim, device=ARGS.device, dtype=dtype()))
    with torch.no_grad():
        s = timed(lambda: dit(x, t, text, backend), warm=2, reps=5)
    emit("stream", name="torch-only-forward", ms_per_forward=s * 1e3, est_fps_dit_only=12 / (5 * s))


# ---------------------------------------------------------------------------------------------------------
def stage_profile() -> None:
    from torch.profiler import ProfilerActivity, profile

    from rfrt.fast import RuntimeConfig

    gen = _generator(RuntimeConfig(modulation="bf16"))
    gen.reset("a red ball rolling", seed=0)
    for _ in range(3):
        gen.step()
    sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ARGS.device == "cuda" else [])
    with profile(activities=acts) as prof:
        gen.step()
        sync()
    cats = {"gemm": ("gemm", "cutlass", "sm90_xmma", "nvjet", "addmm", "mm"), "attention": ("flash", "fmha", "cudnn",
            "attention", "sdpa"), "rfrt": ("rfrt",), "elementwise": ("elementwise", "vectorized", "reduce", "norm",
                                                                     "triton")}
    totals = dict.fromkeys(list(cats) + ["other"], 0.0)
    rows = []
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", 0.0) if ARGS.device == "cuda" else ev.self_cpu_time_total
        if t <= 0:
            continue
        key = ev.key.lower()
        cat = next((c for c, words in cats.items() if any(wd in key for wd in words)), "other")
        totals[cat] += t / 1e3
        rows.append((t / 1e3, ev.count, ev.key[:110]))
    rows.sort(reverse=True)
    emit("profile", name="chunk-by-category-ms", **{k: round(v, 3) for k, v in totals.items()})
    if ARGS.profile_out:
        with open(ARGS.profile_out, "w") as f:
            f.write("ms\tcalls\tkernel (one chunk, graphs off, bf16 modulation)\n")
            for t, n, k in rows[:25]:
                f.write(f"{t:.3f}\t{n}\t{k}\n")


def stage_sanitize() -> None:
    from rfrt.cache import CacheLayout, CachePolicy, RingCache

    layout = CacheLayout(CachePolicy(), layers=2, heads=2, head_dim=16, grid_h=4, grid_w=6)
    for dt in (torch.float32, torch.bfloat16) if ARGS.device == "cuda" else (torch.float32,):
        for attention in ("sdpa", "core"):
            cache = RingCache(layout, dtype=dt, device=ARGS.device, attention=attention)
            for _ in range(5):
                cache.begin_chunk()
                for layer in range(2):
                    x = torch.randn(1, layout.chunk_tokens, 2, 16, device=ARGS.device, dtype=dt)
                    out = cache(layer, x, x, x)
            sync()
            cache.check()
            emit("sanitize", name=f"{str(dt)[6:]}-{attention}", finite=bool(out.isfinite().all()))


STAGES = dict(kernels=stage_kernels, micro=stage_micro, stream=stage_stream, profile=stage_profile,
              sanitize=stage_sanitize)


def main(argv=None) -> int:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=sorted(STAGES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--no-core", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--profile-out")
    ap.add_argument("--deadline", type=float)
    ARGS = ap.parse_args(argv)
    if ARGS.device == "cpu":
        torch.set_num_threads(1)
    t0 = time.perf_counter()
    STAGES[ARGS.stage]()
    emit(ARGS.stage, name="stage-done", seconds=round(time.perf_counter() - t0, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
