"""StreamGenerator.warmup(): every cache phase run (and captured) before the first prompt, without changing
any output; with overlap_decode the first chunk comes back without sampling the second, and each chunk's
latents reach the decoder before its context pass."""
from __future__ import annotations

import pytest
import torch

from rfrt.fast import RuntimeConfig
from rfrt.generator import StreamGenerator
from test_generator_tiny import one_thread, tiny_model  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("one_thread")


def _latents(gen, n, prompt="a red ball", seed=3):
    gen.reset(prompt, seed=seed)
    return [gen.step().latents for _ in range(n)]


@pytest.mark.parametrize("runtime", [RuntimeConfig(), RuntimeConfig(cuda_graphs=True),
                                     RuntimeConfig(overlap_decode=True, cuda_graphs=True)])
def test_warmup_changes_no_output(runtime):
    ref = _latents(StreamGenerator(tiny_model(8), device="cpu", runtime=runtime), 6)
    gen = StreamGenerator(tiny_model(8), device="cpu", runtime=runtime)
    gen.warmup()
    assert gen.cache is not None and gen.cache.chunk == -1
    with pytest.raises(RuntimeError, match="call reset"):
        gen.step()
    got = _latents(gen, 6)
    assert all(torch.equal(a, b) for a, b in zip(got, ref))
    gen.warmup()  # mid-life: the stream is dropped, the next reset streams the same again
    assert all(torch.equal(a, b) for a, b in zip(_latents(gen, 6), ref))


def test_warmup_runs_every_cache_phase_of_the_graph_runner():
    gen = StreamGenerator(tiny_model(8), device="cpu", runtime=RuntimeConfig(cuda_graphs=True))
    gen.warmup()
    assert gen._graphs._seen == {(3, False), (6, False), (9, False), (9, True)}


def test_overlap_returns_chunk_zero_without_sampling_ahead_and_decodes_before_the_context_pass():
    gen = StreamGenerator(tiny_model(8), device="cpu", runtime=RuntimeConfig(overlap_decode=True))
    order = []
    submit, forward = gen.decoder.submit, gen.dit.forward

    def spy_submit(latents):
        order.append("decode")
        return submit(latents)

    def spy_forward(x, t, *a, **k):
        order.append("context" if bool((t == 0).all()) else "denoise")
        return forward(x, t, *a, **k)

    gen.decoder.submit, gen.dit.forward = spy_submit, spy_forward
    gen.reset("a red ball", seed=3)
    first = gen.step()
    assert first.index == 0 and gen.cache.chunk == 0  # chunk 1 not sampled yet
    assert order == ["denoise"] * 4 + ["decode", "context"]
    gen.step()
    assert gen.cache.chunk == 2  # from the second step on, one chunk ahead
    seq = StreamGenerator(tiny_model(8), device="cpu")
    assert torch.equal(first.latents, _latents(seq, 1)[0])
