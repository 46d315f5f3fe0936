"""Training-free upsampling: sample at m x the training resolution (m = 2 or 3).

Direct extrapolation is just running the model on an m-times larger x_T (the models resize
their position embedding and rebuild pads/scans for the new grid). Upsample guidance
(Hwang et al., arXiv 2404.01709, as DiM uses it) adds one term built from the model at its
training resolution:

    eps_hat = eps(x_t, t) + w_t * NNup_m[ eps(avgpool_m(x_t) / sqrt(P_t), tau) / m
                                          - avgpool_m(eps(x_t, t)) ]
    P_t = abar_t + (1 - abar_t) / m^2,  tau = timestep whose SNR is closest to m^2 * SNR(t),
    w_t = 1 for t >= 0.7 T, else 0.

Average-pooling x_t by m keeps the signal and divides the noise variance by m^2; dividing by
sqrt(P_t) makes it a unit-variance noisy sample at SNR m^2 * SNR(t), which the low-resolution
model denoises at tau; its epsilon, divided by m, is the pooled noise of the high-res sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dimbench.diffusion.guidance import ModelFn
from dimbench.diffusion.schedule import NoiseSchedule

UPSAMPLE_FACTORS = (2, 3)


class UpsampleGuidance:
    """Wrap a model function run at m x its training resolution with upsample guidance.

    ``t_on`` is the fraction of T above which w_t = ``scale`` (REFERENCE: 0.7, w = 1);
    ``enabled=False`` gives plain direct extrapolation.
    """

    def __init__(
        self,
        model_fn: ModelFn,
        schedule: NoiseSchedule,
        factor: int,
        channels: int,
        t_on: float = 0.7,
        scale: float = 1.0,
        enabled: bool = True,
    ):
        if factor < 2:
            raise ValueError(f"upsampling factor must be >= 2, got {factor}")
        self.model_fn = model_fn
        self.schedule = schedule
        self.m = int(factor)
        self.c = int(channels)
        self.t_on = t_on * schedule.num_timesteps
        self.scale = scale
        self.enabled = enabled

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """w_t per sample: ``scale`` where t >= t_on (the first 30% of the reverse process)."""
        on = (t >= self.t_on) if self.enabled else torch.zeros_like(t, dtype=torch.bool)
        return on.to(torch.float32) * self.scale

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.model_fn(x, t)
        w = self.weight(t)
        on = w != 0
        if not bool(on.any()):
            return out
        m, c = self.m, self.c
        eps = out[:, :c]
        # the samplers give every sample the same t; the low-res branch runs on the whole batch
        # (the model function's labels are per batch) and rows with w_t = 0 are left untouched
        snr = self.schedule.snr(t.double())
        abar = snr / (1.0 + snr)
        p = abar + (1.0 - abar) / m**2
        tau = self.schedule.timestep_for_snr(m**2 * snr).to(device=t.device, dtype=t.dtype)
        x_low = F.avg_pool2d(x, m) / p.sqrt().to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
        eps_low = self.model_fn(x_low, tau)[:, :c]
        delta = F.interpolate(eps_low / m - F.avg_pool2d(eps, m), scale_factor=m, mode="nearest")
        w4 = w.to(device=eps.device, dtype=eps.dtype).view(-1, 1, 1, 1)
        eps_hat = torch.where(on.view(-1, 1, 1, 1).to(eps.device), eps + w4 * delta, eps)
        return torch.cat([eps_hat, out[:, c:]], dim=1)
