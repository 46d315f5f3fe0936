"""Discrete DDPM noise schedules (1000 steps) and the quantities derived from them.

``NoiseSchedule`` holds the betas in float64 and answers, for integer or fractional timesteps in
model units ([0, T)), alpha_bar, SNR, the forward process q(x_t | x_0) and the posterior
q(x_{t-1} | x_t, x_0). Fractional timesteps interpolate log(alpha) linearly, as the DPM-Solver
paper's wrapper for discrete-time models does (``NoiseScheduleVP('discrete')``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

NUM_TIMESTEPS = 1000
SCHEDULES = ("scaled_linear", "linear")


def make_betas(name: str, num_timesteps: int = NUM_TIMESTEPS) -> np.ndarray:
    """Betas (float64) of a named schedule.

    - ``scaled_linear``: Stable Diffusion's (sqrt(beta) linear from sqrt(0.00085) to sqrt(0.012)),
      used by DiM and U-ViT on latents.
    - ``linear``: DDPM / DiT (1e-4 to 0.02 for 1000 steps, rescaled for other step counts).
    """
    if name == "scaled_linear":
        return np.linspace(0.00085**0.5, 0.012**0.5, num_timesteps, dtype=np.float64) ** 2
    if name == "linear":
        scale = 1000 / num_timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    raise ValueError(f"unknown noise schedule {name!r}; valid: {', '.join(SCHEDULES)}")


def _gather(arr: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """arr[t] as float32 on t's device, shaped (B, 1, 1, ...) to broadcast against x."""
    out = arr.to(t.device)[t.long()].float()
    return out.reshape(-1, *([1] * (ndim - 1)))


class NoiseSchedule:
    """A discrete variance-preserving schedule: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""

    def __init__(self, name: str = "scaled_linear", num_timesteps: int = NUM_TIMESTEPS):
        self.name = name
        self.num_timesteps = num_timesteps
        self._set_betas(make_betas(name, num_timesteps))

    @classmethod
    def from_betas(cls, betas: np.ndarray, name: str = "custom") -> NoiseSchedule:
        sched = cls.__new__(cls)
        sched.name = name
        sched.num_timesteps = len(betas)
        sched._set_betas(np.asarray(betas, dtype=np.float64))
        return sched

    def _set_betas(self, betas: np.ndarray) -> None:
        alphas_cumprod = np.cumprod(1.0 - betas)
        prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_var = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
        t64 = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        self.betas = t64(betas)
        self.alphas_cumprod = t64(alphas_cumprod)
        self.alphas_cumprod_prev = t64(prev)
        self.posterior_variance = t64(posterior_var)
        # log of the posterior variance, with the t=0 entry (which is 0) replaced by t=1's
        self.posterior_log_variance_clipped = t64(
            np.log(np.append(posterior_var[1], posterior_var[1:]))
        )
        self.posterior_mean_coef1 = t64(betas * np.sqrt(prev) / (1.0 - alphas_cumprod))
        self.posterior_mean_coef2 = t64(
            (1.0 - prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod)
        )
        # half log(alpha_bar) at each timestep: what fractional timesteps interpolate
        self.log_alpha = 0.5 * torch.log(self.alphas_cumprod)

    def __repr__(self) -> str:
        return f"NoiseSchedule({self.name!r}, num_timesteps={self.num_timesteps})"

    # ---- forward process ------------------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0) with the given noise; t is (B,) integer timesteps."""
        abar = _gather(self.alphas_cumprod, t, x0.ndim)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        abar = _gather(self.alphas_cumprod, t, x_t.ndim)
        return (x_t - (1.0 - abar).sqrt() * eps) / abar.sqrt()

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = (
            _gather(self.posterior_mean_coef1, t, x_t.ndim) * x0
            + _gather(self.posterior_mean_coef2, t, x_t.ndim) * x_t
        )
        return mean, _gather(self.posterior_log_variance_clipped, t, x_t.ndim)

    def learned_log_variance(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """IDDPM's learned range: v in [-1, 1] interpolates log(beta_t) and the posterior's."""
        min_log = _gather(self.posterior_log_variance_clipped, t, v.ndim)
        max_log = _gather(torch.log(self.betas), t, v.ndim)
        frac = (v + 1.0) / 2.0
        return frac * max_log + (1.0 - frac) * min_log

    # ---- continuous time (fractional timesteps) ---------------------------------------------

    def marginal_log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """log(sqrt(abar)) at timesteps t in [0, T-1], linear in t between integer steps."""
        t = t.double().clamp(0, self.num_timesteps - 1)
        lo = t.floor().long().clamp(max=self.num_timesteps - 2)
        w = t - lo
        la = self.log_alpha.to(t.device)
        return la[lo] * (1.0 - w) + la[lo + 1] * w

    def alpha_bar(self, t: torch.Tensor | float) -> torch.Tensor:
        """abar at integer or fractional timesteps (float64)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.exp(2.0 * self.marginal_log_alpha(t))

    def snr(self, t: torch.Tensor | float) -> torch.Tensor:
        """Signal-to-noise ratio abar / (1 - abar)."""
        abar = self.alpha_bar(t)
        return abar / (1.0 - abar)

    def log_snr(self, t: torch.Tensor | float) -> torch.Tensor:
        abar = self.alpha_bar(t)
        return torch.log(abar) - torch.log1p(-abar)

    def timestep_for_snr(self, snr: torch.Tensor | float) -> torch.Tensor:
        """The integer timestep whose SNR is closest to ``snr`` (compared on a log scale)."""
        target = torch.log(torch.as_tensor(snr, dtype=torch.float64))
        table = self.log_snr(torch.arange(self.num_timesteps, dtype=torch.float64))
        dist = (table.to(target.device) - target.unsqueeze(-1)).abs()
        return dist.argmin(dim=-1)

    def lambda_(self, t: torch.Tensor) -> torch.Tensor:
        """Half log-SNR (DPM-Solver's lambda) at fractional timesteps."""
        la = self.marginal_log_alpha(t)
        log_sigma = 0.5 * torch.log(-torch.expm1(2.0 * la))
        return la - log_sigma


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch."""
    return x.mean(dim=tuple(range(1, x.ndim)))


LOG2 = math.log(2.0)
