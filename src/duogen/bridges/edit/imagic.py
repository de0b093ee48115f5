"""Imagic (Kawar et al. 2023) on both paradigms: `imagic_edit`.

Owns the three stages, written once for both paradigms:
  A. e_opt = argmin_e L(x; e, theta), starting from e_tgt (the target prompt's embedding), the model frozen;
  B. theta* = argmin_theta L(x; e_opt, theta), e_opt frozen: a brief fine-tune of a COPY of the model (the
     base model is never modified);
  C. sample with e = eta e_tgt + (1 - eta) e_opt on theta* (eta = 1: the target prompt; eta = 0 reconstructs);
     `eta` may be a list: A and B run once and C once per eta (the eta trade-off curve at the cost of one edit).
The embedding and the loss per paradigm:
- diffusion: e is the text encoder's output (`TextCond` tokens (1, T, D) and pooled vector); L is the
  denoising loss (Ho et al. 2020, Algorithm 1) of the source's latents at random t and noise;
- AR: e is the prompt's input embeddings (the text tokens' rows of the layout's prefix, (L, D)), put in place
  by a forward hook on the token embedding table (the decoder and the teacher-forced forward both honour it);
  L is the next-token loss of the source's codec ids given that prefix.
Does not own: sampling loops, the codec, writing files.

Shape notation: n clips, T text tokens, D width, L prompt tokens (AR), (C, f, h, w) latents.
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ...errors import ConfigError, DataError
from .common import EditResult


def imagic_edit(gen: Any, source: np.ndarray, *, prompt: str, source_prompt: str | None = None, n: int = 1,
                seed: int = 0, mask: Any = None, eta: float | Sequence[float] = 0.7, emb_steps: int = 100, emb_lr: float = 1e-3,
                tune_steps: int = 50, tune_lr: float = 1e-4, batch: int = 4, **settings: Any) -> EditResult:
    """Imagic: edit the clip `source` (uint8 (F, H, W, 3)) towards `prompt`; `eta` = the target embedding's share.

    eta a list: `videos` are the first eta's and `state["by_eta"]` maps each eta to its (n, F, H, W, 3) clips
    (stages A and B run once; the same seed's noise at every eta). emb_steps / emb_lr: stage A (Adam on the embedding); tune_steps / tune_lr: stage B (Adam on a copy of the
    model; 0 = no fine-tune); batch: noise draws per step (diffusion). Other settings go to sampling
    (guidance, steps; temperature, top_k for AR). `source_prompt` and `mask` are not used by Imagic.
    """
    if source is None:
        raise ConfigError("Imagic edits a given clip: pass the input (it optimises an embedding to it)")
    if mask is not None:
        raise ConfigError("Imagic edits the whole clip; it takes no mask (use sdedit or p2p with a mask)")
    for name, v in (("emb_steps", emb_steps), ("tune_steps", tune_steps), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "batch" else 0):
            raise ConfigError(f"{name} must be an integer >= {1 if name == 'batch' else 0}, got {v!r}")
    etas = [eta] if np.isscalar(eta) else list(eta)
    if not etas or not all(isinstance(e, (int, float)) and not isinstance(e, bool) and np.isfinite(e) for e in etas):
        raise ConfigError(f"eta must be a number or a list of numbers (1 = the target prompt, 0 = the input), got {eta}")
    run = {"ar": _ar, "diffusion": _diffusion}.get(gen.kind)
    if run is None:
        raise ConfigError(f"Imagic edits AR and diffusion models, not {gen.kind!r}")
    t0 = time.perf_counter()
    res = run(gen, np.asarray(source), prompt, n, seed, [float(e) for e in etas], emb_steps, emb_lr, tune_steps, tune_lr, batch,
              settings)
    res.info.update({"method": "imagic", "prompt": prompt, "eta": etas[0] if np.isscalar(eta) else etas, "emb_steps": emb_steps, "emb_lr": emb_lr,
                     "tune_steps": tune_steps, "tune_lr": tune_lr, "seed": seed, "n": n,
                     "seconds": time.perf_counter() - t0,
                     **{k: v for k, v in settings.items() if isinstance(v, (int, float, str, bool, type(None)))}})
    return res


def _fit(params: list[torch.Tensor], loss_fn: Any, steps: int, lr: float) -> list[float]:
    """Adam on `params` for `steps` steps of `loss_fn()`; returns the losses."""
    if steps == 0:
        return []
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


# ----------------------------------------------------------------------------- diffusion


def _diffusion(gen, source, prompt, n, seed, eta, emb_steps, emb_lr, tune_steps, tune_lr, batch, settings):
    from ...diffusion.blocks import TextCond
    from ...diffusion.guidance import check_guidance
    from ...diffusion.sampling import sample
    from ...diffusion.schedules import denoising_loss
    from ...diffusion.schedulers import make_scheduler
    from ..result import to_uint8

    model = gen.model
    cfg = model.config
    z0 = model.encode_video(source)  # (1, C, f, h, w)
    with torch.no_grad():
        e_tgt = model.encode_prompts([prompt])  # (1, T, D)
    tokens = e_tgt.tokens.detach().clone().requires_grad_(True)
    pooled = None if e_tgt.pooled is None else e_tgt.pooled.detach().clone().requires_grad_(True)
    g = torch.Generator().manual_seed(int(seed))
    sched = model.schedule

    def loss_on(denoiser: Any, cond: TextCond) -> torch.Tensor:
        t = sched.sample_timesteps(batch, generator=g)
        eps = torch.randn((batch, *z0.shape[1:]), generator=g)
        return denoising_loss(denoiser, z0.expand(batch, *z0.shape[1:]), cond.repeat(batch), sched,
                              cfg.prediction_type, t, eps).mean()

    base = model.denoiser
    with _frozen(base):  # stage A: the embedding only
        emb_losses = _fit([p for p in (tokens, pooled) if p is not None],
                          lambda: loss_on(base, TextCond(tokens, e_tgt.mask, pooled)), emb_steps, emb_lr)
    e_opt = TextCond(tokens.detach(), e_tgt.mask, None if pooled is None else pooled.detach())
    denoiser = base
    tune_losses: list[float] = []
    if tune_steps:  # stage B: a copy of the denoiser around e_opt
        denoiser = copy.deepcopy(base).train()
        tune_losses = _fit([p for p in denoiser.parameters() if p.requires_grad],
                           lambda: loss_on(denoiser, e_opt), tune_steps, tune_lr)
        denoiser.eval()

    steps = int(settings.get("steps") or cfg.steps)
    guidance = float(cfg.guidance if settings.get("guidance") is None else settings["guidance"])
    check_guidance(guidance)
    sampler = settings.get("sampler") or cfg.sampler
    sampler = {"dpm": "dpm_solver", "dpm++": "dpm_solver"}.get(sampler, sampler)  # as `sample_latents` names them
    extra = {"eta": float(settings.get("ddim_eta", 0.0))} if sampler == "ddim" else {}

    def run(e_mix: float, k: int) -> tuple[torch.Tensor, int]:
        # C: e = eta e_tgt + (1 - eta) e_opt, written so that eta = 1 gives e_tgt exactly
        mix = lambda a, b: None if a is None else a + (1.0 - e_mix) * (b - a)  # noqa: E731
        cond = TextCond(mix(e_tgt.tokens, e_opt.tokens), e_tgt.mask, mix(e_tgt.pooled, e_opt.pooled)).repeat(k)
        uncond = model.null_cond(cond.tokens.shape[1])
        gs = torch.Generator().manual_seed(int(seed))
        x_T = model.initial_noise(k, gs)  # the x_T `generate` draws for this seed
        scheduler = make_scheduler(sampler, sched, cfg.prediction_type, **extra)
        z = sample(denoiser, scheduler, x_T, cond, steps=steps, guidance=guidance, uncond=uncond, generator=gs)
        return z, k * steps * (2 if guidance != 1.0 else 1)

    by_eta, passes = {}, 0
    with torch.inference_mode():
        for e in eta:
            z, p = run(e, n)
            by_eta[e], passes = to_uint8(model.decode(z)), passes + p
        z_rec, passes_rec = run(0.0, 1)
        recon = to_uint8(model.decode(z_rec))[0]
    return EditResult(by_eta[eta[0]], source, recon, None, {
        "paradigm": "diffusion", "forward_passes": passes + passes_rec + batch * (emb_steps + tune_steps) * 2,
        "emb_loss": _ends(emb_losses), "tune_loss": _ends(tune_losses), "steps": steps, "guidance": guidance}, {"by_eta": by_eta})


def _ends(losses: list[float]) -> list[float]:
    """[mean of the first quarter of the steps' losses, mean of the last quarter] (diffusion's are noisy)."""
    k = max(len(losses) // 4, 1)
    return [float(np.mean(losses[:k])), float(np.mean(losses[-k:]))] if losses else []


@contextlib.contextmanager
def _frozen(module: torch.nn.Module) -> Iterator[None]:
    """No parameter of `module` takes gradients inside the block (restored after)."""
    was = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in was:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in was:
            p.requires_grad_(r)


# ----------------------------------------------------------------------------- AR


class PrefixEmbeddings:
    """A forward hook on the token embedding table: rows whose first P ids are `prefix` get `emb` (L, D) at the
    prompt positions `pos` (the prefix forward of decoding, and the teacher-forced forward)."""

    def __init__(self, prefix: list[int], pos: list[int], emb: torch.Tensor):
        self.prefix, self.pos, self.emb = torch.tensor(prefix), torch.tensor(pos), emb

    def __call__(self, module: Any, args: Any, out: torch.Tensor) -> torch.Tensor | None:
        ids = args[0]  # (B, t)
        P = len(self.prefix)
        if ids.shape[1] < P:
            return None
        rows = (ids[:, :P] == self.prefix.to(ids.device)).all(1)  # (B,)
        if not bool(rows.any()):
            return None
        out = out.clone()
        sel = rows.nonzero()[:, 0]
        out[sel[:, None], self.pos[None].to(ids.device)] = self.emb.to(out.dtype)
        return out


@contextlib.contextmanager
def _hooked(model: Any, hook: PrefixEmbeddings) -> Iterator[None]:
    h = model.lm.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        h.remove()


def _ar(gen, source, prompt, n, seed, eta, emb_steps, emb_lr, tune_steps, tune_lr, batch, settings):
    model = gen.model
    text = model.encode_prompt(prompt)
    if not text:
        raise DataError("Imagic needs a target prompt with words (its embedding is what gets optimised)")
    plan = model.layouts.decode_plan("t2v", text)
    P = len(plan.prefix)
    pos = list(range(P - 2 - len(text), P - 2))  # ... <bot> text <eot> <bov>: the text tokens' positions
    with torch.inference_mode():
        src_ids = gen.codec.encode(source)[:1].cpu()  # (1, f, h, w): the codec's exact inverse
    ex = model.layouts.example("t2v", text, src_ids[0])
    data = model.layouts.batch([ex])
    table = model.lm.get_input_embeddings().weight
    e_tgt = table[torch.tensor(plan.prefix)[pos]].detach().clone()  # (L, D)
    e = e_tgt.clone().requires_grad_(True)
    torch.manual_seed(int(seed))

    def loss_on(m: Any, emb: torch.Tensor) -> torch.Tensor:
        with _hooked(m, PrefixEmbeddings(plan.prefix, pos, emb)):
            return m.loss(data).loss

    with _frozen(model):  # stage A
        emb_losses = _fit([e], lambda: loss_on(model, e), emb_steps, emb_lr)
    e_opt = e.detach()
    tuned, tune_losses = gen, []
    if tune_steps:  # stage B: a copy of the model (the decoder is rebuilt over the copy)
        m2 = copy.deepcopy(model).train()
        tune_losses = _fit([p for p in m2.parameters() if p.requires_grad], lambda: loss_on(m2, e_opt), tune_steps,
                           tune_lr)
        tuned = type(gen)(m2.eval(), gen.codec, getattr(gen, "audio_codec", None))
    kw = {k: v for k, v in settings.items() if k not in ("steps",)}

    def run(e_mix: float, k: int) -> Any:
        emb = e_tgt + (1.0 - e_mix) * (e_opt - e_tgt)  # eta = 1 gives e_tgt exactly
        with _hooked(tuned.model, PrefixEmbeddings(plan.prefix, pos, emb)):
            return tuned.generate([prompt], n=k, seed=seed, **kw)

    outs = {e: run(e, n) for e in eta}
    rec = run(0.0, 1)
    return EditResult(outs[eta[0]].videos, source, rec.videos[0], None, {
        "paradigm": "ar", "tokens": int(sum(o.tokens for o in outs.values()) + rec.tokens),
        "emb_loss": _ends(emb_losses), "tune_loss": _ends(tune_losses)}, {"by_eta": {e: o.videos for e, o in outs.items()}})
