"""InstructPix2Pix (Brooks et al. 2023) on both paradigms: `ip2p_edit`, sampling with two guidance scales.

Owns the editing procedure of a model trained for it (`duogen train ip2p`, `train/ip2p_recipe.py`):
- diffusion: the source's normalized latents c_I are extra input channels of the denoiser
  (`diffusion.image_cond.ImageConcat`); sampling runs the denoiser on (z_t, c_I, c_T), (z_t, c_I, 0),
  (z_t, 0, 0) as one batch and combines them with `DualCFGDenoiser` (IP2P Eq. 3);
- AR: the `edit` layout [instruction][source clip] -> [edited clip] (`ar_models/layouts.py`); decoding keeps
  three streams in one batch (instruction + source, source only, neither: the source's tokens all <pad>) and
  combines their logits the same way: l = l_00 + s_I (l_I0 - l_00) + s_T (l_IT - l_I0), then samples one
  token for all three.
`prompt` is the instruction ("make it blue"). Does not own: training, the model parts, writing files.

Shape notation: n clips, P prefix tokens, N output tokens, R a position's id range, (C, f, h, w) latents.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ...errors import ConfigError
from .common import EditResult


def ip2p_edit(gen: Any, source: np.ndarray, *, prompt: str | None = None, source_prompt: str | None = None,
              n: int = 1, seed: int = 0, mask: Any = None, text_scale: float | None = None, image_scale: float = 1.5,
              instruction: str | None = None, guidance: float | None = None, image_guidance: float | None = None,
              **settings: Any) -> EditResult:
    """Edit the clip `source` (uint8 (F, H, W, 3)) by an instruction with an IP2P-trained model.

    The instruction is `instruction` (`duogen edit --instruction`), else `prompt`. text_scale s_T (alias
    `guidance`; None: the model's stored guidance for diffusion, 3 for AR), image_scale s_I (alias
    `image_guidance`; 1 = plain text guidance with the source in both streams). Other settings: steps, sampler
    (diffusion); temperature, top_k, top_p (AR). `source_prompt` is not used (the instruction says the edit).
    """
    prompt = instruction if instruction is not None else prompt
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("InstructPix2Pix needs the edit as an instruction: --instruction 'make it blue'")
    text_scale = guidance if text_scale is None else text_scale
    image_scale = image_scale if image_guidance is None else image_guidance
    if source is None:
        raise ConfigError("InstructPix2Pix edits a given clip: pass the input")
    if mask is not None:
        raise ConfigError("InstructPix2Pix edits the whole clip from the instruction; it takes no mask")
    for name, v in (("text_scale", text_scale), ("image_scale", image_scale)):
        if v is not None and not (isinstance(v, (int, float)) and np.isfinite(v)):
            raise ConfigError(f"{name} must be a number, got {v!r}")
    run = {"ar": _ar, "diffusion": _diffusion}.get(gen.kind)
    if run is None:
        raise ConfigError(f"InstructPix2Pix edits AR and diffusion models, not {gen.kind!r}")
    t0 = time.perf_counter()
    res = run(gen, np.asarray(source), prompt, n, seed, text_scale, float(image_scale), settings)
    res.info.update({"method": "ip2p", "instruction": prompt, "image_scale": image_scale, "seed": seed, "n": n,
                     "seconds": time.perf_counter() - t0,
                     **{k: v for k, v in settings.items() if isinstance(v, (int, float, str, bool, type(None)))}})
    return res


# ----------------------------------------------------------------------------- diffusion


def _diffusion(gen, source, prompt, n, seed, text_scale, image_scale, settings):
    from ...diffusion.image_cond import DualCFGDenoiser, EditCond
    from ...diffusion.sampling import sample
    from ...diffusion.schedulers import make_scheduler
    from ..result import to_uint8

    model = gen.model
    cfg = model.config
    if not cfg.image_channels:
        raise ConfigError("this diffusion model reads no source clip (image_channels=0): train one for editing with"
                          " `duogen train ip2p --paradigm diffusion --init-from MODEL`")
    bad = set(settings) - {"steps", "sampler"}
    if bad:
        raise ConfigError(f"ip2p on a diffusion model takes steps and sampler, not {', '.join(sorted(bad))}")
    steps = int(settings.get("steps") or cfg.steps)
    sampler = settings.get("sampler") or cfg.sampler
    sampler = {"dpm": "dpm_solver", "dpm++": "dpm_solver"}.get(sampler, sampler)  # as `sample_latents` names them
    s_T = float(cfg.guidance if text_scale is None else text_scale)
    z_src = model.encode_video(source)  # (1, C, f, h, w)
    with torch.no_grad():
        text = model.encode_prompts([prompt])
    cond = EditCond(text, z_src).repeat(n)
    dual = DualCFGDenoiser(model.denoiser, s_T, image_scale, model.null_cond(text.tokens.shape[1]))
    g = torch.Generator().manual_seed(int(seed))
    x_T = model.initial_noise(n, g)
    z = sample(dual, make_scheduler(sampler, model.schedule, cfg.prediction_type), x_T, cond, steps=steps,
               generator=g)
    with torch.inference_mode():
        videos, recon = to_uint8(model.decode(z)), to_uint8(model.decode(z_src))[0]
    return EditResult(videos, source, recon, None, {"paradigm": "diffusion", "text_scale": s_T, "steps": steps,
                                                    "sampler": sampler, "forward_passes": 3 * n * steps})


# ----------------------------------------------------------------------------- AR


def _ar(gen, source, prompt, n, seed, text_scale, image_scale, settings):
    from ...ar_models.layouts import NULL_CLIP
    from ...ar_models.sampling import SamplingConfig, to_codec_ids
    from ..result import to_uint8

    model = gen.model
    if "edit" not in model.spec.tasks:
        raise ConfigError("this AR model was not trained for the edit task: train one with"
                          " `duogen train ip2p --paradigm ar --init-from MODEL`")
    bad = set(settings) - {"temperature", "top_k", "top_p"}
    if bad:
        raise ConfigError(f"ip2p on an AR model takes temperature, top_k and top_p, not {', '.join(sorted(bad))}")
    s = SamplingConfig(**settings)
    s.check()
    s_T = 3.0 if text_scale is None else float(text_scale)
    with torch.inference_mode():
        src_ids = gen.codec.encode(source)[0].cpu()  # (f, h, w): the codec's exact inverse
    text = model.encode_prompt(prompt)
    plans = [model.layouts.decode_plan("edit", t, {"source": c})
             for t, c in ((text, src_ids), ([], src_ids), ([], NULL_CLIP))]
    prefix = torch.tensor([p.prefix for p in plans for _ in range(n)])  # (3n, P): IT, I0, 00
    ids = dual_guided_decode(gen.decoder, prefix, plans[0].ranges, s_T, image_scale, s, model.cfg.prefix_lm, seed)
    codec_ids = to_codec_ids(model, "edit", ids)  # (n, f, h, w)
    with torch.inference_mode():
        videos = to_uint8(gen.codec.decode(codec_ids.to(gen.codec.device)))
        recon = to_uint8(gen.codec.decode(src_ids[None].to(gen.codec.device)))[0]
    return EditResult(videos, source, recon, None, {"paradigm": "ar", "text_scale": s_T, "tokens": int(ids.numel()),
                                                    "forward_tokens": 3 * int(ids.numel())})


def dual_guided_decode(decoder: Any, prefix: torch.Tensor, ranges: list[tuple[int, int]], text_scale: float,
                       image_scale: float, s: Any, prefix_lm: bool, seed: int) -> torch.Tensor:
    """Decode N tokens for three streams in one batch (prefix (3n, P): rows [:n] instruction + source, [n:2n]
    source only, [2n:] neither), one draw per clip from the combined logits (IP2P Eq. 3) -> (n, N) global ids."""
    from ...ar_models.sampling import _filter, _threads

    n, P = prefix.shape[0] // 3, prefix.shape[1]
    out = torch.empty(n, len(ranges), dtype=torch.long)
    g = torch.Generator().manual_seed(int(seed))
    with _threads(s.threads), torch.inference_mode():
        decoder.reset(3 * n)
        h = decoder.forward(prefix, 0, bidirectional=prefix_lm)  # (3n, D)
        for i, (lo, hi) in enumerate(ranges):
            l_IT, l_I, l_0 = decoder.logits(h, lo, hi).float().chunk(3)  # (n, R) each
            logits = l_0 + image_scale * (l_I - l_0) + text_scale * (l_IT - l_I)
            if s.temperature == 0:
                tok = logits.argmax(-1)
            else:
                tok = torch.multinomial(_filter(logits / s.temperature, s.top_k, s.top_p).softmax(-1), 1,
                                        generator=g)[:, 0]
            out[:, i] = tok + lo
            if i + 1 < len(ranges):
                h = decoder.forward(out[:, i].repeat(3)[:, None], P + i)
    return out
