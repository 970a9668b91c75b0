"""rfrt's DiT against diffusers' WanTransformer3DModel (an independent implementation of the same model)."""
from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from model_harness import randomize
from rfrt.models.attention import FullAttention
from rfrt.models.config import ModelConfig
from rfrt.models.diffusers_names import diffusers_to_wan, wan_to_diffusers
from rfrt.models.dit import CausalWanDiT, CrossKV

TEXT_LEN = 512  # diffusers does not pad; feed both models the full padded length


def _reference(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    ref = diffusers.WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16,
                                          in_channels=4, out_channels=4, text_dim=24, freq_dim=16, ffn_dim=48,
                                          num_layers=2).eval()
    randomize(ref)
    return ref


def _rfrt_from(ref: torch.nn.Module) -> CausalWanDiT:
    net = CausalWanDiT(ModelConfig.from_dict(dict(ref.config))).eval()
    net.load_state_dict({diffusers_to_wan(k): v for k, v in ref.state_dict().items()}, strict=True)
    return net


def _inputs(B=2, F=3, C=4, H=6, W=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, F, C, H, W, generator=g)
    t = torch.rand(B, F, generator=g) * 1000  # distinct, non-integer timestep per frame and sample
    text = torch.randn(B, TEXT_LEN, 24, generator=g)
    text[:, 40:] = 0  # padded positions, attended by both
    return x, t, text


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_name_map_is_a_bijection_on_diffusers_state_dict():
    ref = _reference()
    names = list(ref.state_dict())
    mapped = [diffusers_to_wan(k) for k in names]
    assert None not in mapped and len(set(mapped)) == len(names)
    assert [wan_to_diffusers(k) for k in mapped] == names
    with torch.device("meta"):
        ours = CausalWanDiT(ModelConfig.from_dict(dict(ref.config))).state_dict()
    assert set(mapped) == set(ours)


def test_fp32_parity_with_per_frame_timesteps():
    ref = _reference()
    net = _rfrt_from(ref)
    x, t, text = _inputs()
    tokens_per_frame = (x.shape[3] // 2) * (x.shape[4] // 2)
    with torch.no_grad():
        ours = net(x, t, text, FullAttention())
        # diffusers takes one timestep per token ([B, seq_len]); tokens are ordered (frame, h, w).
        theirs = ref(x.transpose(1, 2), t.repeat_interleave(tokens_per_frame, dim=1), text,
                     return_dict=False)[0].transpose(1, 2)
    assert ours.shape == theirs.shape == x.shape
    err = _rel(ours, theirs)
    print(f"fp32 relative error vs diffusers: {err:.3e}")
    assert err <= 1e-5
    # The per-frame timesteps matter: a shared timestep gives a clearly different output.
    with torch.no_grad():
        shared = net(x, t[:, :1].expand_as(t).contiguous(), text, FullAttention())
    assert _rel(shared, theirs) > 1e-3


def test_frame_offset_is_a_uniform_time_shift():
    # RoPE is relative: shifting every frame's time position by the same offset leaves full attention
    # unchanged (up to rounding); that the positions themselves are right is pinned by the parity test.
    net = _rfrt_from(_reference())
    x, t, text = _inputs()
    with torch.no_grad():
        a = net(x, t, text, FullAttention(), frame_offset=0)
        b = net(x, t, text, FullAttention(), frame_offset=5)
    assert _rel(a, b) < 1e-5


def test_precomputed_cross_kv_and_text_padding():
    net = _rfrt_from(_reference())
    x, t, text = _inputs()
    with torch.no_grad():
        raw = net(x, t, text, FullAttention())
        kv = net.cross_kv(text)
        cached = net(x, t, kv, FullAttention())
        short = net(x, t, text[:, :40], FullAttention())  # zero-padded to text_len inside, like Wan
    assert isinstance(kv, CrossKV) and len(kv.keys) == 2 and kv.keys[0].shape == (2, TEXT_LEN, 2, 16)
    torch.testing.assert_close(cached, raw, rtol=0, atol=0)
    torch.testing.assert_close(short, raw, rtol=1e-6, atol=1e-6)


def test_bf16_weights_run_in_bf16_and_stay_close():
    ref = _reference()
    net32 = _rfrt_from(ref)
    net16 = _rfrt_from(ref).to(torch.bfloat16)
    x, t, text = _inputs()
    with torch.no_grad():
        out16 = net16(x, t, text, FullAttention())
        out32 = net32(x, t, text, FullAttention())
    assert out16.dtype == torch.bfloat16
    assert _rel(out16, out32) < 5e-2


def test_bad_inputs_are_rejected():
    net = _rfrt_from(_reference())
    x, t, text = _inputs()
    with pytest.raises(ValueError, match="t must be"):
        net(x, t[:, :2], text, FullAttention())
    with pytest.raises(ValueError, match="not divisible"):
        net(x[..., :5], t, text, FullAttention())
    with pytest.raises(ValueError, match="text must be"):
        net(x, t, torch.zeros(2, TEXT_LEN + 1, 24), FullAttention())
