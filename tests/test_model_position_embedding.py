"""ModelConfig.pos_grid: the optional learned spatial position embedding of rfrt's tiny default model.

Checked against closed forms: a position embedding that is the same vector at every position is exactly an
extra patch-embedding bias; the embedding is per (h, w) position and shared by every frame, so chunk-by-chunk
streaming still equals one block-causal forward; a wrong grid is a named error; configs round-trip."""
from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
import torch

from rfrt.models.attention import BlockCausalAttention, FullAttention
from rfrt.models.config import ConfigError, ModelConfig
from test_model_causal import _model as _random

BASE = ModelConfig(dim=32, ffn_dim=48, num_heads=2, num_layers=2, in_dim=3, out_dim=3, text_dim=24,
                   freq_dim=16, text_len=8)
POS = replace(BASE, pos_grid=(2, 3))  # latents 4 x 6 with patch (1, 2, 2)


def _inputs(frames=4):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(1, frames, 3, 4, 6, generator=g), torch.rand(1, frames, generator=g) * 1000,
            torch.randn(1, 8, 24, generator=g))


def test_constant_position_embedding_is_a_patch_bias():
    pos, plain = _random(POS), _random(BASE)
    state = {k: v for k, v in pos.state_dict().items() if k != "pos_embedding"}
    plain.load_state_dict(state)
    c = torch.randn(BASE.dim)
    with torch.no_grad():
        pos.pos_embedding.copy_(c.expand(6, -1))
        plain.patch_embedding.bias.add_(c)
    x, t, text = _inputs()
    torch.testing.assert_close(pos(x, t, text, FullAttention()), plain(x, t, text, FullAttention()),
                               rtol=1e-5, atol=1e-5)


def test_positions_matter_and_streaming_still_equals_the_block_causal_forward():
    net = _random(POS)
    x, t, text = _inputs()
    kv = net.cross_kv(text)
    with torch.no_grad():
        full = net(x, t, kv, BlockCausalAttention(2))
        inc = BlockCausalAttention(2, incremental=True)
        parts = [net(x[:, s:s + 2], t[:, s:s + 2], kv, inc, frame_offset=s) for s in (0, 2)]
        torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)
        shuffled = net.pos_embedding[torch.randperm(6, generator=torch.Generator().manual_seed(3))]
        net.pos_embedding.copy_(shuffled)
        assert (net(x, t, kv, BlockCausalAttention(2)) - full).abs().max() > 1e-2


def test_wrong_grid_and_bad_configs_are_named():
    net = _random(POS)
    x, t, text = _inputs()
    with pytest.raises(ValueError, match=r"\(2, 3\) token grid"):
        net(x[..., :4], t, text, FullAttention())  # 2 x 2 tokens
    for bad in ((2,), (0, 3), [2, 3], (2.0, 3), (True, 3)):
        with pytest.raises(ConfigError, match="pos_grid"):
            replace(BASE, pos_grid=bad)


def test_config_json_round_trip(tmp_path):
    raw = asdict(POS)
    raw["patch_size"] = list(raw["patch_size"])
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert ModelConfig.from_json(tmp_path / "config.json") == POS
    raw["pos_grid"] = None
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert ModelConfig.from_json(tmp_path / "config.json") == BASE
