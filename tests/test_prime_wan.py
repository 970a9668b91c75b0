"""Priming a Wan-latent stream (tiny random Wan VAE + DiT with 4 latent channels) from frames end to end:
encode (1 + 4k frames), resize, context passes, the decoder's state, a held image."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rfrt.cache import CachePolicy
from rfrt.decoders import to_uint8_frames
from rfrt.generator import StreamGenerator
from rfrt.model_dir import LoadedModel, VideoSpec
from rfrt.models import CausalWanDiT
from test_generator_oracle import max_rel
from test_generator_tiny import HashTextEncoder, one_thread, tiny_config  # noqa: F401 - fixture

diffusers = pytest.importorskip("diffusers")
Z, SIZE = 4, 32  # latent channels; 32 px -> 4x4 latents -> 2x2 tokens per frame
PROMPT = "a cat walks on the beach"


@pytest.fixture(scope="module")
def model():
    from rfrt.decoders import WanVAEDecoder

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=Z, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                     temperal_downsample=[False, True, True],
                                     latents_mean=torch.randn(Z).tolist(),
                                     latents_std=(torch.rand(Z) + 0.5).tolist()).eval()
    dit = CausalWanDiT(dataclasses.replace(tiny_config(), in_dim=Z, out_dim=Z)).eval().requires_grad_(False)
    return LoadedModel(dit=dit, text_encoder=HashTextEncoder(), decoder=WanVAEDecoder(vae), cache=CachePolicy(),
                       video=VideoSpec(SIZE, SIZE, 16))


def test_wan_video_context_end_to_end(model, one_thread):
    frames = np.random.default_rng(0).integers(0, 256, (11, SIZE, SIZE, 3), dtype=np.uint8)  # 11 = 2 + 1 + 4 * 2
    gen = StreamGenerator(model, device="cpu")
    gen.reset(PROMPT, seed=3, context=frames)
    p = gen.primed
    assert (p.chunks, p.held_frames, p.dropped_frames, p.latents.shape) == (1, 0, 2, (3, Z, 4, 4))
    # what the output shows for the context: the VAE round trip of the 9 frames kept, through the stream decoder
    enc = model.decoder.encoder()
    want = enc.encode(torch.from_numpy(frames[2:]).permute(0, 3, 1, 2)[None].float() / 127.5 - 1)
    assert (p.latents - want[0]).abs().max().item() <= 1e-5
    model.decoder.reset()
    assert torch.equal(p.frames, to_uint8_frames(model.decoder.decode(want))[0]) and p.frames.shape[0] == 9
    after = [gen.step() for _ in range(2)]
    assert [c.frames.shape[0] for c in after] == [12, 12]  # the decoder continues: 4 frames per latent frame
    # priming with the same latents directly gives the same continuation
    gen.reset(PROMPT, seed=3, context=p.latents.clone())
    assert max_rel([gen.step().latents for _ in range(2)], [c.latents for c in after]) <= 1e-6


def test_wan_single_image_other_size(model, one_thread):
    image = np.random.default_rng(1).integers(0, 256, (45, 61, 4), dtype=np.uint8)  # RGBA, odd size, 61:45
    gen = StreamGenerator(model, device="cpu")
    gen.reset(PROMPT, seed=3, context=image)
    p = gen.primed
    assert (p.chunks, p.held_frames, p.held_output_frames, p.source_hw) == (0, 1, 1, (45, 61))
    first = gen.step()
    assert first.frames.shape == (9, SIZE, SIZE, 3)  # the held image's frame + 2 latent frames x 4
    assert torch.equal(first.latents[:1], p.latents)  # the image's latent frame is kept exactly
    assert gen.step().frames.shape[0] == 12
