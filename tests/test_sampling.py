"""rfrt.sampling against closed-form values (SPEC §2.1) and diffusers' FlowMatchEulerDiscreteScheduler."""
from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from rfrt.sampling import (SamplerConfig, flow_to_x0, renoise, sigma_table, timestep_tensor, warped_sigmas,
                           warped_timesteps)


def _closed_form_sigma(step: int, n: int, shift: Fraction) -> Fraction:
    u = Fraction(step, n)
    return shift * u / (1 + (shift - 1) * u)


def test_release_warped_values_match_closed_form():
    cfg = SamplerConfig()
    sig = warped_sigmas(cfg)
    t = warped_timesteps(cfg)
    assert sig.dtype == torch.float32 and t.dtype == torch.float32
    # Exact rationals rounded once to fp32; t is fp32(1000 * fp32 sigma), the reference's fp32 product.
    exp_sig = torch.tensor([float(_closed_form_sigma(s, 1000, Fraction(5))) for s in cfg.denoising_steps],
                           dtype=torch.float32)
    exp_t = (exp_sig.double() * 1000).float()
    assert torch.equal(sig, exp_sig), (sig.tolist(), exp_sig.tolist())
    assert torch.equal(t, exp_t), (t.tolist(), exp_t.tolist())
    # SPEC §2.1 pins the model-facing values.
    assert t.tolist() == [1000.0, 937.5, 833.3333129882812, 625.0]
    assert sig.tolist() == [1.0, 0.9375, 0.8333333134651184, 0.625]


def test_warp_differs_from_unwarped_steps():
    # Guards against feeding the raw step numbers: only the first step coincides.
    t = warped_timesteps(SamplerConfig())
    assert (t[1:] != torch.tensor([750.0, 500.0, 250.0])).all()


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_table_matches_closed_form(shift):
    cfg = SamplerConfig(shift=shift, denoising_steps=(1000,))
    t, sig = sigma_table(cfg)
    assert t.shape == sig.shape == (1000,)
    exp = torch.tensor([float(_closed_form_sigma(1000 - i, 1000, Fraction(shift))) for i in range(1000)],
                       dtype=torch.float64)
    err = (sig.double() - exp).abs().max().item()
    assert err <= 2e-7, err
    assert sig[0].item() == 1.0 and (sig[1:] < sig[:-1]).all()


def test_table_matches_diffusers_scheduler():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    t, sig = sigma_table(SamplerConfig())
    # diffusers builds u as linspace(1, 1000, 1000)/1000 reversed: the same grid, rounded differently in fp32.
    assert sched.sigmas.shape == sig.shape
    assert (sched.sigmas.double() - sig.double()).abs().max().item() <= 1e-6
    assert (sched.timesteps.double() - t.double()).abs().max().item() <= 1e-3
    # The warped steps read off diffusers' table at index 1000 - s.
    idx = [1000 - s for s in SamplerConfig().denoising_steps]
    assert torch.allclose(sched.sigmas[idx], warped_sigmas(SamplerConfig()), rtol=0, atol=1e-6)
    assert torch.allclose(sched.timesteps[idx], warped_timesteps(SamplerConfig()), rtol=0, atol=1e-3)


def test_other_steps_and_num_train():
    cfg = SamplerConfig(num_train_timesteps=100, shift=2.0, denoising_steps=[100, 40])
    assert cfg.denoising_steps == (100, 40)
    exp = [float(_closed_form_sigma(s, 100, Fraction(2))) for s in (100, 40)]
    assert warped_sigmas(cfg).double().sub(torch.tensor(exp, dtype=torch.float64)).abs().max() <= 1e-7
    assert torch.allclose(warped_timesteps(cfg), warped_sigmas(cfg) * 100)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_train_timesteps=0), "num_train_timesteps"),
    (dict(num_train_timesteps=10.0), "num_train_timesteps"),
    (dict(shift=0.0), "shift"),
    (dict(shift=float("nan")), "shift"),
    (dict(denoising_steps=()), "non-empty"),
    (dict(denoising_steps=(1000, 1000)), "strictly decreasing"),
    (dict(denoising_steps=(250, 500)), "strictly decreasing"),
    (dict(denoising_steps=(1001, 500)), r"\[1, 1000\]"),
    (dict(denoising_steps=(1000, 0)), r"\[1, 1000\]"),
    (dict(denoising_steps=(1000, 2.5)), "int"),
])
def test_bad_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplerConfig(**kwargs)


def test_config_is_frozen():
    with pytest.raises(Exception):
        SamplerConfig().shift = 3.0  # type: ignore[misc]


def test_flow_to_x0_fp64_and_dtype():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 4, 5, generator=g)
    noise = torch.randn(2, 3, 4, 5, generator=g)
    sigma = 0.8333333134651184
    x_t = renoise(x0, noise, sigma)
    flow = noise - x0
    rec = flow_to_x0(x_t, flow, sigma)
    assert rec.dtype == torch.float32
    exp = (x_t.double() - sigma * flow.double()).float()
    assert torch.equal(rec, exp)
    assert (rec - x0).abs().max().item() <= 1e-6
    # bf16 inputs: result is the fp64 computation rounded once to bf16.
    xb, fb = x_t.bfloat16(), flow.bfloat16()
    rb = flow_to_x0(xb, fb, sigma)
    assert rb.dtype == torch.bfloat16
    assert torch.equal(rb, (xb.double() - sigma * fb.double()).bfloat16())


def test_renoise_fp32_and_per_sample_sigma():
    x0 = torch.ones(3, 2, 2, dtype=torch.bfloat16)
    noise = torch.zeros(3, 2, 2, dtype=torch.bfloat16)
    sig = torch.tensor([0.0, 0.5, 0.9375])
    out = renoise(x0, noise, sig)
    assert out.dtype == torch.bfloat16
    assert out[:, 0, 0].float().tolist() == [1.0, 0.5, 0.0625]
    # The arithmetic is fp32 with one final rounding, which differs from doing it in bf16.
    g = torch.Generator().manual_seed(1)
    xb, nb = torch.randn(64, generator=g).bfloat16(), torch.randn(64, generator=g).bfloat16()
    out = renoise(xb, nb, 0.3)
    assert torch.equal(out, ((1 - torch.tensor(0.3)) * xb.float() + 0.3 * nb.float()).bfloat16())
    assert not torch.equal(out, (1 - 0.3) * xb + 0.3 * nb)
    with pytest.raises(ValueError, match="leading dim"):
        renoise(x0, noise, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="differ in shape"):
        renoise(x0, noise[:2], 0.5)


def test_timestep_tensor():
    t = timestep_tensor(warped_timesteps(SamplerConfig())[2], batch=2, frames=3)
    assert t.shape == (2, 3) and t.dtype == torch.float32
    assert (t == 833.3333129882812).all()
