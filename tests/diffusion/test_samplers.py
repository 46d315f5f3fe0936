"""Samplers against a model whose optimal epsilon is known in closed form (Gaussian data), and
training-free upsampling on the real tiny models."""

from __future__ import annotations

import pytest
import torch

from dimbench.diffusion.guidance import make_model_fn
from dimbench.diffusion.samplers import (
    ddim_sample,
    ddpm_sample,
    dpm_solver_pp_sample,
    sample,
    spaced_timesteps,
)
from dimbench.diffusion.schedule import NoiseSchedule
from dimbench.diffusion.upsample import UpsampleGuidance

SHAPE = (1, 4, 3, 3)
MU = torch.tensor([0.5, -0.3, 0.0, 1.0]).view(1, 4, 1, 1).expand(SHAPE)
STD = torch.tensor([0.5, 0.8, 1.0, 0.7]).view(1, 4, 1, 1).expand(SHAPE)


def gaussian_eps(schedule: NoiseSchedule):
    """E[eps | x_t] for data ~ N(MU, STD^2) per element: the optimal epsilon-predictor."""

    def fn(x, t):
        a = schedule.alpha_bar(t.double()).float().view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * STD**2 + 1 - a)

    return fn


def prior_noise(schedule: NoiseSchedule, z: torch.Tensor) -> torch.Tensor:
    """x_T drawn from the exact marginal at t = T-1, so an exact solver returns the data law."""
    a = float(schedule.alphas_cumprod[-1])
    return a**0.5 * MU + (a * STD**2 + 1 - a) ** 0.5 * z


def output_law(run, schedule) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of a deterministic sampler's output: with a Gaussian model the sampler is an
    affine map of z per element, so two evaluations give the exact law (no sampling noise)."""
    b = run(prior_noise(schedule, torch.zeros(SHAPE)))
    a = run(prior_noise(schedule, torch.ones(SHAPE))) - b
    return b, a.abs()


def assert_channel_law(x: torch.Tensor) -> None:
    """Per-channel empirical mean and std of samples match the data law (sampling noise ~1%)."""
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    assert torch.allclose(mean, MU[0, :, 0, 0], atol=0.04), mean
    assert torch.allclose(std, STD[0, :, 0, 0], rtol=0.05), std


def law_error(run, schedule) -> float:
    mean, std = output_law(run, schedule)
    return max((mean - MU).abs().max().item(), (std / STD - 1).abs().max().item())


@pytest.mark.parametrize("name", ["scaled_linear", "linear"])
def test_ddim_and_dpm_solver_recover_the_data_law(name):
    s = NoiseSchedule(name)
    fn = gaussian_eps(s)
    assert law_error(lambda z: dpm_solver_pp_sample(fn, s, z, steps=50, order=2), s) < 0.02
    assert law_error(lambda z: dpm_solver_pp_sample(fn, s, z, steps=50, order=3), s) < 0.02
    assert law_error(lambda z: ddim_sample(fn, s, z, steps=200), s) < 0.02
    # convergence: more steps land closer
    errs = [law_error(lambda z, n=n: ddim_sample(fn, s, z, steps=n), s) for n in (10, 40, 160)]
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("name", ["scaled_linear", "linear"])
@pytest.mark.parametrize("order", [2, 3])
def test_dpm_solver_beats_ddim_at_20_steps(name, order):
    s = NoiseSchedule(name)
    fn = gaussian_eps(s)
    ddim = law_error(lambda z: ddim_sample(fn, s, z, steps=20), s)
    dpm = law_error(lambda z: dpm_solver_pp_sample(fn, s, z, steps=20, order=order), s)
    assert dpm < 0.75 * ddim, (dpm, ddim)


def test_dpm_solver_from_standard_noise_and_sample_dispatch():
    """The usual start, x_T ~ N(0, I): close to the data law (linear schedule: abar_T ~ 4e-5)."""
    s = NoiseSchedule("linear")
    z = torch.randn(600, *SHAPE[1:], generator=torch.Generator().manual_seed(0))
    x = sample("dpm++", gaussian_eps(s), s, z, steps=25)
    assert_channel_law(x)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample("euler", gaussian_eps(s), s, z)


def test_ddpm_ancestral_recovers_the_data_law():
    s = NoiseSchedule("linear")
    g = torch.Generator().manual_seed(1)
    z = prior_noise(s, torch.randn(1000, *SHAPE[1:], generator=g))
    # 250 steps as DiT evaluates; the fixed posterior variance loses ~2% std at this spacing
    assert_channel_law(ddpm_sample(gaussian_eps(s), s, z, steps=250, generator=g))


def test_ddpm_learned_variance_path():
    """A learned-variance model answering v = -1 asks for the posterior variance: the same
    samples as the fixed-variance sampler; v = +1 (beta) gives different ones."""
    s = NoiseSchedule("linear")
    eps = gaussian_eps(s)
    z = torch.randn(8, *SHAPE[1:])

    def run(fn, learned):
        return ddpm_sample(fn, s, z, 50, torch.Generator().manual_seed(2), learned)

    fixed = run(eps, False)
    low = run(lambda x, t: torch.cat([eps(x, t), -torch.ones_like(x)], 1), True)
    high = run(lambda x, t: torch.cat([eps(x, t), torch.ones_like(x)], 1), True)
    assert torch.allclose(low, fixed, atol=1e-5)
    assert not torch.allclose(high, fixed, atol=1e-3)


def test_spaced_timesteps():
    assert spaced_timesteps(1000, 1000) == list(range(1000))
    ts = spaced_timesteps(1000, 50)
    assert len(ts) == 50 and ts[0] == 0 and ts[-1] == 999
    assert spaced_timesteps(1000, 1) == [999]
    with pytest.raises(ValueError):
        spaced_timesteps(1000, 0)


# ---- training-free upsampling on the real models ----------------------------------------


def tiny(name: str, size: int = 8):
    from dimbench.registry import create_model

    torch.manual_seed(0)
    model = create_model(name, size, downsample=1, in_channels=3, scan_backend="auto")
    with torch.no_grad():  # leave the zero-initialised output layers: a fresh model predicts 0
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("name", ["DiM-T/2", "U-ViT-T/2", "DiT-T/2"])
@pytest.mark.parametrize("guidance", [True, False])
def test_direct_extrapolation_at_2x(name, guidance):
    model = tiny(name)
    s = NoiseSchedule("scaled_linear")
    y = torch.tensor([1, 2])
    fn = UpsampleGuidance(make_model_fn(model, y, cfg_scale=0.4), s, 2, 3, enabled=guidance)
    z = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = dpm_solver_pp_sample(fn, s, z, steps=3)
    assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()


def test_upsample_guidance_changes_samples_only_through_early_steps():
    """A sampler whose steps all lie below 0.7 T gives identical samples with and without
    guidance; one that starts at T does not."""
    model = tiny("DiT-T/2")
    s = NoiseSchedule("scaled_linear")
    y = torch.tensor([0])
    base = make_model_fn(model, y)
    on = UpsampleGuidance(base, s, 2, 3)
    z = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t_late, t_early = torch.full((1,), 500.0), torch.full((1,), 900.0)
        assert torch.equal(on(z, t_late), base(z, t_late))
        assert not torch.allclose(on(z, t_early), base(z, t_early))
        assert not torch.equal(
            dpm_solver_pp_sample(on, s, z, steps=4), dpm_solver_pp_sample(base, s, z, steps=4)
        )
