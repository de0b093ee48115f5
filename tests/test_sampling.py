"""Sampling loops, DDIM inversion and classifier-free guidance, end to end with an exact denoiser.

The data distribution is a 2-D Gaussian N(mu, diag(sd^2)); its optimal denoiser is known in closed form
(x_t = a x0 + b eps, a = sqrt(alpha_bar_t), b = sqrt(1 - alpha_bar_t)):
    E[x0 | x_t] = mu + a sd^2 / (a^2 sd^2 + b^2) (x_t - a mu),   E[eps | x_t] = b (x_t - a mu) / (a^2 sd^2 + b^2).
So the samplers' output distribution checks the sampler math alone, with no training in the loop.
"""

import math

import pytest
import torch

from duogen.diffusion.guidance import CFGDenoiser
from duogen.diffusion.sampling import ddim_invert, sample
from duogen.diffusion.schedulers import DDIMScheduler, DDPMScheduler, make_scheduler
from duogen.diffusion.schedules import NoiseSchedule
from duogen.errors import ConfigError

MU = torch.tensor([0.5, -1.0])
SD = torch.tensor([0.6, 1.3])


def gaussian_denoiser(schedule, pred):
    """The exact (MMSE) denoiser for N(MU, diag(SD^2)) data, returning `pred` (epsilon, v or x0)."""

    def denoiser(x_t, t, cond):
        ab = schedule.alpha_bar[t].to(x_t.dtype)[:, None]  # (B, 1)
        a, b = ab.sqrt(), (1 - ab).sqrt()
        mu, var = MU.to(x_t.dtype), (SD**2).to(x_t.dtype)
        x0 = mu + a * var / (a * a * var + b * b) * (x_t - a * mu)
        eps = b * (x_t - a * mu) / (a * a * var + b * b)
        return {"epsilon": eps, "x0": x0, "v": a * eps - b * x0}[pred]

    return denoiser


def x_T_from_marginal(schedule, n, seed=0):
    """n draws of q(x_T) = N(a_T mu, a_T^2 sd^2 + b_T^2), standardized so their sample moments are exact."""
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    z = (z - z.mean(0)) / z.std(0)
    ab = float(schedule.alpha_bar[-1])
    return math.sqrt(ab) * MU + (ab * SD**2 + 1 - ab).sqrt() * z


def ddim_std_gain(schedule, timesteps):
    """Closed form: DDIM at eta=0 on this Gaussian multiplies the deviation x - a mu by
    (a' a sd^2 + b' b) / (a^2 sd^2 + b^2) per step (a', b' at the next timestep)."""
    ts = timesteps.tolist() + [-1]
    ab = lambda t: 1.0 if t < 0 else float(schedule.alpha_bar[t])  # noqa: E731
    gain = torch.ones(2, dtype=torch.float64)
    for t, t_prev in zip(ts[:-1], ts[1:]):
        a, b, a2, b2 = math.sqrt(ab(t)), math.sqrt(1 - ab(t)), math.sqrt(ab(t_prev)), math.sqrt(1 - ab(t_prev))
        var = SD.double() ** 2
        gain *= (a2 * a * var + b2 * b) / (a * a * var + b * b)
    return gain * (ab(ts[0]) * SD.double() ** 2 + 1 - ab(ts[0])).sqrt()  # times std(x_T)


@pytest.mark.parametrize("variance,pred", [("beta_tilde", "epsilon"), ("beta", "v")])
def test_ddpm_1000_steps_reproduces_the_gaussian(variance, pred):
    s = NoiseSchedule.make("linear")
    x = sample(gaussian_denoiser(s, pred), DDPMScheduler(s, pred, variance=variance), (4000, 2),
               steps=1000, generator=torch.Generator().manual_seed(0))
    # 4000 samples: standard errors 0.01 / 0.02 on the means, 1.1% on the stds. The algorithm itself (closed-form
    # variance recursion for this Gaussian) gives std ratios 0.993 / 0.996 (beta_tilde), 1.001 / 0.999 (beta);
    # measured: 1.006 / 0.974 and 1.014 / 0.978, mean error 0.008
    assert (x.mean(0) - MU).abs().max().item() < 0.06
    assert ((x.std(0) / SD) - 1).abs().max().item() < 0.04


@pytest.mark.parametrize("pred", ["epsilon", "v", "x0"])
def test_ddim_50_reproduces_the_gaussian(pred):
    s = NoiseSchedule.make("linear")
    sch = DDIMScheduler(s, pred)
    x = sample(gaussian_denoiser(s, pred), sch, x_T_from_marginal(s, 2000), steps=50)
    assert (x.mean(0) - MU).abs().max().item() < 1e-3
    # DDIM-50 shrinks the std by exactly its closed-form gain (0.950 and 0.967 here: its discretization error)
    torch.testing.assert_close(x.std(0).double(), ddim_std_gain(s, sch.timesteps), atol=2e-3, rtol=0)
    assert ((x.std(0) / SD) - 1).abs().max().item() < 0.06


@pytest.mark.parametrize("kind,pred", [("linear", "epsilon"), ("scaled_linear", "v"), ("cosine", "v")])
def test_dpm_solver_20_reproduces_the_gaussian(kind, pred):
    s = NoiseSchedule.make(kind)
    x = sample(gaussian_denoiser(s, pred), make_scheduler("dpm_solver", s, pred), x_T_from_marginal(s, 2000), steps=20)
    assert (x.mean(0) - MU).abs().max().item() < 1e-3
    # measured std errors: 2.4% linear, 0.2% scaled_linear, 0.9% cosine (DDIM-50: 5.0%, 3.2%, 2.8%)
    assert ((x.std(0) / SD) - 1).abs().max().item() < 0.03


@pytest.mark.parametrize("pred", ["epsilon", "v"])
def test_ddim_inversion_then_sampling_reconstructs(pred):
    s = NoiseSchedule.make("linear")
    denoiser = gaussian_denoiser(s, pred)
    x0 = MU + SD * torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    sch = DDIMScheduler(s, pred)
    errors = {}
    for steps, iters in [(50, 0), (200, 0), (50, 5)]:
        x_T = ddim_invert(denoiser, sch, x0, steps=steps, fixed_point_iters=iters)
        errors[steps, iters] = (sample(denoiser, sch, x_T, steps=steps) - x0).abs().max().item()
    # plain inversion evaluates eps at the start of each step: first-order error, measured 0.109 (50) -> 0.029 (200)
    assert errors[50, 0] < 0.15 and errors[200, 0] < 0.04 and errors[200, 0] < errors[50, 0] / 3
    # fixed-point inversion solves each step exactly: measured 3e-6 (float32 round-off)
    assert errors[50, 5] < 2e-5
    # and x_T is a plausible noise sample
    assert abs(x_T.std().item() - 1.0) < 0.2


# --- guidance ---------------------------------------------------------------------------------------


class TinyCondModel(torch.nn.Module):
    """x_t (B, 4), t (B,), cond: dict with 'emb' (B, 3) -> (B, 4); nonlinear so guidance is not trivial."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4 + 3 + 1, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
        self.calls = 0

    def forward(self, x_t, t, cond):
        self.calls += 1
        return self.net(torch.cat([x_t, cond["emb"], t[:, None].float() / 1000], dim=1))


def test_cfg_scale_1_is_the_conditional_model():
    model = TinyCondModel()
    s = NoiseSchedule.make("linear")
    cond, uncond = {"emb": torch.randn(5, 3)}, {"emb": torch.zeros(1, 3)}
    x_t, t = torch.randn(5, 4), torch.full((5,), 700)
    assert torch.equal(CFGDenoiser(model, 1.0, uncond)(x_t, t, cond), model(x_t, t, cond))
    a = sample(model, DDIMScheduler(s), (5, 4), cond, steps=10, guidance=1.0, uncond=uncond,
               generator=torch.Generator().manual_seed(0))
    b = sample(model, DDIMScheduler(s), (5, 4), cond, steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_cfg_batches_cond_and_uncond_in_one_forward():
    model = TinyCondModel()
    cond, uncond = {"emb": torch.randn(5, 3)}, {"emb": torch.zeros(1, 3)}
    x_t, t = torch.randn(5, 4), torch.full((5,), 300)
    with torch.no_grad():
        c, u = model(x_t, t, cond), model(x_t, t, {"emb": torch.zeros(5, 3)})
        model.calls = 0
        guided = CFGDenoiser(model, 4.0, uncond)(x_t, t, cond)
        assert model.calls == 1
        torch.testing.assert_close(guided, u + 4.0 * (c - u), atol=1e-6, rtol=1e-6)
        # guidance rescale (Lin et al. 2023, Sec. 3.4): phi = 1 gives the conditional output's per-sample std
        rescaled = CFGDenoiser(model, 4.0, uncond, rescale=1.0)(x_t, t, cond)
        torch.testing.assert_close(rescaled.std(dim=1), c.std(dim=1), atol=1e-6, rtol=1e-5)
        half = CFGDenoiser(model, 4.0, uncond, rescale=0.5)(x_t, t, cond)
        torch.testing.assert_close(half, 0.5 * rescaled + 0.5 * guided, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("phi", [0.0, 0.3, 0.7, 1.0])
def test_guidance_rescale_matches_diffusers(phi):
    """CFGDenoiser's rescale equals diffusers' `rescale_noise_cfg` (test-only reference) within 1e-6 in float32."""
    reference = pytest.importorskip("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion")

    def denoiser(x_t, t, cond):  # (B, C, H, W): a per-sample, per-channel scale of x_t plus an offset
        return x_t * cond[:, :, None, None] + t[:, None, None, None].float() / 1000

    x_t = torch.arange(3 * 2 * 4 * 4, dtype=torch.float32).reshape(3, 2, 4, 4).sin()
    t = torch.tensor([10, 500, 990])
    cond, uncond = torch.tensor([[1.5, -0.5], [2.0, 0.3], [0.7, 1.1]]), torch.tensor([[0.2, 0.4]])
    c, u = denoiser(x_t, t, cond), denoiser(x_t, t, uncond.expand(3, 2))
    ref = reference.rescale_noise_cfg(u + 5.0 * (c - u), c, guidance_rescale=phi)
    torch.testing.assert_close(CFGDenoiser(denoiser, 5.0, uncond, rescale=phi)(x_t, t, cond), ref, atol=1e-6, rtol=0)


def test_guided_samples_do_not_depend_on_the_rest_of_the_batch():
    model = TinyCondModel()
    s = NoiseSchedule.make("linear")
    cond, uncond = {"emb": torch.randn(4, 3)}, {"emb": torch.zeros(1, 3)}
    x_T = torch.randn(4, 4)
    full = sample(model, make_scheduler("dpm_solver", s), x_T, cond, steps=8, guidance=3.0, uncond=uncond)
    one = sample(model, make_scheduler("dpm_solver", s), x_T[2:3], {"emb": cond["emb"][2:3]}, steps=8,
                 guidance=3.0, uncond=uncond)
    torch.testing.assert_close(one, full[2:3], atol=1e-5, rtol=1e-5)


# --- loop contract ----------------------------------------------------------------------------------


def test_callback_sees_every_step_and_can_replace_the_sample():
    s = NoiseSchedule.make("linear")
    denoiser = gaussian_denoiser(s, "epsilon")
    sch = DDIMScheduler(s)
    seen = []

    def callback(i, t, x, pred_x0):
        seen.append((i, t, x.shape, pred_x0.shape))
        return torch.full_like(x, 7.0) if i == 9 else None

    out = sample(denoiser, sch, (3, 2), steps=10, callback=callback, generator=torch.Generator().manual_seed(0))
    assert [(i, t) for i, t, _, _ in seen] == list(enumerate(sch.timesteps.tolist()))
    assert all(shape == (3, 2) and p == (3, 2) for _, _, shape, p in seen)
    assert torch.equal(out, torch.full((3, 2), 7.0))


def test_same_generator_same_samples():
    s = NoiseSchedule.make("cosine")
    denoiser = gaussian_denoiser(s, "v")
    run = lambda seed: sample(denoiser, DDPMScheduler(s, "v"), (8, 2), steps=20,  # noqa: E731
                              generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_bad_sampling_input_is_a_config_error():
    s = NoiseSchedule.make("linear")
    model = TinyCondModel()
    cond, uncond = {"emb": torch.randn(2, 3)}, {"emb": torch.zeros(1, 3)}
    for scale in (-1.0, 101.0, float("nan"), "7", True):
        with pytest.raises(ConfigError, match="guidance scale"):
            sample(model, DDIMScheduler(s), (2, 4), cond, steps=5, guidance=scale, uncond=uncond)
    with pytest.raises(ConfigError, match="rescale"):
        CFGDenoiser(model, 3.0, uncond, rescale=1.5)
    with pytest.raises(ConfigError, match="uncond"):
        sample(model, DDIMScheduler(s), (2, 4), cond, steps=5, guidance=3.0)
    with pytest.raises(ConfigError, match="keys"):
        CFGDenoiser(model, 3.0, {"other": torch.zeros(1, 3)})(torch.zeros(2, 4), torch.zeros(2).long(), cond)
    for steps in (0, -3, 1001):
        with pytest.raises(ConfigError, match="sampling steps"):
            sample(model, DDIMScheduler(s), (2, 4), cond, steps=steps)
    with pytest.raises(ConfigError, match="eta=0"):
        ddim_invert(model, DDIMScheduler(s, eta=0.5), torch.zeros(2, 4), cond, steps=5)
    with pytest.raises(ConfigError, match="eta=0"):
        ddim_invert(model, DDPMScheduler(s), torch.zeros(2, 4), cond, steps=5)


def test_cfg_batches_dataclass_conditions():
    from dataclasses import dataclass

    @dataclass
    class Cond:
        tokens: torch.Tensor
        mask: torch.Tensor
        pooled: torch.Tensor | None = None

    def denoiser(x_t, t, cond):
        return x_t * cond.tokens.sum(dim=(1, 2))[:, None] + cond.mask.float().sum(1, keepdim=True)

    cond = Cond(torch.randn(3, 5, 2), torch.ones(3, 5, dtype=torch.bool))
    uncond = Cond(torch.zeros(1, 5, 2), torch.zeros(1, 5, dtype=torch.bool))
    x_t, t = torch.randn(3, 4), torch.full((3,), 10)
    c = denoiser(x_t, t, cond)
    u = denoiser(x_t, t, Cond(torch.zeros(3, 5, 2), torch.zeros(3, 5, dtype=torch.bool)))
    torch.testing.assert_close(CFGDenoiser(denoiser, 2.5, uncond)(x_t, t, cond), u + 2.5 * (c - u))
    with pytest.raises(ConfigError, match="shape"):
        CFGDenoiser(denoiser, 2.5, Cond(torch.zeros(1, 2, 2), torch.zeros(1, 2, dtype=torch.bool)))(x_t, t, cond)
