"""Schedules and schedulers: cross-checks against diffusers (test-only reference) and closed forms.

Tolerance for every diffusers cross-check: |ours - diffusers| <= 1e-5 (absolute), float32 tensors.
The step cross-checks hand diffusers our float64 alpha_bar (its own is a float32 cumprod, whose
1 - alpha_bar_0 loses ~1e-3 relative precision); the schedules themselves are compared separately.
"""

import math

import diffusers
import pytest
import torch

from duogen.diffusion.schedulers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    make_scheduler,
    make_timesteps,
)
from duogen.diffusion.schedules import NoiseSchedule, ScheduleConfig, min_snr_weight, training_loss
from duogen.errors import ConfigError

TOL = 1e-5
KINDS = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
PRED = {"epsilon": "epsilon", "v": "v_prediction", "x0": "sample"}
SD = dict(beta_start=0.00085, beta_end=0.012)  # Stable Diffusion's scaled-linear range


def _max_err(a, b):
    return (a - b).abs().max().item()


def _imperfect_output(schedule, x0, x_t, t, pred, gen, min_alpha_bar=0.0):
    """A denoiser output that is self-consistent with x_t but whose x0 estimate is off by 0.05 rms."""
    ab = max(float(schedule.alpha_bar[int(t)]), min_alpha_bar)
    a, b = math.sqrt(ab), math.sqrt(1 - ab)
    x0_hat = x0 + 0.05 * torch.randn(x0.shape, generator=gen)
    eps_hat = (x_t - a * x0_hat) / b
    return {"epsilon": eps_hat, "v": a * eps_hat - b * x0_hat, "x0": x0_hat}[pred]


# --- schedules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("zero_snr", [False, True])
def test_betas_match_diffusers(kind, zero_snr):
    kw = SD if kind == "scaled_linear" else {}
    ours = NoiseSchedule.make(kind, zero_terminal_snr=zero_snr, **kw)
    ref = diffusers.DDPMScheduler(beta_schedule=KINDS[kind], rescale_betas_zero_snr=zero_snr, **kw)
    # diffusers builds betas in float32: the zero-SNR rescale of scaled_linear differs by up to 7.1e-6
    assert _max_err(ours.betas.float(), ref.betas) <= TOL
    assert _max_err(ours.alpha_bar.float(), ref.alphas_cumprod) <= 1e-6
    assert ours.betas.dtype == torch.float64
    assert ours.zero_terminal_snr == zero_snr
    if zero_snr:
        assert float(ours.alpha_bar[-1]) == 0.0  # Lin et al. 2023: SNR(T) = 0 exactly
        assert math.isclose(float(ours.alpha_bar[0]), float(NoiseSchedule.make(kind, **kw).alpha_bar[0]))


def test_cosine_schedule_closed_form():
    # Improved DDPM Eq. 17: alpha_bar_t = f(t)/f(0) until the 0.999 beta clip kicks in at the very end
    s = NoiseSchedule.make("cosine")
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 500, 900):
        assert math.isclose(float(s.alpha_bar[t]), f((t + 1) / 1000) / f(0), rel_tol=1e-9)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [1, 7, 10, 50, 1000])
def test_timesteps_match_diffusers(spacing, n):
    ref = diffusers.DDIMScheduler(timestep_spacing=spacing)
    ref.set_timesteps(n)
    ours = make_timesteps(1000, n, spacing)
    assert torch.equal(ours, ref.timesteps)
    assert len(set(ours.tolist())) == n and bool((ours[:-1] > ours[1:]).all())


def test_add_noise_and_velocity_match_diffusers():
    ours = NoiseSchedule.make("scaled_linear", **SD)
    ref = diffusers.DDPMScheduler(beta_schedule="scaled_linear", **SD)  # its own float32 alpha_bar
    x0, eps = torch.randn(16, 4, 3, 8, 8), torch.randn(16, 4, 3, 8, 8)
    t = torch.linspace(0, 999, 16).long()
    x_t = ours.add_noise(x0, eps, t)
    assert x_t.dtype == torch.float32
    assert _max_err(x_t, ref.add_noise(x0, eps, t)) <= TOL  # measured 4.8e-7
    assert _max_err(ours.target(x0, eps, t, "v"), ref.get_velocity(x0, eps, t)) <= TOL


@pytest.mark.parametrize("pred", list(PRED))
def test_prediction_conversions_round_trip(pred):
    s = NoiseSchedule.make("linear")
    x0, eps = torch.randn(8, 2, 5, dtype=torch.float64), torch.randn(8, 2, 5, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 100, 400, 700, 998, 999])
    x_t = s.add_noise(x0, eps, t)
    target = s.target(x0, eps, t, pred)
    torch.testing.assert_close(s.to_x0(target, x_t, t, pred), x0, atol=1e-9, rtol=0)
    torch.testing.assert_close(s.to_eps(target, x_t, t, pred), eps, atol=1e-9, rtol=0)
    assert s.to_x0(target.float(), x_t.float(), t, pred).dtype == torch.float32


def test_training_loss_is_the_lecture_step():
    s = NoiseSchedule.make("cosine")
    x0 = torch.randn(6, 3, 4, 4)
    seen = {}

    def denoiser(x_t, t, cond):
        seen.update(x_t=x_t, t=t, cond=cond)
        return torch.zeros_like(x_t)

    for pred in PRED:
        loss = training_loss(denoiser, x0, "c", s, pred, generator=torch.Generator().manual_seed(3))
        t = seen["t"]
        assert t.shape == (6,) and t.dtype == torch.long and seen["cond"] == "c"
        ab = s.alpha_bar[t].float().view(6, 1, 1, 1)
        eps = (seen["x_t"] - ab.sqrt() * x0) / (1 - ab).sqrt()  # recover the noise that was drawn
        assert eps.std().item() == pytest.approx(1.0, abs=0.15)
        target = {"epsilon": eps, "x0": x0, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[pred]
        assert loss.item() == pytest.approx((target**2).mean().item(), rel=1e-4)
    # the same generator gives the same draw
    a = training_loss(denoiser, x0, None, s, "v", generator=torch.Generator().manual_seed(1))
    b = training_loss(denoiser, x0, None, s, "v", generator=torch.Generator().manual_seed(1))
    assert a.item() == b.item()


def test_min_snr_weighting_is_one_loss_for_every_target():
    """Min-SNR-gamma: whichever target the denoiser predicts, the weighted loss is min(SNR, gamma) times the
    x0 error of the same prediction (so the three weightings agree), and with no cap the epsilon loss is the plain MSE."""
    s = NoiseSchedule.make("cosine")
    x0 = torch.randn(64, 3, 4, 4, dtype=torch.float64)
    x0_hat = torch.randn(64, 3, 4, 4, dtype=torch.float64)  # one fixed guess, expressed as each target
    seen = {}

    def denoiser_for(pred):
        def denoiser(x_t, t, cond):
            ab = s.alpha_bar[t].view(-1, 1, 1, 1)
            eps_hat = (x_t - ab.sqrt() * x0_hat) / (1 - ab).sqrt()
            seen["t"] = t
            return {"epsilon": eps_hat, "x0": x0_hat, "v": ab.sqrt() * eps_hat - (1 - ab).sqrt() * x0_hat}[pred]
        return denoiser

    losses = {}
    for pred in PRED:
        losses[pred] = training_loss(denoiser_for(pred), x0, None, s, pred, generator=torch.Generator().manual_seed(5),
                                     snr_gamma=5.0).item()
    snr = s.snr(seen["t"])
    expected = (snr.clamp(max=5.0) * (x0_hat - x0).square().flatten(1).mean(1)).mean().item()
    for pred in PRED:
        assert losses[pred] == pytest.approx(expected, rel=1e-6), (pred, losses)
    assert float(snr.min()) < 5.0 < float(snr.max())  # the cap is active in this draw
    # no cap: the epsilon weights are all 1 and the loss is the plain epsilon MSE
    plain = training_loss(denoiser_for("epsilon"), x0, None, s, "epsilon", generator=torch.Generator().manual_seed(5))
    uncapped = training_loss(denoiser_for("epsilon"), x0, None, s, "epsilon", generator=torch.Generator().manual_seed(5),
                             snr_gamma=float("inf"))
    assert min_snr_weight(snr, float("inf"), "epsilon").eq(1).all() and uncapped.item() == pytest.approx(plain.item())


# --- schedulers vs diffusers ---------------------------------------------------------------------


@pytest.mark.parametrize("pred", list(PRED))
@pytest.mark.parametrize("variance,ref_variance", [("beta", "fixed_large"), ("beta_tilde", "fixed_small")])
@pytest.mark.parametrize("n", [1000, 50])
def test_ddpm_step_matches_diffusers(pred, variance, ref_variance, n):
    s = NoiseSchedule.make("linear")
    ours = DDPMScheduler(s, pred, variance=variance)
    ref = diffusers.DDPMScheduler(prediction_type=PRED[pred], variance_type=ref_variance, clip_sample=False)
    ref.alphas_cumprod = s.alpha_bar.clone()
    ours.set_timesteps(n, "leading")
    ref.set_timesteps(n)
    assert torch.equal(ours.timesteps, ref.timesteps)
    gen = torch.Generator().manual_seed(0)
    x0 = 0.5 * torch.randn(2, 3, 4, 4, generator=gen)
    x_t = torch.randn(2, 3, 4, 4, generator=gen)
    err = 0.0
    for t in ours.timesteps:
        out = _imperfect_output(s, x0, x_t, t, pred, gen)
        a = ours.step(out, t, x_t, generator=torch.Generator().manual_seed(int(t)))
        b = ref.step(out, t, x_t, generator=torch.Generator().manual_seed(int(t)))
        err = max(err, _max_err(a.prev_sample, b.prev_sample), _max_err(a.pred_x0, b.pred_original_sample))
        x_t = b.prev_sample  # follow the reference trajectory
    assert err <= TOL  # measured 0.0


def test_ddpm_step_is_algorithm_2():
    # Ho et al. 2020, Algorithm 2: x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) + sigma_t z
    s = NoiseSchedule.make("linear")
    for variance in ("beta", "beta_tilde"):
        sch = DDPMScheduler(s, "epsilon", variance=variance)
        x_t, eps, z = (torch.randn(4, 6, dtype=torch.float64) for _ in range(3))
        for t in (999, 500, 1, 0):
            beta, alpha, ab = (float(v[t]) for v in (s.betas, s.alphas, s.alpha_bar))
            ab_prev = float(s.alpha_bar[t - 1]) if t > 0 else 1.0
            sigma2 = beta if variance == "beta" else (1 - ab_prev) / (1 - ab) * beta
            expected = (x_t - beta / math.sqrt(1 - ab) * eps) / math.sqrt(alpha) + (math.sqrt(sigma2) * z if t > 0 else 0)
            torch.testing.assert_close(sch.step(eps, t, x_t, noise=z).prev_sample, expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("pred", list(PRED))
@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_step_matches_diffusers(pred, eta, spacing):
    s = NoiseSchedule.make("scaled_linear", **SD)
    ours = DDIMScheduler(s, pred, eta=eta)
    ref = diffusers.DDIMScheduler(
        beta_schedule="scaled_linear", prediction_type=PRED[pred], clip_sample=False, timestep_spacing=spacing, **SD
    )
    ref.alphas_cumprod = s.alpha_bar.clone()
    ours.set_timesteps(50, spacing)
    ref.set_timesteps(50)
    gen = torch.Generator().manual_seed(0)
    x0 = 0.5 * torch.randn(2, 4, 8, 8, generator=gen)
    x_t = torch.randn(2, 4, 8, 8, generator=gen)
    err = 0.0
    for t in ours.timesteps:
        out = _imperfect_output(s, x0, x_t, t, pred, gen)
        a = ours.step(out, t, x_t, generator=torch.Generator().manual_seed(int(t)))
        b = ref.step(out, t, x_t, eta=eta, generator=torch.Generator().manual_seed(int(t)))
        err = max(err, _max_err(a.prev_sample, b.prev_sample), _max_err(a.pred_x0, b.pred_original_sample))
        x_t = b.prev_sample
    assert err <= TOL


def test_ddim_clip_matches_diffusers():
    s = NoiseSchedule.make("linear")
    ours = DDIMScheduler(s, "epsilon", clip_x0=1.0)
    ref = diffusers.DDIMScheduler(clip_sample=True)
    ref.alphas_cumprod = s.alpha_bar.clone()
    ours.set_timesteps(10, "leading")
    ref.set_timesteps(10)
    x_t, out = torch.randn(3, 8), 2 * torch.randn(3, 8)
    for t in ours.timesteps:
        a, b = ours.step(out, t, x_t), ref.step(out, t, x_t)
        assert _max_err(a.prev_sample, b.prev_sample) <= TOL
        assert a.pred_x0.abs().max() <= 1.0


def test_ddim_inverse_step_matches_diffusers_and_inverts_step():
    s = NoiseSchedule.make("scaled_linear", **SD)
    ours = DDIMScheduler(s, "epsilon")
    ref = diffusers.DDIMInverseScheduler(beta_schedule="scaled_linear", clip_sample=False, **SD)
    ref.alphas_cumprod = s.alpha_bar.clone()
    ours.set_timesteps(25, "leading")
    ref.set_timesteps(25)
    assert torch.equal(ours.timesteps.flip(0), ref.timesteps)
    x = torch.randn(2, 4, 8, 8)
    for t in ref.timesteps:
        eps = torch.randn_like(x)
        a, b = ours.inverse_step(eps, t, x), ref.step(eps, t, x)
        assert _max_err(a.prev_sample, b.prev_sample) <= TOL
        x = b.prev_sample
    # inverse_step(step(x_t)) = x_t exactly when the denoiser output at (x_t, t) is known: all three targets
    for pred in PRED:
        sch = DDIMScheduler(s, pred)
        sch.set_timesteps(10)
        for t in sch.timesteps:
            x_t, out = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
            x_prev = sch.step(out, t, x_t).prev_sample
            torch.testing.assert_close(sch.inverse_step(out, t, x_prev, x_model=x_t).prev_sample, x_t, atol=1e-9, rtol=0)


# eps-prediction with the linear schedule from t = 999 is left out: sqrt(alpha_bar_T) = 0.0064 there, so float32
# rounding of x_t alone moves x0_hat = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) by ~1e-5 in either
# implementation and the two trajectories drift apart by up to 3.2e-5 (v and x0 prediction: <= 1.4e-6).
# Zero-SNR with eps-prediction is ill-posed (alpha_bar_T clamped to 2^-24) and left out too.
DPM_CASES = [
    ("scaled_linear", False, "epsilon"),
    ("cosine", False, "epsilon"),
    ("scaled_linear", False, "v"),
    ("linear", False, "v"),
    ("linear", False, "x0"),
    ("cosine", False, "v"),
    ("scaled_linear", True, "v"),
    ("cosine", True, "x0"),
]


@pytest.mark.parametrize("kind,zero_snr,pred", DPM_CASES)
@pytest.mark.parametrize("n", [10, 20])
def test_dpm_solver_step_sequence_matches_diffusers(kind, zero_snr, pred, n):
    kw = SD if kind == "scaled_linear" else {}
    s = NoiseSchedule.make(kind, zero_terminal_snr=zero_snr, **kw)
    ours = DPMSolverMultistepScheduler(s, pred)
    ref = diffusers.DPMSolverMultistepScheduler(
        beta_schedule=KINDS[kind], prediction_type=PRED[pred], rescale_betas_zero_snr=zero_snr,
        timestep_spacing="trailing", **kw,
    )
    alpha_bar = s.alpha_bar.clone()
    alpha_bar[-1] = max(float(alpha_bar[-1]), ours.MIN_ALPHA_BAR)
    ref.alphas_cumprod = alpha_bar
    ours.set_timesteps(n, "trailing")
    ref.set_timesteps(n)
    assert torch.equal(ours.timesteps, ref.timesteps)
    ab_ts = alpha_bar[ref.timesteps]
    ref.sigmas = torch.cat([((1 - ab_ts) / ab_ts).sqrt(), torch.zeros(1, dtype=torch.float64)])  # float64 as ours
    gen = torch.Generator().manual_seed(0)
    x0 = 0.5 * torch.randn(2, 4, 8, 8, generator=gen)
    x_t = torch.randn(2, 4, 8, 8, generator=gen)
    y_t, err = x_t.clone(), 0.0
    for t in ours.timesteps:
        out = _imperfect_output(s, x0, x_t, t, pred, gen, min_alpha_bar=ours.MIN_ALPHA_BAR)
        x_t = ours.step(out, t, x_t).prev_sample
        y_t = ref.step(out, t, y_t).prev_sample
        err = max(err, _max_err(x_t, y_t))
    assert err <= TOL  # whole trajectories (2M multistep state included), measured <= 4.4e-6
    assert _max_err(x_t, x0) < 0.5  # and it did denoise


# --- contract and bad input ----------------------------------------------------------------------


def test_bad_configuration_is_a_config_error():
    s = NoiseSchedule.make("linear")
    with pytest.raises(ConfigError, match=r"\[1, 1000\]"):
        DDIMScheduler(s).set_timesteps(0)
    with pytest.raises(ConfigError, match=r"\[1, 1000\]"):
        DDIMScheduler(s).set_timesteps(1001)
    with pytest.raises(ConfigError, match="integer"):
        DDIMScheduler(s).set_timesteps(2.5)
    with pytest.raises(ConfigError, match="spacing"):
        DDIMScheduler(s).set_timesteps(10, "uniform")
    with pytest.raises(ConfigError, match="prediction_type"):
        DDIMScheduler(s, "sample")
    with pytest.raises(ConfigError, match="eta"):
        DDIMScheduler(s, eta=1.5)
    with pytest.raises(ConfigError, match="set_timesteps"):
        DDIMScheduler(s).step(torch.zeros(1), 999, torch.zeros(1))
    sch = DDIMScheduler(s)
    sch.set_timesteps(10)
    with pytest.raises(ConfigError, match="not one of"):
        sch.step(torch.zeros(1), 998, torch.zeros(1))
    with pytest.raises(ConfigError, match="zero-terminal-SNR"):
        DDPMScheduler(NoiseSchedule.make("linear", zero_terminal_snr=True), "epsilon")
    with pytest.raises(ConfigError, match="sampler"):
        make_scheduler("euler", s)
    with pytest.raises(ConfigError, match="beta_start"):
        NoiseSchedule.from_config(ScheduleConfig(beta_start=0.1, beta_end=0.01))
    with pytest.raises(ConfigError, match="timesteps"):
        s.add_noise(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1000]))


def test_make_scheduler_names():
    s = NoiseSchedule.make("linear")
    assert isinstance(make_scheduler("ddpm", s, "v", variance="beta"), DDPMScheduler)
    assert isinstance(make_scheduler("ddim", s, eta=0.3), DDIMScheduler)
    assert isinstance(make_scheduler("dpm_solver", s, "x0"), DPMSolverMultistepScheduler)
