"""train.data.synthetic_world: determinism, bounds, that the prompt's motion shows in the pixels, and the
long-horizon properties (wrap period, bounces inside the walls, one turn, still stays still, speed distribution,
clips as windows of one stream) in closed form.

The motion checks read only the prompt and the rendered pixels (never the scene's trajectory), so they would
catch a renderer or a describer that disagrees with the other.
"""

import dataclasses

import numpy as np
import pytest
import torch

from train.data.synthetic_world import (COLOURS, DIRECTIONS, SyntheticWorld, SyntheticWorldDataset, deciding_frames,
                                        describe_scene, encode_prompt, fixed_appear_frame, path, render_scene,
                                        trajectory, vocabulary, with_shift, with_speed)


def centroids(video: torch.Tensor, colour: str) -> list:
    """Centroid (x, y) per frame of pixels of `colour` (None where absent). video: [T, 3, H, W] in [-1, 1]."""
    target = torch.tensor(COLOURS[colour]).view(3, 1, 1) * 2 - 1
    out = []
    for frame in video:
        m = (frame - target).abs().amax(0) < 1e-4
        if m.sum() == 0:
            out.append(None)
            continue
        ys, xs = torch.nonzero(m, as_tuple=True)
        out.append(np.array([xs.float().mean().item(), ys.float().mean().item()]))
    return out


def test_determinism_and_bounds():
    a, b = SyntheticWorld(16, 16, 8, seed=3), SyntheticWorld(16, 16, 8, seed=3)
    for i in range(5):
        va, pa = a[i]
        vb, pb = b[i]
        assert torch.equal(va, vb) and pa == pb
        assert va.shape == (8, 3, 16, 16) and va.dtype == torch.float32
        assert va.min() >= -1 and va.max() <= 1
    other = SyntheticWorld(16, 16, 8, seed=4)
    assert any(not torch.equal(a[i][0], other[i][0]) for i in range(5))


def circular_centroids(video: torch.Tensor, colour: str) -> list:
    """Centroid (x, y) per frame on the torus (circular mean per axis, so an object split over an edge is one
    object); None where absent. video: [T, 3, H, W] in [-1, 1]."""
    target = torch.tensor(COLOURS[colour]).view(3, 1, 1) * 2 - 1
    H, W = video.shape[-2:]
    out = []
    for frame in video:
        m = (frame - target).abs().amax(0) < 1e-4
        if m.sum() == 0:
            out.append(None)
            continue
        ys, xs = torch.nonzero(m, as_tuple=True)
        c = []
        for v, n in ((xs, W), (ys, H)):
            a = v.double() * 2 * np.pi / n
            c.append(float(np.mod(torch.atan2(a.sin().mean(), a.cos().mean()).item() * n / (2 * np.pi), n)))
        out.append(np.array(c))
    return out


def wrapped_steps(c: list, H: int, W: int) -> np.ndarray:
    """Per-frame displacement [T-1, 2] of circular centroids, each axis wrapped into (-n/2, n/2]."""
    d = np.diff(np.stack(c), axis=0)
    n = np.array([W, H], dtype=np.float64)
    return d - n * np.round(d / n)


@pytest.mark.parametrize("layout", ["random", "canonical"])
@pytest.mark.parametrize("H, W, T", [(16, 16, 8), (32, 32, 12), (16, 16, 9)])
def test_described_motion_appears_in_pixels(H, W, T, layout):
    """Read only the prompt and the pixels: every prompt's motion is what the frames show."""
    world = SyntheticWorld(H, W, T, max_objects=1, seed=11, layout=layout)
    seen = set()
    for i in range(120):
        video, prompt = world[i]
        words = prompt.split()
        colour, motion = words[2], ("turns" if "turns" in words else words[4])
        seen.add(motion)
        assert words[-2] in COLOURS and words[-2] != colour
        c = circular_centroids(video, colour)
        visible = [p for p in c if p is not None]
        if motion == "appears":
            assert c[0] is None and len(visible) >= T // 2, prompt
        else:
            assert len(visible) == T, prompt
        steps = wrapped_steps(visible, H, W)
        if motion == "stays":
            assert np.abs(steps).max() < 1e-6, prompt
        elif motion in ("moves", "appears"):
            direction = np.array(DIRECTIONS[words[-5]])
            # Every frame steps the named way (pixel rounding makes single steps uneven), on average by a speed
            # in the drawn range 0.5-1.5 px/frame, never across it.
            along, across = steps @ direction, steps @ direction[::-1]
            assert along.min() >= 0 and 0.35 < along.mean() < 1.65 and np.abs(across).max() < 0.5, prompt
        elif motion == "turns":
            d1, d2 = np.array(DIRECTIONS[words[5]]), np.array(DIRECTIONS[words[-5]])
            # The turn comes at stream frame 2..6: the first two steps go d1, the last one d2 (and not d1).
            assert (steps[0] + steps[1]) @ d1 > 0.3 and steps[-1] @ d2 >= 0 and abs(steps[-1] @ d1) < 0.5, prompt
        elif motion == "bounces":
            axis = 0 if words[5] == "left" else 1
            # Rasterising at sub-pixel positions moves the centroid across the axis by < 0.5 px.
            assert np.abs(steps[:, 1 - axis]).max() < 0.5 and (np.abs(steps[:, axis]) > 0.3).any(), prompt
    assert seen == {"moves", "turns", "bounces", "stays", "appears"}


def _long(layout: str = "canonical", T: int = 500, seed: int = 21, phase: str = "random") -> SyntheticWorld:
    return SyntheticWorld(16, 16, T, max_objects=1, seed=seed, layout=layout, phase=phase)


# (layout, phase) of the long-horizon tests: both layouts, and the fixed phase the default model is trained on.
WORLDS = [("random", "random"), ("canonical", "random"), ("canonical", "fixed")]


def _first(world: SyntheticWorld, motion: str, n: int = 1) -> list:
    out = [i for i in range(400) if world.scene(i).objects[0].motion == motion][:n]
    assert len(out) == n
    return out


@pytest.mark.parametrize("layout, phase", WORLDS)
def test_movers_wrap_with_period_w_over_speed(layout, phase):
    """A mover's pixels repeat after W / speed frames (closed form), and it never stops over 500 frames."""
    world = _long(layout, phase=phase)
    for i in _first(world, "moves", 4):
        s = world.scene(i)
        obj = s.objects[0]
        speed = float(np.hypot(*obj.velocity))
        n = s.width if obj.velocity[0] else s.height
        period = n / speed
        frames = np.arange(500, dtype=np.float64)
        a = trajectory(obj, s, frames)
        b = trajectory(obj, s, frames + period)
        gap = np.abs(a - b)
        assert np.minimum(gap, n - gap).max() < 1e-6  # same place on the torus one period later
        c = circular_centroids(render_scene(s), obj.colour)
        assert all(p is not None for p in c)
        along = wrapped_steps(c, s.height, s.width) @ np.array(DIRECTIONS[obj.direction])
        # Drawn motion matches the closed form on average; no frame stalls (the area may clip at an edge: +-0.6).
        assert abs(along.mean() - speed) < 0.05 and along.min() > speed - 0.6
        total = path(obj, s)[-1] - path(obj, s)[0]
        assert abs(total @ np.array(DIRECTIONS[obj.direction]) - 499 * speed) < 1e-6


@pytest.mark.parametrize("layout, phase", WORLDS)
def test_bouncers_stay_inside_the_walls_and_keep_bouncing(layout, phase):
    world = _long(layout, phase=phase)
    for i in _first(world, "bounces", 4):
        s = world.scene(i)
        obj = s.objects[0]
        axis = 0 if obj.direction == "right" else 1
        pos = trajectory(obj, s)
        r, n = obj.radius, (s.width, s.height)[axis]
        assert pos[:, axis].min() >= r - 1e-9 and pos[:, axis].max() <= n - 1 - r + 1e-9
        speed = float(np.hypot(*obj.velocity))
        span = n - 1 - 2 * r
        # Direction reversals: two per period 2 span / speed, over the whole stream.
        v = np.sign(np.diff(pos[:, axis]))
        reversals = int((v[1:] != v[:-1]).sum())
        expected = 499 * speed / span
        assert abs(reversals - expected) <= 2, (reversals, expected)
        # Only the axis of motion changes, and the object is drawn whole inside the frame in every frame.
        assert np.ptp(pos[:, 1 - axis]) == 0
        video = render_scene(s)
        bg = torch.tensor(COLOURS[s.background]).view(3, 1, 1) * 2 - 1
        areas = [int(((f - bg).abs().amax(0) > 1e-4).sum()) for f in video]
        assert min(areas) > 0.7 * max(areas)  # rasterisation changes a small shape's area a little


@pytest.mark.parametrize("phase", ["random", "fixed"])
def test_turn_happens_once_then_the_new_direction_holds(phase):
    world = _long(phase=phase)
    for i in _first(world, "turns", 4):
        s = world.scene(i)
        obj = s.objects[0]
        assert 1 <= obj.turn_frame < world.event_frames - 1
        steps = np.diff(path(obj, s), axis=0)  # step k goes from frame k to k + 1
        d1, d2 = np.array(DIRECTIONS[obj.direction]), np.array(DIRECTIONS[obj.direction2])
        speed = float(np.hypot(*obj.velocity))
        assert np.allclose(steps[:obj.turn_frame] @ d1, speed) and np.allclose(steps[obj.turn_frame:] @ d2, speed)
        c = circular_centroids(render_scene(s), obj.colour)
        drawn = wrapped_steps(c, s.height, s.width)
        assert (drawn[obj.turn_frame + 1:] @ d2 > speed - 0.6).all()  # 490 frames the new way, never back


@pytest.mark.parametrize("phase", ["random", "fixed"])
def test_still_stays_still_and_appearances_happen_once(phase):
    world = _long(phase=phase)
    (i,) = _first(world, "still")
    s = world.scene(i)
    video = render_scene(s)
    assert torch.equal(video[0], video[-1]) and torch.equal(video[0], video[250])
    for i in _first(world, "appears", 3):
        s = world.scene(i)
        obj = s.objects[0]
        present = [p is not None for p in circular_centroids(render_scene(s), obj.colour)]
        assert not any(present[:obj.appear_frame]) and all(present[obj.appear_frame:])
        assert 1 <= obj.appear_frame <= world.event_frames // 2


def test_the_event_frames_determine_the_rest_of_the_stream():
    """What stage regress's regress_context_frames relies on: by stream frame event_frames every turn and
    appearance has happened, so a mover's (or a turned or appeared one's) path after it is the straight
    extrapolation of its last step before it; a context of event_frames frames leaves nothing to chance."""
    world = _long(phase="random")
    e = world.event_frames
    for motion in ("moves", "turns", "appears"):
        for i in _first(world, motion, 6):
            s = world.scene(i)
            obj = s.objects[0]
            p = path(obj, s)
            step = p[e - 1] - p[e - 2]
            later = np.arange(e, 120)
            assert np.allclose(p[later], p[e - 1] + (later - (e - 1))[:, None] * step)
            if motion == "appears":
                assert obj.appear_frame < e - 1  # visible, and moving, in the context's last two frames


def test_the_fixed_phase_leaves_only_the_speed_and_shows_it_within_the_deciding_frames():
    """deciding_frames of the fixed phase (clips from frame 0): the prompt names start wall, turn direction and
    event frames, so given the speed the first deciding_frames frames show, the whole path is closed form."""
    world = _long(phase="fixed")
    d = deciding_frames(world)
    assert d == fixed_appear_frame(world.event_frames) + 2 == 5
    assert deciding_frames(_long(phase="random")) == world.event_frames
    assert deciding_frames(dataclasses.replace(world, speed_min=1.0, speed_max=1.0)) == 0
    assert deciding_frames(dataclasses.replace(world, max_start_frame=3)) == world.event_frames
    later = np.arange(d, 120)
    for motion in ("moves", "turns", "appears"):
        for i in _first(world, motion, 6):
            s = world.scene(i)
            obj = s.objects[0]
            p = path(obj, s)
            first = obj.appear_frame  # 0 unless it appears
            assert first <= d - 2  # two visible frames inside the context
            speed = np.hypot(*(p[first + 1] - p[first]))
            assert speed == pytest.approx(np.hypot(*obj.velocity))
            if motion == "turns":
                t = obj.turn_frame
                expected = p[t] + (later - t)[:, None] * speed * np.array(DIRECTIONS[obj.direction2])
            else:
                expected = p[first] + (later - first)[:, None] * speed * np.array(DIRECTIONS[obj.direction])
            assert np.allclose(p[later], expected)
            if motion == "appears":  # one frame fewer would show it in one frame only: no speed
                assert obj.appear_frame == d - 2


def test_with_speed_is_the_scene_the_world_draws_at_that_speed():
    """with_speed changes only the chance the fixed phase leaves: the scene equals the one a world with that single
    speed draws at the same index (the speed is one uniform draw, so every other draw is the same)."""
    world = _long(phase="fixed")
    for v in (0.5, 0.8, 1.5):
        one = dataclasses.replace(world, speed_min=v, speed_max=v)
        for i in range(30):
            mine, theirs = with_speed(world.scene(i), v), one.scene(i)
            assert [o.motion for o in mine.objects] == [o.motion for o in theirs.objects]
            assert np.allclose(render_scene(mine).numpy(), render_scene(theirs).numpy())
            for a, b in zip(mine.objects, theirs.objects):
                assert np.allclose(a.velocity, b.velocity) and np.allclose(a.velocity2, b.velocity2)
                assert a.start == b.start


def test_with_shift_is_the_same_path_a_time_offset_ahead():
    """with_shift(scene, px) moves a straight path px along its direction: in closed form the shifted path at
    frame t is the original's at t + px / speed (the whole path, a turn's second leg included); still objects
    stay where they are."""
    world = _long(phase="fixed")
    seen = set()
    for i in range(60):
        scene = world.scene(i)
        obj = scene.objects[0]
        seen.add(obj.motion)
        for px in (-1.5, 0.5, 2.0):
            moved = with_shift(scene, px).objects[0]
            speed = np.hypot(*obj.velocity)
            if speed == 0:
                assert moved == obj
                continue
            t = np.arange(0.0, 30.0)
            if obj.motion in ("moves", "appears"):
                assert np.allclose(path(moved, scene, t), path(obj, scene, t + px / speed))
            if obj.motion == "turns":  # start, turn point and second leg all move by px along the first leg
                unit = np.array(obj.velocity) / speed
                assert np.allclose(path(moved, scene, t), path(obj, scene, t) + px * unit)
            assert moved.motion == obj.motion and moved.velocity == obj.velocity
    assert {"moves", "turns", "still"} <= seen


@pytest.mark.parametrize("phase", ["random", "fixed"])
def test_speed_distribution_matches_the_config(phase):
    """Speeds are U[speed_min, speed_max]: the KS distance to that CDF is small, and the range is respected."""
    world = SyntheticWorld(16, 16, 9, max_objects=1, seed=2, layout="canonical", speed_min=0.4, speed_max=1.2,
                           phase=phase)
    speeds = np.array([np.hypot(*world.scene(i).objects[0].velocity) for i in range(1500)])
    speeds = speeds[speeds > 0]  # still objects have none
    assert speeds.min() >= 0.4 and speeds.max() <= 1.2 and len(speeds) > 1000
    x = np.sort(speeds)
    ks = np.max(np.abs(np.arange(1, len(x) + 1) / len(x) - (x - 0.4) / 0.8))
    assert ks < 1.63 / np.sqrt(len(x))  # the 1 % critical value of the Kolmogorov-Smirnov test
    with pytest.raises(ValueError, match="speed range"):
        SyntheticWorld(16, 16, 9, speed_min=1.0, speed_max=0.5)


def test_clips_are_windows_of_one_stream():
    """Stationarity in the data: a clip starting at stream frame s equals frames s.. of the long stream, and the
    phase along the axis is uniform (the mover's position at frame 0 covers the frame)."""
    world = SyntheticWorld(16, 16, 9, max_objects=1, seed=8, layout="canonical", max_start_frame=12)
    starts = [world.scene(i).start_frame for i in range(300)]
    assert min(starts) == 0 and max(starts) == 12
    for i in range(20):
        s = world.scene(i)
        long = dataclasses.replace(s, num_frames=s.start_frame + 9, start_frame=0)
        assert torch.equal(render_scene(s), render_scene(long)[s.start_frame:])
    world = SyntheticWorld(16, 16, 9, max_objects=1, seed=9, layout="canonical")
    xs = [world.scene(i).objects[0].start[0] for i in range(600) if world.scene(i).objects[0].direction
          in ("left", "right") and world.scene(i).objects[0].motion == "moves"]
    hist = np.histogram(np.mod(xs, 16), bins=4, range=(0, 16))[0]
    assert hist.min() > 0.5 * hist.mean()


def test_canonical_layout_prompt_fixes_what_evaluation_checks():
    """Canonical: the same prompt gives the same radius, shape and cross-axis place; speed and phase differ. In
    the random layout the radius differs too (so the check can fail)."""
    def by_prompt(layout):
        world, seen, same, speeds = SyntheticWorld(16, 16, 9, max_objects=1, seed=5, layout=layout), {}, [], []
        for i in range(400):
            s = world.scene(i)
            o = s.objects[0]
            key = describe_scene(s)
            if key in seen:
                p = seen[key]
                same.append(p.radius == o.radius and p.shape == o.shape and
                            (o.motion != "moves" or (p.start[1] == o.start[1] if o.velocity[0] else
                                                     p.start[0] == o.start[0])))
                if o.motion != "still":
                    speeds.append(np.hypot(*p.velocity) != np.hypot(*o.velocity))
            seen[key] = o
        return same, speeds

    canonical, speeds = by_prompt("canonical")
    random, _ = by_prompt("random")
    assert len(canonical) >= 10 and all(canonical) and all(speeds)
    assert len(random) >= 10 and not all(random)


def test_unknown_layout_is_named():
    with pytest.raises(ValueError, match="layout 'grid'"):
        SyntheticWorld(16, 16, 9, layout="grid")


def test_vocabulary_covers_prompts():
    vocab = set(vocabulary())
    world = SyntheticWorld(16, 16, 6, max_objects=3, seed=0)
    for i in range(50):
        prompt = world[i][1]
        assert set(prompt.split()) <= vocab
        ids = encode_prompt(prompt)
        assert ids.shape == (32,) and (ids > 0).sum() == len(prompt.split())
    with pytest.raises(ValueError, match="zebra"):
        encode_prompt("a zebra")


def test_sharding_and_resume():
    world = SyntheticWorld(8, 8, 2, seed=1)
    full = [p for _, p in zip(range(8), SyntheticWorldDataset(world))]
    r0 = [p for _, p in zip(range(4), SyntheticWorldDataset(world, rank=0, world_size=2))]
    r1 = [p for _, p in zip(range(4), SyntheticWorldDataset(world, rank=1, world_size=2))]
    assert [p for _, p in (world[i] for i in range(8))] == [p for _, p in full]
    assert [p for _, p in r0] == [full[i][1] for i in (0, 2, 4, 6)]
    assert [p for _, p in r1] == [full[i][1] for i in (1, 3, 5, 7)]

    ds = SyntheticWorldDataset(world, rank=1, world_size=2)
    it = iter(ds)
    next(it), next(it)
    state = ds.state_dict()
    resumed = SyntheticWorldDataset(world, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert next(iter(resumed))[1] == r1[2][1]
    with pytest.raises(ValueError, match="rank"):
        SyntheticWorldDataset(world, rank=0, world_size=2).load_state_dict(state)

    finite = SyntheticWorldDataset(world, num_samples=5)
    loader = torch.utils.data.DataLoader(finite, batch_size=None, num_workers=2)
    assert sorted(p for _, p in loader) == sorted(world[i][1] for i in range(5))


def test_parse_single_object_inverts_describe():
    from train.data.synthetic_world import parse_single_object
    world = SyntheticWorld(16, 16, 9, max_objects=1, seed=6, layout="canonical")
    for i in range(80):
        s = world.scene(i)
        p = describe_scene(s)
        got = parse_single_object(p, 16, 16, 9)
        a, b = got.objects[0], s.objects[0]
        assert describe_scene(got) == p and got.background == s.background
        assert (a.shape, a.colour, a.size, a.radius, a.motion) == (b.shape, b.colour, b.size, b.radius, b.motion)
    with pytest.raises(ValueError, match="single-object"):
        parse_single_object("a large red circle moves sideways on a blue background", 16, 16, 9)


def test_fixed_phase_with_one_speed_makes_the_prompt_determine_the_stream():
    world = SyntheticWorld(16, 16, 60, max_objects=1, seed=5, layout="canonical", speed_min=1.0, speed_max=1.0,
                           phase="fixed")
    seen, clashes = {}, 0
    for i in range(600):
        video, prompt = world[i]
        if prompt in seen:
            assert torch.equal(seen[prompt], video), prompt
            clashes += 1
        seen[prompt] = video
        obj = world.scene(i).objects[0]
        if obj.motion == "moves":  # starts at the wall it moves away from, then wraps forever
            axis = 0 if obj.velocity[0] else 1
            r = obj.radius
            assert obj.start[axis] in (r, (16, 16)[axis] - 1 - r)
    assert clashes >= 10
    with pytest.raises(ValueError, match="phase"):
        SyntheticWorld(16, 16, 9, phase="sideways")
