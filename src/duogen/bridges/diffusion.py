"""The diffusion side of the `Generator` protocol: prompts -> latents -> the codec's decoder -> clips.

Owns `DiffusionGenerator` (what `load_generator` returns for config.json kind
"diffusion"). Flags mean what they mean for the AR generator (`n`, `seed`,
`guidance`, `negative_prompt`, `callback`), plus `steps`, `sampler` (ddpm |
ddim | dpm), `eta` (DDIM) and `ddpm_variance` (DDPM: beta | beta_tilde).
`guidance=None` uses the model's stored default (config `guidance`); 1
turns guidance off. A result carries each clip's initial noise and final
latents; `noise=` starts from given noise, `latents=` with `start_step=` from
a given sample mid-way (SDEdit). Does not own the sampling loop
(`duogen.diffusion.sampling`) or the model (`duogen.diffusion.latent`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import DataError
from .result import GenerationResult, to_uint8

TASKS = ("t2v", "uncond")
# AR-only sampling flags and the values that mean "not used"
_AR_DEFAULTS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "layout_candidates": 1}


class DiffusionGenerator:
    """A `LatentDiffusionModel` (with its codec) behind the `Generator` protocol."""

    kind = "diffusion"

    def __init__(self, model: Any):
        self.model = model.eval()

    @classmethod
    def from_pretrained(cls, directory: str | Path, codec: Any = None) -> "DiffusionGenerator":
        from ..diffusion.latent import LatentDiffusionModel

        return cls(LatentDiffusionModel.from_pretrained(directory, codec=codec))

    def parameters(self) -> Any:
        return self.model.parameters()

    def edit(self, source: Any, method: str = "sdedit", **kw: Any) -> Any:
        """Edit one clip (uint8 (F, H, W, 3)) with a technique of `bridges.edit.METHODS` -> `EditResult`;
        keywords as `bridges.edit.edit` (prompt, source_prompt, n, seed, mask, strength, guidance, ...)."""
        from .edit import edit

        return edit(self, source, method, **kw)

    def generate(
        self,
        prompts: Sequence[str],
        n: int = 1,
        seed: int = 0,
        *,
        task: str = "t2v",
        steps: int | None = None,
        sampler: str | None = None,
        guidance: float | None = None,
        guidance_rescale: float = 0.0,
        eta: float = 0.0,
        ddpm_variance: str | None = None,
        negative_prompt: str | None = None,
        callback: Callable | None = None,
        image: Any = None,
        video: Any = None,
        noise: Any = None,
        latents: Any = None,
        start_step: int | None = None,
        controls: Sequence[Any] = (),
        condition: tuple[str, Any] | None = None,
        control_beta: float = 1.0,
        **ar_only: Any,
    ) -> GenerationResult:
        """Clips for `prompts` (n each); start from `noise` (x_T, (B, C, f, h, w), e.g. a result's `noise`), or
        from `latents` at step `start_step` of `steps` (SDEdit: `model.timesteps(steps)[start_step]` is its noise
        level; start_step = steps decodes them as they are). B = len(prompts) * n. `controls`: "RUN[:scale]" of
        `duogen train control` runs (or `ActiveControl`s) read against `condition` = (boxes | mask | edges, FILE);
        sampled through `diffusion.control.Controlled` (`bridges/control.py`); `control_beta` < 1 makes those runs
        act only in the first `control_beta` of the steps (GLIGEN's scheduled sampling)."""
        import torch

        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise DataError(f"prompts must be a string or a list of strings, got {prompts!r}")
        if task not in TASKS:
            raise DataError(f"diffusion models here generate tasks {', '.join(TASKS)}; got {task!r}")
        if image is not None or video is not None:
            raise DataError("this diffusion model takes no --image / --video condition (text-to-video only)")
        for k, v in ar_only.items():
            if k not in _AR_DEFAULTS:
                raise DataError(f"the diffusion generator does not take {k!r}")
            if v is not None and v != _AR_DEFAULTS[k]:
                raise DataError(f"--{k.replace('_', '-')} is a next-token sampling setting; diffusion models ignore it"
                                " (use --steps, --sampler, --guidance)")
        if task == "uncond":
            prompts = ["" for _ in prompts]
        cfg = self.model.config
        steps = cfg.steps if steps is None else steps
        sampler = sampler or cfg.sampler
        g = cfg.guidance if guidance is None else guidance
        t0 = time.perf_counter()
        if noise is None and latents is None and isinstance(n, int) and n >= 1:  # the x_T sample_latents draws, kept
            noise = self.model.initial_noise(len(prompts) * n, torch.Generator().manual_seed(int(seed)))
        base = self.model.denoiser
        if controls:
            from ..diffusion.control import Controlled
            from .control import active_controls

            self.model.denoiser = Controlled(base, active_controls(self.model, controls, condition, control_beta),
                                             timesteps=self.model.timesteps(steps))
        try:
            z = self.model.sample_latents(list(prompts), n=n, seed=seed, steps=steps, sampler=sampler, guidance=g,
                                          guidance_rescale=guidance_rescale, eta=eta, ddpm_variance=ddpm_variance,
                                          negative_prompt=negative_prompt, callback=callback, noise=noise, latents=latents,
                                          start_step=0 if start_step is None else start_step)
        finally:
            self.model.denoiser = base
        t1 = time.perf_counter()
        with torch.inference_mode():
            videos = to_uint8(self.model.decode(z))
        t2 = time.perf_counter()
        B = len(prompts) * n
        guided = float(g) != 1.0
        return GenerationResult(
            videos=videos,
            prompts=[p for p in prompts for _ in range(n)],
            seeds=[seed] * B,
            timings={"sample_s": t1 - t0, "decode_s": t2 - t1, "total_s": t2 - t0},
            forward_passes=B * (int(steps) - (start_step or 0)) * (2 if guided else 1),
            info={"task": task, "sampler": sampler, "steps": steps, "guidance": g, "guidance_rescale": guidance_rescale,
                  "eta": eta, "ddpm_variance": ddpm_variance, "negative_prompt": negative_prompt,
                  "quantize_decode": cfg.quantize_decode,
                  **({"start_step": start_step} if latents is not None else {})},
            noise=None if latents is not None else torch.as_tensor(noise).float().cpu(),
            latents=z.float().cpu(),
        )
