"""Classifier-free guidance as a wrapper around a denoiser.

Owns: `CFGDenoiser` (conditional and unconditional branches in one batched
forward, guidance rescale) and the range checks on guidance settings. Does
not own: the denoiser, the sampling loop, how the unconditional condition is
made (an empty prompt's embedding, a null token: the caller's choice).

A condition (`cond`, `uncond`) is a tensor, a dict / list / tuple / dataclass
(e.g. `TextCond`) of tensors, or nested mixes of those (None leaves stay None),
with the batch on dim 0; an `uncond` with batch 1 is broadcast to the batch of
`cond`. Beyond the batch, shapes must match (pad an empty prompt to the
conditional prompt's token length).

The batched forward runs inside `attention_context(roles=("cond", "uncond"))`:
attention processors (`duogen.attention`) are called once per half, the
conditional rows with `call.role == "cond"`, the unconditional ones with
"uncond". At scale 1 there is one conditional forward and every call is "cond".
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import torch

from duogen.attention import attention_context
from duogen.errors import ConfigError

MAX_GUIDANCE = 100.0


def check_guidance(scale: Any, rescale: Any = 0.0) -> None:
    """Raise ConfigError unless 0 <= scale <= MAX_GUIDANCE and 0 <= rescale <= 1."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ConfigError(f"guidance scale must be a number, got {scale!r}")
    if not 0.0 <= scale <= MAX_GUIDANCE:
        raise ConfigError(
            f"guidance scale must be in [0, {MAX_GUIDANCE:g}] (1 = no guidance, typical 2-10), got {scale}"
        )
    if isinstance(rescale, bool) or not isinstance(rescale, (int, float)) or not 0.0 <= rescale <= 1.0:
        raise ConfigError(f"guidance rescale must be in [0, 1] (Lin et al. suggest 0.7), got {rescale!r}")


class CFGDenoiser:
    """out = uncond + scale (cond - uncond) (Ho & Salimans 2022, Eq. 6), optionally rescaled to the conditional
    output's per-sample std (Lin et al. 2023, Sec. 3.4: phi * out * std_cond / std_cfg + (1 - phi) * out)."""

    def __init__(
        self,
        denoiser: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
        scale: float,
        uncond: Any,
        rescale: float = 0.0,
    ):
        check_guidance(scale, rescale)
        if uncond is None and scale != 1.0:
            raise ConfigError("classifier-free guidance needs an unconditional condition (uncond); got None")
        self.denoiser = denoiser
        self.scale = float(scale)
        self.uncond = uncond
        self.rescale = float(rescale)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """x_t: (B, ...), t: (B,) int64 -> guided prediction (B, ...)."""
        if self.scale == 1.0:  # the conditional model exactly, one forward
            return self.denoiser(x_t, t, cond)
        B = x_t.shape[0]
        both = _cat_cond(cond, self.uncond, B)
        with attention_context(roles=("cond", "uncond")):  # rows [:B] conditional, [B:] unconditional
            out = self.denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), both)  # (2B, ...)
        out_cond, out_uncond = out[:B], out[B:]
        guided = out_uncond + self.scale * (out_cond - out_uncond)
        if self.rescale > 0.0:
            dims = tuple(range(1, guided.dim()))
            std_cond = out_cond.std(dim=dims, keepdim=True)
            std_cfg = guided.std(dim=dims, keepdim=True)
            factor = self.rescale * std_cond / std_cfg + (1.0 - self.rescale)
            guided = guided * factor
        return guided


def _cat_cond(cond: Any, uncond: Any, batch: int) -> Any:
    """Concatenate cond (batch B) and uncond (batch B or 1) along dim 0, through dicts, sequences, dataclasses."""
    if cond is None and uncond is None:
        return None
    if dataclasses.is_dataclass(cond) and not isinstance(cond, type):
        if type(uncond) is not type(cond):
            raise ConfigError(f"uncond must be a {type(cond).__name__} like cond, got {type(uncond).__name__}")
        names = [f.name for f in dataclasses.fields(cond) if f.init]
        return type(cond)(**{n: _cat_cond(getattr(cond, n), getattr(uncond, n), batch) for n in names})
    if isinstance(cond, torch.Tensor):
        if not isinstance(uncond, torch.Tensor):
            raise ConfigError(f"uncond must have the structure of cond: expected a tensor, got {type(uncond).__name__}")
        if uncond.shape[0] == 1 and batch != 1:
            uncond = uncond.expand(batch, *uncond.shape[1:])
        if uncond.shape != cond.shape:
            raise ConfigError(f"uncond shape {tuple(uncond.shape)} does not match cond shape {tuple(cond.shape)}")
        return torch.cat([cond, uncond.to(cond.device)])
    if isinstance(cond, dict):
        if not isinstance(uncond, dict) or set(uncond) != set(cond):
            raise ConfigError(f"uncond must be a dict with the keys of cond: {sorted(cond)}")
        return {k: _cat_cond(cond[k], uncond[k], batch) for k in cond}
    if isinstance(cond, (list, tuple)):
        if not isinstance(uncond, (list, tuple)) or len(uncond) != len(cond):
            raise ConfigError(f"uncond must be a sequence of {len(cond)} items like cond")
        items = [_cat_cond(c, u, batch) for c, u in zip(cond, uncond)]
        return type(cond)(*items) if hasattr(cond, "_fields") else type(cond)(items)  # NamedTuple or plain
    raise ConfigError(f"cannot batch a condition of type {type(cond).__name__} for guidance; use tensors")
