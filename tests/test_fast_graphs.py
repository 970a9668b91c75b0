"""ChunkGraphs (rfrt.runtime.graphs): device cursors against RingCache.begin_chunk, and the graph runner's eager
fallback against the plain StreamGenerator, bit for bit; CUDA capture/replay on a GPU."""
from __future__ import annotations

import pytest
import torch

from rfrt.cache import CacheLayout, CachePolicy, RingCache
from rfrt.fast import RuntimeConfig
from rfrt.runtime.generator import StreamGenerator
from test_generator_tiny import one_thread, tiny_model  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("policy", [CachePolicy(),
                                    CachePolicy(window_frames=12),
                                    CachePolicy(sink_frames=2, chunk_frames=2, window_frames=6),
                                    CachePolicy(rope_rule="absolute")])
def test_device_cursors_match_begin_chunk(policy):
    cache = RingCache(CacheLayout(policy, layers=1, heads=1, head_dim=6, grid_h=2, grid_w=2))
    for chunk in range(25):
        cache.begin_chunk()
        write, query, fold = cache.device_cursors(torch.tensor([chunk]))
        assert write.tolist() == cache._write_cursor.tolist(), chunk
        assert query.tolist() == cache._query_cursor.tolist(), chunk
        if policy.evicted_chunk(chunk) is not None:
            assert fold.tolist() == cache._fold_cursor.tolist(), chunk


def _stream(runtime, chunks, prompts=None, seed=3, device="cpu", dtype=torch.float32):
    gen = StreamGenerator(tiny_model(8), device=device, dtype=dtype, runtime=runtime)
    gen.reset("a red ball", seed=seed)
    out = []
    for i in range(chunks):
        if prompts and i in prompts:
            gen.set_prompt(*prompts[i])
        out.append(gen.step().latents.clone())
    return gen, out


def test_eager_fallback_equals_stream_generator_exactly():
    # 8 chunks: the three filling phases, then five steady chunks that fold the sink.
    _, ref = _stream(None, 8)
    gen, fast = _stream(RuntimeConfig(cuda_graphs=True), 8)
    assert gen._graphs is not None and gen._graphs.mode == "eager"
    for c, (a, b) in enumerate(zip(fast, ref)):
        assert torch.equal(a, b), f"chunk {c}: max |diff| {(a - b).abs().max().item()}"
    assert not torch.equal(fast[5], fast[6])  # the check can fail: chunks differ


def test_eager_fallback_after_reset_and_prompt_recache():
    prompts = {4: ("a blue cube", True), 6: ("a green cone", False)}
    ref_gen, ref = _stream(None, 8, prompts)
    gen, fast = _stream(RuntimeConfig(cuda_graphs=True), 8, prompts)
    assert all(torch.equal(a, b) for a, b in zip(fast, ref))
    # A second stream on the same generator (cursors restart from chunk 0 on the device counter).
    for g in (ref_gen, gen):
        g.reset("a red ball", seed=5)
    again = [(gen.step().latents, ref_gen.step().latents) for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in again)


class _ReplayCall:
    """Stand-in for a captured CUDA graph on the CPU: replay() re-runs the body."""

    def __init__(self, fn) -> None:
        self.replay = fn


def test_capture_bookkeeping_with_a_stand_in_graph(monkeypatch):
    """The graph-mode host logic (phases, capture once, replay, device counter resync on reset) on the CPU:
    capture is replaced by a stand-in that records without executing, like CUDA capture does."""
    from rfrt.runtime import graphs

    def record(self, phase):
        held = (self.cache.kv, self.cache.sink_acc, self.cache.rope_time, self._counter, self._out,
                *self.cache.cursors)
        state = [t.clone() for t in held]
        self._denoise()  # "recording" must not change the stream: undo its effects
        self._context()
        for t, saved in zip(held, state):
            t.copy_(saved)
        self._graphs[phase] = (_ReplayCall(self._denoise), _ReplayCall(self._context))

    monkeypatch.setattr(graphs.ChunkGraphs, "_record", record)
    _, ref = _stream(None, 7)
    gen = StreamGenerator(tiny_model(8), device="cpu", runtime=RuntimeConfig(cuda_graphs=True))
    gen.reset("a red ball", seed=3)
    gen._graphs.capture = True
    for c in range(7):
        assert torch.equal(gen.step().latents, ref[c]), c
    assert gen._graphs.captured_phases == ((3, False), (6, False), (9, False), (9, True))
    gen.reset("a red ball", seed=3)
    assert all(torch.equal(gen.step().latents, ref[c]) for c in range(5))


def test_runtime_config_validates():
    with pytest.raises(TypeError, match="cuda_graphs"):
        RuntimeConfig(cuda_graphs=1)
    with pytest.raises(ValueError, match="fp8_scaling"):
        RuntimeConfig(fp8=True, fp8_scaling="block")
    with pytest.raises(TypeError, match="runtime"):
        StreamGenerator(tiny_model(8), device="cpu", runtime={"cuda_graphs": True})


@pytest.fixture
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.gpu
def test_cuda_graph_replay_matches_eager_on_gpu(no_tf32):
    """fp32: graph replay must give the eager stream's latents (same kernels, same order)."""
    _, ref = _stream(None, 7, device="cuda")
    gen, fast = _stream(RuntimeConfig(cuda_graphs=True), 7, device="cuda")
    assert gen._graphs.mode == "graphs" and len(gen._graphs.captured_phases) == 4
    for c, (a, b) in enumerate(zip(fast, ref)):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), f"chunk {c}: max |diff| {(a - b).abs().max().item()}"
    # Second stream: the filling graphs are replayed, not re-captured.
    gen.reset("a red ball", seed=3)
    again = [gen.step().latents for _ in range(5)]
    for c, (a, b) in enumerate(zip(again, ref)):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), f"replayed chunk {c}"


@pytest.mark.gpu
def test_cuda_graphs_with_fp8_and_overlap_match_eager_fp8_on_gpu():
    """bf16 + FP8 (_scaled_mm) inside the graphs, decoding on the side stream, a prompt re-cache mid-stream:
    the same stream as without graphs."""
    prompts = {5: ("a blue cube", True)}
    _, ref = _stream(RuntimeConfig(fp8=True, overlap_decode=True), 8, prompts, device="cuda", dtype=torch.bfloat16)
    _, fast = _stream(RuntimeConfig(cuda_graphs=True, fp8=True, overlap_decode=True), 8, prompts, device="cuda",
                      dtype=torch.bfloat16)
    for c, (a, b) in enumerate(zip(fast, ref)):
        assert not a.isnan().any() and torch.allclose(a.float(), b.float(), atol=1e-2, rtol=0), f"chunk {c}"
