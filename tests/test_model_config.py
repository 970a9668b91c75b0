"""ModelConfig: both config.json spellings, validation, and the 1.3B preset's parameter count."""
from __future__ import annotations

import json

import pytest
import torch

from rfrt.models.config import ConfigError, ModelConfig
from rfrt.models.dit import CausalWanDiT

# The Wan2.1-T2V-1.3B release's config.json (Wan spelling, metadata keys included).
WAN_1_3B_JSON = {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 1536, "eps": 1e-06,
                 "ffn_dim": 8960, "freq_dim": 256, "in_dim": 16, "model_type": "t2v", "num_heads": 12,
                 "num_layers": 30, "out_dim": 16, "text_len": 512}
# The same model in diffusers' transformer/config.json spelling.
DIFFUSERS_1_3B_JSON = {"_class_name": "WanTransformer3DModel", "_diffusers_version": "0.33.0",
                       "added_kv_proj_dim": None, "attention_head_dim": 128, "cross_attn_norm": True,
                       "eps": 1e-06, "ffn_dim": 8960, "freq_dim": 256, "image_dim": None, "in_channels": 16,
                       "num_attention_heads": 12, "num_layers": 30, "out_channels": 16, "patch_size": [1, 2, 2],
                       "pos_embed_seq_len": None, "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024,
                       "text_dim": 4096}


def test_preset_has_exactly_the_released_parameter_count():
    with torch.device("meta"):
        net = CausalWanDiT(ModelConfig())
    assert sum(p.numel() for p in net.parameters()) == 1_418_996_800
    assert all(p.device.type == "meta" for p in net.parameters())
    assert ModelConfig().tokens_per_frame(60, 104) == 1560


@pytest.mark.parametrize("raw", [WAN_1_3B_JSON, DIFFUSERS_1_3B_JSON], ids=["wan", "diffusers"])
def test_both_spellings_of_the_release_read_as_the_preset(tmp_path, raw):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    assert ModelConfig.from_json(path) == ModelConfig()


def test_diffusers_defaults_match_diffusers(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.WanTransformer3DModel(num_attention_heads=2, attention_head_dim=12, in_channels=3,
                                          out_channels=None, text_dim=8, freq_dim=6, ffn_dim=10, num_layers=1,
                                          patch_size=(1, 2, 1))
    ref.save_config(tmp_path)
    cfg = ModelConfig.from_json(tmp_path / "config.json")
    assert (cfg.dim, cfg.num_heads, cfg.in_dim, cfg.out_dim, cfg.patch_size) == (24, 2, 3, 3, (1, 2, 1))
    ours = CausalWanDiT(cfg)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("change, message", [
    ({"mystery": 1}, "unknown keys"),
    ({"model_type": "i2v"}, "text-to-video"),
    ({"window_size": [4, 4]}, "windowed"),
    ({"num_heads": 7}, "not divisible"),
    ({"dim": -1}, "positive int"),
    ({"eps": 2.0}, "eps"),
    ({"patch_size": [1, 2]}, "patch_size"),
])
def test_invalid_wan_configs_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict({**WAN_1_3B_JSON, **change})


@pytest.mark.parametrize("change, message", [
    ({"image_dim": 1280}, "image-conditioned"),
    ({"added_kv_proj_dim": 5120}, "image-conditioned"),
    ({"qk_norm": "rms_norm"}, "qk_norm"),
    ({"cross_attn_norm": False}, "cross_attn_norm"),
    ({"attention_head_dim": 3}, "RoPE"),
])
def test_invalid_diffusers_configs_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict({**DIFFUSERS_1_3B_JSON, **change})


def test_missing_size_keys_and_bad_files_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="lacks required keys"):
        ModelConfig.from_dict({k: v for k, v in WAN_1_3B_JSON.items() if k != "num_layers"})
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        ModelConfig.from_json(bad)
    with pytest.raises(ConfigError, match="head_dim"):
        ModelConfig(dim=8, num_heads=2)
