"""train/evaluate_claims.py metrics against closed-form cases: a rendered world video is perfect, a frozen
stream copies its first chunk and does not drift, and an object-less stream never shows the prompted object."""
import pytest
import torch

from train.data.synthetic_world import SyntheticWorld
from train.evaluate_claims import late_adherence, palette_quality, stream_metrics

pytest.importorskip("cv2")


def _still_stream(world: SyntheticWorld, indices: list[int], chunks: int) -> torch.Tensor:
    # Repeat each scene's first frame: a stream that never changes.
    return torch.stack([world[i][0][:1].expand(chunks * 3, -1, -1, -1) for i in indices])


def test_metrics_of_a_frozen_stream():
    from train.rewards.motion import MotionReward

    world = SyntheticWorld(16, 16, 9, 1, seed=3, layout="canonical")
    ids = [i for i in range(40) if world.scene(i).objects[0].motion == "still"][:3]
    video = _still_stream(world, ids, chunks=15)
    m = stream_metrics(video, 3, MotionReward(), [world.scene(i) for i in ids])
    assert m["quality"] == pytest.approx(1.0, abs=1e-4)  # cdist in fp32
    assert m["drift"] == pytest.approx(0.0, abs=1e-6)
    assert m["copy"] == pytest.approx(1.0, abs=1e-6)
    assert m["dynamic"] < 0.01 and m["object"] == 1.0


def test_late_adherence_needs_the_object_and_the_background():
    world = SyntheticWorld(16, 16, 9, 1, seed=4, layout="canonical")
    scenes = [world.scene(i) for i in range(4)]
    truth = torch.stack([world[i][0] for i in range(4)])
    assert late_adherence(truth, scenes, 3) == 1.0
    background_only = truth[:, :, :, :1, :1].expand_as(truth).clone()  # corner pixel = background colour
    assert late_adherence(background_only, scenes, 3) == 0.0
    swapped = torch.stack([truth[1], truth[0], truth[3], truth[2]])  # other prompts' videos
    assert late_adherence(swapped, scenes, 3) < 0.5


def test_noise_is_off_palette():
    assert palette_quality(torch.rand(2, 4, 3, 16, 16) * 2 - 1).max() < 0.9


def test_motion_metrics_of_true_and_frozen_long_streams():
    """The world's own 60-chunk streams keep their drawn speed to the end; their first frame frozen stalls at 0."""
    import math

    from train.data.synthetic_world import render_scene
    from train.evaluate_claims import per_stream_metrics
    from train.rewards.motion import MotionReward

    world = SyntheticWorld(16, 16, 180, 1, seed=5, layout="canonical")
    ids = [i for i in range(60) if world.scene(i).objects[0].motion == "moves"][:3]
    scenes = [world.scene(i) for i in ids]
    truth = torch.stack([render_scene(s) for s in scenes])
    for r, s in zip(per_stream_metrics(truth, 3, MotionReward(), scenes), scenes):
        speed = math.hypot(*s.objects[0].velocity)
        assert abs(r["speed"] - speed) < 0.05 and r["in_range"] == 1.0 and abs(r["late_early"] - 1) < 0.1
        assert r["stall"] == 11 and r["object"] == 1.0  # 180 frames = 11 whole seconds
    frozen = truth[:, :1].expand_as(truth)
    for r in per_stream_metrics(frozen, 3, MotionReward(), scenes):
        assert r["stall"] == 0 and abs(r["speed"]) < 1e-6 and r["in_range"] == 0.0 and r["copy"] == 1.0


def test_arm_specs_parse_with_labels_that_hold_an_equals_sign():
    import pytest
    import torch

    from train.evaluate_claims import parse_arm

    assert parse_arm("ODE init = the shipped model=runs/x/export:0.999") == (
        "ODE init = the shipped model", "runs/x/export", 0.999, "fp32", torch.float32)
    assert parse_arm("b=runs/y:0.5:cache:bf16") == ("b", "runs/y", 0.5, "cache", torch.bfloat16)
    for bad, why in (("runs/y:0.5", "expected NAME="), ("a=runs/y", "expected NAME="), ("a=runs/y:x", "not a number"),
                     ("a=runs/y:0.5:cache:fp16", "not one of"), ("a=runs/y:0.5:", "expected NAME=")):
        with pytest.raises(ValueError, match=why):
            parse_arm(bad)
