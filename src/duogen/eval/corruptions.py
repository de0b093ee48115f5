"""Common corruptions of clips at five severity levels, deterministic under a seed.

After ImageNet-C (Hendrycks & Dietterich 2019, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations"): each kind has five severities, 1 (mild) to 5 (strong), on uint8
clips (N, F, H, W, 3):
- `gaussian_noise`: x + n, n ~ N(0, sigma^2) per pixel and channel;
- `blur`: a spatial Gaussian blur of each frame (sigma in pixels at a 32 px side, scaled with it);
- `color_shift`: a color cast: every pixel blended toward one random tint per clip,
  x' = (1 - a) x + a t, with t a random RGB color whose brightest channel is 255, so the clip's mean
  color moves toward t (a dark background takes the tint, objects lose contrast).
One seed gives the same corrupted clips on every call: the generator is `default_rng([seed, kind, severity])`.

Owns: the corruption functions and their severities. Does not own: what is evaluated on them
(`generated_data.py`).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

# severity 1..5 -> parameter
NOISE_SIGMA = (6.0, 12.0, 20.0, 30.0, 45.0)  # std of the added noise, 0-255 scale
BLUR_SIGMA = (0.5, 0.8, 1.1, 1.5, 2.0)  # px at a 32 px frame side
SHIFT_ALPHA = (0.1, 0.2, 0.3, 0.4, 0.5)  # blend weight a toward the tint

KINDS = ("gaussian_noise", "blur", "color_shift")


def _rng(seed: int, kind: str, severity: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), KINDS.index(kind), int(severity)])


def gaussian_noise(clips: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    x = clips.astype(np.float32) + rng.normal(0.0, NOISE_SIGMA[severity - 1], clips.shape).astype(np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def blur(clips: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    s = BLUR_SIGMA[severity - 1] * clips.shape[-2] / 32.0
    x = ndimage.gaussian_filter(clips.astype(np.float32), sigma=(0, 0, s, s, 0), mode="constant")  # (N, F, H, W, 3)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def color_shift(clips: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    a = SHIFT_ALPHA[severity - 1]
    u = rng.uniform(0.0, 1.0, size=(len(clips), 1, 1, 1, 3))
    tint = (255.0 * u / u.max(-1, keepdims=True)).astype(np.float32)  # (N, 1, 1, 1, 3)
    x = (1.0 - a) * clips.astype(np.float32) + a * tint
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


_FUNCS = {"gaussian_noise": gaussian_noise, "blur": blur, "color_shift": color_shift}


def corrupt(clips: np.ndarray, kind: str, severity: int = 3, seed: int = 0) -> np.ndarray:
    """uint8 clips (N, F, H, W, 3) -> corrupted copies, the same for the same (kind, severity, seed)."""
    if kind not in _FUNCS:
        raise ConfigError(f"corruption {kind!r} is not one of: {', '.join(KINDS)}")
    if not 1 <= int(severity) <= 5:
        raise ConfigError(f"corruption severity must be 1 to 5, got {severity!r}")
    clips = np.asarray(clips)
    if clips.ndim != 5 or clips.shape[-1] != 3 or clips.dtype != np.uint8:
        raise ConfigError(f"corrupt wants uint8 clips (N, F, H, W, 3); got {clips.dtype} {clips.shape}")
    return _FUNCS[kind](clips, int(severity), _rng(seed, kind, severity))
