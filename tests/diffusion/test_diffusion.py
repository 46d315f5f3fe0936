"""Schedules, losses, classifier-free guidance and upsample guidance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dimbench.diffusion.guidance import make_model_fn
from dimbench.diffusion.losses import diffusion_loss, normal_kl, training_losses, vb_term
from dimbench.diffusion.schedule import NoiseSchedule, make_betas
from dimbench.diffusion.upsample import UpsampleGuidance
from dimbench.registry import get_model


def test_scaled_linear_is_stable_diffusions():
    betas = make_betas("scaled_linear")
    assert len(betas) == 1000
    assert betas[0] == pytest.approx(0.00085)
    assert betas[-1] == pytest.approx(0.012)
    # sqrt(beta) is linear
    d = np.diff(np.sqrt(betas))
    assert np.allclose(d, d[0])


def test_linear_is_dits():
    betas = make_betas("linear")
    assert (betas[0], betas[-1]) == (pytest.approx(1e-4), pytest.approx(0.02))
    # the schedule each model's paper trains with, as the model declares it
    assert get_model("DiT-XL/2").schedule == "linear"
    assert get_model("DiM-H/2").schedule == get_model("U-ViT-H/2").schedule == "scaled_linear"
    with pytest.raises(ValueError):
        make_betas("cosine-ish")


@pytest.mark.parametrize("name", ["scaled_linear", "linear"])
def test_alpha_bar_and_snr_helpers(name):
    s = NoiseSchedule(name)
    abar = s.alphas_cumprod
    assert torch.all(abar[1:] < abar[:-1]) and 0 < abar[-1] < abar[0] < 1
    t = torch.arange(1000, dtype=torch.float64)
    # fractional time interpolates and agrees with the table at integers
    assert torch.allclose(s.alpha_bar(t), abar, rtol=1e-12)
    mid = s.alpha_bar(torch.tensor([10.5]))
    assert abar[11] < mid < abar[10]
    # SNR and lambda are consistent; the SNR inverse finds the timestep back
    assert torch.allclose(s.snr(t), abar / (1 - abar))
    assert torch.allclose(s.lambda_(t), 0.5 * torch.log(s.snr(t)))
    idx = torch.tensor([0, 1, 37, 500, 999])
    assert torch.equal(s.timestep_for_snr(s.snr(idx.double())), idx)
    # a 4x higher SNR is an earlier (less noisy) step
    assert s.timestep_for_snr(4 * s.snr(800.0)) < 800


def test_q_sample_matches_marginal():
    s = NoiseSchedule("linear")
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1), 0.7)
    t = torch.full((20000,), 300)
    xt = s.q_sample(x0, t, torch.randn(x0.shape, generator=g))
    a = float(s.alphas_cumprod[300])
    assert xt.mean().item() == pytest.approx(math.sqrt(a) * 0.7, abs=0.02)
    assert xt.var().item() == pytest.approx(1 - a, rel=0.05)
    # q_sample inverts through predict_x0
    noise = torch.randn(4, 3, 8, 8, generator=g)
    x0 = torch.randn(4, 3, 8, 8, generator=g)
    tt = torch.tensor([0, 10, 500, 999])
    xt = s.q_sample(x0, tt, noise)
    assert torch.allclose(s.predict_x0(xt, tt, noise), x0, atol=1e-3)


def test_mse_loss_is_zero_for_the_true_noise():
    s = NoiseSchedule("scaled_linear")
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 4, 4, 4, generator=g), torch.randn(3, 4, 4, 4, generator=g)
    t = torch.tensor([5, 400, 990])

    def oracle(x, tt, y):
        return noise

    assert torch.all(training_losses(oracle, x0, None, s, t, noise) == 0)
    wrong = training_losses(lambda x, tt, y: torch.zeros_like(x), x0, None, s, t, noise)
    assert torch.allclose(wrong, noise.pow(2).mean(dim=(1, 2, 3)))


def test_vb_term_vanishes_for_the_true_posterior():
    """With the true epsilon and v = -1 (posterior variance), p(x_{t-1}|x_t) = q(...): KL = 0."""
    s = NoiseSchedule("linear")
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(3, 3, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([1, 250, 999])
    xt = s.q_sample(x0, t, noise)
    vb = vb_term(s, x0, xt, t, noise, -torch.ones_like(x0))
    assert torch.allclose(vb, torch.zeros(3), atol=1e-4)
    # another variance costs bits (late in the chain beta and beta-tilde nearly coincide)
    assert torch.all(vb_term(s, x0, xt, t, noise, torch.ones_like(x0))[:2] > 0)
    assert normal_kl(torch.zeros(1), torch.zeros(1), torch.ones(1), torch.zeros(1)).item() == 0.5


def test_hybrid_loss_trains_variance_only_through_vb():
    s = NoiseSchedule("linear")
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(2, 3, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 600])  # t = 0 takes the discretised-likelihood branch
    xt = s.q_sample(x0, t, noise)
    out = torch.randn(2, 6, 4, 4, generator=g, requires_grad=True)
    diffusion_loss(out, x0, xt, t, noise, s, "hybrid").sum().backward()
    grad_hybrid = out.grad.clone()
    out.grad = None
    diffusion_loss(out, x0, xt, t, noise, s, "mse").sum().backward()
    # epsilon's gradient is the MSE's alone (the mean is frozen in the VB term) ...
    assert torch.allclose(grad_hybrid[:, :3], out.grad[:, :3])
    # ... and the variance channels are trained by the VB term only
    assert torch.all(out.grad[:, 3:] == 0) and grad_hybrid[:, 3:].abs().sum() > 0
    with pytest.raises(ValueError, match="learn_sigma"):
        diffusion_loss(out[:, :3], x0, xt, t, noise, s, "hybrid")


class Recorder(torch.nn.Module):
    """A fake network: records its inputs, returns a fixed function of them."""

    in_channels, num_classes = 2, 10

    def __init__(self, out_channels=2):
        super().__init__()
        self.calls = []
        self.out_channels = out_channels

    def forward(self, x, t, y):
        self.calls.append((x.clone(), t.clone(), y.clone()))
        base = torch.sin(x) + 0.01 * t.view(-1, 1, 1, 1) + 0.1 * y.view(-1, 1, 1, 1).float()
        return base.repeat(1, self.out_channels // 2, 1, 1)


def test_cfg_is_the_papers_form_in_one_batched_forward():
    net = Recorder(out_channels=4)  # learned sigma: eps then v
    y = torch.tensor([3, 7])
    x = torch.randn(2, 2, 4, 4)
    t = torch.full((2,), 500.0)
    out = make_model_fn(net, y, cfg_scale=0.4)(x, t)
    assert len(net.calls) == 1  # both branches in one forward
    xs, ts, ys = net.calls[0]
    assert xs.shape[0] == 4 and torch.equal(ys, torch.tensor([3, 7, 10, 10]))
    cond = net(x, t, y)
    uncond = net(x, t, torch.full_like(y, 10))
    assert torch.allclose(out[:, :2], cond[:, :2] + 0.4 * (cond[:, :2] - uncond[:, :2]))
    assert torch.allclose(out[:, 2:], cond[:, 2:])  # variance from the conditional branch
    # scale 0: the plain conditional model, one forward of the real batch
    net.calls.clear()
    assert torch.equal(make_model_fn(net, y, 0.0)(x, t), cond)
    assert net.calls[0][0].shape[0] == 2


@pytest.mark.parametrize("m", [2, 3])
def test_upsample_guidance_formula(m):
    s = NoiseSchedule("scaled_linear")
    net = Recorder()
    y = torch.tensor([1, 2])
    fn = make_model_fn(net, y)
    ug = UpsampleGuidance(fn, s, factor=m, channels=2)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 2, 6 * m, 6 * m, generator=g)
    t = torch.full((2,), 850.0)
    out = ug(x, t)
    (x_hi, t_hi, _), (x_lo, t_lo, _) = net.calls
    abar = float(s.alpha_bar(850.0))
    p = abar + (1 - abar) / m**2
    assert torch.allclose(x_lo, F.avg_pool2d(x, m) / math.sqrt(p), atol=1e-6)
    # tau: the timestep whose SNR is closest to m^2 SNR(t)
    target = m**2 * float(s.snr(850.0))
    tau = int(t_lo[0])
    table = s.snr(torch.arange(1000.0))
    assert abs(math.log(table[tau]) - math.log(target)) <= min(
        abs(math.log(table[k]) - math.log(target)) for k in (tau - 1, tau + 1)
    )
    eps = fn(x, t)
    eps_low = fn(x_lo, t_lo)
    expected = eps + F.interpolate(eps_low / m - F.avg_pool2d(eps, m), scale_factor=m)
    assert torch.allclose(out, expected, atol=1e-6)


def test_upsample_guidance_only_while_w_is_on():
    s = NoiseSchedule("scaled_linear")
    net = Recorder()
    y = torch.tensor([0, 5])
    fn = make_model_fn(net, y, cfg_scale=0.5)
    x = torch.randn(2, 2, 8, 8)
    ug = UpsampleGuidance(fn, s, factor=2, channels=2)
    off = UpsampleGuidance(fn, s, factor=2, channels=2, enabled=False)
    for t_val, on in [(999.0, True), (700.0, True), (699.0, False), (300.0, False), (0.0, False)]:
        t = torch.full((2,), t_val)
        plain, guided = fn(x, t), ug(x, t)
        assert torch.equal(off(x, t), plain)
        assert (not torch.equal(guided, plain)) == on, t_val
        if not on:
            assert torch.equal(guided, plain)
