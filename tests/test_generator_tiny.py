"""Tiny models for the generator / CLI tests (imported by them), plus checks of the tiny pieces themselves."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rfrt.cache import CachePolicy
from rfrt.decoders import PixelDecoder
from rfrt.model_dir import LoadedModel, VideoSpec
from rfrt.models import CausalWanDiT, ModelConfig

TEXT_DIM = 16
WAN_CONFIG = {"dim": 32, "ffn_dim": 64, "num_heads": 2, "num_layers": 2, "in_dim": 3, "out_dim": 3,
              "text_dim": TEXT_DIM, "freq_dim": 16, "text_len": 12, "patch_size": [1, 2, 2]}


def tiny_config() -> ModelConfig:
    """dim 32, 2 layers, 2 heads of 16, patch (1, 2, 2), RGB latents (3 channels)."""
    cfg = dict(WAN_CONFIG)
    cfg["patch_size"] = tuple(cfg["patch_size"])
    return ModelConfig(**cfg)


def tiny_dit(seed: int = 0) -> CausalWanDiT:
    """A random fp32 DiT. The adaLN tables start at zero in a fresh model; random ones exercise them too."""
    torch.manual_seed(seed)
    dit = CausalWanDiT(tiny_config())
    with torch.no_grad():
        for name, p in dit.named_parameters():
            if "modulation" in name:
                p.normal_(std=0.2)
    return dit.eval().requires_grad_(False)


class HashTextEncoder:
    """Deterministic stand-in for a text encoder: each prompt maps to its own fixed random [5, TEXT_DIM]."""

    dim = TEXT_DIM

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, prompts: list[str]) -> torch.Tensor:
        self.calls += 1
        rows = []
        for p in prompts:
            g = torch.Generator().manual_seed(sum((i + 1) * ord(ch) for i, ch in enumerate(p)) % 2**31)
            rows.append(torch.randn(5, TEXT_DIM, generator=g))
        return torch.stack(rows)


def tiny_model(size: int = 8, seed: int = 0) -> LoadedModel:
    """An in-memory model: tiny DiT, hash text encoder, pixel decoder, release cache layout, size x size px."""
    return LoadedModel(dit=tiny_dit(seed), text_encoder=HashTextEncoder(), decoder=PixelDecoder(),
                       cache=CachePolicy(), video=VideoSpec(size, size, 16))


def write_tokenizer_and_umt5(path: Path, d_model: int = TEXT_DIM) -> Path:
    """A word-level tokenizer trained here on a few sentences plus a random 1-layer umT5 encoder, saved to path."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    sentences = ["a cat walks on the beach at sunset", "a red car drives through the city at night",
                 "waves roll over the rocks"]
    tok.train_from_iterator(sentences, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(str(path))
    cfg = UMT5Config(vocab_size=tok.get_vocab_size(), d_model=d_model, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                     relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    UMT5EncoderModel(cfg).save_pretrained(str(path))
    return path


def write_model_dir(root: Path, *, size: int = 8, manifest_extra: dict | None = None) -> Path:
    """An rfrt.json model directory: tiny DiT (Wan config + safetensors), umT5 text encoder, pixel decoder."""
    (root / "dit").mkdir(parents=True)
    (root / "dit" / "config.json").write_text(json.dumps(WAN_CONFIG))
    save_file({k: v.contiguous() for k, v in tiny_dit().state_dict().items()}, str(root / "dit" / "model.safetensors"))
    write_tokenizer_and_umt5(root / "text")
    manifest = {"format": "rfrt-model/1",
                "dit": {"config": "dit/config.json", "weights": "dit/model.safetensors"},
                "text_encoder": {"kind": "umt5", "path": "text"},
                "decoder": {"kind": "pixel"},
                "cache": {"sink_frames": 3, "window_frames": 9, "chunk_frames": 3, "sink_ema_alpha": 0.999},
                "sampler": {"shift": 5.0, "denoising_steps": [1000, 750, 500, 250]},
                "video": {"height": size, "width": size, "fps": 16}}
    manifest.update(manifest_extra or {})
    (root / "rfrt.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture
def one_thread():
    """Tiny tensors run fastest on one thread (and leave the shared cores to others)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_pixel_decoder_is_identity_clamped_and_streams():
    dec = PixelDecoder()
    x = torch.linspace(-2, 2, 2 * 3 * 3 * 4 * 4).reshape(2, 3, 3, 4, 4)
    out = dec.decode(x)
    assert out.shape == (2, 3, 3, 4, 4) and torch.equal(out, x.clamp(-1, 1))
    assert dec.frames_for(3) == 3 and dec.frames_for(3, start=3) == 3 and dec.latent_frames_seen == 3
    with pytest.raises(ValueError, match="channels"):
        dec.decode(torch.zeros(1, 1, 4, 4, 4))
    assert dec.flush().shape == (2, 0, 3, 4, 4)


def test_tiny_generator_chunk_shapes(one_thread):
    from rfrt import StreamGenerator

    gen = StreamGenerator(tiny_model(), device="cpu")
    gen.reset("a cat", seed=0)
    chunks = [gen.step() for _ in range(2)]
    c = chunks[1]
    assert c.index == 1 and gen.chunk_index == 2 and (gen.fps, gen.height, gen.width) == (16, 8, 8)
    assert c.frames.dtype == torch.uint8 and c.frames.shape == (3, 8, 8, 3)
    assert c.video.shape == (3, 3, 8, 8) and c.latents.shape == (3, 3, 8, 8)
    # frames are the uint8 image of video, video the clamped latents (pixel decoder)
    assert torch.equal(c.video, c.latents.clamp(-1, 1))
    expect = ((c.video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert torch.equal(c.frames, expect)
    assert gen.flush().shape == (0, 8, 8, 3)
    assert gen.cache.layout.tokens_per_frame == 16


def test_iteration_is_endless_and_matches_step(one_thread):
    import itertools

    from rfrt import StreamGenerator

    gen = StreamGenerator(tiny_model(), device="cpu")
    gen.reset("a cat", seed=1)
    stepped = [gen.step().latents for _ in range(4)]
    gen.reset("a cat", seed=1)
    iterated = [c.latents for c in itertools.islice(gen, 4)]
    assert all(torch.equal(a, b) for a, b in zip(stepped, iterated)) and gen.chunk_index == 4


def test_import_rfrt_is_light():
    import subprocess
    import sys

    code = ("import sys, rfrt; assert 'torch' not in sys.modules, 'import rfrt imported torch'; "
            "from rfrt import StreamGenerator; assert StreamGenerator.__name__ == 'StreamGenerator'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": ":".join(p for p in sys.path if p)})
    assert done.returncode == 0, done.stderr
