"""WanVAEDecoder: streaming chunk-by-chunk decode equals diffusers' whole-video AutoencoderKLWan.decode."""
from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from rfrt.decoders import WanVAEDecoder, to_uint8_frames  # noqa: E402

Z = 4


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    # Tiny random Wan2.1-shaped VAE: same block structure (causal convs, 2 temporal x2 upsamples, mid attention),
    # small widths; non-trivial mean/std so the de-normalisation is exercised.
    return diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=Z, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=(torch.randn(Z)).tolist(), latents_std=(torch.rand(Z) + 0.5).tolist()).eval()


def _reference(vae, latents):
    """diffusers' whole-video decode of normalised latents [B, F, C, h, w] -> [B, T, 3, H, W]."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        return vae.decode(latents.permute(0, 2, 1, 3, 4) * std + mean).sample.permute(0, 2, 1, 3, 4)


@pytest.fixture(scope="module")
def case(vae):
    lat = torch.randn(2, 10, Z, 4, 4, generator=torch.Generator().manual_seed(1))
    return lat, _reference(vae, lat)


@pytest.mark.parametrize("chunks", [(3, 3, 3, 1), (1, 4, 2, 3)], ids=["by3", "uneven"])
def test_streaming_equals_whole_decode(vae, case, chunks):
    lat, ref = case
    dec = WanVAEDecoder(vae)
    assert dec.temporal_upsample == 4 and dec.first_latent_frames == 1 and dec.spatial_upsample == 8
    outs, start = [], 0
    for n in chunks:
        out = dec.decode(lat[:, start:start + n])
        assert out.shape == (2, dec.frames_for(n, start), 3, 32, 32)
        outs.append(out)
        start += n
    assert dec.flush().shape == (2, 0, 3, 32, 32)
    stream = torch.cat(outs, dim=1)
    assert ref.shape == stream.shape == (2, 37, 3, 32, 32)  # 1 + 4*9 frames
    err = (stream - ref).abs().max().item()
    print(f"wan vae stream vs whole decode, chunks {chunks}: max abs err {err:.3e}")
    assert err <= 1e-5
    assert ref.std() > 0.05  # the comparison is not between two constant videos


def test_cache_carry_matters_and_reset(vae, case):
    lat, ref = case
    dec = WanVAEDecoder(vae)
    dec.decode(lat[:, :3])
    carried = dec.decode(lat[:, 3:6])
    # A fresh stream starting at latent frame 3 (no carried cache) gives different pixels.
    dec.reset()
    fresh = dec.decode(lat[:, 3:6])
    assert fresh.shape[1] == 9 and carried.shape[1] == 12
    assert (fresh[:, 1:] - carried[:, 4:]).abs().max().item() > 1e-2
    dec.reset()
    again = torch.cat([dec.decode(lat[:, :3]), dec.decode(lat[:, 3:6])], dim=1)
    assert (again - ref[:, :21]).abs().max().item() <= 1e-5


def test_denormalisation_is_applied(vae, case):
    lat, ref = case
    with torch.no_grad():
        raw = vae.decode(lat.permute(0, 2, 1, 3, 4)).sample.permute(0, 2, 1, 3, 4)
    assert (raw - ref).abs().max().item() > 1e-2


def test_from_pretrained_directory(vae, tmp_path):
    pytest.importorskip("accelerate")
    vae.save_pretrained(tmp_path / "vae")
    dec = WanVAEDecoder.from_pretrained(tmp_path, subfolder="vae")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        WanVAEDecoder.from_pretrained(tmp_path / "missing")
    lat = torch.randn(1, 2, Z, 4, 4, generator=torch.Generator().manual_seed(2))
    assert (dec.decode(lat) - _reference(vae, lat)).abs().max().item() <= 1e-5


def test_bad_inputs(vae):
    dec = WanVAEDecoder(vae)
    with pytest.raises(ValueError, match="channels"):
        dec.decode(torch.zeros(1, 1, Z + 1, 4, 4))
    with pytest.raises(ValueError, match=r"\[B, F, C, h, w\]"):
        dec.decode(torch.zeros(1, Z, 4, 4))
    dec.decode(torch.zeros(1, 1, Z, 4, 4))
    with pytest.raises(ValueError, match="reset"):
        dec.decode(torch.zeros(1, 1, Z, 4, 6))
    with pytest.raises(TypeError, match="AutoencoderKLWan"):
        WanVAEDecoder(object())


def test_to_uint8_frames():
    f = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0]).view(1, 5, 1, 1, 1).expand(1, 5, 3, 2, 4)
    u = to_uint8_frames(f)
    assert u.dtype == torch.uint8 and u.shape == (1, 5, 2, 4, 3)
    assert u[0, :, 0, 0, 0].tolist() == [0, 0, 128, 255, 255]
