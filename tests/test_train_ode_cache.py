"""ODE regression through the inference cache (stage.ode_attention "cache"): teacher forcing with evictions.

Oracle: the model's one-forward block-causal attention over the frames a chunk may see, the earlier ones clean
at t = 0 and the chunk itself at its step's timestep, with the sink and window of SPEC 3 written out by hand.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from model_harness import random_dit
from rfrt.cache import CachePolicy
from rfrt.models.attention import BlockCausalAttention
from rfrt.models.config import ModelConfig
from rfrt.models.dit import CausalWanDiT
from rfrt.sampling import SamplerConfig, warped_sigmas, warped_timesteps

from train.stages.rollout import teacher_forced_flow

CHUNK = 3
SAMPLER = SamplerConfig()


def _model(layers: int) -> CausalWanDiT:
    return random_dit(ModelConfig(dim=32, ffn_dim=48, num_heads=2, num_layers=layers, in_dim=4, out_dim=4,
                                  text_dim=24, freq_dim=16, text_len=16))


def _clip(frames: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    K = len(SAMPLER.denoising_steps)
    return (torch.randn(2, K, frames, 4, 4, 6, generator=g), torch.randn(2, frames, 4, 4, 6, generator=g),
            torch.randn(2, 16, 24, generator=g))


def _oracle(net: CausalWanDiT, cross, seen: list[torch.Tensor], x: torch.Tensor, k: int) -> torch.Tensor:
    """x0 of chunk x (at step k) given the clean chunks `seen`, in order, at positions 0, 3, 6, ..."""
    frames = torch.cat(seen + [x], dim=1)
    t = torch.zeros(frames.shape[:2])
    t[:, -CHUNK:] = float(warped_timesteps(SAMPLER)[k])
    v = net(frames, t, cross, BlockCausalAttention(CHUNK))[:, -CHUNK:]
    sigma = t[0, -1].double() / SAMPLER.num_train_timesteps
    return (x.double() - sigma * v.double()).to(x.dtype)


def teacher_forced_x0(net, cross, states, x0, ks, policy, sampler):
    """x0 of chunk c predicted from states[:, ks[c]] (every sample at the same step) through teacher_forced_flow."""
    B, _, n_f = states.shape[:3]
    sig = warped_sigmas(sampler)[torch.tensor(ks)]
    frames_k = torch.tensor(ks).repeat_interleave(CHUNK)
    noisy = states[:, frames_k, torch.arange(n_f)]
    v = teacher_forced_flow(net, cross, noisy, sig.expand(B, -1), x0, policy, sampler.num_train_timesteps)
    per_frame = sig.repeat_interleave(CHUNK).double()[None, :, None, None, None]
    return (noisy.double() - per_frame * v.double()).to(noisy.dtype)


def _chunks(video: torch.Tensor) -> list[torch.Tensor]:
    return list(video.split(CHUNK, dim=1))


@torch.no_grad()
def test_without_evictions_it_is_block_causal_attention_on_clean_context():
    net = _model(layers=2)
    states, x0, text = _clip(9)
    cross = net.cross_kv(text)
    ks = [0, 3, 1]
    pred = teacher_forced_x0(net, cross, states, x0, ks, CachePolicy(sink_ema_alpha=1.0), SAMPLER)
    clean = _chunks(x0)
    for c, k in enumerate(ks):
        want = _oracle(net, cross, clean[:c], _chunks(states[:, k])[c], k)
        torch.testing.assert_close(_chunks(pred)[c], want, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_past_the_window_a_chunk_sees_the_sink_and_the_previous_chunk_only():
    # One layer: a key depends only on its own frame, so the window can be written out as a shorter clip:
    # sink (chunk 0, static) at positions 0-2, the previous chunk at 3-5, the chunk itself at 6-8.
    net = _model(layers=1)
    states, x0, text = _clip(15)
    cross = net.cross_kv(text)
    ks = [2, 0, 3, 1, 2]
    pred = teacher_forced_x0(net, cross, states, x0, ks, CachePolicy(sink_ema_alpha=1.0), SAMPLER)
    clean = _chunks(x0)
    for c, k in enumerate(ks):
        seen = clean[:c] if c < 2 else [clean[0], clean[c - 1]]
        want = _oracle(net, cross, seen, _chunks(states[:, k])[c], k)
        torch.testing.assert_close(_chunks(pred)[c], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("alpha, folds", [(1.0, False), (0.5, True)])
@torch.no_grad()
def test_an_evicted_chunk_reaches_later_chunks_only_through_the_ema_sink(alpha, folds):
    net = _model(layers=1)
    states, x0, text = _clip(15)
    cross = net.cross_kv(text)
    policy = dataclasses.replace(CachePolicy(), sink_ema_alpha=alpha)
    ks = [1, 1, 1, 1, 1]
    base = teacher_forced_x0(net, cross, states, x0, ks, policy, SAMPLER)
    other = x0.clone()
    other[:, CHUNK:2 * CHUNK] += 1.0  # chunk 1: evicted when chunk 3 begins
    moved = teacher_forced_x0(net, cross, states, other, ks, policy, SAMPLER)
    late = slice(3 * CHUNK, None)
    assert not torch.allclose(base[:, 2 * CHUNK:3 * CHUNK], moved[:, 2 * CHUNK:3 * CHUNK])  # in chunk 2's window
    assert (not torch.allclose(base[:, late], moved[:, late], atol=1e-6)) == folds


def _chunkwise_euler_oracle(net, text, uncond, noise, seen_chunks, steps, guidance):
    """(states, x0) of the teacher's chunkwise CFG Euler ODE, chunk c on the clean chunks seen_chunks[:c] (a
    block-causal forward over the whole prefix, no cache; fewer than 4 chunks: nothing is evicted)."""
    from train.losses import cfg_combine
    from train.stages.ode import ode_grid

    grid, where = ode_grid(SAMPLER, steps)
    cond, unc = net.cross_kv(text), net.cross_kv(uncond)
    states, outs = [], []
    for c, x in enumerate(_chunks(noise)):
        seen = []
        for j in range(len(grid) - 1):
            if j in where.tolist():
                seen.append(x)
            frames = torch.cat(seen_chunks[:c] + [x], dim=1)
            t = torch.zeros(frames.shape[:2])
            t[:, -CHUNK:] = float(grid[j]) * SAMPLER.num_train_timesteps
            v = [net(frames, t, kv, BlockCausalAttention(CHUNK))[:, -CHUNK:] for kv in (cond, unc)]
            x = x + (grid[j + 1] - grid[j]) * cfg_combine(v[0], v[1], guidance)
        states.append(torch.stack(seen, 1))
        outs.append(x)
        if len(seen_chunks) <= c:  # the teacher's own chunks are its context
            seen_chunks.append(x)
    return torch.cat(states, dim=2), torch.cat(outs, dim=1)


def _ode_inputs():
    g = torch.Generator().manual_seed(3)
    return (torch.randn(2, 9, 4, 4, 6, generator=g), torch.randn(2, 16, 24, generator=g),
            torch.randn(2, 16, 24, generator=g))


@torch.no_grad()
def test_causal_teacher_ode_is_chunkwise_euler_with_cfg_on_its_own_clean_chunks():
    from train.stages.ode import causal_teacher_ode

    net = _model(layers=2)
    noise, text, uncond = _ode_inputs()
    states, x0, context = causal_teacher_ode(net, text, uncond, noise, CachePolicy(sink_ema_alpha=1.0), SAMPLER,
                                             4, 2.0)
    want_states, want_x0 = _chunkwise_euler_oracle(net, text, uncond, noise, [], 4, 2.0)
    torch.testing.assert_close(states, want_states, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x0, want_x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(context, x0)


@torch.no_grad()
def test_on_policy_pairs_continue_the_students_own_chunks():
    """stage.ode_context "student": the context is the student's own stream (the Self-Forcing rollout, i.e. the
    runtime's chunk loop, from the same noise and renoise draws), and the teacher's chunk c is its ODE on the
    student's chunks 0..c-1, not on its own."""
    from train.stages.ode import causal_teacher_ode
    from train.stages.rollout import rollout

    teacher, student = _model(layers=2), _model(layers=2)
    noise, text, uncond = _ode_inputs()
    policy = CachePolicy(sink_ema_alpha=1.0)
    states, x0, context = causal_teacher_ode(teacher, text, uncond, noise, policy, SAMPLER, 4, 2.0, student,
                                             torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    own = rollout(student, text, noise, policy, SAMPLER, fresh_noise=lambda x: torch.randn(x.shape, generator=g))
    torch.testing.assert_close(context, own, rtol=1e-4, atol=1e-4)
    want_states, want_x0 = _chunkwise_euler_oracle(teacher, text, uncond, noise, _chunks(own), 4, 2.0)
    torch.testing.assert_close(states, want_states, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x0, want_x0, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(x0[:, CHUNK:], _chunkwise_euler_oracle(teacher, text, uncond, noise, [], 4, 2.0)[1][:, CHUNK:],
                              atol=1e-3)  # the context matters: on its own chunks the teacher goes elsewhere


@torch.no_grad()
def test_primed_pairs_hold_the_given_video_then_continue_on_the_students_chunks():
    """stage.ode_prime_fraction: the first chunks' context is the given video. The teacher's chunk c is still its
    ODE on the context chunks 0..c-1, and the student's later chunks are its rollout teacher-forced on them."""
    from train.stages.ode import causal_teacher_ode
    from train.stages.rollout import rollout

    teacher, student = _model(layers=2), _model(layers=2)
    noise, text, uncond = _ode_inputs()
    prime = torch.randn(2, CHUNK, 4, 4, 6, generator=torch.Generator().manual_seed(9))
    policy = CachePolicy(sink_ema_alpha=1.0)
    states, x0, context = causal_teacher_ode(teacher, text, uncond, noise, policy, SAMPLER, 4, 2.0, student,
                                             torch.Generator().manual_seed(5), prime)
    torch.testing.assert_close(context[:, :CHUNK], prime)
    g = torch.Generator().manual_seed(5)
    forced = rollout(student, text, noise, policy, SAMPLER, context=context,
                     fresh_noise=lambda x: torch.randn(x.shape, generator=g))
    torch.testing.assert_close(context[:, CHUNK:], forced[:, CHUNK:], rtol=1e-4, atol=1e-4)
    want_states, want_x0 = _chunkwise_euler_oracle(teacher, text, uncond, noise, _chunks(context), 4, 2.0)
    torch.testing.assert_close(states, want_states, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x0, want_x0, rtol=1e-4, atol=1e-4)
    unprimed = causal_teacher_ode(teacher, text, uncond, noise, policy, SAMPLER, 4, 2.0, student,
                                  torch.Generator().manual_seed(5))[1]
    torch.testing.assert_close(x0[:, :CHUNK], unprimed[:, :CHUNK])  # chunk 0 has no context either way
    assert not torch.allclose(x0[:, CHUNK:], unprimed[:, CHUNK:], atol=1e-3)
