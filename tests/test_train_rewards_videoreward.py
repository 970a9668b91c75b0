"""train.rewards.video_reward with a tiny random Qwen2-VL built offline (no tokenizer, no download)."""

import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402

from train.rewards.video_reward import HEADS, VideoRewardModel, frames_to_patches  # noqa: E402

VQ, MQ, TA = 56, 57, 58
MEAN = {"VQ": 3.0, "MQ": 1.0, "TA": 2.0}
STD = {"VQ": 2.0, "MQ": 0.5, "TA": 3.0}


def tiny_config():
    return transformers.Qwen2VLConfig(
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, bos_token_id=0, eos_token_id=1,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=60, video_token_id=61, vision_start_token_id=62, vision_end_token_id=63)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """A weights directory in the Qwen2VLForConditionalGeneration key layout, plus rm_head and stats."""
    d = tmp_path_factory.mktemp("videoreward")
    torch.manual_seed(0)
    cfg = tiny_config()
    full = transformers.Qwen2VLForConditionalGeneration(cfg)
    state = {k: v.contiguous() for k, v in full.state_dict().items() if k != "lm_head.weight"}
    state["rm_head.weight"] = torch.randn(1, 32)
    save_file(state, str(d / "model.safetensors"))
    cfg.save_pretrained(str(d))
    (d / "reward_config.json").write_text(json.dumps({
        "special_token_ids": {"VQ": VQ, "MQ": MQ, "TA": TA}, "mean": MEAN, "std": STD, "height": 56, "width": 84}))
    return d


def test_patching_matches_qwen2vl_image_processor():
    proc_cls = getattr(transformers, "Qwen2VLImageProcessorPil", None)
    if proc_cls is None:
        pytest.skip("this transformers has no Qwen2VLImageProcessorPil")
    img = torch.rand(3, 56, 84, generator=torch.Generator().manual_seed(1))
    # An image is a 2-frame still video to Qwen2-VL: the processor repeats it temporal_patch_size times.
    ours, grid = frames_to_patches(torch.stack([img, img]), 56, 84)
    proc = proc_cls(do_resize=False, do_rescale=False)
    ref = proc(images=[img.permute(1, 2, 0).numpy()], return_tensors="pt")
    assert grid == tuple(ref["image_grid_thw"][0].tolist()) == (1, 4, 6)
    assert torch.allclose(ours, ref["pixel_values"].float(), atol=1e-5)


def test_patching_pads_time_and_resizes():
    v = torch.rand(3, 3, 20, 30)
    pix, grid = frames_to_patches(v, 28, 56)
    assert grid == (2, 2, 4) and pix.shape == (16, 3 * 2 * 14 * 14)
    with pytest.raises(ValueError, match="multiples of 28"):
        frames_to_patches(v, 30, 56)


def test_scores_match_independent_forward(weights_dir):
    model = VideoRewardModel.from_pretrained(weights_dir)
    frames = torch.rand(2, 4, 3, 40, 40, generator=torch.Generator().manual_seed(2))
    raw = model.score_all(frames)
    assert raw.shape == (2, 3)

    # Reference: the HF model class holding the same checkpoint, its inner model, head applied by hand.
    from safetensors.torch import load_file
    state = load_file(str(weights_dir / "model.safetensors"))
    head = state.pop("rm_head.weight")
    ref_model = transformers.Qwen2VLForConditionalGeneration(tiny_config()).eval()
    ref_model.load_state_dict(state, strict=False)
    for b in range(2):
        pix, grid = frames_to_patches(frames[b], 56, 84)
        n = pix.shape[0] // 4
        ids = torch.tensor([[62] + [61] * n + [63, VQ, MQ, TA]])
        with torch.no_grad():
            h = ref_model.model(input_ids=ids, pixel_values_videos=pix, video_grid_thw=torch.tensor([grid]),
                                mm_token_type_ids=(ids == 61).int() * 2).last_hidden_state[0]
        assert torch.allclose(raw[b], (h[-3:] @ head.T)[:, 0], atol=1e-5)
    assert not torch.allclose(raw[0], raw[1])  # the score depends on the video


def test_mq_zscored_with_own_stats_and_no_grad(weights_dir):
    model = VideoRewardModel.from_pretrained(weights_dir)
    frames = torch.rand(2, 3, 3, 56, 84, requires_grad=True)
    raw = model.score_all(frames.detach())
    assert torch.allclose(model.score(frames.detach()), raw[:, HEADS.index("MQ")])
    z = model(frames)
    assert torch.allclose(z, (raw[:, 1] - MEAN["MQ"]) / STD["MQ"], atol=1e-5)
    assert not z.requires_grad
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert torch.allclose(model.zscore_all(raw)[:, 0], (raw[:, 0] - 3.0) / 2.0)


def test_rejects_minus_one_to_one_and_missing_weights(weights_dir, tmp_path):
    model = VideoRewardModel.from_pretrained(weights_dir)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.score(torch.rand(1, 2, 3, 56, 84) * 2 - 1)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        VideoRewardModel.from_pretrained(tmp_path / "absent")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="reward_config.json"):
        VideoRewardModel.from_pretrained(tmp_path)


def test_older_key_layout_loads(weights_dir, tmp_path):
    """Checkpoints saved with the pre-v4.52 layout ("visual.*", "model.layers.*") load to the same scores."""
    from safetensors.torch import load_file
    state = load_file(str(weights_dir / "model.safetensors"))
    old = {}
    for k, v in state.items():
        if k.startswith("model.visual."):
            old[k[len("model."):]] = v
        elif k.startswith("model.language_model."):
            old["model." + k[len("model.language_model."):]] = v
        else:
            old[k] = v
    save_file(old, str(tmp_path / "model.safetensors"))
    for name in ("config.json", "reward_config.json"):
        (tmp_path / name).write_text((weights_dir / name).read_text())
    frames = torch.rand(1, 2, 3, 56, 84)
    a = VideoRewardModel.from_pretrained(weights_dir).score_all(frames)
    b = VideoRewardModel.from_pretrained(tmp_path).score_all(frames)
    assert torch.equal(a, b)
    assert np.isfinite(a.numpy()).all()
