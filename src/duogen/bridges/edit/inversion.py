"""Inversion on both paradigms, and attribute transfer: invert under the source prompt, sample under the target.

Diffusion: DDIM inversion (Song et al. 2021, Sec. 4.3) z_0 -> z_T under the source prompt at guidance 1 (the
pivot trajectory z*_0..z*_T), then deterministic DDIM (eta 0) from z_T. At guidance w > 1 the guided sampler
drifts off the pivot; null-text inversion (Mokady et al. 2023, Algorithm 1) optimises one unconditional
embedding per step, min_{null_t} || z*_{t-1} - z_{t-1}(z_bar_t, null_t, C) ||^2 (Adam, `inner_steps` at `lr`,
started from the previous step's), so the guided sampler under the source prompt retraces the pivot; editing
samples under the target prompt with those embeddings. The reconstruction (sampling under the source prompt) is
measured against the codec's own reconstruction (PSNR) and reported.

AR: the codec's ids are the exact inverse of the decoder. For transfer the sampling noise is inverted too: in
the Gumbel-max view of sampling (token = argmax_i(log p_i + g_i), g_i ~ Gumbel(0)) draw the g that make the source
tokens the argmax under the source prompt (posterior Gumbels by top-down sampling: max G* ~ Gumbel(0), the others
truncated below G*; Maddison et al. 2014), then decode under the target prompt with the same g. Under the source
prompt this gives back the source ids exactly; under the target, tokens the prompts agree on stay.
With a mask, the outside is forced (AR) or composited with the pivot at every step (diffusion).

Owns: `invert_edit`, `ddim_pivot`, `null_text_optimise`, `guided_ddim`, `gumbel_posterior`.
Does not own: the inverse step (`diffusion.schedulers.DDIMScheduler.inverse_step`), the sampler (`generate`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .common import EditResult
from .prep import (ar_token_logp, check_mask, check_video_model, encode_source, fit_clip, latent_grid, latent_mask,
                   psnr)
from .sdedit import AR_GUIDANCE, ar_forward_passes


def _ddim(gen: Any) -> Any:
    from ...diffusion.schedulers import make_scheduler

    return make_scheduler("ddim", gen.model.schedule, gen.model.config.prediction_type, eta=0.0)


def ddim_pivot(gen: Any, z0: Any, cond: Any, steps: int) -> list[Any]:
    """DDIM inversion at guidance 1: the pivot [z*_0, z*_{t_1}, ..., z*_T] in ascending noise, each (1, C, f, h, w)."""
    from ...diffusion.sampling import ddim_invert

    traj = [z0]
    ddim_invert(gen.model.denoiser, _ddim(gen), z0, cond, steps=steps,
                callback=lambda i, t, x, x0: traj.append(x.clone()))
    return traj


def _uncond_at(nulls: Any, i: int) -> Any:
    return nulls[i] if isinstance(nulls, list) else nulls


def guided_ddim(gen: Any, x_T: Any, cond: Any, nulls: Any, guidance: float, steps: int, *,
                pivot: list[Any] | None = None, keep: Any = None, callback: Any = None) -> Any:
    """Deterministic DDIM from x_T with a per-step unconditional condition (`nulls` a list, or one for all);
    with `keep` (1, 1, f, h, w) and the pivot, outside the mask the sample is the pivot's after every step.
    Attention processors see `call.step` = i and the roles "cond" / "uncond" (two forwards, so the null may have
    another token count than `cond`); `callback(i, t, x, pred_x0)` as in `sampling.sample` (a tensor replaces x)."""
    import torch

    from ...attention import attention_context

    sched = _ddim(gen)
    sched.set_timesteps(steps)
    den = gen.model.denoiser
    x = x_T
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            tb = torch.full((x.shape[0],), int(t), dtype=torch.long)
            with attention_context(step=i):
                out = den(x, tb, cond)
                if guidance != 1.0:
                    uc = _uncond_at(nulls, i)
                    with attention_context(roles=("uncond",)):
                        u = den(x, tb, uc if len(uc) == x.shape[0] else _expand(uc, x.shape[0]))
                    out = u + guidance * (out - u)
            x, x0 = sched.step(out, t, x)
            if keep is not None and pivot is not None:
                x = keep * pivot[steps - i - 1] + (1 - keep) * x
            if callback is not None:
                replaced = callback(i, int(t), x, x0)
                x = x if replaced is None else replaced
    return x


def _expand(c: Any, b: int) -> Any:
    from ...diffusion.blocks import TextCond

    rep = lambda v: None if v is None else v.expand(b, *v.shape[1:])  # noqa: E731
    return TextCond(rep(c.tokens), rep(c.mask), rep(c.pooled))


def null_text_optimise(gen: Any, pivot: list[Any], cond: Any, null: Any, guidance: float, steps: int, *,
                       inner_steps: int = 10, lr: float = 5e-2, tol: float = 1e-5) -> tuple[list[Any], int]:
    """Mokady et al. 2023, Algorithm 1: per-step null embeddings so guided DDIM from z*_T follows the pivot.
    Returns (embeddings per step, denoiser forward passes)."""
    import torch

    from ...diffusion.blocks import TextCond

    sched = _ddim(gen)
    sched.set_timesteps(steps)
    den = gen.model.denoiser
    # every token slot of the empty prompt is optimised and attended, padding included (as CLIP's 77 null tokens
    # are in the paper): with only the empty prompt's real token free, guidance-3 reconstructions stopped at
    # ~32-34 dB on the reference DiT; with all slots they reach 55+ dB (bench/bench_edit.py)
    null = TextCond(null.tokens, torch.ones_like(null.mask), null.pooled)
    tokens = null.tokens.detach().clone()
    pooled = None if null.pooled is None else null.pooled.detach().clone()
    x = pivot[-1]
    out_nulls, passes = [], 0
    for i, t in enumerate(sched.timesteps):
        tb = torch.full((1,), int(t), dtype=torch.long)
        target = pivot[steps - i - 1]
        with torch.no_grad():
            out_c = den(x, tb, cond)
        passes += 1
        tokens = tokens.detach().requires_grad_(True)
        params = [tokens] + ([pooled.detach().requires_grad_(True)] if pooled is not None else [])
        if pooled is not None:
            pooled = params[1]
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(inner_steps):
            with torch.enable_grad():
                out_u = den(x, tb, TextCond(tokens, null.mask, pooled))
                passes += 1
                x_prev = sched.step(out_u + guidance * (out_c - out_u), t, x).prev_sample
                loss = torch.nn.functional.mse_loss(x_prev, target)
                if float(loss.detach()) < tol:
                    break
                opt.zero_grad()
                loss.backward()
                opt.step()
        emb = TextCond(tokens.detach().clone(), null.mask, None if pooled is None else pooled.detach().clone())
        out_nulls.append(emb)
        with torch.no_grad():
            out_u = den(x, tb, emb)
            passes += 1
            x = sched.step(out_u + guidance * (out_c - out_u), t, x).prev_sample
    return out_nulls, passes


def gumbel_posterior(logp: Any, tokens: Any, generator: Any) -> Any:
    """Gumbel noise g (B, N, R) with argmax(logp + g) = tokens exactly, distributed as the posterior given that argmax.

    logp (B, N, R) normalized log-probabilities; tokens (B, N). Top-down: the max is G* ~ Gumbel(0) (logsumexp = 0),
    placed at the token; every other i is Gumbel(logp_i) truncated below G*: -log(exp(-G*) + exp(-(logp_i + g_i))).
    """
    import torch

    gum = lambda shape: -torch.log(-torch.log(torch.rand(shape, generator=generator).clamp(1e-12, 1 - 1e-7)))  # noqa: E731
    top = gum(logp.shape[:2])  # (B, N)
    pert = logp + gum(logp.shape)  # (B, N, R)
    trunc = -torch.log(torch.exp(-top)[..., None] + torch.exp(-pert))  # (B, N, R), each < G*
    trunc.scatter_(-1, tokens[..., None], top[..., None])
    return trunc - logp


def invert_edit(gen: Any, source: Any, *, prompt: str, source_prompt: str | None = None, n: int = 1, seed: int = 0,
                mask: Any = None, guidance: float | None = None, steps: int | None = None, null_text: bool = True,
                inner_steps: int = 10, lr: float = 5e-2, **unused: Any) -> EditResult:
    """Invert `source` under `source_prompt`, then sample under `prompt` (attribute / style transfer)."""
    import torch

    from ...errors import ConfigError
    from ..result import to_uint8

    t0 = time.perf_counter()
    check_video_model(gen)
    if unused:
        raise ConfigError(f"edit method 'invert' does not take {', '.join(sorted(unused))}")
    if not source_prompt:
        raise ConfigError("edit method 'invert' needs --source-prompt (a caption of the input) to invert under")
    src = encode_source(gen, fit_clip(gen, source))
    pmask = check_mask(mask, src.video)
    lmask = latent_mask(pmask, latent_grid(gen)) if pmask is not None else None
    info: dict[str, Any] = {"method": "invert", "prompt": prompt, "source_prompt": source_prompt, "n": n, "seed": seed,
                            "masked": pmask is not None}
    if gen.kind == "diffusion":
        S = int(steps or gen.model.config.steps)
        g = float(gen.model.config.guidance if guidance is None else guidance)
        z0 = src.latents
        with torch.no_grad():
            both = gen.model.encode_prompts([source_prompt, prompt])  # one batch: one padded length T for both
            nulls: Any = gen.model.null_cond(both.tokens.shape[1])
        cond_s, cond_t = both.index(slice(0, 1)), both.index(slice(1, 2))
        pivot = ddim_pivot(gen, z0, cond_s, S)
        passes = S
        if null_text and g != 1.0:
            nulls, p = null_text_optimise(gen, pivot, cond_s, nulls, g, S, inner_steps=inner_steps, lr=lr)
            passes += p
        keep = None if lmask is None else torch.from_numpy(~lmask).float()[None, None]
        recon = guided_ddim(gen, pivot[-1], cond_s, nulls, g, S)
        edited = guided_ddim(gen, pivot[-1], cond_t, nulls, g, S, pivot=pivot, keep=keep)
        passes += 2 * S * (2 if g != 1.0 else 1)
        with torch.inference_mode():
            rec_v = to_uint8(gen.model.decode(recon))[0]
            videos = to_uint8(gen.model.decode(edited))
        videos = np.repeat(videos, n, 0)  # deterministic DDIM: every clip is the same
        info.update(steps=S, guidance=g, null_text=bool(null_text and g != 1.0), inner_steps=inner_steps, lr=lr,
                    forward_passes=passes, inversion_psnr=psnr(rec_v, src.reconstruction),
                    inversion_latent_rmse=float((recon - z0).pow(2).mean().sqrt()), deterministic=True)
        state = {"latents": edited.expand(n, *edited.shape[1:]).clone(), "source": z0, "reconstruction": recon}
        recon_video = rec_v
    else:
        g = AR_GUIDANCE if guidance is None else guidance
        B, N = n, int(src.ids.numel())
        ids_n = src.ids.expand(B, *src.ids.shape[1:])
        _, logp_s = ar_token_logp(gen, ids_n, source_prompt, guidance=g)  # (B, N, R)
        noise = gumbel_posterior(logp_s, ids_n.reshape(B, -1), torch.Generator().manual_seed(int(seed)))

        def coupled(k: int, pos: int, logits: Any, prev: Any) -> Any:
            return torch.log_softmax(logits.float(), -1) + noise[:, k]

        forced = torch.full((B, N), -1, dtype=torch.long)
        if lmask is not None:
            keep = torch.from_numpy(~lmask.reshape(-1))
            forced[:, keep] = ids_n.reshape(B, -1)[:, keep]
        rec = gen.generate([source_prompt], n=B, seed=seed, guidance=g, temperature=0.0, callback=coupled)
        res = gen.generate([prompt], n=B, seed=seed, guidance=g, temperature=0.0, callback=coupled, ids=forced)
        exact = float((rec.ids.reshape(B, -1) == ids_n.reshape(B, -1)).float().mean())
        videos = res.videos
        recon_video = rec.videos[0]
        info.update(guidance=g, forward_passes=3 * ar_forward_passes(gen, N, g) * B, inversion_ids_exact=exact,
                    inversion_psnr=psnr(recon_video, src.reconstruction), noise="gumbel posterior")
        state = {"ids": res.ids, "source": src.ids, "reconstruction": rec.ids}
    info["seconds"] = time.perf_counter() - t0
    return EditResult(videos, src.video, recon_video, pmask, info, state)
