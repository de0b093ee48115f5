"""SDEdit / img2img on both paradigms, with masked compositing.

Diffusion (Meng et al. 2022, SDEdit): noise the source latents to step k = round((1 - strength) S) of the S
sampling steps, z_k = sqrt(a_k) z_0 + sqrt(1 - a_k) eps, and denoise under the new prompt from there. With a mask
(Avrahami et al. 2023, Blended Latent Diffusion): after every step, outside the mask the sample is replaced by the
source noised to the step's new level with the same eps, and by z_0 itself after the last step, so the final
latents equal the source's exactly outside the mask.

AR: re-sample a share `strength` of the source's visual tokens under the new prompt and force the rest. Which
tokens: the ones least likely under the new prompt (log p(token | new prompt, source tokens before it), one
teacher-forced pass), i.e. those the new prompt disagrees with most; with a mask only tokens inside it are
candidates and every token outside is forced (the exact AR analogue of compositing). Strength 0 forces every
token: the codec's own reconstruction of the source.

Owns: `sdedit_edit` and the two masked samplers `diffusion_masked` / `ar_resample` that DiffEdit and the inversion
reuse. Does not own: the samplers (`generate`), masks from prompts (`diffedit.py`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

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
)

AR_GUIDANCE = 3.0  # the AR references were scored at guidance 3; diffusion uses the model's stored default


def diffusion_masked(gen: Any, z0: Any, prompt: str, *, start: Any, start_step: int, steps: int, eps: Any,
                     lmask: np.ndarray | None, seed: int, guidance: float | None, **sampling: Any) -> Any:
    """Denoise `start` (n, C, f, h, w) from `start_step` under `prompt`; outside `lmask` (f, h, w) keep q(z_t | z_0)
    with noise `eps` (n, C, f, h, w) after every step and z_0 after the last. Returns the `GenerationResult`."""
    import torch

    callback = None
    if lmask is not None:
        keep = torch.from_numpy(~lmask).float()[None, None]  # (1, 1, f, h, w): 1 = source
        ts = gen.model.timesteps(steps)

        def callback(i: int, t: int, x: Any, pred_x0: Any) -> Any:
            ref = gen.model.schedule.add_noise(z0.expand_as(x), eps, int(ts[i + 1])) if i + 1 < steps else z0.expand_as(x)
            return keep * ref.to(x) + (1 - keep) * x

    return gen.generate([prompt], n=start.shape[0], seed=seed, latents=start, start_step=start_step, steps=steps,
                        guidance=guidance, sampler="ddim", callback=callback, **sampling)


def ar_resample(gen: Any, ids: Any, prompt: str, resample: Any, *, n: int, seed: int, guidance: float | None,
                **sampling: Any) -> Any:
    """Sample the output positions where `resample` (N,) bool under `prompt`, forcing the source `ids` (1, f, h, w)
    everywhere else; n clips. Returns the `GenerationResult`."""
    import torch

    forced = ids.reshape(1, -1).clone()  # (1, N)
    forced[:, torch.as_tensor(resample, dtype=torch.bool)] = -1
    return gen.generate([prompt], n=n, seed=seed, ids=forced.expand(n, -1), guidance=guidance, **sampling)


def ar_forward_passes(gen: Any, tokens: int, guidance: float | None) -> int:
    """Decoder token evaluations for `tokens` decoded positions (both streams when guided)."""
    return int(tokens) * (2 if guidance is not None and float(guidance) != 1.0 else 1)


def sdedit_edit(gen: Any, source: Any, *, prompt: str, source_prompt: str | None = None, n: int = 1, seed: int = 0,
                mask: Any = None, strength: float = 0.6, guidance: float | None = None, steps: int | None = None,
                **sampling: Any) -> EditResult:
    """SDEdit (diffusion) / least-likely-token re-sampling (AR) of `source` towards `prompt`; see the module doc."""
    t0 = time.perf_counter()
    check_video_model(gen)
    strength = check_strength(strength)
    src = encode_source(gen, fit_clip(gen, source))
    pmask = check_mask(mask, src.video)
    grid = latent_grid(gen)
    lmask = latent_mask(pmask, grid) if pmask is not None else None
    info: dict[str, Any] = {"method": "sdedit", "prompt": prompt, "source_prompt": source_prompt, "strength": strength,
                            "n": n, "seed": seed, "masked": pmask is not None}
    if gen.kind == "diffusion":
        S = int(steps or gen.model.config.steps)
        k = int(round((1.0 - strength) * S))
        t_k = int(gen.model.timesteps(S)[k]) if k < S else 0
        start, eps = noised(gen, src.latents, t_k, seed, n)
        if k == S:
            start = src.latents.expand(n, *src.latents.shape[1:]).clone()  # strength 0: nothing to redo
        res = diffusion_masked(gen, src.latents, prompt, start=start, start_step=k, steps=S, eps=eps, lmask=lmask,
                               seed=seed, guidance=guidance, **sampling)
        info.update(steps=S, start_step=k, t_start=t_k, guidance=res.info.get("guidance"),
                    forward_passes=res.forward_passes)
        state = {"latents": res.latents, "source": src.latents}
    else:
        g = AR_GUIDANCE if guidance is None else guidance
        N = int(np.prod(grid))
        region = lmask.reshape(-1) if lmask is not None else np.ones(N, bool)
        k = int(round(strength * int(region.sum())))
        resample = np.zeros(N, bool)
        scored = 0
        if k > 0:
            logp, _ = ar_token_logp(gen, src.ids, prompt)  # (1, N) under the new prompt
            scored = N
            order = np.argsort(np.where(region, logp[0].numpy(), np.inf), kind="stable")  # least likely first
            resample[order[:k]] = True
        res = ar_resample(gen, src.ids, prompt, resample, n=n, seed=seed, guidance=g, **sampling)
        info.update(guidance=g, resampled_tokens=k, tokens=N, rule="least likely under the new prompt",
                    forward_passes=scored + ar_forward_passes(gen, N, g) * n)
        state = {"ids": res.ids, "source": src.ids}
    info["seconds"] = time.perf_counter() - t0
    return EditResult(res.videos, src.video, src.reconstruction, pmask, info, state)
