"""Priming the embedded default model from synthetic-world frames: continuing the first second of a video, and
starting from one image. Positions are measured against the world's ground truth (`trajectory`), on the torus the
world wraps its movers around (train.prime_eval: circular centroids, wrapped offsets and steps; closed-form test in
test_prime_eval_measure.py).

Thresholds are measured on the shipped model (re-measure with `python train/prime_eval.py --seed S` for S in 0-5
when it is retrained). Measured on the model shipped by issue 12's on-policy step (the 4-step student of the
endless world regressed on the teacher's continuations of its own streams; train/results/default_model.md): 48
"moves" scenes (8 each of world seeds 0-5), 1 s = 16 frames of context, first generated frame (stream frame 16)
against the world's truth: own prompt 2.58 px (per seed 2.61 / 2.44 / 2.51 / 2.30 / 2.65 / 2.96), the opposite
direction's prompt 3.36 px, no context 3.25 px (3.58 / 3.52 / 2.62 / 3.77 / 3.43 / 2.58). So the context puts the
object 0.67 px nearer in the paired mean, but the 95 % bootstrap interval over scenes, [-0.02, 1.33] px, touches 0
(strict xfail below; over seeds 0-2 alone, 0.72 [-0.18, 1.65]). Motion after the seam, along the prompted direction
over 6 frames: 3.62 px with the context (more than 0.5 px in 37 of 48 scenes; per seed 8 / 4 / 7 / 7 / 6 / 5 of 8),
-3.10 px under the opposite direction's prompt (6 of 48), 6.60 px without context. Until 2026-12-03 these were
measured with a plain mean centroid, which puts an object split over an edge mid-frame and lets stray pixels pull
it: it gave 2.31 px at the seam and 17 of 24 moving scenes on seeds 0-2 (the wraps of continuations running ahead
of the truth counted as going back), so the motion test was a strict xfail. Both endless-world students were
trained only on streams that start at the prompt's place (data.phase fixed), while these contexts start anywhere
(random phase): a context is out of their training distribution, and their causal teacher continues it no better
(train/results/default_model.md). In the world it was trained on (data.phase fixed, world seeds 0 / 1 / 2; plain
mean centroid) the seam error was 3.84 / 0.87 / 0.84 px (no context 2.38 / 2.15 / 2.09) and the continuation
travelled more than 0.5 px the prompted way in 5 / 8 / 7 of 8 scenes.
One image from stream frame 20 (world seed 1, 8 scenes): the first output frame is the image exactly; the next
frame puts the object 4.04 px from its true place, like a fresh stream (4.31 px): the held-frame method keeps
the given frame but the model's first chunk follows its prompt's layout (strict xfail below). Given frames
ending at frame 20, the next frame's error by context length: 1: 4.04, 2: 2.58, 3: 2.28, 4: 2.32, 6: 2.95,
9: 4.36, 12: 3.80 px.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # train/ (the synthetic world) from a checkout

from rfrt.generator import StreamGenerator  # noqa: E402
from rfrt.model_dir import default_model_path  # noqa: E402
from train.prime_eval import OPPOSITE, SIZE, centroids, mover_scenes, travel  # noqa: E402
from train.stream_metrics import bootstrap_ci, torus_offset  # noqa: E402
from train.prime_eval import to_uint8 as _u8  # noqa: E402
from test_generator_tiny import one_thread  # noqa: E402,F401 - fixture

pytestmark = pytest.mark.skipif(default_model_path() is None, reason="the embedded default model is not installed")

CONTEXT = 16  # frames: 1 s at the default model's 16 fps
CHUNKS = 3
SCENES = 8
SEAM_SEEDS = (0, 1, 2, 3, 4, 5)  # world seeds of the seam scenes: 48 in all (module docstring)


@pytest.fixture(scope="module")
def gen():
    return StreamGenerator(device="cpu")


@pytest.fixture(scope="module")
def continuations(gen):
    """Per scene: generated frames from stream frame 16 on, with the context under its own prompt, with the
    context under the opposite direction's prompt, and without context; plus the truth and the direction."""
    from train.data.synthetic_world import DIRECTIONS, describe_scene, render_scene

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    scenes = [s for seed in SEAM_SEEDS
              for s in mover_scenes(seed, CONTEXT + 3 * CHUNKS, SCENES, range(CONTEXT - 1, CONTEXT + 7))]
    for index, scene, truth in scenes:
        obj = scene.objects[0]
        prompt = describe_scene(scene)
        other = prompt.replace(f"moves {obj.direction}", f"moves {OPPOSITE[obj.direction]}")
        context = _u8(render_scene(scene)[:CONTEXT])
        out = {}
        for name, p, ctx in (("own", prompt, context), ("other", other, context), ("none", prompt, None)):
            gen.reset(p, seed=index, context=ctx)
            frames = torch.cat([gen.step().frames for _ in range(CHUNKS)])
            skip = gen.primed.held_output_frames if ctx is not None else 0  # frame 15 is held in the chunk
            out[name] = centroids(frames[skip:], obj.colour)
        rows.append(dict(out, truth=truth[CONTEXT:], direction=np.array(DIRECTIONS[obj.direction], float)))
    torch.set_num_threads(before)
    return rows


def _seam_errors(rows, name):
    return np.array([np.linalg.norm(torus_offset(r[name][0], r["truth"][0], SIZE)) for r in rows])


def test_continuation_keeps_the_object_where_the_context_left_it(continuations):
    own, other, none = (_seam_errors(continuations, k) for k in ("own", "other", "none"))
    print(f"seam position error (px, stream frame 16, {len(own)} scenes): own prompt {np.nanmean(own):.2f}, "
          f"opposite prompt {np.nanmean(other):.2f}, no context {np.nanmean(none):.2f}")
    assert not np.isnan(own).any()  # the object is there in every continuation
    assert np.mean(own) <= 2.75  # measured 2.58 on the torus (module docstring)
    assert np.mean(own) < np.mean(none)  # no context: measured 3.25. The opposite prompt is reported, not
    # asserted: its seam error was below the own prompt's for the model of ec20772 and is above it now (3.36).


@pytest.mark.xfail(strict=True, reason="measured on the shipped model: the context puts the object 0.67 px nearer "
                   "its true place than no context, 95 % interval [-0.02, 1.33] px over 48 scenes (module docstring)")
def test_the_context_places_the_object_nearer_than_no_context(continuations):
    gain = bootstrap_ci(_seam_errors(continuations, "none") - _seam_errors(continuations, "own"))  # paired
    print(f"seam: nearer with the context by {gain[0]:.2f} [{gain[1]:.2f}, {gain[2]:.2f}] px")
    assert gain[1] > 0  # the 95 % bootstrap interval over scenes is above 0


def _moves(rows, name, frames=6):
    return np.array([travel(r[name], r["direction"], frames) for r in rows])


def test_continuation_keeps_moving_the_prompted_way(continuations):
    own, other, none = (_moves(continuations, k) for k in ("own", "other", "none"))
    print(f"travel along the prompted direction over 6 frames (px): with context {np.nanmean(own):.2f}, "
          f"opposite prompt {np.nanmean(other):.2f}, fresh stream {np.nanmean(none):.2f}; more than 0.5 px in "
          f"{int(np.sum(own > 0.5))} of {len(own)} scenes (opposite prompt {int(np.sum(other > 0.5))})")
    assert np.mean(own > 0.5) >= 0.75  # measured 37 of 48
    # The prompt, not the context, picks the way: under the opposite direction's prompt the same context goes
    # back the other way (measured -3.10 px, more than 0.5 px the context's way in 6 of 48 scenes).
    assert np.nanmean(other) < -1.0 and np.mean(other > 0.5) <= 0.25


@pytest.fixture(scope="module")
def single_images(gen):
    """One image from mid-stream (stream frame 20, the object far from where its prompt starts it) per scene:
    (first output frames, position error of the next frame, the same for a fresh stream without the image)."""
    from train.data.synthetic_world import describe_scene, render_scene

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    k, rows = 20, []
    for index, scene, truth in mover_scenes(1, CONTEXT + 3 * CHUNKS, SCENES, range(k, k + 4)):
        colour, prompt = scene.objects[0].colour, describe_scene(scene)
        image = _u8(render_scene(scene)[k:k + 1])[0]
        gen.reset(prompt, seed=index, context=image)
        frames = gen.step().frames
        err = np.linalg.norm(torus_offset(centroids(frames[1:2], colour)[0], truth[k + 1], SIZE))
        gen.reset(prompt, seed=index)
        fresh = np.linalg.norm(torus_offset(centroids(gen.step().frames[1:2], colour)[0], truth[k + 1], SIZE))
        rows.append((image, frames, err, fresh))
    torch.set_num_threads(before)
    return rows


def test_a_single_image_is_the_first_frame(single_images):
    for image, frames, _, _ in single_images:
        assert torch.equal(frames[0], torch.from_numpy(image))  # honoured exactly (pixel model: no codec)
        assert frames.shape[0] == 3  # the held image and 2 generated frames in the first chunk


@pytest.mark.xfail(strict=True, reason="measured on the shipped model: the frame after a held image puts the "
                   "object 4.04 px from its true place, a fresh stream 4.31 px (the prompt's layout wins)")
def test_a_single_image_places_the_object_of_the_next_frames(single_images):
    errs = np.array([r[2] for r in single_images])
    fresh = np.array([r[3] for r in single_images])
    print(f"single image: object position error in the next frame {np.nanmean(errs):.2f} px (fresh stream "
          f"{np.nanmean(fresh):.2f} px), {len(errs)} scenes")
    assert np.nanmean(errs) <= 1.5 and np.nanmean(errs) < 0.5 * np.nanmean(fresh)
