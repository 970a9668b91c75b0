"""Priming the embedded default model from synthetic-world frames: continuing the first second of a video, and
starting from one image. Positions are measured against the world's ground truth (`trajectory`), on the torus the
world wraps its movers around (train.prime_eval: circular centroids, wrapped offsets and steps; closed-form test in
test_prime_eval_measure.py).

A primed stream runs on the default model's continuation weights (manifest "continuation", rfrt.runtime.weights:
stage regress on the world's continuations with object-weighted MSE, train/configs/default_continuation.yaml), a
fresh stream on its stream weights; "stream weights" below is the training-free priming every checkpoint without
continuation weights gets (StreamGenerator(continuation_weights=False)). Thresholds are measured on the shipped
model (re-measure with `python train/prime_eval.py --seed S` for S in 0-5 when it is retrained; train/results/
default_model.md). 48 "moves" scenes (8 each of world seeds 0-5), 1 s = 16 frames of context, first generated frame
(stream frame 16) against the world's truth: own prompt 1.12 px, the opposite direction's prompt 3.65 px, no
context 3.31 px; so the context puts the object 2.19 px nearer, 95 % bootstrap interval over scenes [1.72, 2.69]
px. The object is shown at its own size (stream_metrics.track) in 0.99 of the generated frames. Motion after the
seam along the prompted direction over 6 frames: 5.34 px (more than 0.5 px in 46 of 48 scenes), -4.57 px under the
opposite direction's prompt (1 of 48 the context's way). On the stream weights (issue 12's world-teacher
student, object weight 1.5): 1.82 px at the seam (a gain of 1.48 px, interval [0.98, 2.00]), presence 0.98, moving in
46 of 48 (its object weight 3 sibling shipped before them: 1.96 px, gain 1.37 [0.84, 1.92], 46 of 48); they were
trained only on streams that start at the prompt's place, the continuation weights on contexts that start
anywhere (random phase). The stream weights shipped before them (the on-policy student) measured 2.58 px (gain
0.67 [-0.02, 1.33]), presence 0.96, 37 of 48 moving, -3.10 px under the opposite prompt (6 of 48); "no context" was
3.25 px on them. Until 2026-12-03 positions were measured with a plain mean centroid
(an object split over an edge put mid-frame), which gave 2.31 px at the seam and 17 of 24 moving scenes on seeds
0-2 for the stream weights, and 3.84 / 0.87 / 0.84 px (no context 2.38 / 2.15 / 2.09) on the world they were
trained on (data.phase fixed, world seeds 0 / 1 / 2).
One image from stream frame 20 (world seed 1, 8 scenes): the first output frame is the image exactly; the next
frame puts the object 3.99 px from its true place (the earlier stream weights 4.04), like a fresh stream (4.37 px): the
held-frame method keeps the given frame but the model's first chunk follows its prompt's layout, and neither
weight set was trained on a context shorter than the world's event frames (strict xfail below). Given frames
ending at frame 20 (world seed 2), the next frame's error by context length on the continuation weights: 1: 4.43,
2: 3.07, 3: 1.24, 4: 0.76, 6: 0.82, 9: 1.16, 12: 0.83 px (the on-policy stream weights, seed 1: 4.04, 2.58, 2.28,
2.32, 2.95, 4.36, 3.80).
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
from train.stream_metrics import bootstrap_ci, torus_offset, track  # noqa: E402
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
    """Per scene: object positions in the generated frames from stream frame 16 on, with the context under its own
    prompt, under the opposite direction's prompt, under its own prompt on the stream weights ("stream": the
    training-free priming), and without context; plus the truth, the direction, and per generated frame whether
    it shows the object at its own size (stream_metrics.track's presence)."""
    from train.data.synthetic_world import DIRECTIONS, describe_scene, render_scene

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    stream = StreamGenerator(device="cpu", continuation_weights=False)
    rows = []
    scenes = [s for seed in SEAM_SEEDS
              for s in mover_scenes(seed, CONTEXT + 3 * CHUNKS, SCENES, range(CONTEXT - 1, CONTEXT + 7))]
    for index, scene, truth in scenes:
        obj = scene.objects[0]
        prompt = describe_scene(scene)
        other = prompt.replace(f"moves {obj.direction}", f"moves {OPPOSITE[obj.direction]}")
        context = _u8(render_scene(scene)[:CONTEXT])
        out = {}
        for name, g, p, ctx in (("own", gen, prompt, context), ("other", gen, other, context),
                                ("stream", stream, prompt, context), ("none", gen, prompt, None)):
            g.reset(p, seed=index, context=ctx)
            assert ctx is None or g.primed.weights == ("stream" if g is stream else "continuation")
            frames = torch.cat([g.step().frames for _ in range(CHUNKS)])
            skip = g.primed.held_output_frames if ctx is not None else 0  # frame 15 is held in the chunk
            out[name] = centroids(frames[skip:], obj.colour)
            out[f"{name}_present"] = track(frames[skip:].permute(0, 3, 1, 2).float() / 127.5 - 1, scene)["present"]
        rows.append(dict(out, truth=truth[CONTEXT:], direction=np.array(DIRECTIONS[obj.direction], float)))
    torch.set_num_threads(before)
    return rows


def _seam_errors(rows, name):
    return np.array([np.linalg.norm(torus_offset(r[name][0], r["truth"][0], SIZE)) for r in rows])


def test_continuation_keeps_the_object_where_the_context_left_it(continuations):
    own, other, stream, none = (_seam_errors(continuations, k) for k in ("own", "other", "stream", "none"))
    print(f"seam position error (px, stream frame 16, {len(own)} scenes): own prompt {np.nanmean(own):.2f}, "
          f"opposite prompt {np.nanmean(other):.2f}, stream weights {np.nanmean(stream):.2f}, no context "
          f"{np.nanmean(none):.2f}")
    present = {k: np.mean([r[f"{k}_present"].mean() for r in continuations]) for k in ("own", "stream")}
    print(f"object shown at its own size in {present['own']:.2f} of the generated frames (stream weights "
          f"{present['stream']:.2f})")
    for name, errors, bar in (("own", own, 1.5), ("stream", stream, 2.5)):  # measured 1.12 and 1.82
        assert not np.isnan(errors).any()  # the object is there in every continuation
        assert present[name] >= 0.9  # measured 0.99 and 0.98: neither lost nor smeared into a blob
        assert np.mean(errors) <= bar and np.mean(errors) < np.mean(none)  # no context: measured 3.31
    assert np.mean(own) <= 0.5 * np.mean(none)  # 1.12 / 3.31 = 0.34. The opposite prompt is reported only


def test_the_context_places_the_object_nearer_than_no_context(continuations):
    gain = bootstrap_ci(_seam_errors(continuations, "none") - _seam_errors(continuations, "own"))  # paired
    print(f"seam: nearer with the context by {gain[0]:.2f} [{gain[1]:.2f}, {gain[2]:.2f}] px")
    assert gain[1] > 0.5  # the 95 % bootstrap interval over scenes: measured [1.72, 2.69] px
    # Training-free priming on the stream weights: measured 1.48 [0.98, 2.00] px (0.67 [-0.02, 1.33] on the
    # on-policy stream weights shipped before, not significant).
    free = bootstrap_ci(_seam_errors(continuations, "none") - _seam_errors(continuations, "stream"))
    print(f"stream weights: nearer by {free[0]:.2f} [{free[1]:.2f}, {free[2]:.2f}] px")
    assert free[1] > 0.25


def _moves(rows, name, frames=6):
    return np.array([travel(r[name], r["direction"], frames) for r in rows])


def test_continuation_keeps_moving_the_prompted_way(continuations):
    own, other, stream, none = (_moves(continuations, k) for k in ("own", "other", "stream", "none"))
    print(f"travel along the prompted direction over 6 frames (px): with context {np.nanmean(own):.2f}, "
          f"opposite prompt {np.nanmean(other):.2f}, stream weights {np.nanmean(stream):.2f}, fresh stream "
          f"{np.nanmean(none):.2f}; more than 0.5 px in {int(np.sum(own > 0.5))} of {len(own)} scenes (opposite "
          f"prompt {int(np.sum(other > 0.5))}, stream weights {int(np.sum(stream > 0.5))})")
    assert np.mean(own > 0.5) >= 0.85  # measured 46 of 48
    assert np.mean(stream > 0.5) >= 0.85  # measured 46 of 48 (37 on the on-policy stream weights)
    # The prompt, not the context, picks the way: under the opposite direction's prompt the same context goes
    # back the other way (measured -4.57 px, more than 0.5 px the context's way in 1 of 48 scenes).
    assert np.nanmean(other) < -1.0 and np.mean(other > 0.5) <= 0.1


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
                   "object 3.99 px from its true place, a fresh stream 4.37 px (the prompt's layout wins)")
def test_a_single_image_places_the_object_of_the_next_frames(single_images):
    errs = np.array([r[2] for r in single_images])
    fresh = np.array([r[3] for r in single_images])
    print(f"single image: object position error in the next frame {np.nanmean(errs):.2f} px (fresh stream "
          f"{np.nanmean(fresh):.2f} px), {len(errs)} scenes")
    assert np.nanmean(errs) <= 1.5 and np.nanmean(errs) < 0.5 * np.nanmean(fresh)
