"""TAEHVDecoder: batched streaming equals a frame-by-frame reference; chunking is invisible; weights round trip."""
from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from rfrt.decoders import TAEHVConfig, TAEHVDecoder, TAEHVNet
from rfrt.decoders.taehv import _MemBlock, _TGrow

CFG = TAEHVConfig(latent_channels=4, channels=(16, 12, 8, 8))


def _net(seed: int = 0, config: TAEHVConfig = CFG) -> TAEHVNet:
    torch.manual_seed(seed)
    net = TAEHVNet(config)
    # Default init shrinks the signal through ~20 convs; x2 weights plus a head bias of 0.5 give outputs with
    # std ~0.5, ~12 % clamped, and a memory effect that does not vanish (a meaningful test).
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 4:
                p.mul_(2.0)
        net.decoder[-1].bias.fill_(0.5)
    return net


def _frame_by_frame(net: TAEHVNet, latents: torch.Tensor) -> torch.Tensor:
    """Independent reference: literally one frame at a time through the layer list, each memory block fed the
    previous frame it saw (zeros first), each temporal-grow layer emitting its frames in order; then the
    first t_up - 1 frames are dropped and [0, 1] is mapped to [-1, 1]. latents [B, F, C, h, w]."""
    past: dict[int, torch.Tensor] = {}
    out = []
    with torch.no_grad():
        for f in range(latents.shape[1]):
            frames = [latents[:, f]]
            for i, layer in enumerate(net.decoder):
                nxt = []
                for x in frames:
                    if isinstance(layer, _MemBlock):
                        prev = past.get(i, torch.zeros_like(x))
                        past[i] = x
                        nxt.append(layer(x, prev))
                    elif isinstance(layer, _TGrow):
                        y = layer.conv(x)
                        nxt.extend(y.chunk(layer.stride, dim=1))
                    else:
                        nxt.append(layer(x))
                frames = nxt
            out.extend(frames)
    video = torch.stack(out, dim=1)[:, net.config.temporal_upsample - 1:]
    return video.clamp(0, 1) * 2 - 1


@pytest.fixture(scope="module")
def case():
    net = _net()
    lat = torch.randn(2, 10, 4, 4, 6, generator=torch.Generator().manual_seed(1))
    return net, lat, _frame_by_frame(net, lat)


def test_whole_decode_matches_frame_by_frame(case):
    net, lat, ref = case
    dec = TAEHVDecoder(net)
    assert dec.temporal_upsample == 4 and dec.first_latent_frames == 1 and dec.spatial_upsample == 8
    whole = dec.decode(lat)
    assert whole.shape == ref.shape == (2, 37, 3, 32, 48)
    err = (whole - ref).abs().max().item()
    print(f"taehv batched vs frame-by-frame: max abs err {err:.3e}")
    assert err <= 1e-5
    saturated = (ref.abs() == 1).float().mean().item()
    assert saturated < 0.5 and ref.std() > 0.05, saturated


@pytest.mark.parametrize("chunks", [(3, 3, 3, 1), (1, 4, 2, 3)], ids=["by3", "uneven"])
def test_chunked_equals_whole(case, chunks):
    net, lat, ref = case
    dec = TAEHVDecoder(net)
    outs, start = [], 0
    for n in chunks:
        out = dec.decode(lat[:, start:start + n])
        assert out.shape[1] == dec.frames_for(n, start)
        outs.append(out)
        start += n
    assert dec.flush().shape == (2, 0, 3, 32, 48)
    err = (torch.cat(outs, dim=1) - ref).abs().max().item()
    print(f"taehv chunks {chunks} vs whole: max abs err {err:.3e}")
    assert err <= 1e-5


def test_memory_carry_matters(case):
    net, lat, ref = case
    dec = TAEHVDecoder(net)
    dec.decode(lat[:, :3])
    carried = dec.decode(lat[:, 3:6])
    dec.reset()
    fresh = dec.decode(lat[:, 3:6])
    assert fresh.shape[1] == 9
    assert (fresh[:, 1:] - carried[:, 4:]).abs().max().item() > 1e-2
    assert (carried - ref[:, 9:21]).abs().max().item() <= 1e-5


def test_no_time_upscale_config():
    cfg = TAEHVConfig(latent_channels=4, channels=(8, 8, 8, 8), time_upscale=(False, True),
                      space_upscale=(True, False, True))
    net = _net(3, cfg)
    dec = TAEHVDecoder(net)
    lat = torch.randn(1, 5, 4, 3, 3)
    out = dec.decode(lat)
    assert dec.temporal_upsample == 2 and out.shape == (1, 9, 3, 12, 12)
    assert (out - _frame_by_frame(net, lat)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_round_trip(case, tmp_path, suffix):
    net, lat, ref = case
    path = tmp_path / f"taehv{suffix}"
    TAEHVDecoder(net).save_weights(path)
    loaded = TAEHVDecoder.from_file(path, CFG)
    for (k, a), (k2, b) in zip(net.state_dict().items(), loaded.net.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert (loaded.decode(lat) - ref).abs().max().item() <= 1e-5
    # A different random net decodes differently: the loaded weights are what is being used.
    assert (TAEHVDecoder(_net(7)).decode(lat) - ref).abs().max().item() > 1e-2


def test_full_checkpoint_with_encoder_keys_loads(case, tmp_path):
    net = case[0]
    sd = dict(net.state_dict())
    sd["encoder.0.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "full.pth")
    TAEHVDecoder.from_file(tmp_path / "full.pth", CFG)


def test_mismatched_weights_errors(case, tmp_path):
    net = case[0]
    sd = dict(net.state_dict())
    dropped = sd.pop("decoder.8.weight")
    sd["decoder.99.weight"] = dropped
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing keys \['decoder.8.weight'\].*unexpected keys \['decoder.99"):
        TAEHVDecoder.from_file(tmp_path / "bad.pth", CFG)
    # Right keys, wrong widths.
    TAEHVDecoder(net).save_weights(tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="mis-shaped"):
        TAEHVDecoder.from_file(tmp_path / "w.safetensors", TAEHVConfig(latent_channels=4, channels=(16, 12, 8, 4)))
    with pytest.raises(FileNotFoundError):
        TAEHVDecoder.from_file(tmp_path / "nope.safetensors", CFG)
    # weights_only loading refuses pickled objects.
    torch.save({"decoder.1.weight": nn.ReLU()}, tmp_path / "obj.pth")
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        TAEHVDecoder.from_file(tmp_path / "obj.pth", CFG)


@pytest.mark.parametrize("kwargs", [dict(channels=(8, 8, 8)), dict(latent_channels=0),
                                    dict(time_upscale=(True,)), dict(space_upscale=(1, 1, 1))])
def test_bad_config(kwargs):
    with pytest.raises(ValueError, match="TAEHVConfig"):
        TAEHVConfig(**kwargs)
