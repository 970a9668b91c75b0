"""The encode paths used to prime a stream: Wan VAE (vs diffusers' own encode), TAEHV (vs a frame-by-frame
oracle), pixels (identity). Each streams: encoding in pieces equals encoding at once, frame 0 alone gives
latent frame 0."""
from __future__ import annotations

import pytest
import torch

from rfrt.decoders import (PixelDecoder, PixelEncoder, TAEHVConfig, TAEHVDecoder, TAEHVEncoder, TAEHVEncoderNet,
                           TAEHVNet)
from rfrt.decoders.taehv import _MemBlock, _TPool

Z = 4


def _frames(b, t, h, w, seed=1):
    return torch.rand(b, t, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _encode_pieces(enc, frames, pieces):
    enc.reset()
    outs, start = [], 0
    for n in pieces:
        outs.append(enc.encode(frames[:, start:start + n]))
        start += n
    assert start == frames.shape[1]
    return torch.cat(outs, dim=1)


# ---------------------------------------------------------------------------------------------- Wan VAE

@pytest.fixture(scope="module")
def vae():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=Z, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=(torch.randn(Z)).tolist(), latents_std=(torch.rand(Z) + 0.5).tolist()).eval()


def _diffusers_encode(vae, frames):
    """diffusers' whole-clip encode, posterior mean, normalised as the Wan pipeline does: [B, F, C, h, w]."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        mu = vae.encode(frames.permute(0, 2, 1, 3, 4)).latent_dist.mode()
    return ((mu - mean) / std).permute(0, 2, 1, 3, 4)


@pytest.mark.parametrize("pieces", [(13,), (1, 4, 8), (5, 4, 4)], ids=["whole", "1-4-8", "5-4-4"])
def test_wan_encoder_equals_diffusers_encode(vae, pieces):
    from rfrt.decoders import WanVAEDecoder, WanVAEEncoder

    frames = _frames(2, 13, 32, 32)
    ref = _diffusers_encode(vae, frames)
    enc = WanVAEDecoder(vae).encoder()
    assert isinstance(enc, WanVAEEncoder)
    assert (enc.temporal_downsample, enc.spatial_downsample, enc.latent_channels) == (4, 8, Z)
    out = _encode_pieces(enc, frames, pieces)
    assert ref.shape == out.shape == (2, 4, Z, 4, 4)  # 1 + 4*3 frames -> 4 latent frames
    err = (out - ref).abs().max().item()
    print(f"wan encoder pieces {pieces} vs diffusers encode: max abs err {err:.2e}")
    assert err <= 1e-5 and ref.std() > 0.05


def test_wan_encoder_is_causal_and_normalises(vae):
    from rfrt.decoders import WanVAEEncoder

    frames = _frames(1, 9, 32, 32, seed=2)
    ref = _diffusers_encode(vae, frames)
    enc = WanVAEEncoder(vae)
    first = enc.encode(frames[:, :1])  # one image -> latent frame 0, whatever follows
    assert first.shape == (1, 1, Z, 4, 4)
    assert (first - ref[:, :1]).abs().max().item() <= 1e-5
    with torch.no_grad():  # the raw posterior mean differs: the normalisation is applied
        raw = vae.encode(frames.permute(0, 2, 1, 3, 4)).latent_dist.mode().permute(0, 2, 1, 3, 4)
    assert (raw - ref).abs().max().item() > 1e-2


def test_wan_encoder_rejects_partial_latent_frames(vae):
    from rfrt.decoders import WanVAEEncoder

    enc = WanVAEEncoder(vae)
    with pytest.raises(ValueError, match=r"do not make whole latent frames at stream frame 0 \(need 1 \+ k \* 4\)"):
        enc.encode(_frames(1, 4, 32, 32))
    enc.encode(_frames(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"stream frame 1 \(need 0 \+ k \* 4\)"):
        enc.encode(_frames(1, 3, 32, 32))
    with pytest.raises(ValueError, match="multiples of 8"):
        enc.encode(_frames(1, 4, 30, 32))
    assert enc.latent_frames_for(0) == 0 and enc.latent_frames_for(8) == 2 and enc.latent_frames_for(9) == 3
    assert enc.frames_for(3) == 9 and enc.frames_for(3, start=3) == 12


# ---------------------------------------------------------------------------------------------- TAEHV

TINY = TAEHVConfig(latent_channels=Z, channels=(16, 8, 8, 8))


def _oracle(seq, frames):
    """Frame-by-frame TAEHV: every layer walks the frames in order; a memory block sees its previous input frame
    (zeros first), a temporal pool waits for `stride` frames and stacks them on channels."""
    xs = [frames[:, t] for t in range(frames.shape[1])]
    for layer in seq:
        if isinstance(layer, _MemBlock):
            past = [torch.zeros_like(xs[0])] + xs[:-1]
            xs = [layer(x, p) for x, p in zip(xs, past)]
        elif isinstance(layer, _TPool):
            s = layer.stride
            xs = [layer.conv(torch.cat(xs[i:i + s], dim=1)) for i in range(0, len(xs), s)]
        else:
            xs = [layer(x) for x in xs]
    return torch.stack(xs, dim=1)


@pytest.fixture(scope="module")
def taehv_file(tmp_path_factory):
    torch.manual_seed(3)
    enc, dec = TAEHVEncoderNet(TINY), TAEHVNet(TINY)
    path = tmp_path_factory.mktemp("taehv") / "taehv.pt"
    torch.save({**enc.state_dict(), **dec.state_dict()}, path)
    return path


def test_taehv_encoder_keys_follow_the_public_layout():
    sd = TAEHVEncoderNet(TAEHVConfig()).state_dict()
    assert sd["encoder.0.weight"].shape == (64, 3, 3, 3)
    assert sd["encoder.2.conv.weight"].shape == (64, 128, 1, 1)  # TPool(64, 2)
    assert sd["encoder.3.weight"].shape == (64, 64, 3, 3) and "encoder.3.bias" not in sd
    assert sd["encoder.12.conv.weight"].shape == (64, 64, 1, 1)  # TPool(64, 1)
    assert sd["encoder.17.weight"].shape == (16, 64, 3, 3)
    assert sum(k.endswith("conv.0.weight") for k in sd) == 9  # three memory blocks per stage


@pytest.mark.parametrize("pieces", [(9,), (1, 4, 4), (5, 4)], ids=["whole", "1-4-4", "5-4"])
def test_taehv_encoder_streams_like_the_frame_by_frame_oracle(taehv_file, pieces):
    dec = TAEHVDecoder.from_file(taehv_file, TINY)
    enc = dec.encoder()
    assert isinstance(enc, TAEHVEncoder)
    frames = _frames(2, 9, 16, 16, seed=4)
    padded = torch.cat([frames[:, :1].expand(-1, 3, -1, -1, -1), frames], dim=1)  # frame 0 x3 (module doc)
    with torch.no_grad():
        ref = _oracle(enc.net.encoder, (padded + 1) / 2)
    out = _encode_pieces(enc, frames, pieces)
    assert ref.shape == out.shape == (2, 3, Z, 2, 2)
    err = (out - ref).abs().max().item()
    print(f"taehv encoder pieces {pieces} vs frame-by-frame oracle: max abs err {err:.2e}")
    assert err <= 1e-5 and ref.std() > 1e-3
    # and the decoder still decodes what the encoder makes: 3 latent frames -> 1 + 4 + 4 frames
    assert dec.decode(out).shape == (2, 9, 3, 16, 16)


def test_taehv_decoder_only_weights_have_no_encoder(tmp_path):
    path = tmp_path / "dec.safetensors"
    TAEHVDecoder(TAEHVNet(TINY)).save_weights(path)
    dec = TAEHVDecoder.from_file(path, TINY)
    with pytest.raises(ValueError, match="have no encoder"):
        dec.encoder()
    with pytest.raises(NotImplementedError, match="from_file"):
        TAEHVDecoder(TAEHVNet(TINY)).encoder()


# ---------------------------------------------------------------------------------------------- pixels

def test_pixel_encoder_is_the_identity_and_round_trips_uint8():
    enc = PixelDecoder().encoder()
    assert isinstance(enc, PixelEncoder)
    u8 = torch.randint(0, 256, (1, 5, 3, 4, 6), dtype=torch.uint8)
    frames = u8.float() / 127.5 - 1
    lat = enc.encode(frames)
    assert torch.equal(lat, frames) and lat.data_ptr() != frames.data_ptr()
    from rfrt.decoders import to_uint8_frames
    assert torch.equal(to_uint8_frames(PixelDecoder().decode(lat)), u8.permute(0, 1, 3, 4, 2))
