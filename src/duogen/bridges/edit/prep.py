"""What every editing technique does before and around its own step, on both paradigms.

Owns: the source in the model's space (`encode_source`: AR codec ids or diffusion normalized latents, with the
codec's reconstruction), fitting a clip to the model's size (`fit_clip`), checking and mapping masks between
pixels (F, H, W) and the latent grid (f, h, w) (`latent_mask`, `pixel_mask`, `check_mask`, `object_mask`), the
AR per-token log-probabilities of the source under a prompt (`ar_token_logp`), the diffusion noising of a
source (`noised`), and the checks shared by all techniques (`check_strength`).
Does not own: the techniques (one file each), reading or writing files (`duogen edit`, `cli_edit.py`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import ConfigError, DataError


def codec_of(gen: Any) -> Any:
    """The video codec a generator decodes through (AR: `gen.codec`; diffusion: the model's)."""
    if gen.kind == "ar":
        return gen.codec
    if gen.kind == "diffusion":
        return gen.model._need_codec()
    raise DataError(f"editing works on AR and diffusion video models; this generator is {gen.kind!r}")


def check_video_model(gen: Any) -> None:
    """Refuse models that do not make video clips (an audio-only AR model): editing needs a video codec."""
    if gen.kind == "ar":
        if "t2v" not in gen.model.spec.tasks:
            raise DataError(f"this AR model makes {', '.join(gen.model.spec.tasks)}, not video from text (t2v);"
                            " editing needs a text-to-video model")
        return
    codec_of(gen)


def fit_clip(gen: Any, video: Any) -> np.ndarray:
    """A clip (F, H, W, 3) uint8 (or an image (H, W, 3)) at the codec's size and length, warned when resized."""
    from ...data.media import resize_video

    v = np.asarray(video)
    if v.ndim == 3 and v.shape[-1] == 3:
        v = v[None]
    if v.ndim != 4 or v.shape[-1] != 3 or v.shape[0] < 1:
        raise DataError(f"a source clip must be (F, H, W, 3) uint8 or an image (H, W, 3), got shape {v.shape}")
    if v.dtype != np.uint8:
        raise DataError(f"a source clip must be uint8, got {v.dtype}")
    cfg = codec_of(gen).cfg
    want = (int(cfg.frames), int(cfg.size), int(cfg.size))
    if v.shape[:3] != want:
        warnings.warn(f"input {v.shape[:3]} fitted to {want}, the model's size (frames, H, W)", UserWarning, stacklevel=3)
        v = resize_video(v, want[1], want[0])
    return np.ascontiguousarray(v)


def check_strength(strength: Any, name: str = "strength") -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= float(strength) <= 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1] (0 keeps the source, 1 redraws all), got {strength!r}")
    return float(strength)


@dataclass
class Source:
    """The source in the model's space: AR `ids` (1, f, h, w) or diffusion `latents` (1, C, f, h, w), and its decode."""

    video: np.ndarray  # (F, H, W, 3) uint8, fitted
    reconstruction: np.ndarray  # (F, H, W, 3) uint8: the codec's round trip (AR: ids; diffusion: latents)
    ids: Any = None  # AR: (1, f, h, w) int64 codec ids
    latents: Any = None  # diffusion: (1, C, f, h, w) float32 normalized latents


def encode_source(gen: Any, video: np.ndarray) -> Source:
    """Encode a fitted clip; the reconstruction is what the model sees of it (AR ids decoded, diffusion latents decoded)."""
    import torch

    from ..result import to_uint8

    with torch.no_grad():  # not inference_mode: null-text inversion differentiates through the latents
        if gen.kind == "ar":
            ids = gen.codec.encode(video).long().cpu()  # (1, f, h, w)
            return Source(video, to_uint8(gen.codec.decode(ids.to(gen.codec.device)))[0], ids=ids)
        z = gen.model.encode_video(video).float().cpu()  # (1, C, f, h, w)
        return Source(video, to_uint8(gen.model.decode(z))[0], latents=z)


def latent_grid(gen: Any) -> tuple[int, int, int]:
    """(f, h, w) of one clip's latent grid."""
    if gen.kind == "ar":
        return tuple(int(x) for x in gen.model.spec.latent)  # type: ignore[return-value]
    return tuple(int(x) for x in gen.model.config.latent[1:])  # type: ignore[return-value]


def _frame_groups(F: int, f: int) -> list[np.ndarray]:
    """Pixel frames of each latent frame: a causal 1 + r k codec codes frame 0 alone, then r frames each."""
    if f == 1:
        return [np.arange(F)]
    if (F - 1) % (f - 1) == 0:
        r = (F - 1) // (f - 1)
        return [np.array([0])] + [np.arange(1 + r * j, 1 + r * (j + 1)) for j in range(f - 1)]
    return [np.asarray(g) for g in np.array_split(np.arange(F), f)]


def latent_mask(mask: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """Pixel mask (F, H, W) bool -> latent mask (f, h, w) bool: a cell is in when any of its pixels is."""
    F, H, W = mask.shape
    f, h, w = grid
    out = np.zeros(grid, bool)
    for j, frames in enumerate(_frame_groups(F, f)):
        m = mask[frames].any(0)  # (H, W)
        out[j] = m.reshape(h, H // h, w, W // w).any((1, 3))
    return out


def pixel_mask(lmask: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Latent mask (f, h, w) -> pixel mask (F, H, W): each cell's pixels and frames."""
    F, H, W = shape
    f, h, w = lmask.shape
    out = np.zeros(shape, bool)
    for j, frames in enumerate(_frame_groups(F, f)):
        out[frames] = np.kron(lmask[j], np.ones((H // h, W // w), bool)).astype(bool)[None]
    return out


def check_mask(mask: Any, video: np.ndarray) -> np.ndarray | None:
    """A user mask -> (F, H, W) bool matching the fitted source; (H, W) applies to every frame. None passes."""
    if mask is None:
        return None
    m = np.asarray(mask)
    F, H, W = video.shape[:3]
    if m.ndim == 4 and m.shape[-1] in (1, 3):  # a mask clip read as RGB: any channel lit
        m = m.any(-1)
    if m.ndim == 2:
        m = np.broadcast_to(m, (F, H, W))
    if m.shape != (F, H, W):
        raise DataError(f"the mask is {m.shape[:3] if m.ndim >= 3 else m.shape}; it must match the fitted input"
                        f" ({F}, {H}, {W}) (frames, H, W) or one frame ({H}, {W})")
    m = m.astype(bool)
    if not m.any():
        raise DataError("the mask is empty: nothing may change; mark the region to edit with nonzero pixels")
    return np.ascontiguousarray(m)


def object_mask(video: np.ndarray) -> np.ndarray:
    """Every object the probes find (any palette color) as (F, H, W) bool; DataError when there is none."""
    from ...eval.objects import object_masks

    found = object_masks(video)
    if not found:
        raise DataError("no object found in the input for an automatic mask; give --mask FILE (nonzero = edit here)")
    m = np.zeros(video.shape[:3], bool)
    for v in found.values():
        m |= np.asarray(v, bool)
    return m


def ar_token_logp(gen: Any, ids: Any, prompt: str, guidance: float | None = None) -> Any:
    """log p(source token n | prompt, source tokens < n) for every output position: (B, N) float32.

    Teacher forcing through the generator's own decode loop: the source ids are forced and a step callback
    records the (guided, when `guidance`) log-softmax over the video range at each position; one pass.
    """
    import torch

    logps: list[Any] = []

    def record(n: int, pos: int, logits: Any, prev: Any) -> None:
        logps.append(torch.log_softmax(logits.float(), -1))  # (B, R)

    B = int(ids.shape[0])
    gen.generate([prompt], n=B, seed=0, ids=ids, guidance=guidance, callback=record)
    lp = torch.stack(logps, 1)  # (B, N, R)
    tok = torch.as_tensor(ids).reshape(B, -1).long()  # (B, N) codec ids = index into the video range
    return lp.gather(-1, tok[..., None])[..., 0], lp


def noised(gen: Any, z0: Any, t: int, seed: int, n: int) -> tuple[Any, Any]:
    """n draws of q(z_t | z_0) = sqrt(a_t) z_0 + sqrt(1 - a_t) eps (Ho et al. 2020, Eq. 4): (z_t, eps), (n, C, f, h, w)."""
    import torch

    g = torch.Generator().manual_seed(int(seed) + 7919)  # its own stream, apart from the sampler's seed
    eps = torch.randn((n, *z0.shape[1:]), generator=g)
    z0n = z0.expand(n, *z0.shape[1:])
    return gen.model.schedule.add_noise(z0n, eps, int(t)), eps


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """PSNR in dB of uint8 clips (F, H, W, 3) (peak 255) over the pixels `where` (F, H, W) (all when None);
    identical pixels give 100 dB (the cap) rather than infinity."""
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2  # (F, H, W, 3)
    if where is not None:
        d = d[where]
    mse = float(d.mean()) if d.size else 0.0
    return 100.0 if mse <= 1e-10 else float(min(100.0, 10 * np.log10(255.0**2 / mse)))
