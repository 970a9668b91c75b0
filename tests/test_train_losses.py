"""train.losses against closed forms and hand-computed examples."""

import math

import pytest
import torch

from train import losses as L


def test_dmd_hand_computed_example():
    # One sample of 2 elements: |x - real| = [1, 2] -> normaliser 1.5; fake - real = [0.5, 1] -> g = [1/3, 2/3].
    x = torch.tensor([[1.0, 3.0]], requires_grad=True)
    real = torch.tensor([[0.0, 1.0]])
    fake = torch.tensor([[0.5, 2.0]])
    g = L.dmd_gradient(x, fake, real)
    assert torch.allclose(g, torch.tensor([[1 / 3, 2 / 3]]))
    loss = L.dmd_loss(x, g)
    assert loss.shape == (1,)
    assert math.isclose(loss.item(), 0.5 * (1 / 9 + 4 / 9) / 2, rel_tol=1e-6)  # 5/36
    loss.sum().backward()
    assert torch.allclose(x.grad, torch.tensor([[1 / 6, 1 / 3]]))  # g / N with N = 2


def test_dmd_gradient_closed_form_5d():
    torch.manual_seed(0)
    B, F, C, H, W = 3, 2, 4, 3, 5
    x = torch.randn(B, F, C, H, W, dtype=torch.float64, requires_grad=True)
    fake, real = torch.randn_like(x), torch.randn_like(x)
    g = L.dmd_gradient(x, fake, real)
    for i in range(B):  # independent per-sample normaliser
        ref = (fake[i] - real[i]) / (x[i].detach() - real[i]).abs().mean()
        assert torch.allclose(g[i], ref)
    per = L.dmd_loss(x, g)
    assert torch.allclose(per, 0.5 * (g ** 2).mean(dim=(1, 2, 3, 4)))
    # Gradient of sample i's loss only reaches sample i, equal to g_i / numel.
    per[1].backward()
    n = F * C * H * W
    assert torch.allclose(x.grad[1], g[1] / n)
    assert torch.count_nonzero(x.grad[0]) == 0 and torch.count_nonzero(x.grad[2]) == 0


def test_dmd_gradient_zero_normaliser_is_finite():
    x = torch.ones(2, 3)
    g = L.dmd_gradient(x, torch.zeros(2, 3), x.clone())
    assert torch.equal(g, torch.zeros(2, 3))


def test_redmd_weights_exact_and_detached():
    r = torch.tensor([0.0, 0.5, -1.0], requires_grad=True)
    w = L.reward_weights(r, beta=2.0)
    assert torch.equal(w, torch.exp(torch.tensor([0.0, 1.0, -2.0])))
    assert not w.requires_grad
    per = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    total = L.redmd_loss(per, r, beta=2.0)
    # No normalisation across the batch: plain mean of w_i * L_i.
    assert math.isclose(total.item(), (1.0 + 2.0 * math.e + 3.0 * math.exp(-2.0)) / 3, rel_tol=1e-6)
    total.backward()
    assert r.grad is None
    assert torch.allclose(per.grad, w / 3)
    assert L.redmd_loss(per.detach(), None).item() == pytest.approx(2.0)


def test_flow_matching_loss():
    torch.manual_seed(1)
    x, eps = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert L.flow_matching_loss(eps - x, x, eps).item() == 0.0
    v = torch.zeros(2, 3, 4)
    assert torch.allclose(L.flow_matching_loss(v, x, eps), ((eps - x) ** 2).mean())
    assert torch.allclose(L.flow_matching_loss(v, x, eps, reduction="none"), ((eps - x) ** 2).mean(dim=(1, 2)))
    with pytest.raises(ValueError):
        L.flow_matching_loss(v, x[:1], eps)


def test_cfg_and_add_noise():
    c, u = torch.tensor([2.0]), torch.tensor([1.0])
    assert L.cfg_combine(c, u, 3.0).item() == 4.0
    assert L.cfg_combine(c, u, 1.0).item() == 2.0
    x, e = torch.zeros(2, 3), torch.ones(2, 3)
    xt = L.add_noise(x, e, torch.tensor([0.25, 1.0]))
    assert torch.equal(xt, torch.tensor([[0.25] * 3, [1.0] * 3]))


def test_timestep_sampling_shift_and_clamp():
    gen = torch.Generator().manual_seed(3)
    t = L.sample_dmd_timesteps(20000, min_t=20, max_t=980, shift=5.0, generator=gen)
    assert t.dtype == torch.float32 and t.shape == (20000,)
    assert t.min() >= 20 and t.max() <= 980
    # Independent reference from the same integer draws.
    u = torch.randint(0, 1000, (20000,), generator=torch.Generator().manual_seed(3)).double() / 1000
    ref = (1000 * 5 * u / (1 + 4 * u)).clamp(20, 980)
    assert torch.allclose(t.double(), ref, atol=1e-3)
    # Shift 5 maps u=0.5 to 833.3: about half the samples lie above it (vs. 500 without the shift).
    assert abs((t > 833.3).float().mean().item() - 0.5) < 0.02
    t1 = L.sample_dmd_timesteps(20000, shift=1.0, generator=torch.Generator().manual_seed(3))
    assert abs((t1 > 500).float().mean().item() - 0.5) < 0.02
