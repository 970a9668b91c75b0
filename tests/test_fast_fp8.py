"""FP8 linears (rfrt.fast.fp8): quantisation bounds, the CPU emulation against an fp64 dequantised reference,
the in-place DiT swap, and the measured quality cost at chunk level; `_scaled_mm` against the emulation on a
GPU."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from rfrt.cache import CacheLayout, RingCache
from rfrt.fast import RuntimeConfig
from rfrt.fast.fp8 import E4M3_MAX, FP8Linear, fp8_forward_error, quantize_fp8, relative_error, swap_dit_linears
from rfrt.runtime.generator import StreamGenerator
from test_generator_tiny import one_thread, tiny_dit, tiny_model  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("scaling", ["row", "tensor"])
def test_quantize_error_bound_and_zero_rows(scaling):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 48, generator=g) * torch.logspace(-3, 2, 64)[:, None]
    x[5] = 0
    q, s = quantize_fp8(x, scaling)
    assert q.dtype == torch.float8_e4m3fn and s.shape == ((64, 1) if scaling == "row" else (1, 1))
    assert q.float().abs().max() <= E4M3_MAX
    err = (q.float() * s - x).abs()
    # e4m3: 3 mantissa bits -> relative half-ulp 2^-4 for normals; below 2^-6 (subnormals) an absolute 2^-10.
    bound = torch.maximum(x.abs() * 2.0 ** -4, s * 2.0 ** -10) * (1 + 1e-6)
    assert bool((err <= bound).all())
    assert bool((q[5].float() == 0).all())
    if scaling == "row":
        assert bool((q.float().abs().amax(dim=1)[torch.arange(64) != 5] == E4M3_MAX).all())


@pytest.mark.parametrize("scaling", ["row", "tensor"])
def test_emulated_linear_equals_dequantised_fp64_reference(scaling):
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(96, 160)
    x = torch.randn(2, 37, 96, generator=g)
    fp8 = FP8Linear(lin, scaling)
    y = fp8(x)
    qx, sx = quantize_fp8(x.reshape(-1, 96), scaling)
    ref = (qx.double() * sx.double()) @ fp8.dequantized_weight().double().t() + lin.bias.double()
    assert y.shape == (2, 37, 160) and y.dtype == torch.float32
    assert relative_error(y.reshape(-1, 160), ref) < 1e-6
    # and the quantisation cost itself, against the fp32 layer (e4m3: a few per cent at most)
    err = relative_error(y, lin(x))
    print(f"\nFP8 {scaling} linear vs fp32: relative error {err:.4f}")
    assert 1e-4 < err < 0.08


def test_swap_counts_is_idempotent_and_survives_to_dtype():
    dit = tiny_dit()
    assert swap_dit_linears(dit) == 8 * dit.config.num_layers
    assert swap_dit_linears(dit) == 0
    dit.to(torch.bfloat16)
    layer = dit.blocks[0].ffn[0]
    assert isinstance(layer, FP8Linear) and layer.weight_fp8.dtype == torch.float8_e4m3fn
    assert layer.weight_scale.dtype == torch.float32 and layer.bias.dtype == torch.bfloat16
    assert isinstance(dit.blocks[0].cross_attn.k, nn.Linear) and isinstance(dit.head.head, nn.Linear)
    with pytest.raises(ValueError, match="divisible by 16"):
        FP8Linear(nn.Linear(20, 32))


def test_fp8_quality_forward_and_chunk():
    """Measured cost of FP8 on the tiny random DiT (fp32 otherwise): one forward, and whole chunks."""
    dit = tiny_dit()
    cfg = dit.config
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, cfg.in_dim, 8, 8, generator=g)
    text = torch.randn(1, 5, cfg.text_dim, generator=g)

    def backend():
        from rfrt.cache import CachePolicy

        cache = RingCache(CacheLayout.for_model(cfg, CachePolicy(), 4, 4))
        cache.begin_chunk()
        return cache

    res = fp8_forward_error(dit, x, torch.full((1, 3), 937.5), text, backend)
    assert res.swapped_layers == 8 * cfg.num_layers
    assert all(isinstance(m, nn.Linear) for m in dit.blocks[0].ffn if not isinstance(m, nn.GELU))
    ref = StreamGenerator(tiny_model(8), device="cpu")
    fp8 = StreamGenerator(tiny_model(8), device="cpu", runtime=RuntimeConfig(fp8=True))
    errs = []
    for gen in (ref, fp8):
        gen.reset("a red ball", seed=1)
    for _ in range(5):
        errs.append(relative_error(fp8.step().latents, ref.step().latents))
    print(f"\nFP8 row (emulated) tiny DiT: forward rel err {res.relative_error:.4f}; chunk latents rel err "
          + ", ".join(f"{e:.4f}" for e in errs))
    assert 1e-4 < res.relative_error < 0.1
    assert all(1e-4 < e < 0.1 for e in errs)


@pytest.mark.parametrize("scaling", ["row", "tensor"])
def test_scaled_mm_call_layout_on_cpu(scaling):
    """Where this torch has a CPU `_scaled_mm`, the CUDA call path (operand layout, scale shapes) runs here too:
    it must agree with the emulation up to the bf16 output rounding (half an ulp: 2^-9 relative)."""
    torch.manual_seed(3)
    lin = nn.Linear(64, 48).bfloat16()
    x = torch.randn(5, 37, 64, dtype=torch.bfloat16)
    try:
        direct = FP8Linear(lin, scaling, emulate=False)(x)
    except (NotImplementedError, RuntimeError) as err:
        pytest.skip(f"no CPU _scaled_mm in torch {torch.__version__}: {err}")
    emulated = FP8Linear(lin, scaling, emulate=True)(x)
    assert direct.shape == (5, 37, 48) and direct.dtype == torch.bfloat16
    assert relative_error(direct, emulated) < 2.0 ** -8


@pytest.mark.gpu
@pytest.mark.parametrize("scaling", ["row", "tensor"])
@pytest.mark.parametrize("out_features", [1536, 8960])
def test_scaled_mm_matches_emulation_on_gpu(scaling, out_features):
    """Same fp8 operands through `_scaled_mm` and through the fp32 emulation: they differ only by summation
    order / accumulator width and the bf16 output rounding."""
    torch.manual_seed(0)
    lin = nn.Linear(1536, out_features, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(4680, 1536, device="cuda", dtype=torch.bfloat16)
    gpu = FP8Linear(lin, scaling)(x)
    emu = FP8Linear(lin, scaling, emulate=True)(x)
    assert gpu.dtype == torch.bfloat16 and not gpu.isnan().any()
    err = relative_error(gpu, emu)
    print(f"\n_scaled_mm vs emulation ({scaling}, N={out_features}): {err:.2e}; vs bf16: "
          f"{relative_error(gpu, lin(x)):.4f}")
    assert err < 1e-2


@pytest.mark.parametrize("scaling", ["row", "tensor"])
def test_fused_quantizer_equals_the_unfused_one(scaling):
    """The torch.compile'd quantiser (one reduction + one pointwise kernel) gives quantize_fp8's bits."""
    from rfrt.fast.fp8 import fused_quantizer

    g = torch.Generator().manual_seed(4)
    fused = fused_quantizer(scaling)
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(24, 64, generator=g) * torch.logspace(-3, 2, 24)[:, None]).to(dtype)
        x[3] = 0
        q, s = fused(x)
        q_ref, s_ref = quantize_fp8(x, scaling)
        assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32
        assert torch.equal(s, s_ref)
        assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


def test_fused_qkv_is_the_three_fp8_projections_with_one_quantisation():
    torch.manual_seed(5)
    lins = [nn.Linear(64, 32) for _ in range(3)]
    x = torch.randn(2, 9, 64)
    fused = FP8Linear.concat(lins, "row")
    parts = fused(x).chunk(3, dim=-1)
    for lin, got in zip(lins, parts):
        torch.testing.assert_close(got, FP8Linear(lin, "row")(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="same input size"):
        FP8Linear.concat([nn.Linear(64, 32), nn.Linear(48, 32)])


def test_swapped_dit_fuses_self_attention_qkv():
    dit = tiny_dit()
    assert swap_dit_linears(dit) == 8 * dit.config.num_layers
    sa = dit.blocks[0].self_attn
    assert isinstance(sa.fused_qkv, FP8Linear) and sa.q is None and sa.k is None and sa.v is None
    assert sa.fused_qkv.out_features == 3 * dit.config.dim


def test_emulated_bias_is_added_before_the_output_rounding():
    """The GPU adds the bias in the GEMM epilogue (fp32, then one bf16 rounding); the emulation must too."""
    torch.manual_seed(6)
    lin = nn.Linear(64, 48).bfloat16()
    with torch.no_grad():
        lin.bias.mul_(100)
    x = torch.randn(7, 64, dtype=torch.bfloat16)
    layer = FP8Linear(lin, "row", emulate=True)
    qx, sx = quantize_fp8(x, "row")
    want = ((qx.float() @ layer.weight_fp8.float().t()) * (sx * layer.weight_scale.t()) + lin.bias.float())
    assert torch.equal(layer(x), want.to(torch.bfloat16))
