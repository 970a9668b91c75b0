"""The world as its own teacher (train/stages/world_ode.py): the synthetic world's exact flow ODE.

References: `render_scene` (one variant at a time) for the batched renderer; the mixture's posterior mean
written out term by term in float64 for the denoiser; and the world's own closed form (`trajectory`) for what
the ODE must end on: a whole world clip at a world speed, or, after a context, the world's continuation of it.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from rfrt.cache import CachePolicy
from rfrt.sampling import SamplerConfig

from train.data.synthetic_world import (SyntheticWorld, parse_single_object, render_scene, render_variants,
                                        trajectory, with_shift, with_speed)
from train.stages.ode import ode_grid
from train.stages.world_ode import exact_denoiser, torus_shifts, world_teacher_ode

SPEEDS = np.linspace(0.5, 1.5, 21)
POLICY = CachePolicy(chunk_frames=3, sink_frames=3, window_frames=9)
GRID = ode_grid(SamplerConfig(denoising_steps=(1000, 750, 500, 250), shift=5.0), 16)


def _world(frames: int = 21, seed: int = 3) -> SyntheticWorld:
    return SyntheticWorld(16, 16, frames, 1, seed, "canonical", phase="fixed")


def _index(scene, video: torch.Tensor, shifts: np.ndarray) -> list[int]:
    """Indices of the variants (speed-major, as render_variants) that `video` equals (to float rounding)."""
    variants = render_variants(scene, SPEEDS, shifts)
    return [n for n in range(len(variants)) if torch.allclose(variants[n], video, rtol=0, atol=1e-5)]


def test_render_variants_equals_render_scene_variant_by_variant():
    world = _world()
    scenes = [world.scene(i) for i in range(12)]
    assert {s.objects[0].motion for s in scenes} >= {"moves", "turns", "bounces", "appears"}
    for scene in scenes:
        shifts = torus_shifts(scene, 2.0)
        variants = render_variants(scene, SPEEDS[::5], shifts)
        for n in (0, 7, len(shifts) + 3, len(variants) - 1):
            want = render_scene(with_shift(with_speed(scene, float(SPEEDS[::5][n // len(shifts)])),
                                           float(shifts[n % len(shifts)])))
            assert torch.equal(variants[n], want), (scene, n)


def test_exact_denoiser_is_the_mixture_posterior_mean():
    g = torch.Generator().manual_seed(0)
    clips = torch.randn(2, 5, 3, 4, 4, generator=g).sign()  # two-valued pixels, like the world's
    log_prior = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.2, 0.2], [0.5, 0.1, 0.1, 0.2, 0.1]], dtype=torch.float64))
    for sigma in (1.0, 0.7, 0.3, 0.05):
        x = (1 - sigma) * clips[:, 2] + sigma * torch.randn(2, 3, 4, 4, generator=g)
        got = exact_denoiser(x, sigma, clips, log_prior)
        for b in range(2):
            logw = [float(log_prior[b, n]) - float(((x[b].double() - (1 - sigma) * clips[b, n].double()) ** 2).sum())
                    / (2 * sigma * sigma) for n in range(5)]
            top = max(logw)
            w = [math.exp(v - top) for v in logw]
            want = sum(wn * clips[b, n].double() for n, wn in enumerate(w)) / sum(w)
            torch.testing.assert_close(got[b].double(), want, rtol=1e-5, atol=1e-5)
    near = exact_denoiser(clips[:, 4] + 1e-3, 1e-3, clips, log_prior)  # at small sigma: the nearest component
    torch.testing.assert_close(near, clips[:, 4])


def test_the_world_ode_draws_whole_world_clips_at_world_speeds():
    """Without a student the context is the world's own chunks, so every sample is one world clip from its start
    (shift 0), chunk after chunk, and the speeds it draws spread over the world's range."""
    world = _world()
    scenes = [world.scene(i) for i in range(8)] * 2
    noise = torch.randn(16, 21, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    states, x0, context = world_teacher_ode(scenes, noise, POLICY, *GRID, SPEEDS, 2.0, 0.5)
    assert states.shape == (16, 4, 21, 3, 16, 16)
    torch.testing.assert_close(states[:, 0], noise)  # the first recorded state is the noise itself (sigma 1)
    torch.testing.assert_close(context, x0)
    speeds = []
    for b, scene in enumerate(scenes):
        hits = _index(scene, x0[b], np.zeros(1))
        assert hits, f"sample {b} ({scene.objects[0].motion}) is not a world clip"
        if scene.objects[0].motion != "still":
            speeds.append(SPEEDS[hits[0]])
    assert min(speeds) < 0.8 and max(speeds) > 1.2, speeds  # slow and fast samples, as the world's U[0.5, 1.5]


def _replay(video: torch.Tensor):
    """A stand-in for the student's chunks: the given video, chunk after chunk (what the teacher reads)."""
    class Replay:
        c = 0

        def sample(self, first):
            self.c += 1
            return video[:, (self.c - 1) * 3:self.c * 3].to(first)

        def hold(self, seen):
            pass
    return Replay()


def _off_start(prompt: str = "a large red circle moves right on a blue background"):
    """The prompt's scene with its object 3.2 px along its motion from the prompt's wall (a context elsewhere)."""
    scene = parse_single_object(prompt, 16, 16, 21)
    return replace(scene, objects=(replace(scene.objects[0], start=(3.2, 7.5)),))


@pytest.mark.parametrize("speed, shift", [(SPEEDS[6], 2.0), (SPEEDS[16], -1.5)])
def test_a_world_context_off_the_prompts_start_is_continued_exactly(speed, shift):
    """A context that is a world clip shifted along its motion: once the window shows its speed, each chunk
    continues that very clip; chunk 0, which has no context, is the world's own start."""
    scene = _off_start()
    context = render_scene(with_shift(with_speed(scene, float(speed)), shift))[None]
    noise = torch.randn(1, 21, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    _, x0, seen = world_teacher_ode([scene], noise, POLICY, *GRID, SPEEDS, 2.0, 0.5, _replay(context))
    torch.testing.assert_close(seen, context)
    torch.testing.assert_close(x0[:, 9:], context[:, 9:])
    starts = render_variants(scene, SPEEDS, np.zeros(1))[:, :3]
    assert any(torch.allclose(v, x0[0, :3], rtol=0, atol=1e-5) for v in starts)


def test_a_creeping_context_is_continued_from_its_object_at_the_slowest_world_speed():
    """The student's failure: an object crawling at 0.2 px/frame. The world has no such speed, so the chunk
    continues from where the crawler is, at 0.5 px/frame (the world's slowest), not from the prompt's path."""
    scene = _off_start()
    crawl = with_speed(scene, 0.2)
    noise = torch.randn(1, 21, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    _, x0, _ = world_teacher_ode([scene], noise, POLICY, *GRID, SPEEDS, 2.0, 0.5, _replay(render_scene(crawl)[None]))
    shifts = torus_shifts(scene, 2.0)
    variants = render_variants(scene, SPEEDS, shifts)
    for c in range(3, 7):  # chunks 3..6: the prompt's path at 0.5 px/frame is 2.4-5.1 px ahead of the crawler
        frames = slice(3 * c, 3 * c + 3)
        hit = [n for n in range(len(variants)) if torch.allclose(variants[n, frames], x0[0, frames], rtol=0, atol=1e-5)]
        assert hit and SPEEDS[hit[0] // len(shifts)] == 0.5, (c, hit)
        v = with_shift(with_speed(scene, 0.5), float(shifts[hit[0] % len(shifts)]))
        mid = np.array([3 * c - 3.5])  # the middle of the 6 context frames the window's fit is made on
        assert abs(trajectory(v.objects[0], v, mid)[0, 0] - trajectory(crawl.objects[0], crawl, mid)[0, 0]) <= 0.5
