"""Bad input to the cache, its policy and its ops raises an error that names the problem; the ops trace."""
from __future__ import annotations

import pytest
import torch

from rfrt import ops
from rfrt.cache import CacheLayout, CachePolicy, RingCache


def small_ring(**kw):
    policy = CachePolicy(**kw)
    return policy, RingCache(CacheLayout(policy, layers=2, heads=2, head_dim=8, grid_h=2, grid_w=2))


def qkv(policy, dtype=torch.float32):
    return [torch.randn(1, 4 * policy.chunk_frames, 2, 8, dtype=dtype) for _ in range(3)]  # 2x2 tokens per frame


@pytest.mark.parametrize("kw,match", [
    (dict(window_frames=8), "multiple of chunk_frames"),
    (dict(window_frames=3), "positive multiple"),
    (dict(sink_ema_alpha=1.5), r"sink_ema_alpha must lie in \[0, 1\]"),
    (dict(sink_ema_alpha=-0.1), r"sink_ema_alpha must lie in \[0, 1\]"),
    (dict(sink_frames=2), "sink_frames .* must equal chunk_frames"),
    (dict(chunk_frames=0), "chunk_frames must be a positive int"),
    (dict(tokens_per_frame=1560), "tokens_per_frame"),  # resolution-free: the grid lives in CacheLayout
    (dict(rope_rule="rotate-half"), "rope_rule must be one of"),
    (dict(sink_precision="fp8"), "sink_precision must be one of"),
])
def test_policy_rejects_bad_values(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        CachePolicy(**kw)


def test_policy_sizes_are_derived():
    from rfrt.models import ModelConfig

    p = CachePolicy()  # the release: 3/9/3 frames of 1560 tokens (832x480: a 30 x 52 token grid)
    layout = CacheLayout.for_model(ModelConfig(), p, 30, 52)
    assert (layout.tokens_per_frame, layout.chunk_tokens, layout.window_tokens, p.ring_chunks) == (1560, 4680, 14040, 2)
    assert (layout.layers, layout.heads, layout.head_dim, layout.rope_theta) == (30, 12, 128, 10000.0)
    assert layout.kv_shape() == (2, 30, 1, 14040, 12, 128) and layout.sink_acc_shape()[3] == 4680
    assert [layout.valid_tokens(c) for c in range(4)] == [4680, 9360, 14040, 14040]
    assert [p.chunk_slot_frame(c) for c in range(6)] == [0, 3, 6, 3, 6, 3]
    assert [p.evicted_chunk(c) for c in range(6)] == [None, None, None, 1, 2, 3]
    assert [p.valid_frames(c) for c in range(4)] == [3, 6, 9, 9]
    assert [p.sink_position(c) for c in range(5)] == [0, 0, 0, 3, 6]


def test_policy_slot_map_matches_the_kernel_header():
    from rfrt import _C

    for sink, window in ((3, 9), (2, 8), (1, 3), (4, 16)):
        policy = CachePolicy(sink_frames=sink, chunk_frames=sink, window_frames=window)
        for frame in range(60):
            assert _C.slot_frame(frame, sink, window) == policy.slot_frame(frame)


def test_cache_rejects_wrong_dtype_shape_layout_and_order():
    policy, ring = small_ring()
    with pytest.raises(RuntimeError, match="begin_chunk"):
        ring(0, *qkv(policy))
    ring.begin_chunk()
    q, k, v = qkv(policy)
    with pytest.raises(TypeError, match="k must have dtype torch.float32, got torch.float64"):
        ring(0, q, k.double(), v)
    with pytest.raises(ValueError, match="expects a chunk of 12 tokens"):
        ring(0, q[:, :4], k[:, :4], v[:, :4])
    with pytest.raises(ValueError, match=r"heads=2"):
        ring(0, q, k[:, :, :1].contiguous(), v[:, :, :1].contiguous())
    with pytest.raises(ValueError, match="layer 5 is outside"):
        ring(5, q, k, v)
    with pytest.raises(ValueError, match="expected chunk 1, got 3"):
        ring.begin_chunk(3)
    with pytest.raises(TypeError, match="CacheLayout"):
        RingCache(policy)
    with pytest.raises(ValueError, match="even head_dim"):
        RingCache(CacheLayout(policy, layers=1, heads=1, head_dim=7, grid_h=2, grid_w=2))


def test_ops_reject_non_contiguous_wrong_device_and_writes_past_the_ring():
    policy, ring = small_ring()
    q, k, v = qkv(policy)
    cursor = torch.tensor([0, 0])
    kt = k.transpose(1, 2).contiguous().transpose(1, 2)  # same shape, not contiguous
    with pytest.raises(ValueError, match="k must be contiguous"):
        ops.cache_write(ring.kv, ring.sink_acc, kt, v, cursor, 0, 4, 2, 1e4)
    with pytest.raises(ValueError, match="is on meta but the cache is on cpu"):
        ops.cache_write(ring.kv, ring.sink_acc, k.to("meta"), v, cursor, 0, 4, 2, 1e4)
    with pytest.raises(TypeError, match="kv has unsupported dtype torch.int64"):
        ops.cache_write(ring.kv.long(), ring.sink_acc, k, v, cursor, 0, 4, 2, 1e4)
    with pytest.raises(TypeError, match="cursor must have dtype torch.int64"):
        ops.cache_write(ring.kv, ring.sink_acc, k, v, cursor.int(), 0, 4, 2, 1e4)
    past = torch.tensor([ring.layout.window_tokens - 4, 0])
    with pytest.raises(ValueError, match="past the ring"):
        ops.cache_write(ring.kv, ring.sink_acc, k, v, past, 0, 4, 2, 1e4)
    with pytest.raises(ValueError, match=r"sink_ema_alpha must lie in \[0, 1\]"):
        ops.sink_fold(ring.kv, ring.sink_acc, torch.tensor([12, 3, 0]), 2.0, 4, 2, 1e4)
    with pytest.raises(ValueError, match="evicted slot must lie inside the ring"):
        ops.sink_fold(ring.kv, ring.sink_acc, torch.tensor([0, 3, 0]), 0.9, 4, 2, 1e4)
    with pytest.raises(ValueError, match=r"keys \(999\) must lie in"):
        ops.ring_attention(ring.kv, q, 0, 999, 0.3)
    with pytest.raises(ValueError, match="not a whole number of frames"):
        ops.rope_apply(q[:, :5].contiguous(), torch.tensor([0]), 4, 2, 1e4)


def test_rope_kernel_matches_reference_rope():
    from rfrt.rope import apply_rope, rope_angles

    x = torch.randn(2, 3 * 20, 3, 128, dtype=torch.float64).float()
    got = ops.rope_apply(x, torch.tensor([1000]), 20, 5, 1e4)
    want = apply_rope(x, rope_angles(128, torch.arange(1000, 1003), 4, 5))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    y = x.clone()
    ops.rope_apply_(y, torch.tensor([1000]), 20, 5, 1e4)
    assert torch.equal(y, got)


def test_custom_ops_pass_opcheck():
    """Schemas, fake (meta) implementations and mutation annotations are consistent (torch.library.opcheck)."""
    policy, ring = small_ring()
    ring.begin_chunk()
    q, k, v = qkv(policy)
    tests = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(ops.cache_write, (ring.kv, ring.sink_acc, k, v, torch.tensor([12, 3]), 1, 4, 2, 1e4),
                          test_utils=tests)
    torch.library.opcheck(ops.sink_fold, (ring.kv, ring.sink_acc, torch.tensor([12, 3, 0]), 0.9, 4, 2, 1e4),
                          test_utils=tests)
    torch.library.opcheck(ops.rope_apply, (q, torch.tensor([3]), 4, 2, 1e4), test_utils=tests)
    torch.library.opcheck(ops.ring_attention, (ring.kv, q, 0, 24, 0.35), test_utils=tests)


def test_build_info_reports_how_the_core_was_built():
    import rfrt

    info = rfrt.build_info()
    assert info["version"] == rfrt.__version__
    assert isinstance(info["cuda"], bool)
    assert info["cuda"] == bool(info["cuda_architectures"])


def test_ops_trace_under_torch_compile_and_export():
    """fullgraph compile (no graph breaks) and torch.export both see the custom ops and match eager."""
    policy, eager = small_ring()
    _, traced = small_ring()
    for cache in (eager, traced):
        for _ in range(4):
            cache.begin_chunk()
    q, k, v = qkv(policy)

    def step(cache, q, k, v):
        return cache(1, q, k, v)

    compiled = torch.compile(lambda q, k, v: step(traced, q, k, v), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), step(eager, q, k, v), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(traced.kv, eager.kv)

    class Rotate(torch.nn.Module):
        def forward(self, x, cursor):
            return ops.rope_apply(x, cursor, 4, 2, 1e4)

    exported = torch.export.export(Rotate(), (q, torch.tensor([3])))
    assert any("rfrt.rope_apply" in str(n.target) for n in exported.graph.nodes)
    torch.testing.assert_close(exported.module()(q, torch.tensor([3])), Rotate()(q, torch.tensor([3])))
