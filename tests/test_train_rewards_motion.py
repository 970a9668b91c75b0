"""train.rewards: the base interface and the optical-flow motion reward against known shifts."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("cv2")

from train.config import RewardSection  # noqa: E402
from train.rewards import build_reward, to_unit_range  # noqa: E402
from train.rewards.motion import MotionReward  # noqa: E402


def texture(size: int, seed: int = 0) -> torch.Tensor:
    """A smooth random colour texture [3, size, size] in [0, 1] (trackable by optical flow)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, size // 4, size // 4, generator=g)
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)[0]


def translating(tex: torch.Tensor, dx: int, dy: int, T: int = 6, size: int = 48) -> torch.Tensor:
    """Crops of `tex` whose window moves by (dx, dy) px per frame: content shifts by (-dx, -dy). [T, 3, s, s]."""
    o = 20
    return torch.stack([tex[:, o + dy * t: o + dy * t + size, o + dx * t: o + dx * t + size] for t in range(T)])


@pytest.mark.parametrize("method", ["farneback", "dis"])
def test_known_shift_gives_its_magnitude(method):
    tex = texture(128)
    videos = torch.stack([translating(tex, 0, 0), translating(tex, 1, 0), translating(tex, 2, 0),
                          translating(tex, 3, 0), translating(tex, 0, 2), translating(tex, 2, 2)])
    raw = MotionReward(method=method).score(videos)
    assert raw.shape == (6,) and raw.dtype == torch.float32
    expected = torch.tensor([0.0, 1.0, 2.0, 3.0, 2.0, 8 ** 0.5])
    assert torch.allclose(raw, expected, atol=0.15), raw
    assert raw[0] < raw[1] < raw[2] < raw[3]


def test_zscore_and_detached():
    tex = texture(128, seed=1)
    v = torch.stack([translating(tex, 2, 0), translating(tex, 0, 0)]).requires_grad_(True)
    model = MotionReward(mean=1.0, std=0.5)
    raw = model.score(v)
    z = model(v)
    assert torch.allclose(z, (raw - 1.0) / 0.5)
    assert not z.requires_grad


def test_rejects_minus_one_to_one_frames():
    tex = texture(64)
    v = translating(tex, 1, 0, size=32)[None] * 2 - 1  # a [-1, 1] video, the public code's mistake
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MotionReward().score(v)
    assert MotionReward().score(to_unit_range(v)).shape == (1,)
    with pytest.raises(ValueError, match="B, T, 3, H, W"):
        MotionReward().score(torch.rand(2, 3, 8, 8))


def test_build_from_config():
    assert build_reward(RewardSection(kind="none")) is None
    r = build_reward(RewardSection(kind="motion", mean=0.5, std=2.0, flow="dis"))
    assert isinstance(r, MotionReward) and r.method == "dis" and r.mean == 0.5 and r.std == 2.0
    with pytest.raises(ValueError):
        MotionReward(std=0.0)
