"""Bad input to StreamGenerator and model directories: clear errors, never random weights or silent fallbacks."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from rfrt import model_dir
from rfrt.runtime.generator import StreamGenerator
from rfrt.model_dir import ModelDirError, read_manifest
from rfrt.models import CausalWanDiT, CheckpointError, ModelConfig
from test_generator_tiny import WAN_CONFIG, one_thread, tiny_dit, tiny_model, write_model_dir  # noqa: F401


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    return write_model_dir(tmp_path_factory.mktemp("model"))


def rewrite(root, **changes):
    raw = json.loads((root / "rfrt.json").read_text())
    raw.update(changes)
    (root / "rfrt.json").write_text(json.dumps(raw))


def test_no_model_and_no_default_model(monkeypatch, tmp_path):
    monkeypatch.setattr(model_dir, "DEFAULT_MODEL_DIR", tmp_path / "absent")
    with pytest.raises(ModelDirError, match="default model is not installed: pass a model directory"):
        StreamGenerator()


def test_bad_prompts(one_thread):
    gen = StreamGenerator(tiny_model(), device="cpu")
    with pytest.raises(RuntimeError, match="call reset"):
        gen.step()
    with pytest.raises(ValueError, match="prompt is empty"):
        gen.reset("  ")
    with pytest.raises(ValueError, match="prompt is too long"):
        gen.reset("a cat " * 10_000)
    gen.reset("a cat")
    with pytest.raises(ValueError, match="prompt is empty"):
        gen.set_prompt("")
    assert gen.prompt == "a cat"  # a rejected switch leaves the stream as it was


@pytest.mark.parametrize("height, width, why", [(9, 8, "height 9 px is not a multiple of 2 px"),
                                                (8, 7, "width 7 px is not a multiple of 2 px"),
                                                (0, 8, "height must be a positive int")])
def test_bad_resolution(height, width, why):
    with pytest.raises(ValueError, match=why):
        StreamGenerator(tiny_model(), device="cpu", height=height, width=width)


def test_resolution_rule_uses_decoder_stride_times_patch():
    class Stride8:
        spatial_upsample, latent_channels = 8, 3

    model = tiny_model()
    model = model_dir.LoadedModel(dit=model.dit, text_encoder=model.text_encoder, decoder=Stride8())
    why = r"width 840 px is not a multiple of 16 px \(decoder stride 8 x patch 2\); try 832"
    with pytest.raises(ValueError, match=why):
        StreamGenerator(model, device="cpu", height=480, width=840)


def test_model_dir_loads(model_root, one_thread):
    m = read_manifest(model_root)
    assert m.layout == "rfrt" and m.text_encoder.kind == "umt5" and m.decoder.kind == "pixel"
    assert m.video.height == 8 and m.sampler.denoising_steps == (1000, 750, 500, 250)
    gen = StreamGenerator(model_root, device="cpu")
    ref = tiny_dit()
    assert all(torch.equal(a, b) for a, b in zip(gen.dit.state_dict().values(), ref.state_dict().values()))
    gen.reset("a cat walks", seed=0)
    assert gen.step().frames.shape == (3, 8, 8, 3)


def test_checkpoint_overrides_the_directory_weights(model_root, tmp_path):
    other = tiny_dit(seed=5)
    ckpt = tmp_path / "student.pt"
    torch.save({"generator": {f"model.{k}": v for k, v in other.state_dict().items()},
                "generator_ema": {f"model.{k}": v + 1 for k, v in other.state_dict().items()}}, ckpt)
    gen = StreamGenerator(model_root, checkpoint=ckpt, device="cpu")
    assert torch.equal(gen.dit.head.head.weight, other.head.head.weight)
    ema = StreamGenerator(model_root, checkpoint=ckpt, use_ema=True, device="cpu")
    assert torch.equal(ema.dit.head.head.weight, other.head.head.weight + 1)


def test_manifest_errors(tmp_path):
    root = write_model_dir(tmp_path / "m")
    (root / "dit" / "model.safetensors").rename(root / "dit" / "moved.safetensors")
    with pytest.raises(ModelDirError, match=r"dit weights '.*dit/model.safetensors' does not exist"):
        read_manifest(root)
    (root / "dit" / "moved.safetensors").rename(root / "dit" / "model.safetensors")
    for changes, why in (({"format": "rfrt-model/9"}, "format 'rfrt-model/9' is not supported"),
                         ({"extra": 1}, r"unknown keys \['extra'\]"),
                         ({"cache": {"tokens_per_frame": 16}}, r"cache: unknown keys \['tokens_per_frame'\]"),
                         ({"cache": {"sink_frames": 2}}, "cache: CachePolicy: sink_frames"),
                         ({"sampler": {"shift": -1}}, "sampler: SamplerConfig.shift"),
                         ({"decoder": {"kind": "gif"}}, "decoder.kind must be one of"),
                         ({"decoder": {"kind": "taehv"}}, "decoder.path is required"),
                         ({"text_encoder": {"kind": "umt5", "path": "nope"}}, "text encoder '.*nope' does not exist"),
                         ({"video": {"height": 8, "fps": 0}}, "video.fps must be a positive int")):
        original = (root / "rfrt.json").read_text()
        rewrite(root, **changes)
        with pytest.raises(ModelDirError, match=why):
            read_manifest(root)
        (root / "rfrt.json").write_text(original)
    with pytest.raises(ModelDirError, match="neither rfrt.json nor model_index.json"):
        read_manifest(tmp_path)
    with pytest.raises(ModelDirError, match="does not exist"):
        read_manifest(tmp_path / "nowhere")


def test_dit_config_not_matching_the_weights(tmp_path):
    root = write_model_dir(tmp_path / "m")
    (root / "dit" / "config.json").write_text(json.dumps({**WAN_CONFIG, "num_layers": 3}))
    with pytest.raises(CheckpointError, match=r"does not match the model: .*missing: \['blocks.2"):
        StreamGenerator(root, device="cpu")
    (root / "dit" / "config.json").write_text(json.dumps({**WAN_CONFIG, "text_dim": 8}))
    with pytest.raises(CheckpointError, match="mis-shaped: .*text_embedding.0.weight"):
        StreamGenerator(root, device="cpu")


def test_components_not_matching_the_dit(tmp_path):
    root = write_model_dir(tmp_path / "m")
    cfg = {**WAN_CONFIG, "in_dim": 4, "out_dim": 4}
    four = CausalWanDiT(ModelConfig(**{**cfg, "patch_size": (1, 2, 2)}))
    save_file({k: v.contiguous() for k, v in four.state_dict().items()}, str(root / "dit" / "model.safetensors"))
    (root / "dit" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelDirError, match="decoder takes 3 latent channels, the DiT produces out_dim=4"):
        StreamGenerator(root, device="cpu")


def test_diffusers_layout_is_recognised(tmp_path):
    for name in ("transformer", "vae", "text_encoder", "tokenizer"):
        (tmp_path / name).mkdir()
    (tmp_path / "model_index.json").write_text("{}")
    m = read_manifest(tmp_path)
    assert m.layout == "diffusers" and m.text_encoder.kind == "umt5" and m.decoder.kind == "wan_vae"
    assert m.cache.window_frames == 9 and m.cache.sink_ema_alpha == 0.999 and m.video.fps == 16
    (tmp_path / "vae").rmdir()
    with pytest.raises(ModelDirError, match=r"diffusers model directory lacks \['vae'\]"):
        read_manifest(tmp_path)


def test_vocab_text_encoder_model_dir(tmp_path, one_thread):
    from rfrt.text_vocab import VocabTextEncoder

    root = write_model_dir(tmp_path / "m", manifest_extra={"text_encoder": {"kind": "vocab", "path": "vocab"}})
    torch.manual_seed(0)
    VocabTextEncoder(["a", "cat", "dog", "walks"], dim=16, max_words=6).save(root / "vocab")
    gen = StreamGenerator(root, device="cpu")
    gen.reset("a cat walks", seed=0)
    assert gen.step().frames.shape == (3, 8, 8, 3)
    with pytest.raises(ValueError, match="outside this text encoder's vocabulary"):
        gen.set_prompt("a horse")


def test_bad_options():
    with pytest.raises(ValueError, match="attention must be one of"):
        StreamGenerator(tiny_model(), device="cpu", attention="flash")
    with pytest.raises(TypeError, match="cache must be a CachePolicy"):
        StreamGenerator(tiny_model(), device="cpu", cache={"window_frames": 9})
    with pytest.raises(ValueError, match="checkpoint= applies to a model directory"):
        StreamGenerator(tiny_model(), device="cpu", checkpoint="x.pt")


def test_position_embedding_fixes_the_resolution(one_thread):
    from dataclasses import replace

    from test_generator_tiny import tiny_config

    model = tiny_model()  # 8 x 8 px, patch 2: a 4 x 4 token grid
    dit = CausalWanDiT(replace(tiny_config(), pos_grid=(4, 4))).eval()
    model = model_dir.LoadedModel(dit=dit, text_encoder=model.text_encoder, decoder=model.decoder,
                                  cache=model.cache, video=model.video)
    StreamGenerator(model, device="cpu")
    with pytest.raises(ValueError, match="position embedding for 8x8 px video only, got 16x8"):
        StreamGenerator(model, device="cpu", height=16, width=8)
