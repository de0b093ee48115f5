"""DiffEdit on both paradigms: a mask from where the source and target prompts disagree, then a masked edit.

Diffusion (Couairon et al. 2023, Sec. 3.1, step 1): noise the source to the level of `mask_strength` (r draws of
eps), take the denoiser's noise estimates under the target prompt R and the source prompt Q, and average
|eps_theta(x_t, R) - eps_theta(x_t, Q)| over channels and draws; the mask is where that map, rescaled to [0, 1]
by its maximum, exceeds `threshold` (0.5 in the paper). Step 2 here is a masked SDEdit (`sdedit.py`: noise to
`strength`, blended latents outside the mask at every step) rather than the paper's DDIM encoding.

AR: the per-token log-likelihood ratio of the source tokens, llr_n = log p(x_n | Q, x_<n) - log p(x_n | R, x_<n)
(two teacher-forced passes): high where the source prompt explains a token and the target does not. A causal
model predicts most of an object's tokens from the ones before it, so the ratio thresholded per cell flags only
a few cells of the changed object.

Both maps (f, h, w) become a mask by `pool`: "cells" thresholds the map rescaled by its maximum at `threshold`
(the paper's rule); "segments" (default) averages it over the source's lit segments (connected latent cells
with a foreground pixel) and keeps the segments above `threshold` of the best: the object the prompts disagree
on, whole. bench/bench_edit.py measures both against the world's mask. The masked edit re-samples every token in
the mask under R and forces the rest (`sdedit.ar_resample`).

An automatic mask needs something to edit: an input in which the probes find no object is refused, and so is
a pair of prompts whose predictions do not differ.

Owns: `diffedit_edit`, `diffusion_mask`, `ar_mask`. Does not own: the masked samplers (`sdedit.py`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ...errors import ConfigError, DataError
from .common import EditResult
from .prep import (
    ar_token_logp,
    check_mask,
    check_strength,
    check_video_model,
    encode_source,
    fit_clip,
    latent_grid,
    latent_mask,
    noised,
    object_mask,
    pixel_mask,
)
from .sdedit import AR_GUIDANCE, ar_forward_passes, ar_resample, diffusion_masked


def _threshold(score: np.ndarray, threshold: float) -> np.ndarray:
    """Rescale a non-negative map by its maximum and keep cells above `threshold`; refuse a map with no signal."""
    top = float(score.max())
    if not np.isfinite(top) or top <= 1e-6:
        raise DataError("the source and target prompts give the same predictions everywhere: no region to edit;"
                        " make the prompts differ in what should change, or give --mask FILE")
    return score / top > threshold


def diffusion_score(gen: Any, z0: Any, prompt: str, source_prompt: str, *, mask_strength: float = 0.5,
                    draws: int = 10, steps: int = 50, seed: int = 0) -> tuple[np.ndarray, int]:
    """(|eps(x_t, R) - eps(x_t, Q)| averaged over channels and draws (f, h, w), forward passes)."""
    import torch

    S = int(steps)
    t = int(gen.model.timesteps(S)[min(S - 1, int(round((1.0 - mask_strength) * S)))])
    z_t, _ = noised(gen, z0, t, seed + 1, draws)  # (r, C, f, h, w)
    both = gen.model.encode_prompts([prompt, source_prompt])  # one batch: one padded length
    cond = type(both)(both.tokens.repeat_interleave(draws, 0), both.mask.repeat_interleave(draws, 0),
                      None if both.pooled is None else both.pooled.repeat_interleave(draws, 0))
    tb = torch.full((2 * draws,), t, dtype=torch.long)
    with torch.inference_mode():
        pred = gen.model.denoiser(torch.cat([z_t, z_t]), tb, cond)
        eps = gen.model.schedule.to_eps(pred, torch.cat([z_t, z_t]), tb, gen.model.config.prediction_type)
    return (eps[:draws] - eps[draws:]).abs().mean(1).mean(0).float().numpy(), 2 * draws  # (f, h, w)


def diffusion_mask(gen: Any, z0: Any, prompt: str, source_prompt: str, *, threshold: float = 0.5,
                   **kw: Any) -> tuple[np.ndarray, int]:
    """(mask (f, h, w) bool, forward passes): where the noise estimates under the two prompts differ."""
    score, passes = diffusion_score(gen, z0, prompt, source_prompt, **kw)
    return _threshold(score, threshold), passes


def ar_score(gen: Any, ids: Any, prompt: str, source_prompt: str) -> tuple[np.ndarray, int]:
    """(max(0, log p(x_n | Q, x_<n) - log p(x_n | R, x_<n)) per cell (f, h, w), token evaluations)."""
    lp_t, _ = ar_token_logp(gen, ids, prompt)
    lp_s, _ = ar_token_logp(gen, ids, source_prompt)
    return (lp_s - lp_t)[0].clamp(min=0).numpy().reshape(ids.shape[1:]), 2 * int(ids.numel())


def pooled_mask(score: np.ndarray, video: np.ndarray, threshold: float, pool: str) -> np.ndarray:
    """A score map (f, h, w) -> mask. pool="cells": the map itself thresholded (the paper's rule). pool="segments":
    the map averaged over the source's segments, the 26-connected components (f, h, w) of latent cells holding a
    lit pixel of `video` (brightest channel > 60, the probes' foreground), keeping the segments whose mean is
    above `threshold` times the best segment's."""
    from scipy import ndimage

    if pool == "cells":
        return _threshold(score, threshold)
    if pool != "segments":
        raise ConfigError(f"pool must be 'segments' or 'cells', got {pool!r}")
    lit = latent_mask(video.max(-1) > 60, score.shape)  # (f, h, w)
    labels, k = ndimage.label(lit, structure=np.ones((3, 3, 3), bool))
    if k == 0:
        raise DataError("no object found in the input for an automatic mask; give --mask FILE")
    means = np.asarray(ndimage.mean(score, labels, index=np.arange(1, k + 1)))  # (k,) mean score per segment
    return np.isin(labels, np.flatnonzero(_threshold(means, threshold)) + 1)


def _auto(gen: Any, src: Any, prompt: str, source_prompt: str, *, threshold: float, mask_strength: float, draws: int,
          steps: int, seed: int, dilate: int, pool: str = "segments") -> tuple[np.ndarray, int]:
    """The automatic latent mask (f, h, w) for an encoded source, and what it cost in forward passes."""
    object_mask(src.video)  # an automatic mask needs an object in the input
    if gen.kind == "diffusion":
        score, passes = diffusion_score(gen, src.latents, prompt, source_prompt, mask_strength=mask_strength,
                                        draws=draws, steps=steps, seed=seed)
    else:
        score, passes = ar_score(gen, src.ids, prompt, source_prompt)
    lmask = pooled_mask(score, src.video, threshold, pool)
    for _ in range(int(dilate)):  # grow by one latent cell in h and w (frames kept)
        p = np.pad(lmask, ((0, 0), (1, 1), (1, 1)))
        lmask = p[:, 1:-1, 1:-1] | p[:, :-2, 1:-1] | p[:, 2:, 1:-1] | p[:, 1:-1, :-2] | p[:, 1:-1, 2:]
    return lmask, passes


def auto_mask(gen: Any, source: Any, *, prompt: str, source_prompt: str, threshold: float = 0.5,
              mask_strength: float = 0.5, draws: int = 10, steps: int | None = None, seed: int = 0,
              dilate: int = 0, pool: str = "segments") -> np.ndarray:
    """DiffEdit's automatic mask of `source` for the edit source_prompt -> prompt, in pixels (F, H, W) bool
    (the latent cells' pixels), for any method's `mask=`."""
    check_video_model(gen)
    src = encode_source(gen, fit_clip(gen, source))
    S = int(steps or (gen.model.config.steps if gen.kind == "diffusion" else 0))
    lmask, _ = _auto(gen, src, prompt, source_prompt, threshold=threshold, mask_strength=check_strength(
        mask_strength, "mask_strength"), draws=draws, steps=S, seed=seed, dilate=dilate, pool=pool)
    return pixel_mask(lmask, src.video.shape[:3])


def diffedit_edit(gen: Any, source: Any, *, prompt: str, source_prompt: str | None = None, n: int = 1, seed: int = 0,
                  mask: Any = None, strength: float | None = None, threshold: float = 0.5, mask_strength: float = 0.5,
                  draws: int = 10, dilate: int = 0, pool: str = "segments", guidance: float | None = None,
                  steps: int | None = None, **sampling: Any) -> EditResult:
    """DiffEdit: the automatic mask (unless `mask` is given), then a masked edit of strength `strength`
    (diffusion default 0.8; AR default 1: every token in the mask re-sampled)."""
    t0 = time.perf_counter()
    check_video_model(gen)
    if not source_prompt:
        raise ConfigError("edit method 'diffedit' needs --source-prompt (a caption of the input) to find the mask")
    if not 0.0 < float(threshold) < 1.0:
        raise ConfigError(f"threshold must lie in (0, 1) (0.5 in the paper), got {threshold!r}")
    strength = check_strength(strength if strength is not None else (0.8 if gen.kind == "diffusion" else 1.0))
    mask_strength = check_strength(mask_strength, "mask_strength")
    src = encode_source(gen, fit_clip(gen, source))
    grid = latent_grid(gen)
    given = check_mask(mask, src.video)
    S = int(steps or (gen.model.config.steps if gen.kind == "diffusion" else 0))
    if given is not None:
        lmask, passes = latent_mask(given, grid), 0
    else:
        lmask, passes = _auto(gen, src, prompt, source_prompt, threshold=threshold, mask_strength=mask_strength,
                              draws=draws, steps=S, seed=seed, dilate=dilate, pool=pool)
    info: dict[str, Any] = {"method": "diffedit", "prompt": prompt, "source_prompt": source_prompt, "n": n,
                            "seed": seed, "strength": strength, "threshold": threshold, "auto_mask": given is None,
                            "mask_cells": int(lmask.sum()), "mask_share": float(lmask.mean())}
    if gen.kind == "diffusion":
        k = int(round((1.0 - strength) * S))
        t_k = int(gen.model.timesteps(S)[k]) if k < S else 0
        start, eps = noised(gen, src.latents, t_k, seed, n)
        res = diffusion_masked(gen, src.latents, prompt, start=start, start_step=k, steps=S, eps=eps, lmask=lmask,
                               seed=seed, guidance=guidance, **sampling)
        info.update(steps=S, start_step=k, mask_strength=mask_strength, draws=draws,
                    guidance=res.info.get("guidance"), forward_passes=passes + res.forward_passes)
        state = {"latents": res.latents, "source": src.latents}
    else:
        g = AR_GUIDANCE if guidance is None else guidance
        region = lmask.reshape(-1)
        k = int(round(strength * int(region.sum())))
        resample = np.zeros(region.size, bool)
        resample[np.flatnonzero(region)[:k]] = True  # raster order inside the mask (all of it at strength 1)
        res = ar_resample(gen, src.ids, prompt, resample, n=n, seed=seed, guidance=g, **sampling)
        info.update(guidance=g, forward_passes=passes + ar_forward_passes(gen, region.size, g) * n)
        state = {"ids": res.ids, "source": src.ids}
    state["latent_mask"] = lmask
    info["seconds"] = time.perf_counter() - t0
    return EditResult(res.videos, src.video, src.reconstruction, pixel_mask(lmask, src.video.shape[:3]), info, state)
