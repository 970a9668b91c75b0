"""Prompt switches, determinism and the per-prompt text cache of StreamGenerator."""
from __future__ import annotations

import torch

from rfrt.runtime.generator import StreamGenerator
from test_generator_tiny import one_thread, tiny_model  # noqa: F401 - fixture


def run(gen, seed, schedule, chunks, recache=False):
    """Frames of `chunks` chunks, switching to schedule[c] before chunk c (schedule[0] starts the stream)."""
    gen.reset(schedule[0], seed=seed)
    frames = []
    for c in range(chunks):
        if c and c in schedule:
            gen.set_prompt(schedule[c], recache=recache)
        frames.append(gen.step().frames)
    return torch.cat(frames)


def test_set_prompt_rebuilds_cross_kv_and_keeps_self_attention_cache(one_thread):
    gen = StreamGenerator(tiny_model(), device="cpu")
    gen.reset("a cat", seed=0)
    for _ in range(5):
        gen.step()
    kv, acc = gen.cache.kv.clone(), gen.cache.sink_acc.clone()
    old_keys = [k.clone() for k in gen.cross_kv.keys]
    gen.set_prompt("a dog")
    assert gen.prompt == "a dog"
    assert all(not torch.allclose(a, b) for a, b in zip(old_keys, gen.cross_kv.keys))
    assert torch.equal(gen.cache.kv, kv) and torch.equal(gen.cache.sink_acc, acc)
    gen.set_prompt("a cat", recache=True)  # back to the first prompt: served from the prompt cache
    assert all(torch.equal(a, b) for a, b in zip(old_keys, gen.cross_kv.keys))
    assert not torch.equal(gen.cache.kv, kv)  # rebuilt: the sink's EMA history is dropped
    assert gen.chunk_index == 5


def test_recache_under_the_same_prompt_before_eviction_is_exact(one_thread):
    """Before any eviction (after chunks 0 and 1) the window holds exactly the replayed chunks, so re-caching
    them under the same prompt must reproduce the cache bit for bit and leave the stream unchanged."""
    gen = StreamGenerator(tiny_model(), device="cpu")
    plain = run(gen, 3, {0: "waves"}, 6)
    gen.reset("waves", seed=3)
    frames = [gen.step().frames for _ in range(2)]
    kv = gen.cache.kv.clone()
    gen.set_prompt("waves", recache=True)
    assert torch.equal(gen.cache.kv, kv)
    frames += [gen.step().frames for _ in range(4)]
    assert torch.equal(torch.cat(frames), plain)


def test_same_seed_same_prompts_identical_and_other_seed_differs(one_thread):
    gen = StreamGenerator(tiny_model(), device="cpu")
    schedule = {0: "a cat", 3: "a red car", 5: "a cat"}
    a = run(gen, 11, schedule, 7)
    b = run(gen, 11, schedule, 7)
    assert torch.equal(a, b)
    other = StreamGenerator(tiny_model(), device="cpu")  # a second generator owns separate state
    assert torch.equal(run(other, 11, schedule, 7), a)
    assert (run(gen, 12, schedule, 7).float() - a.float()).abs().mean() > 5
    # The prompt switch changes what follows it, and only that; re-caching changes it again.
    steady = run(gen, 11, {0: "a cat"}, 7)
    per_chunk = 3
    assert torch.equal(steady[: 3 * per_chunk], a[: 3 * per_chunk])
    assert not torch.equal(steady[3 * per_chunk:], a[3 * per_chunk:])
    recached = run(gen, 11, schedule, 7, recache=True)
    assert torch.equal(recached[: 3 * per_chunk], a[: 3 * per_chunk])
    assert not torch.equal(recached[3 * per_chunk:], a[3 * per_chunk:])


def test_prompts_are_encoded_once(one_thread):
    model = tiny_model()
    gen = StreamGenerator(model, device="cpu")
    run(gen, 0, {0: "a cat", 1: "a dog", 2: "a cat", 3: "a dog"}, 4)
    assert model.text_encoder.calls == 2
