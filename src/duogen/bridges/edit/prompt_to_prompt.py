"""Prompt-to-Prompt (Hertz et al. 2022) on both paradigms: `p2p_edit`.

Owns: word swap, refinement and reweighting by injecting the source generation's attention maps over the
prompt's tokens into the target generation for the first tau of the steps, local blending, and the token
alignment between the two prompts. Does not own: the attention processors' plumbing (`duogen.attention`),
sampling (the generators), writing files, inversion (`inversion.py`: a real diffusion source is null-text
inverted under the source prompt and both runs are its guided DDIM from z*_T with the per-step null embeddings).

The edit of one attention map (P2P, Sec. 3.2), with M_s / M_t the source / target maps over the prompt's keys:
  swap:     M* = M_s W                   (W maps source keys to target keys, one-to-one where the two token runs
                                          have equal length, spread evenly where a run of k replaces a run of l)
  refine:   M*[:, j] = M_s[:, A(j)] if the alignment A has j, else M_t[:, j]   (new words keep their own maps)
  reweight: M*[:, j] = c_j M[:, j]        (after the injection, as P2P's AttentionReweight)
applied to the conditional half of guidance only (the original code edits `attn[h // 2:]`).

Where the maps are:
- diffusion: every cross-attention layer, keys = the text encoder's tokens (<s> + pieces), per sampler step;
  `self_tau` also replaces the self/temporal attention maps for the first self_tau of the steps.
- AR: the decoder's self-attention, queries = the <bov> token and the visual tokens (query P-1+n computes the
  logits of output token n, so "step" n is output token n), keys = the whole prompt prefix (<bos> <task>
  pad.. <bot> text <eot> <bov>); the two prefixes are aligned token by token (the text is left-padded, so
  the same word sits at different positions when the prompts differ in length). Keys after the prefix (the
  clip's own earlier tokens) keep the target's maps; rows are not renormalised (as P2P's cross-attention).

Local blending (P2P Sec. 3.2, "local editing"): the blend words' maps (averaged over layers and heads, and over
the steps so far; source words in the source run, target words in the target run) normalised by their max and
thresholded give a mask; outside it the source is kept: diffusion blends the latents after every step from
`blend_start` of the steps on (x_t <- x_t^src + m (x_t - x_t^src)); AR forces the source's token at every
position outside the mask (causal decoding knows the target's maps only up to the current token, so the
target words' part of the mask is read online, normalised by the source's max). A given `mask` (F, H, W)
replaces the attention mask.

`info["prompt_attention"]`: the share of the source run's attention (conditional half, mean over layers, heads,
queries and steps) that lands on the prompt's word tokens (diffusion: the cross-attention keys after <s>; AR: the
text tokens of the prefix, from the <bov> and visual queries): how much of the maps P2P moves is about words.

Shape notation: n clips, nh heads, Tq queries, K prompt keys, N output tokens (AR), (C, f, h, w) latents.
"""

from __future__ import annotations

import difflib
import re
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...attention import AttentionCall, apply_probs, attention_context, attention_probs, attention_processor, sdpa
from ...errors import ConfigError, DataError
from .common import EditResult

MODES = ("auto", "swap", "refine")


# ----------------------------------------------------------------------------- token alignment


@dataclass
class Alignment:
    """How target prompt keys take source prompt keys: M* = M_s @ W on the `aligned` columns."""

    W: torch.Tensor  # (Ks, Kt) float32
    aligned: torch.Tensor  # (Kt,) bool: target keys that receive the source's map
    changed_src: list[int]  # source keys outside the equal runs (the swapped / removed words)
    changed_tgt: list[int]  # target keys outside the equal runs (the new words)


def align(src: Sequence[int], tgt: Sequence[int], mode: str) -> Alignment:
    """Align two key id sequences (difflib's longest matching runs): equal runs map one-to-one; in `swap` mode a
    replaced run maps too (one-to-one if the runs have equal length, else each source key spread evenly over
    the target run, which keeps every row's sum); in `refine` mode only equal runs map."""
    Ks, Kt = len(src), len(tgt)
    W, aligned = torch.zeros(Ks, Kt), torch.zeros(Kt, dtype=torch.bool)
    changed_src, changed_tgt = [], []
    for op, i0, i1, j0, j1 in difflib.SequenceMatcher(None, list(src), list(tgt), autojunk=False).get_opcodes():
        if op == "equal" or (op == "replace" and mode == "swap" and i1 - i0 == j1 - j0):
            W[torch.arange(i0, i1), torch.arange(j0, j1)] = 1.0
            aligned[j0:j1] = True
        elif op == "replace" and mode == "swap":
            W[i0:i1, j0:j1] = 1.0 / (j1 - j0)
            aligned[j0:j1] = True
        if op != "equal":
            changed_src += list(range(i0, i1))
            changed_tgt += list(range(j0, j1))
    return Alignment(W, aligned, changed_src, changed_tgt)


def word_tokens(encode: Any, prompt: str, words: Sequence[str]) -> list[int]:
    """Indices (into encode(prompt)) of the pieces of every word of `prompt` that is in `words` (case-free)."""
    parts = prompt.split()
    want = {re.sub(r"\W", "", w.lower()) for w in words}
    out, start = [], 0
    for k, w in enumerate(parts):
        end = len(encode(" ".join(parts[: k + 1])))
        if re.sub(r"\W", "", w.lower()) in want:
            out += list(range(start, end))
        start = end
    return out


# ----------------------------------------------------------------------------- the processors


@dataclass
class _Maps:
    """What the source run recorded: cross maps per (layer, step) (diffusion) or per layer (AR: (n, nh, N, P))."""

    cross: dict[Any, torch.Tensor] = field(default_factory=dict)
    self_: dict[Any, torch.Tensor] = field(default_factory=dict)


class DiffusionP2P:
    """The processor for both runs on a denoiser: `record` (source) or inject (target), per step and layer."""

    def __init__(self, maps: _Maps, record: bool, al: Alignment | None = None, cross_steps: int = 0,
                 self_steps: int = 0, weights: torch.Tensor | None = None, keep_target: bool = False):
        self.maps, self.record, self.al = maps, record, al
        self.cross_steps, self.self_steps, self.weights = cross_steps, self_steps, weights
        self.keep_target = keep_target  # record the target's cross maps too (local blending)
        self.target: dict[Any, torch.Tensor] = {}

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        if call.role != "cond":
            return sdpa(call)
        key = (call.module.name, call.step)
        if call.module.kind != "cross":
            if self.record and call.step is not None and call.step < self.self_steps:
                probs = attention_probs(call)
                self.maps.self_[key] = probs
                return apply_probs(call, probs)
            if not self.record and call.step is not None and call.step < self.self_steps:
                return apply_probs(call, self.maps.self_[key])
            return sdpa(call)
        probs = attention_probs(call)  # (n, nh, Tq, K)
        if self.record:
            self.maps.cross[key] = probs
            return apply_probs(call, probs)
        inject = call.step is not None and call.step < self.cross_steps
        if not inject and self.weights is None and not self.keep_target:
            return sdpa(call)
        if self.keep_target:
            self.target[key] = probs
        if inject:
            a = self.al
            mapped = self.maps.cross[key] @ a.W.to(probs)  # (n, nh, Tq, Kt)
            probs = torch.where(a.aligned.to(probs.device), mapped, probs)
        if self.weights is not None:
            probs = probs * self.weights.to(probs)
        return apply_probs(call, probs)


class ARP2P:
    """The processor for both runs on the AR decoder: rows are query positions P-1 .. P+N-2, keys the prefix."""

    def __init__(self, maps: _Maps, record: bool, P: int, N: int, al: Alignment | None = None, cross_steps: int = 0,
                 weights: torch.Tensor | None = None, keep_cols: list[int] | None = None):
        self.maps, self.record, self.P, self.N, self.al = maps, record, P, N, al
        self.cross_steps, self.weights = cross_steps, weights
        self.keep_cols = keep_cols  # target keys whose attention the target run records (local blending)
        self.target = torch.zeros(0)  # (n, N): target blend words' attention per output token, mean of layers/heads
        self.n_layers = 0

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        if call.role != "cond":
            return sdpa(call)
        Tq, Tk = call.q.shape[2], call.k.shape[2]
        q0 = Tk - Tq  # the calls' queries sit at positions q0 .. Tk-1
        lo = max(q0, self.P - 1)
        if lo >= Tk:  # only prefix rows (the prompt attending to itself)
            return sdpa(call)
        rows = slice(lo - q0, Tq)
        steps = slice(lo - (self.P - 1), Tk - (self.P - 1))  # output token n <- query P-1+n
        probs = attention_probs(call)  # (n, nh, Tq, Tk)
        name = call.module.name
        if self.record:
            store = self.maps.cross.setdefault(name, probs.new_zeros(probs.shape[0], probs.shape[1], self.N, self.P))
            store[:, :, steps] = probs[:, :, rows, : self.P]
            return apply_probs(call, probs)
        first = steps.start
        inject = first < self.cross_steps
        if not inject and self.weights is None and self.keep_cols is None:
            return sdpa(call)
        sub = probs[:, :, rows, : self.P]  # (n, nh, r, P)
        if inject:
            src = self.maps.cross[name][:, :, steps]  # (n, nh, r, P)
            mapped = src @ self.al.W.to(sub)
            n_idx = torch.arange(steps.start, steps.stop)
            use = (n_idx < self.cross_steps)[:, None] & self.al.aligned[None]  # (r, P)
            sub = torch.where(use, mapped, sub)
        if self.weights is not None:
            sub = sub * self.weights.to(sub)
        if self.keep_cols is not None:
            if self.target.shape[0] != probs.shape[0]:
                self.target = probs.new_zeros(probs.shape[0], self.N)
            self.target[:, steps] += sub[..., self.keep_cols].sum(-1).mean(1)
        probs = probs.clone()
        probs[:, :, rows, : self.P] = sub
        return apply_probs(call, probs)


# ----------------------------------------------------------------------------- helpers


def _pool_mask(mask: Any, grid: tuple[int, int, int]) -> torch.Tensor:
    """A pixel mask (F, H, W) -> (f, h, w) bool on a latent / token grid (a cell is in if any pixel is)."""
    m = torch.as_tensor(np.asarray(mask)).bool()
    if m.ndim != 3:
        raise DataError(f"a mask must be (F, H, W) bool, got shape {tuple(m.shape)}")
    return F.adaptive_max_pool3d(m.float()[None, None], grid)[0, 0] > 0.5


def _unpool(m: torch.Tensor, size: tuple[int, int, int]) -> np.ndarray:
    """(f, h, w) bool -> (F, H, W) bool in pixels (nearest)."""
    return (F.interpolate(m.float()[None, None], size=size, mode="nearest")[0, 0] > 0.5).numpy()


def _grid_map(probs: torch.Tensor, cols: list[int], n: int, latent: tuple[int, int, int]) -> torch.Tensor | None:
    """A cross map (B, nh, Tq, K) -> the attention on `cols` on the latent grid (n, f, h, w), or None when the
    layer's queries are not a spatial grid of the latent (temporal layers)."""
    f, h, w = latent
    B, _, Tq, _ = probs.shape
    per_frame = Tq // f if B == n else Tq if B == n * f else 0
    if per_frame == 0 or (B == n and Tq % f):
        return None
    s = (h * w / per_frame) ** 0.5
    if s != int(s) or h % int(s) or w % int(s):
        return None
    m = probs[..., cols].sum(-1).mean(1).reshape(n, f, h // int(s), w // int(s))  # (n, f, h', w')
    return F.interpolate(m, size=(h, w), mode="nearest")


def _blend_mask(m: torch.Tensor, threshold: float) -> torch.Tensor:
    """P2P's LocalBlend: the mean map (n, f, h, w), 3x3 max-pooled, / its max, > threshold -> bool (n, f, h, w)."""
    n, f, h, w = m.shape
    m = F.max_pool2d(m.reshape(n * f, 1, h, w), 3, 1, 1).reshape(n, f, h, w)
    return m / m.flatten(1).amax(1).clamp_min(1e-12).view(n, 1, 1, 1) > threshold


def _blend_words(local_blend: Any) -> tuple[list[str] | None, bool]:
    if local_blend is None or local_blend is False:
        return None, False
    if local_blend is True:
        return None, True
    if isinstance(local_blend, str):
        return [local_blend], True
    return list(local_blend), True


# ----------------------------------------------------------------------------- the technique


def p2p_edit(gen: Any, source: np.ndarray | None, *, prompt: str, source_prompt: str | None = None, n: int = 1,
             seed: int = 0, mask: Any = None, tau: float = 0.8, self_tau: float = 0.0, mode: str = "auto",
             reweight: dict[str, float] | None = None, local_blend: Any = None, blend_threshold: float = 0.3,
             blend_start: float = 0.2, **settings: Any) -> EditResult:
    """Prompt-to-Prompt: edit `source` (uint8 (F, H, W, 3), captioned by `source_prompt`) towards `prompt`.

    source None: generate the source from `source_prompt` with `seed` (the paper's setting; clip i of the
    result edits source clip i, `EditResult.source` holds the first). A real diffusion source is null-text
    inverted under `source_prompt` (Mokady et al.; DDIM, eta 0, the sampler setting is ignored); an AR source is its codec ids. tau / self_tau: share of the
    steps (AR: of the output tokens) with cross / self attention injected. mode: swap | refine | auto (swap when
    the prompts have the same token count). reweight: {word: c} scales the target's attention to the word.
    local_blend: True (the words that differ), a word or list of words, or None; `mask` (F, H, W) bool
    instead of an attention mask. Other settings go to `gen.generate` (guidance, steps, temperature, ...).
    """
    if source_prompt is None:
        raise ConfigError("prompt-to-prompt needs --source-prompt: the caption of the source the maps come from")
    if not 0.0 <= tau <= 1.0 or not 0.0 <= self_tau <= 1.0:
        raise ConfigError(f"tau and self_tau are shares of the steps, in [0, 1]; got {tau}, {self_tau}")
    if mode not in MODES:
        raise ConfigError(f"unknown p2p mode {mode!r}; allowed values: {', '.join(MODES)}")
    if not 0.0 < blend_threshold < 1.0:
        raise ConfigError(f"blend_threshold must be in (0, 1), got {blend_threshold}")
    run = _ar_p2p if gen.kind == "ar" else _diffusion_p2p if gen.kind == "diffusion" else None
    if run is None:
        raise ConfigError(f"prompt-to-prompt edits AR and diffusion models, not {gen.kind!r}")
    t0 = time.perf_counter()
    res = run(gen, source, prompt, source_prompt, n, seed, mask, tau, self_tau, mode, reweight or {}, local_blend,
              blend_threshold, blend_start, settings)
    res.info.update({"method": "p2p", "prompt": prompt, "source_prompt": source_prompt, "tau": tau,
                     "self_tau": self_tau, "reweight": reweight or {}, "local_blend": local_blend if not isinstance(
                         local_blend, tuple) else list(local_blend), "blend_threshold": blend_threshold,
                     "seed": seed, "n": n, "seconds": time.perf_counter() - t0,
                     **{k: v for k, v in settings.items() if isinstance(v, (int, float, str, bool, type(None)))}})
    return res


def _resolve_mode(mode: str, src: Sequence[int], tgt: Sequence[int]) -> str:
    return ("swap" if len(src) == len(tgt) else "refine") if mode == "auto" else mode


def _weights(encode: Any, prompt: str, reweight: dict[str, float], offset: int, K: int) -> torch.Tensor | None:
    if not reweight:
        return None
    w = torch.ones(K)
    for word, c in reweight.items():
        idx = word_tokens(encode, prompt, [word])
        if not idx:
            raise DataError(f"reweight: {word!r} is not a word of the prompt {prompt!r}")
        w[[offset + i for i in idx]] = float(c)
    return w


def _blend_cols(encode: Any, prompt: str, words: list[str] | None, changed: list[int], offset: int) -> list[int]:
    if words is None:
        return changed
    return [offset + i for i in word_tokens(encode, prompt, words)]


# ----------------------------------------------------------------------------- diffusion


def _diffusion_p2p(gen, source, prompt, source_prompt, n, seed, mask, tau, self_tau, mode, reweight, local_blend,
                   threshold, blend_start, settings) -> EditResult:
    from ..result import to_uint8

    model = gen.model
    cfg = model.config
    steps = int(settings.get("steps") or cfg.steps)
    settings = {**settings, "steps": steps}
    tok = model.text_encoder
    src_ids = tok.tokenize([source_prompt])[0][0].tolist()
    tgt_ids = tok.tokenize([prompt])[0][0].tolist()
    mode = _resolve_mode(mode, src_ids, tgt_ids)
    al = align(src_ids, tgt_ids, mode)
    latent = tuple(cfg.latent[1:])
    encode = model.tokenizer.encode if model.tokenizer is not None else None
    words, blend = _blend_words(local_blend)
    if (blend or reweight) and encode is None and (words or reweight):
        raise ConfigError("p2p word lookups need the SentencePiece text encoder (text.kind=transformer)")
    weights = _weights(encode, prompt, reweight, 1, len(tgt_ids)) if reweight else None
    passes = 0
    g = float(cfg.guidance if settings.get("guidance") is None else settings["guidance"])
    if source is not None:  # a real clip: null-text inversion under the source prompt (inversion.py)
        from .inversion import ddim_pivot, guided_ddim, null_text_optimise

        z0 = model.encode_video(np.asarray(source))  # (1, C, f, h, w)
        with torch.no_grad():
            conds = {source_prompt: model.encode_prompts([source_prompt]), prompt: model.encode_prompts([prompt])}
        pivot = ddim_pivot(gen, z0, conds[source_prompt], steps)  # [z*_0 .. z*_T], guidance 1
        nulls: Any = model.null_cond(conds[source_prompt].tokens.shape[1])
        passes += steps
        if g != 1.0:  # per-step null embeddings: guided DDIM from z*_T retraces the pivot
            nulls, p = null_text_optimise(gen, pivot, conds[source_prompt], nulls, g, steps)
            passes += p
        x_T = pivot[-1].expand(n, *pivot[-1].shape[1:]).contiguous()
    else:
        noise = model.initial_noise(n, torch.Generator().manual_seed(int(seed)))

    def run(text: str, callback: Any) -> tuple[np.ndarray, int]:  # -> (n, F, H, W, 3) uint8, forward passes
        if source is None:
            r = gen.generate([text], n=n, seed=seed, noise=noise, callback=callback, **settings)
            return r.videos, r.forward_passes
        z = guided_ddim(gen, x_T, conds[text].repeat(n), nulls, g, steps, callback=callback)
        with torch.inference_mode():
            return to_uint8(model.decode(z)), n * steps * (2 if g != 1.0 else 1)
    maps = _Maps()
    src_x: list[torch.Tensor] = []
    rec = DiffusionP2P(maps, True, self_steps=round(self_tau * steps))
    with attention_processor(model.denoiser, rec):
        src_videos, p = run(source_prompt, lambda i, t, x, x0: src_x.append(x.clone()))
    passes += p
    src_cols = _blend_cols(encode, source_prompt, words, al.changed_src, 1) if blend else []
    tgt_cols = _blend_cols(encode, prompt, words, al.changed_tgt, 1) if blend else []
    fixed = _pool_mask(mask, latent) if mask is not None else None  # (f, h, w)
    if blend and mask is None and not (src_cols or tgt_cols):
        raise DataError("local blending found no words to blend on: the prompts are equal; name the words")
    last: dict[str, torch.Tensor] = {}
    inj = DiffusionP2P(maps, False, al, round(tau * steps), round(self_tau * steps), weights,
                       keep_target=blend and mask is None)
    acc: dict[str, Any] = {"sum": None, "count": 0}

    def blend_step(i: int, t: int, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor | None:
        if fixed is not None:
            m = fixed[None, None].to(x.device)
        else:  # this step's maps join the running mean (P2P averages the maps of the steps so far)
            ms = [g for (_, s), p in maps.cross.items() if s == i and src_cols
                  for g in [_grid_map(p, src_cols, n, latent)] if g is not None]
            ms += [g for (_, s), p in inj.target.items() if s == i and tgt_cols
                   for g in [_grid_map(p, tgt_cols, n, latent)] if g is not None]
            if not ms:
                raise ConfigError("local blending needs cross-attention maps on a spatial grid; this denoiser has none")
            step_sum = torch.stack(ms).sum(0)
            acc["sum"] = step_sum if acc["sum"] is None else acc["sum"] + step_sum
            acc["count"] += len(ms)
            if i < round(blend_start * steps):
                return None
            m = _blend_mask(acc["sum"] / acc["count"], threshold)[:, None].to(x.device)  # (n, 1, f, h, w)
        last["m"] = m
        return src_x[i] + m.to(x.dtype) * (x - src_x[i])

    with attention_processor(model.denoiser, inj):
        videos, p = run(prompt, blend_step if (blend or fixed is not None) else None)
    passes += p
    F_, H, W = videos.shape[1:4]
    pix = None
    if "m" in last:
        m = last["m"][0, 0].bool().cpu()  # (f, h, w) of the first clip
        pix = _unpool(m, (F_, H, W))
    clip = np.asarray(source) if source is not None else src_videos[0]
    words_share = torch.stack([p[..., 1:].sum(-1).mean() for p in maps.cross.values()]).mean()  # keys after <s>
    return EditResult(videos, clip, src_videos[0], pix,
                      {"paradigm": "diffusion", "mode": mode, "forward_passes": passes, "steps": steps,
                       "inverted": source is not None, "null_text": source is not None and g != 1.0,
                       "prompt_attention": float(words_share)})


# ----------------------------------------------------------------------------- AR


def _ar_p2p(gen, source, prompt, source_prompt, n, seed, mask, tau, self_tau, mode, reweight, local_blend,
            threshold, blend_start, settings) -> EditResult:
    from ...ar_models.sampling import forced_tokens

    if self_tau:
        raise ConfigError("self_tau (self-attention injection) is a diffusion setting: the AR model's queries attend"
                          " to tokens that differ between the two runs; use tau")
    model = gen.model
    spec = model.spec
    src_plan = model.layouts.decode_plan("t2v", model.encode_prompt(source_prompt))
    tgt_plan = model.layouts.decode_plan("t2v", model.encode_prompt(prompt))
    P, N = len(tgt_plan.prefix), len(tgt_plan.ranges)
    mode = _resolve_mode(mode, model.encode_prompt(source_prompt), model.encode_prompt(prompt))
    al = align(src_plan.prefix, tgt_plan.prefix, mode)
    encode = model.text.encode
    off_s = 3 + spec.max_text - len(model.encode_prompt(source_prompt))  # key of the first text token
    off_t = 3 + spec.max_text - len(model.encode_prompt(prompt))
    weights = _weights(encode, prompt, reweight, off_t, P)
    words, blend = _blend_words(local_blend)
    maps = _Maps()
    rec = ARP2P(maps, True, P, N)
    t_gen = {k: v for k, v in settings.items() if k not in ("steps",)}
    if source is not None:  # the codec's ids are the exact inverse; one teacher-forced pass records the maps
        with torch.inference_mode():
            ids = gen.codec.encode(np.asarray(source))[:1]  # (1, f, h, w)
        src_ids = ids.expand(n, *ids.shape[1:]).cpu()
        forced = forced_tokens(src_ids, src_plan.ranges, n)  # (n, N) global ids
        dec = gen.decoder
        with attention_processor(model, rec), torch.inference_mode():
            dec.reset(n)
            with attention_context(step=0, roles=("cond",)):
                dec.forward(torch.tensor([src_plan.prefix] * n), 0, bidirectional=model.cfg.prefix_lm)
                dec.forward(forced[:, :-1], P)
            recon = gen.codec.decode(src_ids[:1].to(gen.codec.device))
        from ..result import to_uint8

        src_video, recon_video = np.asarray(source), to_uint8(recon)[0]
    else:
        with attention_processor(model, rec):
            src = gen.generate([source_prompt], n=n, seed=seed, **t_gen)
        src_ids = src.ids
        forced = forced_tokens(src_ids, src_plan.ranges, n)
        src_video = recon_video = src.videos[0]
    src_local = (forced - torch.tensor([r[0] for r in src_plan.ranges])).long()  # (n, N) codec ids
    keep = None  # (n, N) bool: positions where the source's token is forced
    tgt_cols: list[int] | None = None
    if mask is not None:
        keep = ~_pool_mask(mask, tuple(spec.latent)).reshape(1, -1).expand(n, -1)
    elif blend:
        src_cols = [off_s + i for i in word_tokens(encode, source_prompt, words)] if words else \
            [k for k in al.changed_src if off_s <= k < off_s + spec.max_text]
        tgt_cols = [off_t + i for i in word_tokens(encode, prompt, words)] if words else \
            [k for k in al.changed_tgt if off_t <= k < off_t + spec.max_text]
        if not src_cols and not tgt_cols:
            raise DataError("local blending found no words to blend on: the prompts are equal; name the words")
        s = torch.stack([m[..., src_cols].sum(-1).mean(1) for m in maps.cross.values()]).mean(0)  # (n, N)
        f, h, w = spec.latent
        s = F.max_pool2d(s.reshape(n * f, 1, h, w), 3, 1, 1).reshape(n, N)
        s_max = s.amax(1, keepdim=True).clamp_min(1e-12)
        keep = ~(s / s_max > threshold)
    inj = ARP2P(maps, False, P, N, al, round(tau * N), weights, keep_cols=tgt_cols or None)
    n_layers = len(maps.cross)

    def force(step: int, pos: int, logits: torch.Tensor, toks: torch.Tensor) -> torch.Tensor | None:
        if keep is None:
            return None
        k = keep[:, step].clone()
        if tgt_cols:  # the target words' attention at this token, read online
            k &= ~(inj.target[:, step] / n_layers / s_max[:, 0] > threshold)
        if not bool(k.any()):
            return None
        one = torch.full_like(logits, float("-inf"))
        one.scatter_(1, src_local[:, step : step + 1], 0.0)
        return torch.where(k[:, None], one, logits)

    with attention_processor(model, inj):
        out = gen.generate([prompt], n=n, seed=seed, callback=force, **t_gen)
    pix = None
    if keep is not None:
        f, h, w = spec.latent
        pix = _unpool(~keep[0].reshape(f, h, w), out.videos.shape[1:4])
    text_cols = list(range(off_s, off_s + len(model.encode_prompt(source_prompt))))
    words_share = torch.stack([m[..., text_cols].sum(-1).mean() for m in maps.cross.values()]).mean()
    return EditResult(out.videos, src_video, recon_video, pix,
                      {"paradigm": "ar", "mode": mode, "tokens": int(out.tokens) * (1 if source is not None else 2),
                       "real_source": source is not None, "prompt_attention": float(words_share)})
