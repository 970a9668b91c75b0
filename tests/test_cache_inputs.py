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


def tables(ring):
    return ring.rope_space, ring.rope_time


def test_ops_reject_non_contiguous_wrong_device_and_writes_past_the_ring():
    policy, ring = small_ring()
    q, k, v = qkv(policy)
    sp, tm = tables(ring)
    cursor = torch.tensor([0, 0])
    kt = k.transpose(1, 2).contiguous().transpose(1, 2)  # same shape, not contiguous
    with pytest.raises(ValueError, match="k must be contiguous"):
        ops.cache_write(ring.kv, ring.sink_acc, q, kt, v, cursor, sp, tm, 0, 4)
    with pytest.raises(ValueError, match="is on meta but the cache is on cpu"):
        ops.cache_write(ring.kv, ring.sink_acc, q, k.to("meta"), v, cursor, sp, tm, 0, 4)
    with pytest.raises(TypeError, match="kv has unsupported dtype torch.int64"):
        ops.cache_write(ring.kv.long(), ring.sink_acc, q, k, v, cursor, sp, tm, 0, 4)
    with pytest.raises(TypeError, match="cursor must have dtype torch.int64"):
        ops.cache_write(ring.kv, ring.sink_acc, q, k, v, cursor.int(), sp, tm, 0, 4)
    with pytest.raises(ValueError, match=r"rope_space \(4, 2, 2\) must be \[4, 2, 2\]|rope_space .* must be"):
        ops.cache_write(ring.kv, ring.sink_acc, q, k, v, cursor, sp[:3].contiguous(), tm, 0, 4)
    with pytest.raises(TypeError, match="error must have dtype torch.int32"):
        ops.cache_write(ring.kv, ring.sink_acc, q, k, v, cursor, sp, tm, 0, 4, torch.zeros(1))
    past = torch.tensor([ring.layout.window_tokens - 4, 0])
    with pytest.raises(ValueError, match="past the ring"):
        ops.cache_write(ring.kv, ring.sink_acc, q, k, v, past, sp, tm, 0, 4)
    with pytest.raises(ValueError, match=r"sink_ema_alpha must lie in \[0, 1\]"):
        ops.sink_fold(ring.kv, ring.sink_acc, torch.tensor([12, 3, 0]), sp, tm, 2.0, 4)
    with pytest.raises(ValueError, match="evicted slot must lie inside the ring"):
        ops.sink_fold(ring.kv, ring.sink_acc, torch.tensor([0, 3, 0]), sp, tm, 0.9, 4)
    with pytest.raises(ValueError, match=r"keys \(999\) must lie in"):
        ops.ring_attention(ring.kv, q, 0, 999, 0.3)
    with pytest.raises(ValueError, match="not a whole number of frames"):
        ops.rope_apply(q[:, :5].contiguous(), torch.tensor([0]), 4, 2, 1e4)
    with pytest.raises(ValueError, match="rope_time has 2 rows"):
        ops.rope_time_rows(tm[:2].contiguous(), torch.tensor([0, 0]), torch.tensor([0, 0, 0]), 1, 8, 1e4)


def test_rope_kernel_matches_reference_rope():
    from rfrt.rope import apply_rope, rope_angles

    x = torch.randn(2, 3 * 20, 3, 128, dtype=torch.float64).float()
    got = ops.rope_apply(x, torch.tensor([1000]), 20, 5, 1e4)
    want = apply_rope(x, rope_angles(128, torch.arange(1000, 1003), 4, 5))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    y = x.clone()
    ops.rope_apply_(y, torch.tensor([1000]), 20, 5, 1e4)
    assert torch.equal(y, got)


def test_rope_tables_are_the_fp64_angles_rounded_to_fp32():
    """Space table and time rows equal cos/sin of the reference's fp64 angles, rounded to fp32 (bit for bit
    up to one fp32 ulp, where libm's fp64 cos may differ from torch's in the last fp64 bit)."""
    from rfrt.rope import axis_pairs, rope_angles

    hd, gh, gw = 128, 4, 5
    tp, hp, wp = axis_pairs(hd)
    space = ops.rope_space_table(hd, gh * gw, gw, 1e4)
    ang = rope_angles(hd, torch.tensor([0]), gh, gw)  # [20, 64] fp64
    want = torch.stack([torch.cos(ang[:, tp:]), torch.sin(ang[:, tp:])], -1).float()
    torch.testing.assert_close(space, want, rtol=0, atol=6e-8)
    rows = torch.zeros(3 + 2 * 3, tp, 2)
    ops.rope_time_rows(rows, torch.tensor([0, 123456789]), torch.tensor([12, 40, 9]), 3, hd, 1e4)
    pos = torch.tensor([123456789 + f for f in range(3)] + [40, 41, 42, 9, 10, 11])
    at = rope_angles(hd, pos, 1, 1)[:, :tp]
    want_t = torch.stack([torch.cos(at), torch.sin(at)], -1).float()
    torch.testing.assert_close(rows, want_t, rtol=0, atol=6e-8)


def test_fused_write_rotates_queries_like_the_rope_op():
    """The write kernel's query rotation is the standalone RoPE at the chunk's positions (same fp32 values)."""
    policy, ring = small_ring()
    for _ in range(3):
        ring.begin_chunk()
    q, k, v = qkv(policy)
    q_rot = ops.cache_write(ring.kv, ring.sink_acc, q, k, v, ring.cursors[0], ring.rope_space, ring.rope_time, 1, 4)
    torch.testing.assert_close(q_rot, ops.rope_apply(q, ring.cursors[1], 4, 2, 1e4), rtol=0, atol=1e-6)


def test_prebuilt_params_path_equals_the_custom_op():
    """RingCache's per-layer params (built once) and the custom op (params per call) write the same cache."""
    policy, a = small_ring()
    _, b = small_ring()
    torch.manual_seed(0)
    for chunk in range(5):
        for cache in (a, b):
            cache.begin_chunk()
        for layer in range(2):
            q, k, v = qkv(policy)
            out_a = a(layer, q, k, v)
            q_b = ops.cache_write(b.kv, b.sink_acc, q, k, v, b.cursors[0], b.rope_space, b.rope_time, layer, 4,
                                  b.error)
            out_b = torch.nn.functional.scaled_dot_product_attention(
                q_b.transpose(1, 2), b.kv[0, layer, :, :b.keys].transpose(1, 2),
                b.kv[1, layer, :, :b.keys].transpose(1, 2), scale=b.scale).transpose(1, 2)
            assert torch.equal(out_a, out_b)
    assert torch.equal(a.kv, b.kv) and torch.equal(a.sink_acc, b.sink_acc)


def test_out_of_range_cursor_sets_the_error_flag_and_writes_nothing():
    """The kernels refuse an out-of-range device cursor (as the CUDA ones must, where nobody else checks it):
    nothing is written, a bit is set, and check() / debug mode raise naming the op."""
    policy, ring = small_ring()
    ring.begin_chunk()
    q, k, v = qkv(policy)
    ring(0, q, k, v)
    ring.check()  # clean so far
    before = ring.kv.clone()
    ring.cursors[0].copy_(torch.tensor([ring.layout.window_tokens - 4, 0]))  # a corrupted device cursor
    ring(0, q, k, v)
    assert torch.equal(ring.kv, before)
    with pytest.raises(RuntimeError, match="a cache write met an out-of-range device cursor"):
        ring.check()
    ring.check()  # the flag is cleared once reported
    ring.cursors[2].copy_(torch.tensor([0, 0, 0]))  # evicted slot inside the sink
    ring.fold()
    assert torch.equal(ring.kv, before)
    with pytest.raises(RuntimeError, match="a sink fold met"):
        ring.check()
    _, dbg = small_ring()
    dbg.debug = True
    dbg.begin_chunk()
    dbg.cursors[0].copy_(torch.tensor([-4, 0]))
    with pytest.raises(RuntimeError, match="out-of-range device cursor"):
        dbg(0, q, k, v)


def test_pinned_cursor_upload_refuses_graph_capture(monkeypatch):
    """The upload asks torch whether the current stream is capturing (a real capture is in the GPU tests)."""
    from rfrt.cache import ring as ring_mod

    policy, ring = small_ring()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(RuntimeError, match="pinned cursor upload .* while a CUDA graph is being captured"):
        ring_mod._upload(ring.cursors[1], [3])


def test_custom_ops_pass_opcheck():
    """Schemas, fake (meta) implementations and mutation annotations are consistent (torch.library.opcheck)."""
    policy, ring = small_ring()
    ring.begin_chunk()
    q, k, v = qkv(policy)
    sp, tm = tables(ring)
    tests = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(ops.cache_write, (ring.kv, ring.sink_acc, q, k, v, torch.tensor([12, 3]), sp, tm, 1, 4,
                                            ring.error), test_utils=tests)
    torch.library.opcheck(ops.sink_fold, (ring.kv, ring.sink_acc, torch.tensor([12, 3, 0]), sp, tm, 0.9, 4),
                          test_utils=tests)
    torch.library.opcheck(ops.rope_time_rows, (tm, torch.tensor([12, 3]), torch.tensor([12, 3, 0]), 3, 8, 1e4),
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


def test_sdpa_choice_is_recorded_and_a_forced_backend_gives_the_same_attention():
    from rfrt.fast.attention import sdpa_choice

    policy, auto = small_ring()
    forced = RingCache(auto.layout, sdpa_backend="math")
    q, k, v = qkv(policy)
    for cache in (auto, forced):
        for _ in range(3):
            cache.begin_chunk()
    out_auto, out_math = auto(0, q, k, v), forced(0, q, k, v)
    torch.testing.assert_close(out_math, out_auto, rtol=1e-5, atol=1e-5)
    assert sdpa_choice(*auto.sdpa_inputs(0, q)) in ("cudnn", "flash", "efficient", "math")
    with pytest.raises(ValueError, match="sdpa_backend must be one of"):
        RingCache(auto.layout, sdpa_backend="fa3")
    if not torch.cuda.is_available():
        cudnn = RingCache(auto.layout, sdpa_backend="cudnn")
        cudnn.begin_chunk()
        with pytest.raises(RuntimeError, match="SDPA backend 'cudnn' cannot run"):
            cudnn(0, q, k, v)
