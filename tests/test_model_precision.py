"""Modulation precision (BlockMath): the fp32 default, the released pipeline's bf16 mode, fused helpers, and
the cached fp32 time-MLP weights — each against the plain fp32 path on the same inputs."""
from __future__ import annotations

import copy

import pytest
import torch
from model_harness import random_dit
from rfrt.models.attention import FullAttention
from rfrt.models.config import ModelConfig
from rfrt.models.dit import BlockMath, CausalWanDiT, gated_add_bf16, gated_add_fp32, modulate_bf16, modulate_fp32

CFG = ModelConfig(dim=32, ffn_dim=48, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=24,
                  freq_dim=16, text_len=16)


def _model() -> CausalWanDiT:
    return random_dit(CFG)


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 2, 4, 4, 6, generator=g), torch.rand(1, 2, generator=g) * 1000, \
        torch.randn(1, 16, 24, generator=g)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def forward_errors() -> dict[str, float]:
    """Relative error of a bf16 DiT's forward against the fp32 DiT (same weights, fp32 modulation), with
    fp32 and with bf16 modulation. Also printed by the test and quoted in docs/design.md."""
    ref = _model()
    x, t, text = _inputs()
    with torch.no_grad():
        want = ref(x, t, text, FullAttention())
        out = {}
        for mode in ("fp32", "bf16"):
            net = copy.deepcopy(ref).to(torch.bfloat16)
            net.set_block_math(BlockMath(mode))
            out[mode] = _rel(net(x, t, text, FullAttention()).float(), want)
    return out


def test_bf16_modulation_error_is_bounded_against_the_fp32_path():
    err = forward_errors()
    print(f"\nbf16 DiT forward rel err vs fp32 DiT: fp32 modulation {err['fp32']:.4f}, "
          f"bf16 modulation {err['bf16']:.4f}")
    # bf16 weights alone cost ~1e-2; bf16 modulation may add rounding on top, but within the same order.
    assert err["fp32"] < 0.05
    assert err["bf16"] < 3 * err["fp32"] + 0.01
    assert err["bf16"] != err["fp32"]  # the mode really changes the arithmetic


def test_bf16_mode_on_fp32_weights_is_the_fp32_math():
    """On an fp32 model 'bf16' means the weights' dtype: the same values up to fp32 operation order."""
    net = _model()
    x, t, text = _inputs()
    with torch.no_grad():
        want = net(x, t, text, FullAttention())
        net.set_block_math(BlockMath("bf16"))
        got = net(x, t, text, FullAttention())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_helpers_in_bf16_match_fp32_helpers_to_bf16_rounding():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(1, 12, 16, generator=g)
    shift, scale, gate = (torch.randn(1, 3, 1, 16, generator=g) * 0.5 for _ in range(3))
    y = torch.randn(1, 12, 16, generator=g)
    hb = h.bfloat16()
    ref = modulate_fp32(hb.float(), shift, scale, 1e-6, 3)
    got = modulate_bf16(hb, shift.bfloat16(), scale.bfloat16(), 1e-6, 3).float()
    assert _rel(got, ref) < 2e-2
    ref = gated_add_fp32(hb.float(), y.bfloat16().float(), gate, 3)
    got = gated_add_bf16(hb, y.bfloat16(), gate.bfloat16(), 3).float()
    assert _rel(got, ref) < 2e-2


def test_block_math_rejects_bad_values():
    with pytest.raises(ValueError, match="modulation precision must be one of"):
        BlockMath("fp16")
    with pytest.raises(TypeError, match="compile must be a bool"):
        BlockMath("fp32", compile=1)
    with pytest.raises(TypeError, match="needs a BlockMath"):
        _model().set_block_math("bf16")


def test_cached_fp32_time_weights_equal_per_forward_casts_and_follow_weight_updates():
    net = _model().to(torch.bfloat16)
    t = torch.rand(1, 2) * 1000
    with torch.no_grad():
        e, e0 = net.time_conditioning(t)
        e_again, _ = net.time_conditioning(t)
        assert torch.equal(e, e_again)
        # the plain per-call cast is the reference
        from rfrt.models.dit import _fp32_mlp
        half = CFG.freq_dim // 2
        omega = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
        arg = t.double()[..., None] * omega
        sin = torch.cat([torch.cos(arg), torch.sin(arg)], -1).float()
        assert torch.equal(e, _fp32_mlp(net.time_embedding, sin))
        assert torch.equal(e0.flatten(-2), _fp32_mlp(net.time_projection, e))
        net.time_embedding[0].weight.mul_(2)  # an in-place update (optimizer step) must be seen
        e2, _ = net.time_conditioning(t)
        assert torch.equal(e2, _fp32_mlp(net.time_embedding, sin))
        assert not torch.equal(e2, e)


def test_time_weights_keep_gradients_when_training():
    net = _model()
    e, _ = net.time_conditioning(torch.rand(1, 2) * 1000)
    e.sum().backward()
    assert net.time_embedding[0].weight.grad is not None


@pytest.mark.slow
def test_compiled_helpers_match_eager():
    """torch.compile'd helpers (inductor's C++ backend here) give the eager values; the cache ops stay out."""
    net = _model()
    x, t, text = _inputs()
    with torch.no_grad():
        want = net(x, t, text, FullAttention())
        net.set_block_math(BlockMath("fp32", compile=True))
        got = net(x, t, text, FullAttention())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_runtime_config_sets_the_block_math_of_the_generator():
    from rfrt.fast import RuntimeConfig
    from rfrt.generator import StreamGenerator
    from test_generator_tiny import tiny_model

    ref = StreamGenerator(tiny_model(8), device="cpu")
    gen = StreamGenerator(tiny_model(8), device="cpu", runtime=RuntimeConfig(modulation="bf16"))
    assert gen.dit.block_math.precision == "bf16" and ref.dit.block_math.precision == "fp32"
    for g in (ref, gen):
        g.reset("a red ball", seed=1)
    # fp32 weights: the bf16 mode is the same arithmetic in another order
    torch.testing.assert_close(gen.step().latents, ref.step().latents, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="modulation must be one of"):
        RuntimeConfig(modulation="fp16")
    with pytest.raises(ValueError, match="sdpa_backend must be one of"):
        RuntimeConfig(sdpa_backend="fa3")
