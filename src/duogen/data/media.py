"""Media files in and out: video, image and audio readers, MP4 / GIF / WAV writers, resizing, grids.

Everything here works on plain NumPy arrays in the layouts the rest of duogen uses:
video uint8 (F, H, W, 3), image uint8 (H, W, 3), audio float32 mono in [-1, 1].
Readers turn any failure into a `DataError` that names the file; writers are
atomic (temporary sibling, then rename). This module does not own data sets
(`duogen.data`) or model-specific pre-processing (the codecs).
"""

from __future__ import annotations

import io
import math
import os
import wave
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..io import _tmp_sibling, atomic_write_bytes, atomic_write_json

VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v", ".mpg", ".mpeg"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
AUDIO_EXTS = {".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus"}

# Clip geometry per preset: (side in pixels, frames). Frames are 1+4k so the causal
# video codec's 4x temporal compression divides them (DESIGN.md).
CLIP_PRESETS: dict[str, tuple[int, int]] = {"tiny": (32, 9), "small": (64, 17), "base": (128, 17)}


def clip_preset(preset: str) -> tuple[int, int]:
    """(side, frames) of a preset; an unknown name is a ConfigError naming the allowed ones."""
    if preset not in CLIP_PRESETS:
        raise ConfigError(f"preset: {preset!r} is not one of {sorted(CLIP_PRESETS)}")
    return CLIP_PRESETS[preset]


def media_kind(path: str | Path) -> str:
    """'video' | 'image' | 'audio' from the file extension; anything else is a DataError."""
    ext = Path(path).suffix.lower()
    if ext in VIDEO_EXTS:
        return "video"
    if ext in IMAGE_EXTS:
        return "image"
    if ext in AUDIO_EXTS:
        return "audio"
    raise DataError(f"{path}: unsupported file type {ext!r} (video {sorted(VIDEO_EXTS)}, image {sorted(IMAGE_EXTS)}, audio {sorted(AUDIO_EXTS)})")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


# ----------------------------------------------------------------------------- readers


def read_video(path: str | Path) -> np.ndarray:
    """Decode every frame of a video file -> uint8 (F, H, W, 3) RGB."""
    import av

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path}: no video stream")
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except DataError:
        raise
    except Exception as e:  # PyAV raises InvalidDataError, EOFError, ValueError... on bad files
        raise DataError(f"{path}: cannot read video ({_one_line(e)})") from None
    if not frames:
        raise DataError(f"{path}: video has no decodable frames")
    return np.stack(frames).astype(np.uint8)  # (F, H, W, 3)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file -> uint8 (H, W, 3) RGB (alpha composited onto black)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
                im = Image.alpha_composite(bg, im)
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except Exception as e:
        raise DataError(f"{path}: cannot read image ({_one_line(e)})") from None


def resample_audio(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased) of a mono float signal."""
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(int(sr_in), int(sr_out))
    return resample_poly(np.asarray(x, dtype=np.float64), sr_out // g, sr_in // g).astype(np.float32)


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        sr, ch, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
        raw = w.readframes(n)
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        v = b[:, 0].astype(np.int32) | (b[:, 1].astype(np.int32) << 8) | (b[:, 2].astype(np.int32) << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / float(1 << 23)
    elif width == 4:
        x = np.frombuffer(raw, "<i4").astype(np.float32) / float(1 << 31)
    else:
        raise DataError(f"{path}: unsupported WAV sample width {width}")
    x = x[: (len(x) // ch) * ch].reshape(-1, ch).mean(axis=1)  # (S,) mono
    return x.astype(np.float32), sr


def _read_audio_av(path: Path) -> tuple[np.ndarray, int]:
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise DataError(f"{path}: no audio stream")
        sr = container.streams.audio[0].rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        chunks = []
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        raise DataError(f"{path}: audio has no decodable samples")
    return np.concatenate(chunks).astype(np.float32), int(sr)


def read_audio(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read an audio file -> (float32 mono (S,) in [-1, 1], sample rate).

    WAV (integer PCM) goes through the stdlib `wave` module, everything else
    through PyAV. With `sample_rate`, the signal is resampled to it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        if path.suffix.lower() == ".wav":
            try:
                x, sr = _read_wav(path)
            except wave.Error:  # float WAV and other formats `wave` does not read
                x, sr = _read_audio_av(path)
        else:
            x, sr = _read_audio_av(path)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot read audio ({_one_line(e)})") from None
    if x.size == 0:
        raise DataError(f"{path}: audio is empty")
    if sample_rate is not None and sample_rate != sr:
        x, sr = resample_audio(x, sr, sample_rate), sample_rate
    return x, sr


# ----------------------------------------------------------------------------- writers


def _as_video(video: Any) -> np.ndarray:
    v = np.asarray(video)
    if v.ndim == 3:  # one image -> one-frame clip
        v = v[None]
    if v.ndim != 4 or v.shape[-1] != 3:
        raise DataError(f"expected a video of shape (F, H, W, 3), got {tuple(v.shape)}")
    if v.dtype != np.uint8:
        if np.issubdtype(v.dtype, np.floating):
            raise DataError("expected a uint8 video; convert floats with `((x + 1) * 127.5).round().clip(0, 255).astype(np.uint8)`")
        v = v.clip(0, 255).astype(np.uint8)
    return v


def _auto_upscale(video: np.ndarray, upscale: int | None, target: int = 128) -> np.ndarray:
    """Nearest-neighbour integer upscaling so small clips are visible (32x32 -> 4x by default)."""
    if upscale is None:
        upscale = max(1, target // max(video.shape[1], video.shape[2]))
    if upscale > 1:
        video = video.repeat(upscale, axis=1).repeat(upscale, axis=2)
    return video


def write_mp4(path: str | Path, video: Any, fps: float = 8, *, upscale: int | None = None, crf: int = 18) -> Path:
    """Write uint8 (F, H, W, 3) as H.264 / yuv420p MP4, atomically.

    Clips smaller than 128 px are upscaled by an integer nearest-neighbour factor
    (4x for 32x32) unless `upscale` is given; odd sizes are padded by one black
    row / column because yuv420p needs even dimensions.
    """
    import av
    from fractions import Fraction

    path = Path(path)
    v = _auto_upscale(_as_video(video), upscale)
    F, H, W, _ = v.shape
    v = np.pad(v, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)))
    tmp = _tmp_sibling(path, ".mp4")
    try:
        with av.open(str(tmp), "w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height = v.shape[2], v.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": "medium"}
            for frame in v:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_gif(path: str | Path, video: Any, fps: float = 8, *, upscale: int | None = None) -> Path:
    """Write uint8 (F, H, W, 3) as a looping GIF (Pillow), atomically; small clips upscaled as in `write_mp4`."""
    from PIL import Image

    v = _auto_upscale(_as_video(video), upscale)
    frames = [Image.fromarray(f) for f in v]
    buf = io.BytesIO()
    frames[0].save(
        buf, format="GIF", save_all=True, append_images=frames[1:],
        duration=max(20, int(round(1000 / fps))), loop=0, optimize=False, disposal=1,
    )
    return atomic_write_bytes(path, buf.getvalue())


def write_image(path: str | Path, image: Any) -> Path:
    """Write uint8 (H, W, 3) as PNG / JPEG (by extension), atomically."""
    from PIL import Image

    path = Path(path)
    buf = io.BytesIO()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower(), "PNG")
    Image.fromarray(_as_video(image)[0]).save(buf, format=fmt)
    return atomic_write_bytes(path, buf.getvalue())


def write_wav(path: str | Path, audio: Any, sample_rate: int = 16000) -> Path:
    """Write float mono audio in [-1, 1] as 16-bit PCM WAV, atomically (values outside are clipped)."""
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    pcm = (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------- resizing


def loop_frames(video: np.ndarray, frames: int) -> np.ndarray:
    """Keep the first `frames` frames; a shorter clip is looped from its start."""
    idx = np.arange(frames) % video.shape[0]
    return video[idx]


def resize_image(image: np.ndarray, size: int | tuple[int, int], *, crop: bool = True) -> np.ndarray:
    """Resize uint8 (H, W, 3) to `size` (side or (H, W)) with antialiasing.

    With `crop`, the largest centred region of the target aspect ratio is kept
    first, so objects are not stretched.
    """
    from PIL import Image

    th, tw = (size, size) if isinstance(size, int) else size
    h, w = image.shape[:2]
    if crop:
        scale = min(h / th, w / tw)
        ch, cw = max(1, round(th * scale)), max(1, round(tw * scale))
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        image = image[y0 : y0 + ch, x0 : x0 + cw]
    if image.shape[:2] == (th, tw):
        return np.ascontiguousarray(image)
    # LANCZOS on the full-resolution image is Pillow's antialiased resampling filter.
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((tw, th), Image.Resampling.LANCZOS))


def resize_video(video: Any, size: int | tuple[int, int], frames: int | None = None, *, crop: bool = True) -> np.ndarray:
    """uint8 (F, H, W, 3) -> (frames, size, size, 3): trim or loop to `frames`, resize each frame with antialiasing."""
    v = _as_video(video)
    if frames is not None:
        v = loop_frames(v, frames)
    return np.stack([resize_image(f, size, crop=crop) for f in v])


# ----------------------------------------------------------------------------- grids


def _caption_strip(text: str, width: int, lines: int, font: Any) -> np.ndarray:
    from PIL import Image, ImageDraw

    line_h = 11
    im = Image.new("RGB", (width, lines * line_h + 4), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    words, rows, cur = text.split(), [], ""
    for word in words:  # greedy word wrap to the cell width
        trial = f"{cur} {word}".strip()
        if cur and draw.textlength(trial, font=font) > width - 4:
            rows.append(cur)
            cur = word
        else:
            cur = trial
    if cur:
        rows.append(cur)
    for i, row in enumerate(rows[:lines]):
        draw.text((2, 2 + i * line_h), row, fill=(0, 0, 0), font=font)
    return np.asarray(im)


def video_grid(
    videos: Sequence[Any],
    captions: Sequence[str] | None = None,
    *,
    cols: int | None = None,
    scale: int | None = None,
    caption_lines: int = 3,
    pad: int = 4,
) -> np.ndarray:
    """Compose clips side by side, each with its caption underneath -> uint8 (F, H', W', 3).

    Clips are looped to the longest one's frame count and upscaled by an integer
    nearest-neighbour factor (`scale`, default: up to about 96 px) so small clips
    and their captions are legible.
    """
    from PIL import ImageFont

    if not videos:
        raise DataError("video_grid: no clips given")
    vids = [_as_video(v) for v in videos]
    captions = list(captions) if captions is not None else [""] * len(vids)
    if len(captions) != len(vids):
        raise DataError(f"video_grid: {len(vids)} clips but {len(captions)} captions")
    h, w = max(v.shape[1] for v in vids), max(v.shape[2] for v in vids)
    if scale is None:
        scale = max(1, 96 // max(h, w))
    F = max(v.shape[0] for v in vids)
    cols = cols or min(len(vids), 6)
    rows = math.ceil(len(vids) / cols)
    font = ImageFont.load_default()
    cell_w = w * scale
    cells = []
    for v, cap in zip(vids, captions):
        v = loop_frames(v, F).repeat(scale, axis=1).repeat(scale, axis=2)
        v = np.pad(v, ((0, 0), (0, h * scale - v.shape[1]), (0, cell_w - v.shape[2]), (0, 0)))
        strip = _caption_strip(cap, cell_w, caption_lines, font)
        strip = np.broadcast_to(strip, (F,) + strip.shape)
        cells.append(np.concatenate([v, strip], axis=1))  # (F, h*scale + caption, cell_w, 3)
    ch, cw = cells[0].shape[1], cells[0].shape[2]
    grid = np.full((F, rows * (ch + pad) + pad, cols * (cw + pad) + pad, 3), 255, np.uint8)
    for i, cell in enumerate(cells):
        r, c = divmod(i, cols)
        y, x = pad + r * (ch + pad), pad + c * (cw + pad)
        grid[:, y : y + ch, x : x + cw] = cell
    return grid


def _open_split(data_dir: str | Path, split: str) -> Any:
    try:
        from . import load_dataset  # the shapes-world owner's loader, when present
    except ImportError:
        load_dataset = None
    if load_dataset is not None:
        dd = load_dataset(data_dir)
    else:
        import datasets

        if not Path(data_dir).is_dir():
            raise DataError(f"{data_dir}: data set directory not found")
        try:
            dd = datasets.load_from_disk(str(data_dir))
        except Exception as e:
            raise DataError(f"{data_dir}: not a duogen data set ({_one_line(e)})") from None
    if split not in dd:
        raise DataError(f"{data_dir}: no split {split!r} (has {sorted(dd.keys())})")
    return dd[split]


def dataset_grid_gif(data_dir: str | Path, out: str | Path, split: str = "train", n: int = 12, *, fps: float = 6, cols: int | None = None) -> dict[str, Any]:
    """Write a GIF grid of the first `n` clips of a data set split with their captions; return a summary."""
    ds = _open_split(data_dir, split).with_format("numpy")
    n = min(n, len(ds))
    if n == 0:
        raise DataError(f"{data_dir}: split {split!r} is empty")
    rows = ds.select(range(n))
    videos = [np.asarray(v, dtype=np.uint8) for v in rows["video"]]
    captions = [str(c) for c in rows["caption"]]
    grid = video_grid(videos, captions, cols=cols or min(n, 4))
    out = Path(out)
    write_gif(out, grid, fps=fps, upscale=1)
    summary = {"out": str(out), "split": split, "clips": n, "frames": int(grid.shape[0]), "size": [int(grid.shape[2]), int(grid.shape[1])]}
    atomic_write_json(out.with_suffix(".json"), {**summary, "captions": captions})
    return summary
