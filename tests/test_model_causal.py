"""Block-causal backend: mask, chunk-by-chunk == one forward, causality, and the attention protocol."""
from __future__ import annotations

import pytest
import torch
from model_harness import random_dit
from rfrt.models.attention import (
    BlockCausalAttention,
    FrameGrid,
    FullAttention,
    block_causal_mask,
)
from rfrt.models.config import ModelConfig
from rfrt.models.dit import CausalWanDiT

CFG = ModelConfig(dim=32, ffn_dim=48, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=24,
                  freq_dim=16, text_len=16)
CHUNK = 2


def _model(cfg: ModelConfig = CFG) -> CausalWanDiT:
    return random_dit(cfg)


def _inputs(F=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, F, 4, 4, 6, generator=g), torch.rand(1, F, generator=g) * 1000,
            torch.randn(1, 16, 24, generator=g))


def test_mask_matches_a_loop():
    grid = FrameGrid(frames=3, h=1, w=2, frame_offset=2)
    mask = block_causal_mask(grid, kv_start_frame=0, kv_frames=5, chunk_frames=2)
    assert mask.shape == (6, 10)
    for i in range(6):
        for j in range(10):
            qf, kf = 2 + i // 2, j // 2
            assert bool(mask[i, j]) == (kf // 2 <= qf // 2)


def test_chunk_by_chunk_equals_one_block_causal_forward():
    net = _model()
    x, t, text = _inputs()
    kv = net.cross_kv(text)
    with torch.no_grad():
        full = net(x, t, kv, BlockCausalAttention(CHUNK))
        inc = BlockCausalAttention(CHUNK, incremental=True)
        parts = [net(x[:, s:s + CHUNK], t[:, s:s + CHUNK], kv, inc, frame_offset=s)
                 for s in range(0, x.shape[1], CHUNK)]
    assert inc.cached_frames(0) == x.shape[1]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_rerunning_a_chunk_replaces_its_cache_entries():
    # Denoising re-runs the same chunk several times at different t; only the last run may stay cached.
    net = _model()
    x, t, text = _inputs()
    kv = net.cross_kv(text)
    with torch.no_grad():
        full = net(x, t, kv, BlockCausalAttention(CHUNK))
        inc = BlockCausalAttention(CHUNK, incremental=True)
        net(x[:, :2], t[:, :2], kv, inc)
        net(torch.randn_like(x[:, 2:4]), t[:, 2:4] * 0.5, kv, inc, frame_offset=2)  # a noisier step
        net(x[:, 2:4], t[:, 2:4], kv, inc, frame_offset=2)
        last = net(x[:, 4:], t[:, 4:], kv, inc, frame_offset=4)
    torch.testing.assert_close(last, full[:, 4:], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="only frames"):
        net(x[:, :2], t[:, :2], kv, BlockCausalAttention(CHUNK, incremental=True), frame_offset=2)


def test_first_chunk_is_full_attention_on_itself_and_later_frames_do_not_leak():
    net = _model()
    x, t, text = _inputs()
    with torch.no_grad():
        full = net(x, t, text, BlockCausalAttention(CHUNK))
        alone = net(x[:, :CHUNK], t[:, :CHUNK], text, FullAttention())
        x2 = x.clone()
        x2[:, 4:] += 1.0
        perturbed = net(x2, t, text, BlockCausalAttention(CHUNK))
    torch.testing.assert_close(full[:, :CHUNK], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(perturbed[:, :4], full[:, :4], rtol=0, atol=0)
    assert not torch.allclose(perturbed[:, 4:], full[:, 4:])


def test_one_chunk_spanning_everything_is_full_attention():
    net = _model()
    x, t, text = _inputs()
    with torch.no_grad():
        a = net(x, t, text, BlockCausalAttention(chunk_frames=x.shape[1]))
        b = net(x, t, text, FullAttention())
        c = net(x, t, text, BlockCausalAttention(CHUNK))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(b, c, atol=1e-3)


def test_backend_receives_normed_unrotated_qk_in_protocol_layout():
    seen = []

    def spy(layer, q, k, v, grid):
        seen.append((layer, q.shape, grid))
        return FullAttention()(layer, q, k, v, grid)

    net = _model()
    x, t, text = _inputs(F=3)
    with torch.no_grad():
        net(x, t, text, spy, frame_offset=7)
    assert [s[0] for s in seen] == [0, 1]
    assert seen[0][1] == (1, 3 * 2 * 3, 2, 16)
    assert seen[0][2] == FrameGrid(frames=3, h=2, w=3, frame_offset=7)


def test_frame_grid_validation():
    with pytest.raises(ValueError, match="frame_offset"):
        FrameGrid(1, 2, 2, frame_offset=-1)
    with pytest.raises(ValueError, match="frames"):
        FrameGrid(0, 2, 2)
    with pytest.raises(ValueError, match="chunk_frames"):
        BlockCausalAttention(0)


def test_release_shapes_run_on_meta_device_without_reading_values():
    # Meta tensors have no values: .item(), .tolist() or value-dependent branching would raise here, so this
    # pins the forward as free of host syncs, at the 1.3B release's shapes (832x480, one 3-frame chunk).
    with torch.device("meta"):
        net = CausalWanDiT(ModelConfig()).to(torch.bfloat16)
        x, t, text = torch.randn(1, 3, 16, 60, 104), torch.rand(1, 3), torch.randn(1, 512, 4096)
    backend = BlockCausalAttention(3, incremental=True)
    out = net(x, t, net.cross_kv(text), backend, frame_offset=0)
    assert out.shape == (1, 3, 16, 60, 104) and out.dtype == torch.bfloat16
