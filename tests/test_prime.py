"""Priming a stream from given latents or frames (rfrt.runtime.prime): exactness against the stream itself and against
SPEC §2 written out here, the held-frame method, and bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rfrt.cache import CacheLayout, CachePolicy, ReferenceCache
from rfrt.context import MAX_CONTEXT_LATENT_FRAMES, ContextError
from rfrt.generator import StreamGenerator
from test_generator_oracle import max_rel, spec_schedule
from test_generator_tiny import one_thread, tiny_model  # noqa: F401 - fixture

PROMPT = "a cat walks on the beach"


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def stream10(model):
    """Ten chunks of an unprimed stream and its cache afterwards."""
    gen = StreamGenerator(model, device="cpu")
    gen.reset(PROMPT, seed=5)
    chunks = [gen.step() for _ in range(10)]
    return chunks, gen.cache.kv.clone(), gen.cache.sink_acc.clone()


def test_priming_with_a_streams_first_chunks_reproduces_the_rest(model, stream10, one_thread):
    chunks, kv, sink = stream10
    gen = StreamGenerator(model, device="cpu")
    context = torch.cat([c.latents for c in chunks[:5]])  # 15 latent frames: longer than the 9-frame window
    gen.reset(PROMPT, seed=5, context=context)
    p = gen.primed
    assert (p.chunks, p.held_frames, p.held_output_frames, gen.chunk_index) == (5, 0, 0, 5)
    assert torch.equal(p.frames, torch.cat([c.frames for c in chunks[:5]]))  # the context as decoded
    policy = gen.policy
    assert [policy.evicted_chunk(c) for c in range(5)] == [None, None, None, 1, 2]  # folds inside the context
    rest = [gen.step() for _ in range(5)]
    assert [c.index for c in rest] == [5, 6, 7, 8, 9]
    err = max_rel([c.latents for c in rest], [c.latents for c in chunks[5:]])
    kv_err = (gen.cache.kv - kv).abs().max().item()
    sink_err = (gen.cache.sink_acc - sink).abs().max().item()
    print(f"primed with 5 chunks vs the stream's chunks 5-9: max rel err {err:.2e}; kv {kv_err:.2e}, "
          f"EMA sink {sink_err:.2e}")
    assert err <= 1e-6 and kv_err <= 1e-6 and sink_err <= 1e-6
    # The comparison can fail: a different context (chunks 1-5: another sink, no fold of chunk 1) and the
    # same context under another seed both move the continuation far beyond the tolerance.
    gen.reset(PROMPT, seed=5, context=torch.cat([c.latents for c in chunks[1:6]]))
    assert max_rel([gen.step().latents], [chunks[5].latents]) > 1e-3
    gen.reset(PROMPT, seed=6, context=context)
    assert max_rel([gen.step().latents], [chunks[5].latents]) > 1e-3


def spec_primed_stream(model, prompt, seed, context, chunks, *, hold=True):
    """SPEC §2 written out with the plain ReferenceCache, primed: context passes of the whole context chunks
    (their noise draws skipped), then the chunk holding the remainder (x0 of those frames replaced after every
    forward), then free chunks. Returns (latents [chunk][1, F, C, h, w], per-step mean |x0 - known| before
    replacement)."""
    dit = model.dit
    text = F.pad(model.text_encoder.encode([prompt]), (0, 0, 0, dit.config.text_len - 5))
    cache = ReferenceCache(CacheLayout.for_model(dit.config, CachePolicy(), 4, 4))
    noise = torch.Generator().manual_seed(seed)
    schedule = spec_schedule()
    whole = context.shape[0] // 3
    for c in range(whole):
        [torch.randn(1, 3, 3, 8, 8, generator=noise) for _ in range(4)]
        cache.begin_chunk()
        dit(context[None, 3 * c:3 * c + 3], torch.zeros(1, 3), text, cache)
    known = context[None, 3 * whole:]
    out, drift = [], []
    for c in range(chunks):
        draws = [torch.randn(1, 3, 3, 8, 8, generator=noise) for _ in range(4)]
        cache.begin_chunk()
        x = draws[0]
        for i, (t, sigma) in enumerate(schedule):
            flow = dit(x, torch.full((1, 3), t), text, cache)
            x0 = (x.double() - sigma * flow.double()).float()
            if c == 0 and known.shape[1]:
                drift.append((x0[:, :known.shape[1]] - known).abs().mean().item())
                if hold:
                    x0[:, :known.shape[1]] = known
            if i < 3:
                nxt = schedule[i + 1][1]
                x = (1 - nxt) * x0 + nxt * draws[i + 1]
        dit(x0, torch.zeros(1, 3), text, cache)
        out.append(x0)
    return out, drift


@pytest.mark.parametrize("held", [1, 2])
def test_held_frames_follow_the_spec_loop(model, stream10, one_thread, held):
    chunks, _, _ = stream10
    context = torch.cat([c.latents for c in chunks[:4]])[: 9 + held]  # 3 whole chunks + `held` frames
    gen = StreamGenerator(model, device="cpu")
    gen.reset(PROMPT, seed=5, context=context)
    p = gen.primed
    assert (p.chunks, p.held_frames, p.held_output_frames) == (3, held, held)
    fast = [gen.step().latents[None] for _ in range(4)]
    assert torch.equal(fast[0][0, :held], context[9:])  # the given frames come out exactly
    ref, drift = spec_primed_stream(model, PROMPT, 5, context, 4)
    err = max_rel(fast, ref)
    print(f"held {held} frame(s): generator vs SPEC loop with replacement, 4 chunks: max rel err {err:.2e}; "
          f"model's own x0 on the held frames, mean |x0 - known| per step: {[f'{d:.3f}' for d in drift]}")
    assert err <= 1e-5
    free, _ = spec_primed_stream(model, PROMPT, 5, context, 4, hold=False)
    assert max_rel(fast, free) > 1e-3  # holding changes the chunk: the test sees a missing replacement


def test_a_single_image_gives_the_first_frame(model, one_thread):
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    gen = StreamGenerator(model, device="cpu")
    gen.reset(PROMPT, seed=1, context=image)
    p = gen.primed
    assert (p.chunks, p.held_frames, p.held_output_frames, p.frames.shape[0]) == (0, 1, 1, 0)
    first = gen.step()
    assert first.index == 0 and torch.equal(first.frames[0], torch.from_numpy(image))
    assert gen.step().index == 1


@pytest.mark.parametrize("runtime", [dict(overlap_decode=True), dict(cuda_graphs=True)],
                         ids=["overlap-decode", "chunk-graphs-runner"])
def test_priming_under_the_fast_paths(model, stream10, one_thread, runtime):
    """The overlapped decoder and the chunk-graph runner (eager on a CPU) continue a primed stream alike, with a
    held frame (eager chunk) followed by runner chunks."""
    from rfrt.fast.config import RuntimeConfig

    chunks = stream10[0]
    gen = StreamGenerator(model, device="cpu", runtime=RuntimeConfig(**runtime))
    gen.reset(PROMPT, seed=5, context=torch.cat([c.latents for c in chunks[:5]]))
    err = max_rel([gen.step().latents for _ in range(5)], [c.latents for c in chunks[5:]])
    assert err <= 1e-6
    plain = StreamGenerator(model, device="cpu")
    held = torch.cat([c.latents for c in chunks[:4]])[:10]
    plain.reset(PROMPT, seed=5, context=held)
    gen.reset(PROMPT, seed=5, context=held)
    assert max_rel([gen.step().latents for _ in range(3)], [plain.step().latents for _ in range(3)]) <= 1e-6


def test_reset_without_context_is_unchanged(model, stream10, one_thread):
    gen = StreamGenerator(model, device="cpu")
    gen.reset(PROMPT, seed=5, context=torch.cat([c.latents for c in stream10[0][:2]]))
    gen.reset(PROMPT, seed=5)  # a later plain reset forgets the context
    assert gen.primed is None and gen.chunk_index == 0
    assert torch.equal(gen.step().latents, stream10[0][0].latents)


# ---------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("context, match", [
    (torch.zeros(0, 3, 8, 8), "zero latent frames"),
    (np.zeros((0, 8, 8, 3), np.uint8), "zero frames"),
    (torch.zeros(MAX_CONTEXT_LATENT_FRAMES + 1, 3, 8, 8), f"more than the {MAX_CONTEXT_LATENT_FRAMES} accepted"),
    (np.zeros((MAX_CONTEXT_LATENT_FRAMES + 1, 8, 8, 3), np.uint8), "pass at most 256 frames"),
    (torch.zeros(3, 4, 8, 8), "have 4 channels .* the model takes 3"),
    (np.zeros((3, 8, 8, 5), np.uint8), "have 5 channels"),
    (torch.zeros(3, 3, 4, 4), "latents are 4x4 .* the stream's latents 8x8"),
    (torch.zeros(3, 3, 8), r"must be \[F, C, h, w\]"),
    (np.zeros((3, 8, 8, 3), np.float32), "must be uint8"),
    ("no/such/file.png", "does not exist"),
    ([1, 2, 3], "must be a uint8 array or tensor"),
], ids=["zero-latents", "zero-frames", "too-long-latents", "too-long-frames", "latent-channels", "frame-channels",
        "latent-size", "latent-ndim", "float-frames", "missing-file", "list"])
def test_bad_context_is_a_clear_error_and_keeps_the_stream(model, stream10, one_thread, context, match):
    gen = StreamGenerator(model, device="cpu")
    gen.reset(PROMPT, seed=5)
    gen.step()
    with pytest.raises(ContextError, match=match):
        gen.reset("another prompt", seed=9, context=context)
    # nothing changed: same prompt, and the stream goes on as if reset had not been called
    assert gen.prompt == PROMPT and gen.chunk_index == 1
    assert torch.equal(gen.step().latents, stream10[0][1].latents)


def test_nan_latents_and_non_images_are_errors(model, tmp_path):
    gen = StreamGenerator(model, device="cpu")
    lat = torch.zeros(3, 3, 8, 8)
    lat[1, 2, 3, 4] = float("nan")
    with pytest.raises(ContextError, match="1 NaN or infinite values"):
        gen.reset(PROMPT, context=lat)
    text = tmp_path / "notes.png"
    text.write_text("not an image at all\n")
    with pytest.raises(ContextError, match="cannot read .* as an image or a video"):
        gen.reset(PROMPT, context=text)
    with pytest.raises(ContextError, match="is a directory"):
        gen.reset(PROMPT, context=tmp_path)
