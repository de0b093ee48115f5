"""What this machine is, and how fast it trains each stage of the pipeline.

    m = describe_machine()  # Machine(cpu="AMD EPYC 7B13", cores=2, capability="AVX2", gpu=None, ...)
    s = time_training_step(ar_step(text, captions), "fp32")  # StepSpeed(step_s=0.61, flops_per_step=4.1e10, ...)

Owns: the machine description (CPU model, cores, torch's CPU capability, the GPU), the builders
of each recipe's `tiny` model on random inputs of the real shapes at the preset's batch size
(video codec, AR model, DiT), the timing of one training step as the recipes run it (forward under
autocast, backward, AdamW step; the median of a few after a warm-up step, so a busy moment on a
shared machine moves it less than the best or the mean would) with its FLOPs (the engine's
counter), and the timing of the codec's one-off encode of a clip.
Does not own: what the timings decide (`duogen.demo_budget`, bench/bench_precision.py) or the
precision policy (`duogen.precision`).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple, Sequence

__all__ = ["Machine", "StepModel", "StepSpeed", "describe_machine", "codec_step", "ar_step", "dit_step",
           "time_training_step", "time_encode", "synthetic_text"]


@dataclass
class Machine:
    cpu: str  # model name from /proc/cpuinfo
    cores: int  # logical CPUs the OS reports
    threads: int  # torch intra-op threads this process uses
    capability: str  # torch.backends.cpu.get_cpu_capability(): "AVX2", "AVX512", "DEFAULT" (ARM), ...
    bf16_native: bool | None  # amx_bf16 / avx512_bf16 (x86) or bf16 (ARM) flag; None: flags unreadable
    gpu: str | None  # CUDA device name, None without one
    device: str  # where the stages train: "cuda" or "cpu"
    load_average: float  # 1-minute load average when measured (a shared machine shows it here)
    torch: str

    def line(self) -> str:
        """One line for logs and the report: `AMD EPYC 7B13, 2 cores (AVX2, no native bf16), no GPU, load 4.1`."""
        bf16 = {True: "native bf16", False: "no native bf16", None: "bf16 unknown"}[self.bf16_native]
        gpu = f"GPU {self.gpu}" if self.gpu else "no GPU"
        return f"{self.cpu}, {self.cores} cores ({self.capability}, {bf16}), {gpu}, load average {self.load_average:.1f}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StepModel(NamedTuple):
    model: Any  # nn.Module, on `device`
    loss: Callable[[Any], Any]  # model -> scalar loss Tensor, on one fixed batch
    batch_size: int  # items in that batch (the preset's batch size)


@dataclass
class StepSpeed:
    step_s: float  # seconds per training step (median of the timed steps)
    flops_per_step: float  # forward + backward FLOPs of one step (torch's FLOP counter, as the engine counts)
    batch_size: int
    precision: str  # "fp32" | "bf16": what the step ran in
    steps_timed: int

    @property
    def flops_per_s(self) -> float:
        return self.flops_per_step / self.step_s if self.step_s > 0 else 0.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StepSpeed":
        """From its dict in OUT/machine.json (which also holds the derived flops_per_s)."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def describe_machine(device: str = "auto") -> Machine:
    """CPU model, cores, torch's CPU capability, native bf16, the GPU when `device` resolves to one."""
    import torch

    from .precision import _cpu_model_and_flags, cpu_bf16_support
    from .utils import resolve_device

    device = resolve_device(device)
    model, _ = _cpu_model_and_flags()
    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else None
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return Machine(cpu=model, cores=os.cpu_count() or 1, threads=torch.get_num_threads(),
                   capability=torch.backends.cpu.get_cpu_capability(), bf16_native=cpu_bf16_support().native,
                   gpu=gpu, device=device.split(":")[0], load_average=round(load, 2), torch=torch.__version__)


def synthetic_text(n: int = 400, vocab_size: int = 512) -> tuple[Any, list[str]]:
    """A SentencePiece model trained on `n` shapes-world-style captions, and the captions (for timing only)."""
    import numpy as np

    from .tokenizers.text import train_text_tokenizer
    from .train.audio_codec_recipe import caption_text

    rng = np.random.default_rng(0)
    captions = [caption_text(rng) for _ in range(n)]
    return train_text_tokenizer(captions, None, vocab_size=vocab_size), captions


def _tiny_codec_latent() -> tuple[Any, tuple[int, ...]]:
    from .tokenizers.video_codec import build_video_codec

    codec = build_video_codec("tiny")
    c = codec.cfg
    return codec, tuple(codec.latent_shape((c.frames, c.size, c.size)))  # (D, f, h, w)


def codec_step(device: str = "cpu", **model: Any) -> StepModel:
    """The `tiny` video codec recipe's step: its model, loss and batch size on random clips (B, 3, F, H, W).
    `model` changes fields of the preset's model config (e.g. decoder_extra_levels=2)."""
    import dataclasses

    import torch

    from .tokenizers.losses import codec_loss
    from .tokenizers.video_codec import VideoCodec
    from .train.tokenizer_recipe import VIDEO_RUN_PRESETS

    run = VIDEO_RUN_PRESETS["tiny"]
    c = dataclasses.replace(run.model, **model)
    codec = VideoCodec(c).to(device)
    x = torch.rand(run.train.batch_size, 3, c.frames, c.size, c.size, device=device) * 2 - 1  # (B, 3, F, H, W)

    def loss(model: Any) -> Any:
        recon, q, frames = model(x)
        target = x if frames is None else x[:, :, frames]
        with torch.autocast(device.split(":")[0], enabled=False):  # the recipe computes the loss outside autocast
            return codec_loss(recon, target, q.aux_loss, run.loss, step=0).loss

    return StepModel(codec, loss, run.train.batch_size)


def ar_step(text: Any = None, captions: Sequence[str] = (), device: str = "cpu", batch_size: int | None = None,
            **model: Any) -> StepModel:
    """The `tiny` AR recipe's step (t2v, its batch size or `batch_size`) on random codec ids; `text` / `captions`
    default to synthetic ones. `model` changes fields of the preset's model config (e.g. layers=1)."""
    import dataclasses

    import numpy as np

    from .ar_models.layouts import LayoutSpec, TrainCollator
    from .ar_models.model import MultimodalLM
    from .tokenizers.vocab import UnifiedVocab
    from .train.ar_recipe import AR_RECIPE_PRESETS
    from .train.engine import _to_device

    cfg = AR_RECIPE_PRESETS["tiny"]
    if text is None:
        text, captions = synthetic_text(vocab_size=cfg.text_vocab)
    codec, latent = _tiny_codec_latent()
    spec = LayoutSpec(max_text=cfg.max_text, latent=latent[1:], tasks=["t2v"])
    mcfg = dataclasses.replace(cfg.model, **model)
    g = np.random.default_rng(0)
    B = batch_size or cfg.train.batch_size
    records = [{"text_ids": text.encode(captions[i % len(captions)])[: cfg.max_text],
                "video_ids": g.integers(0, codec.vocab_size, latent[1:])} for i in range(B)]
    if mcfg.patch:  # the patch-level model (`ar_models/patch.py`)
        from .ar_models.patch import PatchAR, patch_config

        pm = PatchAR(patch_config(mcfg, cfg.max_text), latent[1:], codec.vocab_size, text.vocab_size).to(device)
        pbatch = _to_device(pm.collate(records), device)
        return StepModel(pm, lambda m: m.loss(pbatch)[0], B)
    lm = MultimodalLM(mcfg, UnifiedVocab(text.vocab_size, {"video": codec.vocab_size}), spec, text).to(device)
    batch = _to_device(TrainCollator(lm.layouts, ["t2v"], mcfg.cond_dropout)(records), device)  # ids (B, T)
    return StepModel(lm, lambda m: m.loss(batch).loss, B)


def dit_step(text: Any = None, captions: Sequence[str] = (), device: str = "cpu") -> StepModel:
    """The `tiny` diffusion recipe's DiT step (its batch size) on random latents (B, D, f, h, w)."""
    import dataclasses

    import torch

    from .diffusion.latent import LatentDiffusionModel
    from .train.diffusion_recipe import DIFFUSION_RECIPE_PRESETS

    cfg = DIFFUSION_RECIPE_PRESETS["tiny"]
    if text is None:
        text, captions = synthetic_text(vocab_size=cfg.text_vocab)
    codec, latent = _tiny_codec_latent()
    mcfg = dataclasses.replace(cfg.model, denoiser="dit", latent=list(latent),
                               text=dataclasses.replace(cfg.model.text, vocab_size=text.vocab_size))
    model = LatentDiffusionModel(mcfg, text, codec).to(device)
    B = cfg.train.batch_size
    ids, mask = model.text_encoder.tokenize([captions[i % len(captions)] for i in range(B)], strict=False)  # (B, T)
    batch = {"latents": torch.randn(B, *latent, device=device), "text_ids": ids.to(device), "text_mask": mask.to(device)}
    return StepModel(model, lambda m: m(batch), B)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_training_step(sm: StepModel, precision: str, repeats: int = 3, count_flops: bool = True) -> StepSpeed:
    """Seconds per training step of `sm` (median of `repeats` after one warm-up step) and its FLOPs per step."""
    import torch

    from .train.engine import LossOutput, _measure_flops
    from .utils import autocast

    model = sm.model
    model.train()
    device = str(next(model.parameters()).device)
    kind = device.split(":")[0]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        with autocast(precision, kind):
            loss = sm.loss(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)

    flops = 0.0
    if count_flops:
        flops = _measure_flops(model, lambda m, _: LossOutput(sm.loss(m), sm.batch_size), None, precision, True)
    step()  # warm-up: first-call dispatch, allocation, lazy initialisation
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return StepSpeed(step_s=statistics.median(times), flops_per_step=flops, batch_size=sm.batch_size,
                     precision=precision, steps_timed=len(times))


def time_encode(codec: Any, n: int = 16, device: str = "cpu") -> float:
    """Seconds for the codec to encode one clip to ids (inference, a batch of `n` random clips, after a warm-up)."""
    import torch

    c = codec.cfg
    x = torch.rand(n, 3, c.frames, c.size, c.size, device=device) * 2 - 1  # (B, 3, F, H, W)
    codec.eval()
    with torch.inference_mode():
        codec.encode(x[:2])
        _sync(device)
        t = time.perf_counter()
        codec.encode(x)
        _sync(device)
    return (time.perf_counter() - t) / n
