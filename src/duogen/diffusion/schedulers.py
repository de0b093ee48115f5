"""Reverse-process schedulers: DDPM, DDIM (with its inverse step) and DPM-Solver++(2M).

Owns: timestep spacing, one reverse step x_t -> x_{t_prev} per call, and the
DDIM inverse step. The contract follows diffusers' (`set_timesteps`,
`add_noise`, `step`, `inverse_step`) without its mixins: each `step` returns a
`StepOutput(prev_sample, pred_x0)`. Does not own: the sampling loop
(`sampling.py`), guidance (`guidance.py`), the forward process and the
training targets (`schedules.py`).

Symbols follow the papers: x_t the current sample, eps the noise, alpha_bar
the cumulative product of (1 - beta), sigma_t the standard deviation of the
noise a step adds. Timesteps are int64 indices into the training schedule,
sampled in descending order; a step from the last timestep lands on the clean
sample (alpha_bar = 1).

Shape notation: x_t, model_output, eps: (B, ...) with any trailing dims.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple, get_args

import numpy as np
import torch

from duogen.diffusion.schedules import NoiseSchedule, check_prediction_type, pred_to_eps, pred_to_x0, randn_like
from duogen.errors import ConfigError

Spacing = Literal["leading", "trailing", "linspace"]
SPACINGS: tuple[str, ...] = get_args(Spacing)
SAMPLERS = ("ddpm", "ddim", "dpm_solver")


class StepOutput(NamedTuple):
    prev_sample: torch.Tensor  # the sample after the step: x_{t_prev} for `step`, x_t for `inverse_step`
    pred_x0: torch.Tensor  # the denoiser's estimate of the clean sample at this step


def make_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "trailing") -> torch.Tensor:
    """Descending int64 timesteps for `num_steps` sampling steps (spacings of Lin et al. 2023, Table 2)."""
    N, n = num_train_timesteps, num_steps
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= N:
        raise ConfigError(f"number of sampling steps must be an integer in [1, {N}], got {n!r}")
    if spacing == "linspace":  # include both ends: N-1 ... 0
        ts = np.linspace(0, N - 1, n).round()[::-1]
    elif spacing == "leading":  # (n-1)*k ... 0 with k = N // n: never reaches t = N-1
        ts = (np.arange(n) * (N // n))[::-1]
    elif spacing == "trailing":  # N-1 ... N/n - 1: starts at the noisiest step
        ts = np.round(np.arange(N, 0, -N / n)) - 1
    else:
        raise ConfigError(f"timestep spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    return torch.from_numpy(np.ascontiguousarray(ts).astype(np.int64))


class _Scheduler:
    """The shared part: the schedule, the timestep list and the step -> previous-step lookup."""

    def __init__(self, schedule: NoiseSchedule, prediction_type: str = "epsilon"):
        check_prediction_type(prediction_type)
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.timesteps: torch.Tensor | None = None  # (num_steps,) int64, descending
        self._index: dict[int, int] = {}

    @property
    def num_train_timesteps(self) -> int:
        return self.schedule.num_train_timesteps

    @property
    def num_steps(self) -> int:
        return 0 if self.timesteps is None else len(self.timesteps)

    def set_timesteps(self, num_steps: int, spacing: str = "trailing") -> torch.Tensor:
        """Choose the sampling timesteps; returns them (descending)."""
        self.timesteps = make_timesteps(self.num_train_timesteps, num_steps, spacing)
        self._index = {int(t): i for i, t in enumerate(self.timesteps)}
        return self.timesteps

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (Ho et al. 2020, Eq. 4)."""
        return self.schedule.add_noise(x0, eps, t)

    def _step_index(self, t: Any) -> int:
        if self.timesteps is None:
            raise ConfigError(f"{type(self).__name__}: call set_timesteps(num_steps) before step()")
        i = self._index.get(int(t))
        if i is None:
            raise ConfigError(f"timestep {int(t)} is not one of the {self.num_steps} set by set_timesteps()")
        return i

    def _prev_timestep(self, i: int) -> int:
        """The timestep after step i, or -1 when step i lands on the clean sample."""
        return int(self.timesteps[i + 1]) if i + 1 < self.num_steps else -1

    def _alpha_bar(self, t: int) -> float:
        """alpha_bar_t as a float64 Python float; alpha_bar_{-1} = 1 (the clean sample)."""
        return 1.0 if t < 0 else float(self.schedule.alpha_bar[t])

    def _check_snr(self) -> None:
        if self.schedule.zero_terminal_snr and self.prediction_type == "epsilon":
            raise ConfigError(
                "a zero-terminal-SNR schedule cannot be sampled from an epsilon-prediction model (x0 is undefined "
                "at alpha_bar_T = 0); use prediction_type='v' or 'x0' (Lin et al. 2023, Sec. 3.2)"
            )


class DDPMScheduler(_Scheduler):
    """Ancestral sampling of Ho et al. 2020 (Algorithm 2), with sigma_t^2 = beta_t or beta_tilde_t (Sec. 3.2)."""

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction_type: str = "epsilon",
        variance: Literal["beta", "beta_tilde"] = "beta_tilde",
        clip_x0: float | None = None,
    ):
        super().__init__(schedule, prediction_type)
        if variance not in ("beta", "beta_tilde"):
            raise ConfigError(f"DDPM variance must be 'beta' or 'beta_tilde', got {variance!r}")
        self.variance = variance
        self.clip_x0 = clip_x0
        self._check_snr()
        self.set_timesteps(self.num_train_timesteps)

    def step(
        self,
        model_output: torch.Tensor,
        t: Any,
        x_t: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        """x_{t-1} = mu_tilde(x_t, x0_hat) + sigma_t z (Algorithm 2 with the posterior mean of Eq. 7).

        With strided timesteps, alpha_t and beta_t are those of the jump: alpha_t = alpha_bar_t / alpha_bar_prev.
        No noise on the step that lands on the clean sample (Algorithm 2: z = 0 if t = 1).
        """
        i = self._step_index(t)
        t_prev = self._prev_timestep(i)
        alpha_bar_t, alpha_bar_prev = self._alpha_bar(int(t)), self._alpha_bar(t_prev)
        alpha_t = alpha_bar_t / alpha_bar_prev
        beta_t = 1.0 - alpha_t

        x0 = pred_to_x0(model_output, x_t, alpha_bar_t, self.prediction_type)
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        # Eq. 7: mu_tilde = sqrt(alpha_bar_prev) beta_t / (1 - alpha_bar_t) x0 + sqrt(alpha_t) (1 - alpha_bar_prev) / (1 - alpha_bar_t) x_t
        mean = (math.sqrt(alpha_bar_prev) * beta_t / (1.0 - alpha_bar_t)) * x0 + (
            math.sqrt(alpha_t) * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t)
        ) * x_t
        if t_prev < 0:
            return StepOutput(mean, x0)
        if self.variance == "beta":
            sigma_t = math.sqrt(beta_t)
        else:  # beta_tilde_t = (1 - alpha_bar_prev) / (1 - alpha_bar_t) beta_t
            sigma_t = math.sqrt(max((1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t) * beta_t, 1e-20))
        z = randn_like(x_t, generator) if noise is None else noise
        return StepOutput(mean + sigma_t * z, x0)


class DDIMScheduler(_Scheduler):
    """DDIM (Song et al. 2021, Eq. 12) with sigma_t = eta * sqrt(beta_tilde) (Eq. 16); eta = 0 is deterministic."""

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction_type: str = "epsilon",
        eta: float = 0.0,
        clip_x0: float | None = None,
    ):
        super().__init__(schedule, prediction_type)
        if not (isinstance(eta, (int, float)) and 0.0 <= eta <= 1.0):
            raise ConfigError(f"DDIM eta must be in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like), got {eta!r}")
        self.eta = float(eta)
        self.clip_x0 = clip_x0
        self._check_snr()

    def step(
        self,
        model_output: torch.Tensor,
        t: Any,
        x_t: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        """x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma_t^2) eps_hat + sigma_t z (Eq. 12)."""
        i = self._step_index(t)
        alpha_bar_t, alpha_bar_prev = self._alpha_bar(int(t)), self._alpha_bar(self._prev_timestep(i))
        x0 = pred_to_x0(model_output, x_t, alpha_bar_t, self.prediction_type)
        eps = pred_to_eps(model_output, x_t, alpha_bar_t, self.prediction_type)
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        # Eq. 16: sigma_t = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev)
        sigma_t = self.eta * math.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t) * (1.0 - alpha_bar_t / alpha_bar_prev))
        x_prev = math.sqrt(alpha_bar_prev) * x0 + math.sqrt(max(1.0 - alpha_bar_prev - sigma_t**2, 0.0)) * eps
        if self.eta > 0:
            x_prev = x_prev + sigma_t * (randn_like(x_t, generator) if noise is None else noise)
        return StepOutput(x_prev, x0)

    def inverse_step(
        self, model_output: torch.Tensor, t: Any, x_prev: torch.Tensor, x_model: torch.Tensor | None = None
    ) -> StepOutput:
        """DDIM inversion (Song et al. 2021, Sec. 4.3; Mokady et al. 2023, Eq. 4): x_prev -> x_t, the exact inverse of
        `step` at eta = 0 when `model_output` is the denoiser's output at (x_t, t).

        The inverting loop does not know x_t yet, so it usually evaluates the denoiser at (x_prev, t) and passes
        `x_model=None`; pass `x_model` = the input the denoiser saw when iterating towards the exact x_t.
        """
        if self.eta != 0.0:
            raise ConfigError("DDIM inversion needs the deterministic sampler: build DDIMScheduler with eta=0")
        i = self._step_index(t)
        alpha_bar_t, alpha_bar_prev = self._alpha_bar(int(t)), self._alpha_bar(self._prev_timestep(i))
        x_in = x_prev if x_model is None else x_model
        # eps_hat is what the denoiser asserts about its input at level t; x0_hat then follows from x_prev
        eps = pred_to_eps(model_output, x_in, alpha_bar_t, self.prediction_type)
        x0 = (x_prev - math.sqrt(1.0 - alpha_bar_prev) * eps) / math.sqrt(alpha_bar_prev)
        x_t = math.sqrt(alpha_bar_t) * x0 + math.sqrt(1.0 - alpha_bar_t) * eps
        return StepOutput(x_t, x0)


class DPMSolverMultistepScheduler(_Scheduler):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a second-order multistep solver of the diffusion ODE in
    lambda = log(alpha_t / sigma_t) on data (x0) predictions; first order on the first and the final step."""

    # a zero-terminal-SNR schedule has lambda_T = -inf; clamp alpha_bar there as diffusers does
    MIN_ALPHA_BAR = 2.0**-24

    def __init__(self, schedule: NoiseSchedule, prediction_type: str = "epsilon"):
        super().__init__(schedule, prediction_type)
        self._last: tuple[int, float, torch.Tensor] | None = None  # (step index, lambda, x0_hat) of the last step

    def set_timesteps(self, num_steps: int, spacing: str = "trailing") -> torch.Tensor:
        self._last = None
        return super().set_timesteps(num_steps, spacing)

    def _alpha_sigma_lambda(self, t: int) -> tuple[float, float, float]:
        alpha_bar = max(self._alpha_bar(t), self.MIN_ALPHA_BAR)
        alpha_t, sigma_t = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
        return alpha_t, sigma_t, math.log(alpha_t) - math.log(sigma_t)

    def step(
        self,
        model_output: torch.Tensor,
        t: Any,
        x_t: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """x_prev = (sigma_prev / sigma_t) x_t - alpha_prev (e^{-h} - 1) D, D = (1 + 1/2r) x0_i - (1/2r) x0_{i-1}."""
        i = self._step_index(t)
        t_prev = self._prev_timestep(i)
        alpha_s, sigma_s, lambda_s = self._alpha_sigma_lambda(int(t))
        x0 = pred_to_x0(model_output, x_t, alpha_s**2, self.prediction_type)
        last, self._last = self._last, (i, lambda_s, x0)
        if t_prev < 0:  # first-order step to sigma = 0 lands exactly on x0_hat
            return StepOutput(x0, x0)
        alpha_n, sigma_n, lambda_n = self._alpha_sigma_lambda(t_prev)
        h = lambda_n - lambda_s
        if last is not None and last[0] == i - 1:  # 2M: r = h_{i-1} / h_i
            r = (lambda_s - last[1]) / h
            D = (1.0 + 0.5 / r) * x0 - (0.5 / r) * last[2]
        else:  # first step: DPM-Solver++(1) = DDIM
            D = x0
        x_prev = (sigma_n / sigma_s) * x_t - (alpha_n * math.expm1(-h)) * D
        return StepOutput(x_prev, x0)


def make_scheduler(name: str, schedule: NoiseSchedule, prediction_type: str = "epsilon", **kwargs: Any) -> _Scheduler:
    """A scheduler by name: 'ddpm', 'ddim' or 'dpm_solver' (DPM-Solver++(2M)); kwargs go to its constructor."""
    if name == "ddpm":
        return DDPMScheduler(schedule, prediction_type, **kwargs)
    if name == "ddim":
        return DDIMScheduler(schedule, prediction_type, **kwargs)
    if name == "dpm_solver":
        return DPMSolverMultistepScheduler(schedule, prediction_type, **kwargs)
    raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
