"""The FLOP cost model (rfrt.fast.cost) against SPEC §2.4's figures for the 1.3B model at 832x480."""
import pytest

from rfrt.cache import CacheLayout, CachePolicy
from rfrt.fast.cost import chunk_flop, forward_cost
from rfrt.models import ModelConfig

# 832x480: 60 x 104 latents, a 30 x 52 token grid (1560 tokens per frame)
RELEASE = CacheLayout.for_model(ModelConfig(), CachePolicy(), 30, 52)


def test_release_shape_matches_spec():
    cost = forward_cost(ModelConfig(), RELEASE)
    assert round(cost.linear / 1e12, 2) == 11.70
    assert round(cost.self_attention / 1e12, 2) == 12.11
    assert round(cost.cross_attention / 1e12, 2) == 0.44
    assert round(cost.total / 1e12, 2) == 24.26
    assert round(chunk_flop(ModelConfig(), RELEASE) / 1e12, 1) == 121.3


def test_filling_chunk_attends_fewer_keys():
    cfg, policy = ModelConfig(), RELEASE
    first = forward_cost(cfg, policy, key_frames=3)
    assert first.linear == forward_cost(cfg, policy).linear
    assert first.self_attention * 3 == pytest.approx(forward_cost(cfg, policy).self_attention)
    with pytest.raises(ValueError, match="key_frames"):
        forward_cost(cfg, policy, key_frames=10)
