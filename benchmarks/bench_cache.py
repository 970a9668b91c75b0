"""Per-chunk cache update + attention: the compiled ring cache against the plain-PyTorch reference oracle.

CPU suite: a model-shaped but CPU-sized config (fp32). GPU suite (skips without CUDA): the released shape —
30 layers, 12 heads x 128, 4680 query and 14040 key tokens, bf16 — reporting achieved attention TFLOP/s and
EMA-fold GB/s against peaks measured on the same device in the same run.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from rfrt.cache import CacheLayout, CachePolicy, ReferenceCache, RingCache

# name -> (grid_h, grid_w, layers, heads, head_dim)
CPU_CONFIGS = {"cpu-small": (8, 8, 4, 4, 64)}
FORWARDS = 5


def _inputs(layout, layers, heads, head_dim, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (1, layout.chunk_tokens, heads, head_dim)
    return [[tuple(torch.randn(shape, generator=g).to(device, dtype) for _ in range(3)) for _ in range(layers)]
            for _ in range(FORWARDS)]


def _chunk(cache, inputs):
    """One chunk: begin (fold when due) + 5 forwards x all layers of cache write + attention."""
    cache.begin_chunk()
    for per_layer in inputs:
        for layer, (q, k, v) in enumerate(per_layer):
            out = cache(layer, q, k, v)
    return out


def _warm(cache, inputs, chunks=4):
    for _ in range(chunks):  # past the filling chunks: steady state, every chunk folds
        _chunk(cache, inputs)


@pytest.mark.parametrize("impl", ["ring-sdpa", "ring-core", "reference"])
@pytest.mark.parametrize("name", list(CPU_CONFIGS))
def test_cpu_chunk_update_and_attention(benchmark, name, impl):
    gh, gw, layers, heads, head_dim = CPU_CONFIGS[name]
    policy = CachePolicy()
    layout = CacheLayout(policy, layers=layers, heads=heads, head_dim=head_dim, grid_h=gh, grid_w=gw)
    if impl == "reference":
        cache = ReferenceCache(layout, compute_dtype=torch.float32)
    else:
        cache = RingCache(layout, attention=impl.split("-")[1])
    inputs = _inputs(layout, layers, heads, head_dim, torch.float32, "cpu")
    _warm(cache, inputs)
    benchmark.extra_info.update(config=name, impl=impl, policy=dataclasses.asdict(policy), layers=layers,
                                heads=heads, head_dim=head_dim, dtype="float32",
                                reference=f"test_cpu_chunk_update_and_attention[{name}-reference]")
    benchmark.pedantic(_chunk, args=(cache, inputs), rounds=5, iterations=1, warmup_rounds=1)


# ---------------------------------------------------------------------------------------------------------
RELEASED = dict(grid_h=30, grid_w=52, layers=30, heads=12, head_dim=128)


def _measured_peaks(device):
    """bf16 dense matmul TFLOP/s and device-to-device copy GB/s, measured here and now."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    torch.cuda.synchronize()
    tflops = 20 * 2 * 8192**3 / (start.elapsed_time(end) / 1e3) / 1e12
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    start.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    gbs = 10 * 2 * src.numel() / (start.elapsed_time(end) / 1e3) / 1e9
    return tflops, gbs


@pytest.mark.gpu
@pytest.mark.parametrize("attention", ["sdpa"])  # "core" is an O(Lq*Lk) oracle kernel: minutes at this shape
def test_gpu_released_shape_attention(benchmark, cuda_only, attention):
    layout = CacheLayout(CachePolicy(), **RELEASED)
    cache = RingCache(layout, dtype=torch.bfloat16, device="cuda", attention=attention)
    inputs = _inputs(layout, RELEASED["layers"], RELEASED["heads"], RELEASED["head_dim"], torch.bfloat16, "cuda")
    _warm(cache, inputs)
    torch.cuda.synchronize()

    def run():
        _chunk(cache, inputs)
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    peak_tflops, _ = _measured_peaks("cuda")
    lq, lk, d, h = layout.chunk_tokens, layout.window_tokens, RELEASED["head_dim"], RELEASED["heads"]
    attn_flops = FORWARDS * RELEASED["layers"] * 4 * lq * lk * d * h
    achieved = attn_flops / benchmark.stats.stats.median / 1e12
    benchmark.extra_info.update(config="released-832x480", attention=attention, dtype="bfloat16",
                                attention_tflops=achieved, matmul_peak_tflops=peak_tflops,
                                fraction_of_peak=achieved / peak_tflops)


@pytest.mark.gpu
def test_gpu_released_shape_ema_fold(benchmark, cuda_only):
    layout = CacheLayout(CachePolicy(), **RELEASED)
    cache = RingCache(layout, dtype=torch.bfloat16, device="cuda")
    cache.cursors[2].copy_(torch.tensor([layout.sink_tokens, 3, 3]))
    cache.time_rows()

    def fold():
        cache.fold()
        torch.cuda.synchronize()

    benchmark.pedantic(fold, rounds=20, iterations=1, warmup_rounds=2)
    _, peak_gbs = _measured_peaks("cuda")
    # bytes touched: read evicted K,V (cache dtype), read+write fp32 accumulators, write sink K,V (cache dtype)
    n = RELEASED["layers"] * layout.sink_tokens * RELEASED["heads"] * RELEASED["head_dim"]
    moved = 2 * n * (2 + 4 + 4 + 2)
    achieved = moved / benchmark.stats.stats.median / 1e9
    benchmark.extra_info.update(config="released-832x480", dtype="bfloat16", fold_gbs=achieved,
                                copy_peak_gbs=peak_gbs, fraction_of_peak=achieved / peak_gbs)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "cudnn", "flash", "efficient"])
def test_gpu_released_shape_sdpa_backend(benchmark, cuda_only, backend):
    """Self-attention of one layer at 14040 keys on the ring's own strided views, with each SDPA kernel forced
    (rfrt.fast.attention); records the kernel torch picks by default."""
    from rfrt.fast.attention import sdpa, sdpa_choice

    layout = CacheLayout(CachePolicy(), **{**RELEASED, "layers": 1})
    cache = RingCache(layout, dtype=torch.bfloat16, device="cuda")
    for _ in range(4):
        cache.begin_chunk()
    q = torch.randn(1, layout.chunk_tokens, RELEASED["heads"], RELEASED["head_dim"], device="cuda",
                    dtype=torch.bfloat16)
    views = cache.sdpa_inputs(0, q)
    try:
        sdpa(*views, cache.scale, backend)
    except RuntimeError as e:
        pytest.skip(f"{backend} unavailable here: {e}")

    def run():
        sdpa(*views, cache.scale, backend)
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=2)
    flop = 4 * layout.chunk_tokens * layout.window_tokens * RELEASED["head_dim"] * RELEASED["heads"]
    benchmark.extra_info.update(config="released-832x480", backend=backend,
                                default_choice=sdpa_choice(*views, cache.scale),
                                tflops=flop / benchmark.stats.stats.median / 1e12)
