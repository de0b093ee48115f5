"""Sampling loops: plain functions with the loop in plain sight.

Owns: `sample` (any scheduler from `schedulers.py`: DDPM, DDIM, DPM-Solver++)
and `ddim_invert`. Both take a denoiser `denoiser(x_t, t, cond) -> prediction`
with x_t (B, ...) and t (B,) int64, a scheduler, and an optional per-step
`callback(step_index, t, x, pred_x0)` called after every step with the new
sample x; a callback that returns a tensor replaces x (editing and control
hook in there); `sample(..., start_step=k)` starts the loop at its k-th step
from a given sample (SDEdit). Every denoiser evaluation runs inside `attention_context(step=i)`,
so attention processors (`duogen.attention`) see `call.step` = i, the index
into the scheduler's timesteps (0 = the first, noisiest step; `ddim_invert`
counts its own loop, least noisy first). Does not own: the schedule, the
reverse-step math, guidance (`guidance.py`; `sample(..., guidance=s, uncond=u)`
wraps the denoiser in a `CFGDenoiser` for you, which tells processors each
half's role).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from duogen.attention import attention_context
from duogen.diffusion.guidance import CFGDenoiser, check_guidance
from duogen.diffusion.schedulers import DDIMScheduler
from duogen.errors import ConfigError

Denoiser = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    scheduler: Any,
    x_T: torch.Tensor | Sequence[int],
    cond: Any = None,
    *,
    steps: int = 50,
    spacing: str = "trailing",
    guidance: float = 1.0,
    uncond: Any = None,
    guidance_rescale: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    device: Any = None,
    start_step: int = 0,
) -> torch.Tensor:
    """Run the reverse process from x_T (a tensor, or a shape to draw N(0, I) noise of) to x_0: (B, ...).

    The noise is drawn in float32 on the generator's device (then moved), so a CPU seed gives the same x_T anywhere.
    `start_step` = k skips the first k of the `steps` timesteps: x_T is then the sample at timestep
    `scheduler.timesteps[k]` (SDEdit, Meng et al. 2022: a clean latent noised to that level); k = steps returns it.
    """
    check_guidance(guidance, guidance_rescale)
    if guidance != 1.0:
        denoiser = CFGDenoiser(denoiser, guidance, uncond, rescale=guidance_rescale)
    if isinstance(x_T, torch.Tensor):
        x = x_T if x_T.dtype in (torch.float32, torch.float64) else x_T.float()
    else:
        gen_device = generator.device if generator is not None else device
        x = torch.randn(tuple(x_T), generator=generator, device=gen_device).to(device)
    scheduler.set_timesteps(steps, spacing)
    if isinstance(start_step, bool) or not isinstance(start_step, int) or not 0 <= start_step <= steps:
        raise ConfigError(f"start_step must be an integer in [0, steps={steps}], got {start_step!r}")
    for i, t in enumerate(scheduler.timesteps):
        if i < start_step:
            continue
        t_batch = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)  # (B,)
        with attention_context(step=i):
            model_output = denoiser(x, t_batch, cond).to(x.dtype)
        x, pred_x0 = scheduler.step(model_output, t, x, generator=generator)
        if callback is not None:
            replaced = callback(i, int(t), x, pred_x0)
            if replaced is not None:
                x = replaced
    return x


@torch.no_grad()
def ddim_invert(
    denoiser: Denoiser,
    scheduler: DDIMScheduler,
    x0: torch.Tensor,
    cond: Any = None,
    *,
    steps: int = 50,
    spacing: str = "trailing",
    guidance: float = 1.0,
    uncond: Any = None,
    fixed_point_iters: int = 0,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DDIM inversion x_0 -> x_T (Song et al. 2021, Sec. 4.3): the deterministic DDIM steps run backwards.

    Each inverse step evaluates the denoiser at the sample it starts from (the usual approximation, error
    O(1 / steps)); `fixed_point_iters` > 0 then re-evaluates it at the new x_t that many times, which solves
    step(denoiser(x_t, t), t, x_t) = x_prev for x_t (fixed-point inversion) so that `sample` retraces the path.
    """
    if not isinstance(scheduler, DDIMScheduler) or scheduler.eta != 0.0:
        raise ConfigError("ddim_invert needs a DDIMScheduler with eta=0 (the deterministic sampler)")
    if isinstance(fixed_point_iters, bool) or not isinstance(fixed_point_iters, int) or fixed_point_iters < 0:
        raise ConfigError(f"fixed_point_iters must be an integer >= 0, got {fixed_point_iters!r}")
    check_guidance(guidance)
    if guidance != 1.0:
        denoiser = CFGDenoiser(denoiser, guidance, uncond)
    x = x0 if x0.dtype in (torch.float32, torch.float64) else x0.float()
    scheduler.set_timesteps(steps, spacing)
    for i, t in enumerate(scheduler.timesteps.flip(0)):  # ascending: least noisy first
        t_batch = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)  # (B,)
        with attention_context(step=i):
            x_t, pred_x0 = scheduler.inverse_step(denoiser(x, t_batch, cond).to(x.dtype), t, x)
            for _ in range(fixed_point_iters):
                x_t, pred_x0 = scheduler.inverse_step(denoiser(x_t, t_batch, cond).to(x.dtype), t, x, x_model=x_t)
        x = x_t
        if callback is not None:
            replaced = callback(i, int(t), x, pred_x0)
            if replaced is not None:
                x = replaced
    return x
