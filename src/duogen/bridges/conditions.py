"""User condition files and arrays -> what a generator reads: clips fitted to a codec, given first frames as ids.

Shared by the AR generators (`generate.ARGenerator`, `patch_generator.PatchARGenerator`), below both.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError


def read_media(image: Any = None, video: Any = None) -> tuple[Any, Any]:
    """A path is read (`data.media`); an array or None passes through."""
    from ..data.media import read_image, read_video

    if isinstance(image, (str, Path)):
        image = read_image(image)
    if isinstance(video, (str, Path)):
        video = read_video(video)
    return image, video


def fit_clip(codec: Any, video: np.ndarray, image: bool = False, stacklevel: int = 4) -> np.ndarray:
    """A condition clip (F, H, W, 3), or an image as (1, H, W, 3), at the codec's size (warned when resized)."""
    from ..data.media import resize_video

    size = int(codec.cfg.size)
    frames = 1 if image else int(codec.cfg.frames)
    if video.shape[1:3] != (size, size) or video.shape[0] != frames:
        have, want = (video.shape[1:3], (size, size)) if image else (video.shape[:3], (frames, size, size))
        warnings.warn(f"condition {'image' if image else 'clip'} {have} resized to {want}, the model's size",
                      UserWarning, stacklevel=stacklevel)
        video = resize_video(video, size, frames)
    return video


def first_frame_ids(codec: Any, image: Any, video: Any, cond_frames: int) -> Any:
    """i2v's condition: the codec ids (cond_frames, h, w) of a clip's first latent frames, or of one image (the
    first latent frame of a causal codec, so only for cond_frames 1). Paths are read; call under inference mode."""
    image, video = read_media(image, video)
    if video is not None:
        return codec.encode(fit_clip(codec, np.asarray(video)))[0, :cond_frames]
    if image is not None:
        if cond_frames != 1:
            raise DataError(f"this model continues from {cond_frames} latent frames; give --video, not --image")
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[-1] != 3:
            raise DataError(f"an image must be uint8 (H, W, 3), got shape {img.shape}")
        return codec.encode(fit_clip(codec, img[None], image=True))[0, :1]
    raise DataError("task i2v needs the first frame: pass --image FILE or --video FILE")
