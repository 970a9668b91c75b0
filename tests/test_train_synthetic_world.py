"""train.data.synthetic_world: determinism, bounds, and that the prompt's motion shows in the pixels.

The motion checks read only the prompt and the rendered pixels (never the scene's trajectory), so they would
catch a renderer or a describer that disagrees with the other.
"""

import numpy as np
import pytest
import torch

from train.data.synthetic_world import (COLOURS, DIRECTIONS, SyntheticWorld, SyntheticWorldDataset,
                                        encode_prompt, vocabulary)


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


@pytest.mark.parametrize("layout", ["random", "canonical"])
@pytest.mark.parametrize("H, W, T", [(16, 16, 8), (32, 32, 12), (16, 16, 9)])
def test_described_motion_appears_in_pixels(H, W, T, layout):
    world = SyntheticWorld(H, W, T, max_objects=1, seed=11, layout=layout)
    seen = set()
    for i in range(120):
        video, prompt = world[i]
        words = prompt.split()
        colour, motion = words[2], ("turns" if "turns" in words else words[4])
        seen.add(motion)
        assert words[-2] in COLOURS and words[-2] != colour
        c = centroids(video, colour)
        visible = [p for p in c if p is not None]
        if motion == "appears":
            assert c[0] is None and len(visible) >= T // 2, prompt
        else:
            assert len(visible) == T, prompt
        d = visible[-1] - visible[0]
        if motion == "stays":
            assert np.abs(d).max() < 0.5, prompt
        elif motion in ("moves", "appears"):
            direction = np.array(DIRECTIONS[words[-5]])
            # Net displacement points along the named direction, and more than 1 px.
            assert d @ direction > 1.0 and abs(d @ direction[::-1]) < 0.5 * (d @ direction), prompt
        elif motion == "turns":
            d1, d2 = np.array(DIRECTIONS[words[5]]), np.array(DIRECTIONS[words[-5]])
            steps = [b - a for a, b in zip(visible, visible[1:])]
            assert steps[0] @ d1 > 0 and steps[-1] @ d2 > 0, prompt
        elif motion == "bounces":
            axis = 0 if words[5] == "left" else 1
            v = np.diff([p[axis] for p in visible])
            v = v[np.abs(v) > 1e-6]
            assert (np.sign(v[1:]) != np.sign(v[:-1])).any(), prompt  # the velocity reverses at a wall
    assert seen == {"moves", "turns", "bounces", "stays", "appears"}


def test_canonical_layout_is_a_function_of_the_prompt():
    """In the canonical layout two scenes with the same prompt render the same video; in the random one they
    do not (so the canonical check can fail)."""
    def by_prompt(layout):
        world, seen, clashes = SyntheticWorld(16, 16, 9, max_objects=1, seed=5, layout=layout), {}, []
        for i in range(400):
            video, prompt = world[i]
            if prompt in seen:
                clashes.append(torch.equal(seen[prompt], video))
            seen[prompt] = video
        return clashes

    canonical, random = by_prompt("canonical"), by_prompt("random")
    assert len(canonical) >= 10 and all(canonical)
    assert len(random) >= 10 and not any(random)


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
