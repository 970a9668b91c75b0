"""The functional (export) cache backend against the runtime RingCache, forward by forward, chunk by chunk."""
import pytest
import torch

from rfrt.cache import CacheLayout, CachePolicy, RingCache
from rfrt.cache.functional import (FunctionalCacheAttention, fold_sink, rotate, step_controls,
                                   time_rope_tables)
from rfrt.rope import apply_rope, rope_angles

GRID_H, GRID_W, HEADS, HEAD_DIM, LAYERS, BATCH = 2, 3, 2, 12, 2, 1
POLICY = CachePolicy(sink_frames=2, window_frames=6, chunk_frames=2, sink_ema_alpha=0.9)
LAYOUT = CacheLayout(POLICY, layers=LAYERS, batch=BATCH, heads=HEADS, head_dim=HEAD_DIM, grid_h=GRID_H,
                     grid_w=GRID_W)
FORWARDS = 3  # denoising forwards + context pass per chunk (fewer than 5 keeps it fast; the fold is in the 1st)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _drive(chunks, masked, start_functional_at=0):
    """Run RingCache and the functional backend side by side on the same random q/k/v; return worst errors.

    Before chunk `start_functional_at` only the RingCache runs; the functional side then starts from a copy of
    its buffers (the steady-state export is handed a cache the runtime filled).
    """
    gen = torch.Generator().manual_seed(0)
    ring = RingCache(LAYOUT)
    kv = sink_acc = None
    worst = {"out": 0.0, "kv": 0.0, "acc": 0.0}
    shape = (BATCH, LAYOUT.chunk_tokens, HEADS, HEAD_DIM)
    for c in range(chunks):
        if c == start_functional_at:  # before begin_chunk: the functional side does its own fold
            kv, sink_acc = ring.kv.clone(), ring.sink_acc.clone()
        ring.begin_chunk()
        for f in range(FORWARDS):
            q, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
            want = [ring(i, q + i, k - i, v * (i + 1)) for i in range(LAYERS)]
            if kv is None:
                continue
            ctl = step_controls(LAYOUT, c, first_forward=f == 0)
            kv, sink_acc = fold_sink(LAYOUT, kv, sink_acc, ctl)
            backend = FunctionalCacheAttention(LAYOUT, kv, sink_acc, ctl, masked=masked)
            got = [backend(i, q + i, k - i, v * (i + 1)) for i in range(LAYERS)]
            kv, sink_acc = backend.updated()
            worst["out"] = max(worst["out"], max(_rel(g, w) for g, w in zip(got, want)))
            worst["kv"] = max(worst["kv"], _rel(kv, ring.kv))
            worst["acc"] = max(worst["acc"], _rel(sink_acc, ring.sink_acc))
    return worst


def test_steady_state_matches_ring_cache_over_several_chunks():
    # Chunks 3..7 evict and fold (ring of 2 chunks); the functional side starts from the runtime's cache.
    worst = _drive(chunks=8, masked=False, start_functional_at=POLICY.ring_chunks + 1)
    print("steady functional vs RingCache (max rel):", worst)
    assert max(worst.values()) <= 1e-5, worst


def test_masked_mode_matches_ring_cache_from_an_empty_cache():
    # One masked graph serves the filling chunks too (prefix of valid keys, chunk 0 seeds the sink).
    worst = _drive(chunks=6, masked=True)
    print("masked functional vs RingCache (max rel):", worst)
    assert max(worst.values()) <= 1e-5, worst


def test_a_missed_fold_is_detected():
    # The comparison can fail: skipping the fold at a chunk's first forward diverges from the RingCache.
    layout = CacheLayout(POLICY, layers=1, heads=HEADS, head_dim=HEAD_DIM, grid_h=GRID_H, grid_w=GRID_W)
    ring = RingCache(layout)
    layout = CacheLayout(POLICY, layers=1, batch=1, heads=HEADS, head_dim=HEAD_DIM, grid_h=GRID_H, grid_w=GRID_W)
    gen = torch.Generator().manual_seed(1)
    shape = (1, LAYOUT.chunk_tokens, HEADS, HEAD_DIM)
    for c in range(POLICY.ring_chunks + 2):
        if c == POLICY.ring_chunks + 1:
            kv, acc = ring.kv.clone(), ring.sink_acc.clone()
            ctl = step_controls(layout, c, first_forward=False)  # wrong: (1, 0) instead of the EMA
        ring.begin_chunk()
        q, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
        want = ring(0, q, k, v)
    backend = FunctionalCacheAttention(layout, *fold_sink(layout, kv, acc, ctl), ctl)
    assert _rel(backend(0, q, k, v), want) > 1e-4


def test_rotation_matches_reference_rope():
    pos = torch.tensor([5, 6])
    tc, ts = time_rope_tables(pos, HEAD_DIM)
    from rfrt.cache.functional import hw_rope_tables, token_rope
    cos, sin = token_rope(tc, ts, *hw_rope_tables(HEAD_DIM, GRID_H, GRID_W))
    x = torch.randn(1, 2 * GRID_H * GRID_W, HEADS, HEAD_DIM, dtype=torch.float64)
    want = apply_rope(x, rope_angles(HEAD_DIM, pos, GRID_H, GRID_W))
    assert _rel(rotate(x, cos, sin).double(), want) < 1e-6
    assert _rel(rotate(rotate(x, cos, sin), cos, sin, inverse=True), x) < 1e-6


def test_layout_and_backend_validation():
    assert CacheLayout(POLICY, layers=1, heads=1, head_dim=12, grid_h=3, grid_w=5).window_tokens == 6 * 15
    with pytest.raises(ValueError, match="grid_w"):
        CacheLayout(POLICY, layers=1, batch=1, heads=1, head_dim=12, grid_h=3, grid_w=0)
    with pytest.raises(ValueError, match="head_dim"):
        CacheLayout(POLICY, layers=1, batch=1, heads=1, head_dim=7, grid_h=GRID_H, grid_w=GRID_W)
    with pytest.raises(TypeError, match="CachePolicy"):
        CacheLayout("policy", layers=1, batch=1, heads=1, head_dim=12, grid_h=GRID_H, grid_w=GRID_W)
    ctl = step_controls(LAYOUT, 4, first_forward=True)
    with pytest.raises(ValueError, match="kv"):
        FunctionalCacheAttention(LAYOUT, torch.zeros(2, 2), torch.zeros(LAYOUT.sink_acc_shape()), ctl)
    backend = FunctionalCacheAttention(LAYOUT, torch.zeros(LAYOUT.kv_shape()), torch.zeros(LAYOUT.sink_acc_shape()),
                                       ctl)
    with pytest.raises(RuntimeError, match="not run"):
        backend.updated()


def test_reference_rounding_mode_matches_ring_cache_in_bf16():
    # sink_precision="cache" keeps a bf16 accumulator and rounds the EMA like the reference; the functional
    # fold must round the same way (an fp32 fold would differ by whole bf16 ulps).
    policy = CachePolicy(sink_frames=2, window_frames=6, chunk_frames=2, sink_ema_alpha=0.9, sink_precision="cache")
    layout = CacheLayout(policy, layers=1, batch=1, heads=HEADS, head_dim=HEAD_DIM, grid_h=GRID_H, grid_w=GRID_W)
    ring = RingCache(layout, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(2)
    shape = (1, layout.chunk_tokens, HEADS, HEAD_DIM)
    for c in range(policy.ring_chunks + 3):
        kv, acc = ring.kv.clone(), ring.sink_acc.clone()
        ring.begin_chunk()
        k, v = (torch.randn(shape, generator=gen).bfloat16() for _ in range(2))
        ring(0, k, k, v)
    new_kv, new_acc = fold_sink(layout, kv, acc, step_controls(layout, c, first_forward=True))
    assert acc.dtype == torch.bfloat16 and not torch.equal(new_acc, acc)
    assert torch.equal(new_acc, ring.sink_acc)
    assert (new_kv[:, :, :, :layout.sink_tokens].float() - ring.kv[:, :, :, :layout.sink_tokens].float()).abs().max() \
        <= 1e-2
