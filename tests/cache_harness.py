"""Drive a cache (RingCache or ReferenceCache) through a stream of chunks with the same random inputs."""
from __future__ import annotations

import torch

FORWARDS_PER_CHUNK = 5  # 4 denoising forwards + the context pass (SPEC §2.1)


def stream_inputs(layout, *, chunks, layers, heads, head_dim, batch=1, seed=0, dtype=torch.float32):
    """Yield (chunk, forward, layer, q, k, v): fresh random q/k/v per forward, like the real model's.

    layout: the caches' rfrt.cache.CacheLayout (its chunk_tokens)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, layout.chunk_tokens, heads, head_dim)
    for c in range(chunks):
        for f in range(FORWARDS_PER_CHUNK):
            for layer in range(layers):
                q, k, v = (torch.randn(shape, generator=gen).to(dtype) for _ in range(3))
                yield c, f, layer, q, k, v


def run_pair(fast, judge, *, chunks, layers, heads, head_dim, batch=1, seed=0, dtype=torch.float32,
             judge_dtype=None, device="cpu"):
    """Feed both caches the same stream; return per-call outputs (fast, judge) as lists."""
    outs_fast, outs_judge, last = [], [], -1
    for c, _, layer, q, k, v in stream_inputs(fast.layout, chunks=chunks, layers=layers, heads=heads,
                                              head_dim=head_dim, batch=batch, seed=seed, dtype=dtype):
        if c != last:
            fast.begin_chunk()
            judge.begin_chunk()
            last = c
        outs_fast.append(fast(layer, q.to(device), k.to(device), v.to(device)).cpu())
        jd = judge_dtype or dtype
        outs_judge.append(judge(layer, q.to(jd), k.to(jd), v.to(jd)))
    return outs_fast, outs_judge


def max_rel_error(a: list, b: list) -> float:
    """max |a - b| / max |b| over all calls, in float64."""
    num = max((x.double() - y.double()).abs().max().item() for x, y in zip(a, b))
    den = max(y.double().abs().max().item() for y in b)
    return num / den
