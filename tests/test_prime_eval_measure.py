"""train.prime_eval's position measure on the world's torus, against the world's closed-form path: the priming
tests of the default model (test_prime_default_model.py) read positions and travel through it."""
import numpy as np
import pytest
import torch

from train.data.synthetic_world import COLOURS, DIRECTIONS, parse_single_object, path, render_scene, trajectory
from train.prime_eval import centroids, to_uint8, travel
from train.stream_metrics import torus_offset


@pytest.mark.parametrize("prompt", ["a large red circle moves right on a blue background",
                                    "a small green square moves up on a black background"])
def test_positions_and_travel_follow_the_path_across_the_wrap(prompt):
    scene = parse_single_object(prompt, 16, 16, 30, speed=1.0)
    obj = scene.objects[0]
    frames = to_uint8(render_scene(scene))
    pos = centroids(torch.from_numpy(frames), obj.colour)
    truth = trajectory(obj, scene)
    err = np.linalg.norm(torus_offset(pos, truth, (16, 16)), axis=1)
    assert err.max() < 0.3, err  # every frame, split over an edge or not
    drawn = (np.abs(frames.astype(int) - np.round(np.array(COLOURS[obj.colour]) * 255)).max(-1) <= 1)  # the object
    split = [t for t, m in enumerate(drawn) if m[:, 0].any() and m[:, -1].any() or m[0].any() and m[-1].any()]
    assert split  # the stream does cross an edge, so a plain mean would be wrong there
    unwrapped = path(obj, scene)
    direction = np.array(DIRECTIONS[obj.direction], float)
    for t in range(len(frames) - 6):
        assert travel(pos[t:], direction) == pytest.approx((unwrapped[t + 6] - unwrapped[t]) @ direction, abs=0.3)
    assert np.isnan(travel(np.vstack([pos[:3], [[np.nan, np.nan]], pos[4:]]), direction))  # a lost frame


def test_torus_offset_is_the_shortest_way_round():
    assert torus_offset(np.array([15.0, 1.0]), np.array([1.0, 15.0]), (16, 16)).tolist() == [-2.0, 2.0]
    assert torus_offset(np.array([3.0, 4.0]), np.array([1.0, 9.0]), size=(16, 12)).tolist() == [2.0, -5.0]
