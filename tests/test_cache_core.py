"""The compiled ring cache against the literal SPEC §2.2 oracle, on fresh random inputs over many chunks."""
from __future__ import annotations

import pytest
import torch

from cache_harness import max_rel_error, run_pair, stream_inputs
from rfrt.cache import CacheLayout, CachePolicy, ReferenceCache, RingCache

# (sink/window/chunk frames, grid h x w, heads, head_dim, batch): the released 3/9/3 layout and others.
SHAPES = [
    pytest.param(dict(sink_frames=3, window_frames=9, chunk_frames=3), (2, 3), 2, 128, 1, id="released-3-9-3-d128"),
    pytest.param(dict(sink_frames=3, window_frames=9, chunk_frames=3), (3, 2), 3, 64, 2, id="3-9-3-d64-b2"),
    pytest.param(dict(sink_frames=2, window_frames=8, chunk_frames=2), (3, 4), 1, 64, 1, id="2-8-2-ring3"),
    pytest.param(dict(sink_frames=1, window_frames=3, chunk_frames=1), (2, 2), 4, 128, 1, id="1-3-1"),
]
CHUNKS = 16  # the EMA runs chunks - 1 - ring_chunks >= 12 times


def make_pair(policy_kw, grid, heads, head_dim, batch, *, alpha=0.999, rope_rule="window_relative",
              attention="sdpa", dtype=torch.float32, layers=2, sink_precision="fp32", judge_dtype=torch.float64):
    policy = CachePolicy(sink_ema_alpha=alpha, rope_rule=rope_rule,
                         sink_precision=sink_precision, **policy_kw)
    layout = CacheLayout(policy, layers=layers, heads=heads, head_dim=head_dim, grid_h=grid[0], grid_w=grid[1],
                         batch=batch)
    ring = RingCache(layout, dtype=dtype, attention=attention)
    ref = ReferenceCache(layout, compute_dtype=judge_dtype)
    return policy, ring, ref


@pytest.mark.parametrize("attention", ["sdpa", "core"])
@pytest.mark.parametrize("policy_kw,grid,heads,head_dim,batch", SHAPES)
def test_ring_matches_oracle_fp32(policy_kw, grid, heads, head_dim, batch, attention):
    # alpha = 0.9 makes every fold visible in the output; the released 0.999 is checked separately.
    policy, ring, ref = make_pair(policy_kw, grid, heads, head_dim, batch, alpha=0.9, attention=attention)
    assert CHUNKS - 1 - policy.ring_chunks >= 12
    fast, judge = run_pair(ring, ref, chunks=CHUNKS, layers=2, heads=heads, head_dim=head_dim, batch=batch)
    assert max_rel_error(fast, judge) <= 1e-5


@pytest.mark.parametrize("rope_rule", ["window_relative", "absolute"])
def test_released_alpha_and_both_rope_rules(rope_rule):
    kw = dict(sink_frames=3, window_frames=9, chunk_frames=3)
    policy, ring, ref = make_pair(kw, (2, 3), 2, 64, 1, alpha=0.999, rope_rule=rope_rule)
    fast, judge = run_pair(ring, ref, chunks=CHUNKS, layers=2, heads=2, head_dim=64)
    assert max_rel_error(fast, judge) <= 1e-5


def test_oracle_detects_semantic_mistakes():
    """The comparison above can fail: a different alpha or rope rule is far outside its tolerance."""
    kw = dict(sink_frames=3, window_frames=9, chunk_frames=3)
    policy, _, ref = make_pair(kw, (2, 3), 2, 64, 1, alpha=0.9)
    wrong_alpha = RingCache(CacheLayout(CachePolicy(sink_ema_alpha=0.8), layers=2, heads=2, head_dim=64, grid_h=2,
                                        grid_w=3))
    fast, judge = run_pair(wrong_alpha, ref, chunks=8, layers=2, heads=2, head_dim=64)
    assert max_rel_error(fast, judge) > 1e-3
    _, _, ref = make_pair(kw, (2, 3), 2, 64, 1, alpha=0.9)
    wrong_rope = RingCache(CacheLayout(CachePolicy(sink_ema_alpha=0.9, rope_rule="absolute"), layers=2, heads=2,
                                       head_dim=64, grid_h=2, grid_w=3))
    fast, judge = run_pair(wrong_rope, ref, chunks=8, layers=2, heads=2, head_dim=64)
    assert max_rel_error(fast, judge) > 1e-3


def test_sink_accumulator_is_the_closed_form_ema():
    """After each fold, sink V == alpha * previous sink V + (1 - alpha) * the evicted chunk's context-pass V."""
    policy = CachePolicy(sink_ema_alpha=0.999)
    ring = RingCache(CacheLayout(policy, layers=1, heads=1, head_dim=8, grid_h=2, grid_w=2))
    gen = torch.Generator().manual_seed(3)
    context_v, expected = {}, None
    for c in range(10):
        ring.begin_chunk()
        victim = policy.evicted_chunk(c)
        if victim is not None:
            expected = 0.999 * expected + (1 - 0.999) * context_v.pop(victim).double()
            torch.testing.assert_close(ring.sink_acc[1, 0, 0].double(), expected, rtol=1e-6, atol=1e-6)
        for _ in range(5):
            q, k, v = (torch.randn(1, ring.layout.chunk_tokens, 1, 8, generator=gen) for _ in range(3))
            ring(0, q, k, v)
        context_v[c] = v[0]
        if c == 0:
            expected = v[0].double()


def _bf16_errors(attention):
    kw = dict(sink_frames=3, window_frames=9, chunk_frames=3)
    policy, ring, judge = make_pair(kw, (2, 3), 2, 128, 1, alpha=0.9, attention=attention, dtype=torch.bfloat16)
    fast, exact = run_pair(ring, judge, chunks=CHUNKS, layers=2, heads=2, head_dim=128,
                           dtype=torch.bfloat16, judge_dtype=torch.float32)
    _, _, torch_bf16 = make_pair(kw, (2, 3), 2, 128, 1, alpha=0.9, judge_dtype=torch.bfloat16)
    _, _, judge2 = make_pair(kw, (2, 3), 2, 128, 1, alpha=0.9)
    ours_torch, exact2 = run_pair(torch_bf16, judge2, chunks=CHUNKS, layers=2, heads=2, head_dim=128,
                                  dtype=torch.bfloat16, judge_dtype=torch.float32)
    return max_rel_error(fast, exact), max_rel_error(ours_torch, exact2)


@pytest.mark.parametrize("attention", ["sdpa", "core"])
def test_ring_bf16_error_is_within_torch_bf16_error(attention):
    ours, torchs = _bf16_errors(attention)
    assert torchs > 0
    assert ours <= 3.0 * torchs, (ours, torchs)


def test_reference_rounding_mode_reproduces_bf16_sink():
    """sink_precision='cache' keeps the sink in bf16 with the public code's rounding: V sink is bit-exact."""
    kw = dict(sink_frames=3, window_frames=9, chunk_frames=3)
    policy, ring, ref = make_pair(kw, (2, 3), 1, 64, 1, alpha=0.999, dtype=torch.bfloat16,
                                  sink_precision="cache", layers=1)
    run_pair(ring, ref, chunks=8, layers=1, heads=1, head_dim=64, dtype=torch.bfloat16)
    assert ring.sink_acc.dtype == torch.bfloat16
    assert torch.equal(ring.sink_acc[1, 0], ref._layers[0].sink_v)
    policy32, ring32, ref32 = make_pair(kw, (2, 3), 1, 64, 1, alpha=0.999, dtype=torch.bfloat16, layers=1)
    run_pair(ring32, ref32, chunks=8, layers=1, heads=1, head_dim=64, dtype=torch.bfloat16)
    # in bf16, 0.999 * s rounds back to s for most elements: the fp32 accumulator must differ from that
    assert not torch.equal(ring32.sink_acc[1, 0].to(torch.bfloat16), ring.sink_acc[1, 0])


def test_ring_memory_is_allocated_once():
    policy = CachePolicy()
    ring = RingCache(CacheLayout(policy, layers=3, heads=2, head_dim=16, grid_h=2, grid_w=2))
    ptrs = (ring.kv.data_ptr(), ring.sink_acc.data_ptr())
    assert ring.kv.shape == (2, 3, 1, ring.layout.window_tokens, 2, 16)
    for _, forward, layer, q, k, v in stream_inputs(ring.layout, chunks=12, layers=3, heads=2, head_dim=16):
        if forward == 0 and layer == 0:
            ring.begin_chunk()
        ring(layer, q, k, v)
    assert (ring.kv.data_ptr(), ring.sink_acc.data_ptr()) == ptrs
