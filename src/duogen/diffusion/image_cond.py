"""Image conditioning by input channels (InstructPix2Pix, Brooks et al. 2023): the model parts on the diffusion side.

Owns: `EditCond` (text + the image's latents, what an image-conditioned denoiser reads), `ImageConcat` (runs
any denoiser built with C + C_img input channels on cat([z_t, image]) and returns its first C output channels),
`widen_state` (a base denoiser's weights into the wider one, the new input weights zero: at the start the
wider model IS the base model), and `DualCFGDenoiser` (IP2P's two guidance scales, Eq. 3).
Does not own: the denoisers, the sampling loop, the editing procedure (`bridges/edit/ip2p.py`), training
(`train/ip2p_recipe.py`).

Shape notation: B batch, C latent channels, (f, h, w) the latent grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .blocks import TextCond


@dataclass
class EditCond:
    """What an image-conditioned denoiser is conditioned on: text and the source image's normalized latents."""

    text: TextCond | None
    image: Tensor  # (B, C_img, f, h, w); zeros = no image (the dropped / unconditional image)

    def __len__(self) -> int:
        return self.image.shape[0]

    def repeat(self, n: int) -> "EditCond":
        return EditCond(None if self.text is None else self.text.repeat(n), self.image.repeat_interleave(n, dim=0))


def cat_conds(conds: list[EditCond]) -> EditCond:
    """Concatenate along the batch (text padded to the longest; `TextCond.cat`)."""
    return EditCond(TextCond.cat([c.text for c in conds]), torch.cat([c.image for c in conds]))


class ImageConcat(nn.Module):
    """forward(z_t (B, C, f, h, w), t, cond) -> (B, C, f, h, w): `net` on cat([z_t, image], 1), first C channels.

    `cond` is an `EditCond`, or a plain `TextCond` / None (no image: zeros), so the model still generates from
    text alone.
    """

    def __init__(self, net: nn.Module, channels: int, image_channels: int):
        super().__init__()
        self.net, self.channels, self.image_channels = net, channels, image_channels

    def forward(self, z_t: Tensor, t: Tensor | float, cond: Any) -> Tensor:
        if isinstance(cond, EditCond):
            text, image = cond.text, cond.image.to(z_t)
        else:
            text, image = cond, z_t.new_zeros(z_t.shape[0], self.image_channels, *z_t.shape[2:])
        return self.net(torch.cat([z_t, image], dim=1), t, text)[:, : self.channels]


@torch.no_grad()
def widen_state(base: dict[str, Tensor], wide: dict[str, Tensor], channels: int) -> dict[str, Tensor]:
    """The base denoiser's state dict for the wider one (C -> C + C_img channels in and out), zeros elsewhere.

    A tensor whose shape differs has, on each differing dim, k * C (base) vs k * (C + C_img) (wide) entries, the
    channel innermost (DiT's patch vectors are (pt p q c); a conv's in / out dim is k = 1): the base fills
    [:, :C] of that dim viewed as (k, C + C_img). New input weights are zero, so the wide model's output equals
    the base model's; the extra output channels are zero too (and never read).
    """
    out = {}
    for name, w in wide.items():
        b = base[name]
        if b.shape == w.shape:
            out[name] = b.clone()
            continue
        new = torch.zeros_like(w)
        idx: list[Any] = []
        shape_b, shape_w = [], []
        for sb, sw in zip(b.shape, w.shape):
            if sb == sw:
                idx.append(slice(None))
                shape_b.append(sb)
                shape_w.append(sw)
                continue
            k = sb // channels
            if sb != k * channels or sw % k:
                raise ValueError(f"{name}: cannot widen {tuple(b.shape)} to {tuple(w.shape)} by channel")
            idx += [slice(None), slice(0, channels)]
            shape_b += [k, channels]
            shape_w += [k, sw // k]
        new.view(shape_w)[tuple(idx)] = b.reshape(shape_b)
        out[name] = new
    return out


class DualCFGDenoiser:
    """InstructPix2Pix guidance (Brooks et al. 2023, Eq. 3) over one 3B batch:

    e~ = e(z, 0, 0) + s_I (e(z, c_I, 0) - e(z, 0, 0)) + s_T (e(z, c_I, c_T) - e(z, c_I, 0)),
    with 0 the empty prompt / the zero image. s_I = 1 is classifier-free guidance on the text with the image
    kept in both terms. Applied to the model's prediction (epsilon or v: both are affine in it).
    """

    def __init__(self, denoiser: Any, text_scale: float, image_scale: float, null_text: TextCond):
        self.denoiser, self.s_T, self.s_I, self.null_text = denoiser, float(text_scale), float(image_scale), null_text

    def __call__(self, z_t: Tensor, t: Tensor, cond: EditCond) -> Tensor:
        B = z_t.shape[0]
        null_text = self.null_text.repeat(B) if len(self.null_text) == 1 else self.null_text
        both = cat_conds([cond, EditCond(null_text, cond.image), EditCond(null_text, torch.zeros_like(cond.image))])
        e_IT, e_I, e_0 = self.denoiser(torch.cat([z_t] * 3), torch.cat([t] * 3), both).chunk(3)
        return e_0 + self.s_I * (e_I - e_0) + self.s_T * (e_IT - e_I)
