"""Noise schedules of the forward process and the training step of DDPM.

Owns: beta schedules (linear, scaled-linear, cosine), the zero-terminal-SNR
rescale, `NoiseSchedule` (betas, alphas, alpha_bar in float64), the forward
process q(x_t | x_0), the three training targets (epsilon, v, x0) with their
conversions in one place, and `training_loss` (the lecture's training step).
Does not own: reverse-process steps (`schedulers.py`), sampling loops
(`sampling.py`), denoisers.

Shape notation: B batch; `...` any further dims (C, F, H, W). Timesteps `t`
are int64 indices into the schedule, 0 <= t < num_train_timesteps; index
t = 0 is the paper's t = 1 (the least noisy step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, get_args

import torch

from duogen.errors import ConfigError

BetaKind = Literal["linear", "scaled_linear", "cosine"]
PredictionType = Literal["epsilon", "v", "x0"]
PREDICTION_TYPES: tuple[str, ...] = get_args(PredictionType)
BETA_KINDS: tuple[str, ...] = get_args(BetaKind)


def make_betas(
    kind: str,
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    max_beta: float = 0.999,
) -> torch.Tensor:
    """Betas (float64, (N,)): linear (Ho et al. 2020), scaled-linear (LDM), cosine (Nichol & Dhariwal 2021, Eq. 17)."""
    n = num_train_timesteps
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    if kind == "cosine":
        # alpha_bar(t) = f(t)/f(0), f(t) = cos^2(((t/N + s)/(1 + s)) * pi/2), s = 0.008;
        # beta_t = 1 - alpha_bar(t+1)/alpha_bar(t), clipped at max_beta (Improved DDPM, Eq. 17).
        def f(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1.0 - f((i + 1) / n) / f(i / n), max_beta) for i in range(n)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ConfigError(f"unknown beta schedule {kind!r}; choose one of {', '.join(BETA_KINDS)}")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale betas so that alpha_bar_T = 0 (Lin et al. 2023, Algorithm 1)."""
    alpha_bar_sqrt = torch.cumprod(1.0 - betas.double(), dim=0).sqrt()
    first, last = alpha_bar_sqrt[0].clone(), alpha_bar_sqrt[-1].clone()
    # shift so the last is 0, scale so the first is unchanged
    alpha_bar_sqrt = (alpha_bar_sqrt - last) * first / (first - last)
    alpha_bar = alpha_bar_sqrt**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1.0 - alphas


@dataclass
class ScheduleConfig:
    """The forward process; stored in a diffusion model's config so sampling uses the training schedule."""

    kind: BetaKind = "linear"
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4  # linear / scaled_linear only (SD uses scaled_linear 0.00085 -> 0.012)
    beta_end: float = 0.02
    zero_terminal_snr: bool = False  # Lin et al. 2023; pair with v or x0 prediction

    def check(self) -> None:
        if self.kind not in BETA_KINDS:
            raise ConfigError(f"schedule.kind must be one of {', '.join(BETA_KINDS)}, got {self.kind!r}")
        if self.num_train_timesteps < 2:
            raise ConfigError(f"schedule.num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ConfigError(
                f"need 0 < beta_start < beta_end < 1, got beta_start={self.beta_start}, beta_end={self.beta_end}"
            )


def check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(
            f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}"
        )


# --- conversions between what a denoiser predicts and (x0, eps) -----------------------------------
# x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps;  v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0
# (Salimans & Ho 2022, Sec. 4). `alpha_bar` is a float or a tensor broadcastable against x_t.


def pred_to_x0(pred: torch.Tensor, x_t: torch.Tensor, alpha_bar: Any, prediction_type: str) -> torch.Tensor:
    """x0_hat from a denoiser output at noise level alpha_bar."""
    a, b = _sqrt_pair(alpha_bar)
    if prediction_type == "epsilon":
        return (x_t - b * pred) / a
    if prediction_type == "v":
        return a * x_t - b * pred
    if prediction_type == "x0":
        return pred
    check_prediction_type(prediction_type)
    raise AssertionError


def pred_to_eps(pred: torch.Tensor, x_t: torch.Tensor, alpha_bar: Any, prediction_type: str) -> torch.Tensor:
    """eps_hat from a denoiser output at noise level alpha_bar."""
    a, b = _sqrt_pair(alpha_bar)
    if prediction_type == "epsilon":
        return pred
    if prediction_type == "v":
        return a * pred + b * x_t
    if prediction_type == "x0":
        return (x_t - a * pred) / b
    check_prediction_type(prediction_type)
    raise AssertionError


def _sqrt_pair(alpha_bar: Any) -> tuple[Any, Any]:
    if isinstance(alpha_bar, torch.Tensor):
        return alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()
    return math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)


class NoiseSchedule:
    """betas, alphas = 1 - betas, alpha_bar = cumprod(alphas): float64 inside, caller's dtype outside."""

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 2 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ConfigError("betas must be a 1-D sequence of at least 2 values in (0, 1]")
        self.betas = betas  # (N,)
        self.alphas = 1.0 - betas  # (N,)
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)  # (N,)
        self.num_train_timesteps = betas.numel()

    @classmethod
    def from_config(cls, cfg: ScheduleConfig) -> "NoiseSchedule":
        cfg.check()
        betas = make_betas(cfg.kind, cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end)
        if cfg.zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        return cls(betas)

    @classmethod
    def make(cls, kind: str = "linear", **kwargs: Any) -> "NoiseSchedule":
        """Shortcut: `NoiseSchedule.make("cosine", num_train_timesteps=1000)`."""
        return cls.from_config(ScheduleConfig(kind=kind, **kwargs))

    @property
    def zero_terminal_snr(self) -> bool:
        return float(self.alpha_bar[-1]) == 0.0

    def alpha_bar_at(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar_t as a (B, 1, ...) tensor (or a 0-d one for a scalar t) in `like`'s dtype and device."""
        t = torch.as_tensor(t, device=self.alpha_bar.device).long()
        self._check_t(t)
        ab = self.alpha_bar[t].to(device=like.device, dtype=like.dtype)
        return ab.reshape(ab.shape + (1,) * (like.dim() - ab.dim())) if ab.dim() else ab

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps: q(x_t | x_0) (Ho et al. 2020, Eq. 4)."""
        a, b = self._coefs(t, x0)
        return a * x0 + b * eps

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int, prediction_type: str) -> torch.Tensor:
        """The regression target for `prediction_type`: eps, v = sqrt(ab) eps - sqrt(1-ab) x0, or x0."""
        if prediction_type == "epsilon":
            return eps
        if prediction_type == "x0":
            return x0
        if prediction_type == "v":
            a, b = self._coefs(t, x0)
            return a * eps - b * x0
        check_prediction_type(prediction_type)
        raise AssertionError

    def to_x0(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int, prediction_type: str) -> torch.Tensor:
        return pred_to_x0(pred, x_t, self.alpha_bar_at(t, x_t), prediction_type)

    def to_eps(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int, prediction_type: str) -> torch.Tensor:
        return pred_to_eps(pred, x_t, self.alpha_bar_at(t, x_t), prediction_type)

    def snr(self, t: torch.Tensor | int) -> torch.Tensor:
        """SNR(t) = alpha_bar_t / (1 - alpha_bar_t), float64."""
        ab = self.alpha_bar[torch.as_tensor(t).long()]
        return ab / (1.0 - ab)

    def sample_timesteps(self, batch: int, device: Any = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """t ~ Uniform{0, ..., N-1}, shape (B,), int64."""
        gen_device = generator.device if generator is not None else device
        t = torch.randint(0, self.num_train_timesteps, (batch,), generator=generator, device=gen_device)
        return t.to(device)

    def _coefs(self, t: torch.Tensor | int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # sqrt in float64, then cast: sqrt(alpha_bar) and sqrt(1 - alpha_bar) at t
        t = torch.as_tensor(t, device=self.alpha_bar.device).long()
        self._check_t(t)
        ab = self.alpha_bar[t]
        shape = ab.shape + (1,) * (like.dim() - ab.dim()) if ab.dim() else ab.shape
        a = ab.sqrt().reshape(shape).to(device=like.device, dtype=like.dtype)
        b = (1.0 - ab).sqrt().reshape(shape).to(device=like.device, dtype=like.dtype)
        return a, b

    def _check_t(self, t: torch.Tensor) -> None:
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps):
            raise ConfigError(
                f"timesteps must lie in [0, {self.num_train_timesteps - 1}], got min {int(t.min())}, max {int(t.max())}"
            )


def training_loss(
    denoiser: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
    x0: torch.Tensor,
    cond: Any,
    schedule: NoiseSchedule,
    prediction_type: str = "epsilon",
    generator: torch.Generator | None = None,
    snr_gamma: float = 0.0,
) -> torch.Tensor:
    """One DDPM training step's loss (Ho et al. 2020, Algorithm 1), for any of the three targets.

    Samples t ~ U{0..N-1} and eps ~ N(0, I) (in that order, from `generator` or torch's global RNG) and
    returns the batch mean of `denoising_loss` at them. x0: (B, ...).
    """
    t = schedule.sample_timesteps(x0.shape[0], device=x0.device, generator=generator)  # (B,)
    eps = randn_like(x0, generator)
    return denoising_loss(denoiser, x0, cond, schedule, prediction_type, t, eps, snr_gamma).mean()


def denoising_loss(
    denoiser: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
    x0: torch.Tensor,
    cond: Any,
    schedule: NoiseSchedule,
    prediction_type: str,
    t: torch.Tensor,
    eps: torch.Tensor,
    snr_gamma: float = 0.0,
) -> torch.Tensor:
    """Each example's denoising loss at given timesteps and noise (the inner term of Algorithm 1): (B,) float32.

    Forms x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps and returns the mean squared error between
    `denoiser(x_t, t, cond)` and the target over each example; with `snr_gamma` > 0, weighted by
    `min_snr_weight` (Min-SNR-gamma). x0, eps: (B, ...); t: (B,) int64.
    """
    check_prediction_type(prediction_type)
    x_t = schedule.add_noise(x0, eps, t)
    pred = denoiser(x_t, t, cond)
    target = schedule.target(x0, eps, t, prediction_type)
    per_sample = (pred.float() - target.float()).square().flatten(1).mean(1)  # (B,)
    if snr_gamma <= 0:
        return per_sample
    return per_sample * min_snr_weight(schedule.snr(t.cpu()), snr_gamma, prediction_type).to(per_sample)


def min_snr_weight(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), for a loss on the given target. snr (B,) -> (B,).

    The x0 loss is weighted by min(SNR, gamma), so that the many low-noise steps, whose x0 error is
    easy and whose gradients conflict with the rest, stop dominating. The epsilon and v losses are
    the x0 loss times SNR and SNR + 1 (x0 - x0_hat = sqrt(1 - alpha_bar) (v_hat - v)), so their weights
    are min(SNR, gamma) / SNR = min(1, gamma / SNR) and min(SNR, gamma) / (SNR + 1).
    """
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return (gamma / snr).clamp(max=1.0)  # SNR = 0 gives 1, not 0/0
    capped = snr.clamp(max=gamma)
    return capped / (snr + 1.0) if prediction_type == "v" else capped


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """N(0, I) noise shaped like x, drawn on the generator's device (so CPU seeds reproduce on any device)."""
    if generator is None:
        return torch.randn(x.shape, device=x.device, dtype=x.dtype)
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return noise.to(x.device)
