"""Samplers: DDPM ancestral, DDIM and DPM-Solver++ (multistep, order 1-3), on a discrete schedule.

Each takes ``model_fn(x, t) -> output`` (see ``guidance.make_model_fn``; epsilon is the first
C channels), the training ``NoiseSchedule`` and the starting noise x_T, and returns x_0.
Model timesteps are in [0, T): integers for DDPM/DDIM, fractional for DPM-Solver++, which runs in
the continuous time of the DPM-Solver paper's discrete wrapper (t = (i + 1) / T for step i,
log-alpha interpolated in between) with time-uniform steps from t = 1 to t = 1 / T.

``clip_x0`` clamps every prediction of x_0 to [-1, 1], the data range of pixel-space models
(ADM's ``clip_denoised``, DPM-Solver's static thresholding); latents are not bounded, so
latent-space sampling leaves it off.
"""

from __future__ import annotations

import numpy as np
import torch

from dimbench.diffusion.guidance import ModelFn
from dimbench.diffusion.sampler_names import DEFAULT_STEPS, SAMPLERS
from dimbench.diffusion.schedule import NoiseSchedule


def spaced_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``steps`` timesteps spread evenly over [0, T-1], both ends included (ascending)."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
    if steps == 1:
        return [num_timesteps - 1]
    return sorted({round(i * (num_timesteps - 1) / (steps - 1)) for i in range(steps)})


def _batch_t(t: float | int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=torch.float32)


@torch.no_grad()
def ddpm_sample(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    noise: torch.Tensor,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    learned_variance: bool = False,
    clip_x0: bool = False,
) -> torch.Tensor:
    """Ancestral sampling, respaced to ``steps`` steps (IDDPM's respacing; 250 as DiT evaluates).

    With ``learned_variance`` the model's second C channels set the variance (IDDPM's learned
    range); otherwise the posterior variance (beta tilde) is used.
    """
    T = schedule.num_timesteps
    kept = spaced_timesteps(T, steps or T)
    abar = schedule.alphas_cumprod[kept].numpy()
    betas = 1.0 - abar / np.append(1.0, abar[:-1])
    sub = NoiseSchedule.from_betas(betas, name=f"{schedule.name}[{len(kept)}]")
    x = noise
    c = noise.shape[1]
    for i in reversed(range(len(kept))):
        out = model_fn(x, _batch_t(kept[i], x))
        ti = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        x0 = _clip(sub.predict_x0(x, ti, out[:, :c]), clip_x0)
        mean, log_var = sub.q_posterior(x0, x, ti)
        if learned_variance:
            log_var = sub.learned_log_variance(out[:, c : 2 * c], ti)
        if i > 0:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = mean + torch.exp(0.5 * log_var) * z
        else:
            x = mean
    return x


@torch.no_grad()
def ddim_sample(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    noise: torch.Tensor,
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    clip_x0: bool = False,
) -> torch.Tensor:
    """DDIM (eta = 0: deterministic) over ``steps`` evenly spaced timesteps, ending at x_0."""
    kept = spaced_timesteps(schedule.num_timesteps, steps)
    x = noise
    c = noise.shape[1]
    for i in reversed(range(len(kept))):
        t = kept[i]
        eps = model_fn(x, _batch_t(t, x))[:, :c]
        a = float(schedule.alphas_cumprod[t])
        a_prev = float(schedule.alphas_cumprod[kept[i - 1]]) if i > 0 else 1.0
        x0 = (x - (1.0 - a) ** 0.5 * eps) / a**0.5
        if clip_x0:  # and the noise that goes with the clipped x_0 (ADM)
            x0 = _clip(x0, True)
            eps = (x - a**0.5 * x0) / (1.0 - a) ** 0.5
        sigma = eta * ((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev)) ** 0.5
        x = a_prev**0.5 * x0 + max(1.0 - a_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0 and i > 0:
            x = x + sigma * torch.randn(
                x.shape, generator=generator, device=x.device, dtype=x.dtype
            )
    return x


@torch.no_grad()
def dpm_solver_pp_sample(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    noise: torch.Tensor,
    steps: int = 50,
    order: int = 2,
    lower_order_final: bool = True,
    clip_x0: bool = False,
) -> torch.Tensor:
    """Multistep DPM-Solver++ (data prediction) with time-uniform steps; ``steps`` model calls.

    The first steps warm up with lower orders; with ``lower_order_final`` the last steps drop
    the order too (more stable for few steps), as in the reference implementation.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver++ order must be 1, 2 or 3, got {order}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    T = schedule.num_timesteps
    ts = torch.linspace(T - 1, 0, steps + 1, dtype=torch.float64)
    log_alpha = schedule.marginal_log_alpha(ts)
    alpha = torch.exp(log_alpha).tolist()
    sigma = torch.sqrt(-torch.expm1(2.0 * log_alpha)).tolist()
    lam = schedule.lambda_(ts).tolist()
    c = noise.shape[1]

    def data_pred(x: torch.Tensor, i: int) -> torch.Tensor:
        eps = model_fn(x, _batch_t(ts[i], x))[:, :c]
        return _clip((x - sigma[i] * eps) / alpha[i], clip_x0)

    x = noise
    history = [data_pred(x, 0)]  # most recent last
    for i in range(1, steps + 1):
        k = min(order, i, steps + 1 - i) if lower_order_final else min(order, i)
        h = lam[i] - lam[i - 1]
        phi1 = float(np.expm1(-h))
        m0 = history[-1]
        x = (sigma[i] / sigma[i - 1]) * x - (alpha[i] * phi1) * m0
        if k >= 2:
            r0 = (lam[i - 1] - lam[i - 2]) / h
            d1_0 = (m0 - history[-2]) / r0
            if k == 2:
                x = x - (0.5 * alpha[i] * phi1) * d1_0
            else:
                r1 = (lam[i - 2] - lam[i - 3]) / h
                d1_1 = (history[-2] - history[-3]) / r1
                d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi2 = phi1 / h + 1.0
                phi3 = phi2 / h - 0.5
                x = x + (alpha[i] * phi2) * d1 - (alpha[i] * phi3) * d2
        if i < steps:
            history = (history + [data_pred(x, i)])[-order:]
    return x


def _clip(x0: torch.Tensor, clip: bool) -> torch.Tensor:
    return x0.clamp(-1.0, 1.0) if clip else x0


def sample(
    sampler: str,
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    noise: torch.Tensor,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    order: int = 2,
    eta: float = 0.0,
    learned_variance: bool = False,
    clip_x0: bool = False,
) -> torch.Tensor:
    """Run the named sampler (``dpm++``, ``ddim`` or ``ddpm``) from x_T = ``noise``."""
    steps = steps or DEFAULT_STEPS.get(sampler)
    if sampler == "dpm++":
        return dpm_solver_pp_sample(
            model_fn, schedule, noise, steps=steps, order=order, clip_x0=clip_x0
        )
    if sampler == "ddim":
        return ddim_sample(
            model_fn, schedule, noise, steps=steps, eta=eta, generator=generator, clip_x0=clip_x0
        )
    if sampler == "ddpm":
        return ddpm_sample(
            model_fn,
            schedule,
            noise,
            steps,
            generator=generator,
            learned_variance=learned_variance,
            clip_x0=clip_x0,
        )
    raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
