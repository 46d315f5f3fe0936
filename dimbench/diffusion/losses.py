"""Training losses: epsilon MSE (DiM, U-ViT) and IDDPM's hybrid loss for learned variance (DiT).

The hybrid loss is MSE on epsilon plus the variational bound term computed with the mean
frozen (gradients reach only the variance output), exactly the split IDDPM and DiT use; the VB
term is in bits per dimension and not rescaled (DiT's ``loss_type=MSE``).
"""

from __future__ import annotations

import torch

from dimbench.diffusion.schedule import LOG2, NoiseSchedule, mean_flat

LOSSES = ("mse", "hybrid")


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """Log-likelihood of data in [-1, 1] quantised to 256 bins under N(mean, exp(log_scale)^2)."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = torch.special.ndtr(inv_std * (centered + 1.0 / 255.0))
    cdf_min = torch.special.ndtr(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(
        x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta)
    )


def vb_term(
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    v: torch.Tensor,
) -> torch.Tensor:
    """Per-sample variational-bound term (bits/dim) of p(x_{t-1} | x_t) with learned variance v."""
    model_log_var = schedule.learned_log_variance(v, t)
    model_mean, _ = schedule.q_posterior(schedule.predict_x0(x_t, t, eps), x_t, t)
    true_mean, true_log_var = schedule.q_posterior(x0, x_t, t)
    kl = mean_flat(normal_kl(true_mean, true_log_var, model_mean, model_log_var)) / LOG2
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)
    nll = mean_flat(nll) / LOG2
    return torch.where(t == 0, nll, kl)


def diffusion_loss(
    model_output: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    schedule: NoiseSchedule,
    loss_type: str = "mse",
) -> torch.Tensor:
    """Per-sample training loss (B,) given the model's output on x_t.

    ``model_output`` has C channels (epsilon) or 2C (epsilon then the variance interpolation v,
    for ``learn_sigma`` models). With ``mse`` only epsilon is trained; ``hybrid`` adds the VB
    term for v and needs the 2C output.
    """
    c = x0.shape[1]
    out = model_output.float()
    eps = out[:, :c]
    loss = mean_flat((eps - noise.float()) ** 2)
    if loss_type == "mse":
        return loss
    if loss_type != "hybrid":
        raise ValueError(f"unknown loss {loss_type!r}; valid: {', '.join(LOSSES)}")
    if out.shape[1] != 2 * c:
        raise ValueError("the hybrid loss needs a model that outputs sigma (learn_sigma=True)")
    # the mean is frozen so the VB term trains only the variance (IDDPM section 3.1)
    return loss + vb_term(schedule, x0.float(), x_t.float(), t, eps.detach(), out[:, c:])


def training_losses(
    model,
    x0: torch.Tensor,
    y: torch.Tensor,
    schedule: NoiseSchedule,
    t: torch.Tensor,
    noise: torch.Tensor,
    loss_type: str = "mse",
) -> torch.Tensor:
    """Noise x0 to x_t, run ``model(x_t, t, y)`` and return the per-sample loss (B,)."""
    x_t = schedule.q_sample(x0, t, noise)
    return diffusion_loss(model(x_t, t, y), x0, x_t, t, noise, schedule, loss_type)
