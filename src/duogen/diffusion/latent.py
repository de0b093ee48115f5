"""Latent diffusion on the shared codec: text encoder + denoiser + schedule, decoded by the codec.

`LatentDiffusionModel` owns what a trained diffusion model is: the text
encoder, the denoiser (DiT, video U-Net (2+1)D / 3D, or 2D U-Net), the
forward-process schedule and prediction type it was trained with, and a
reference to the codec whose latents it models. Latents are the codec's
continuous pre-quantization latents normalized per channel by the codec's
stored `latent_shift` / `latent_scale` (`codec.normalize_latents`), never by
a constant here. Samples go back to pixels through the same decoder the AR
model uses: `decode_latents` directly, or with `quantize_decode` through
`latents_to_ids` -> `decode` (the AR model's exact path; DESIGN.md, Data flow).

The codec is held outside the module's parameters: it is frozen, not
trained, not in `model.safetensors`; `save_pretrained` copies it into
`codec/` so a model directory is self-contained. Training is `forward(batch)`
(the engine's loss), the mean of `loss_per_example` (each example's loss at
given t and noise, for scoring); sampling loops live in `sampling.py`.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor, nn

from .blocks import TextCond
from .dit import DIT_PRESETS, DiT, DiTConfig
from .schedules import NoiseSchedule, ScheduleConfig, check_prediction_type, denoising_loss, randn_like
from .text_encoder import TextEncoderConfig, build_text_encoder
from .unet import UNET_PRESETS, UNet, UNetConfig
from .video_unet import VIDEO_UNET_PRESETS, VideoUNet, VideoUNetConfig
from ..errors import CheckpointError, ConfigError, DataError

KIND = "diffusion"
DENOISERS = ("dit", "unet", "unet3d", "unet2d")


@dataclass
class LatentDiffusionConfig:
    """A diffusion model over codec latents. `latent` (C, f, h, w) is filled in from the codec."""

    denoiser: Literal["dit", "unet", "unet3d", "unet2d"] = "dit"  # unet: (2+1)D video U-Net; unet3d: full 3D convs
    dit: DiTConfig = field(default_factory=lambda: dataclasses.replace(DIT_PRESETS["tiny"]))
    unet: VideoUNetConfig = field(default_factory=lambda: dataclasses.replace(VIDEO_UNET_PRESETS["tiny"]))
    unet2d: UNetConfig = field(default_factory=lambda: dataclasses.replace(UNET_PRESETS["tiny"]))
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="cosine"))
    prediction_type: str = "v"
    cond_dropout: float = 0.1  # share of training captions replaced by the empty prompt (for guidance)
    snr_gamma: float = 0.0  # Min-SNR-gamma loss weighting (Hang et al. 2023); 0 = the plain MSE
    latent: list[int] = field(default_factory=list)  # (C, f, h, w) of one clip's latent
    quantize_decode: bool = False  # decode through the quantizer (ids), like the AR model, instead of directly
    image_channels: int = 0  # > 0: the denoiser also reads an image's latents as extra input channels (IP2P)
    # sampling defaults (what `generate` uses when not told otherwise)
    guidance: float = 3.0
    sampler: str = "ddim"
    steps: int = 50

    def check(self) -> None:
        check_prediction_type(self.prediction_type)
        if self.snr_gamma < 0:
            raise ConfigError(f"snr_gamma must be >= 0 (0 = off; 5 is the paper's value), got {self.snr_gamma}")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ConfigError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if self.latent and len(self.latent) != 4:
            raise ConfigError(f"latent must be (C, f, h, w), got {self.latent}")
        if self.image_channels < 0:
            raise ConfigError(f"image_channels must be >= 0 (0 = text-to-video only), got {self.image_channels}")


def build_denoiser(cfg: LatentDiffusionConfig) -> nn.Module:
    """The denoiser `cfg.denoiser` names, sized to the latent channels and the text width; with
    `image_channels`, built that much wider and wrapped in `ImageConcat` (`image_cond.py`)."""
    if len(cfg.latent) != 4:
        raise ConfigError("the model's latent shape (C, f, h, w) is not set; it comes from the codec")
    if cfg.image_channels:
        from .image_cond import ImageConcat

        inner = dataclasses.replace(cfg, image_channels=0, latent=[cfg.latent[0] + cfg.image_channels, *cfg.latent[1:]])
        return ImageConcat(build_denoiser(inner), cfg.latent[0], cfg.image_channels)
    C, f = cfg.latent[0], cfg.latent[1]
    ctx = cfg.text.dim
    if cfg.denoiser == "dit":
        return DiT(dataclasses.replace(cfg.dit, in_channels=C, context_dim=ctx))
    if cfg.denoiser in ("unet", "unet3d"):
        conv = "3d" if cfg.denoiser == "unet3d" else cfg.unet.conv
        return VideoUNet(dataclasses.replace(cfg.unet, in_channels=C, context_dim=ctx, conv=conv))
    if cfg.denoiser == "unet2d":
        return UNet(dataclasses.replace(cfg.unet2d, in_channels=C, frames=f, context_dim=ctx))
    raise ConfigError(f"unknown denoiser {cfg.denoiser!r}; allowed values: {', '.join(DENOISERS)}")


def codec_stats(codec: Any) -> dict[str, Any]:
    """What a model must agree on with its codec: latent channels and the stored normalization."""
    return {
        "latent_channels": int(codec.latent_scale.numel()),
        "latent_scale": [float(v) for v in codec.latent_scale],
        "latent_shift": [float(v) for v in codec.latent_shift],
        "vocab_size": int(codec.vocab_size),
    }


class LatentDiffusionModel(nn.Module):
    """Text-to-video latent diffusion: `forward(batch) -> loss`, `sample_latents`, `generate`, save / load.

    batch (training): latents (B, C, f, h, w) already normalized, text_ids (B, T) int64, text_mask (B, T) bool.
    """

    def __init__(self, config: LatentDiffusionConfig, tokenizer: Any = None, codec: Any = None) -> None:
        super().__init__()
        config.check()
        self.config = config
        self.text_encoder = build_text_encoder(config.text, tokenizer)
        self.denoiser = build_denoiser(config)
        self.schedule = NoiseSchedule.from_config(config.schedule)
        object.__setattr__(self, "codec", None)
        if codec is not None:
            self.set_codec(codec)

    @property
    def tokenizer(self) -> Any:
        return getattr(self.text_encoder, "tokenizer", None)

    # ------------------------------------------------------------------ codec
    def set_codec(self, codec: Any, expected: dict[str, Any] | None = None) -> None:
        """Attach the codec, refusing one whose latents this model was not trained on."""
        got = codec_stats(codec)
        C = self.config.latent[0]
        if got["latent_channels"] != C:
            raise CheckpointError(
                f"codec does not match the model: the model denoises {C}-channel latents, the codec makes"
                f" {got['latent_channels']}; pass the codec the model was trained on"
            )
        if expected is not None:
            for key in ("latent_scale", "latent_shift"):
                a, b = torch.tensor(expected[key]), torch.tensor(got[key])
                if not torch.allclose(a, b, rtol=1e-4, atol=1e-6):
                    raise CheckpointError(
                        f"codec does not match the model: its {key} is {[round(v, 4) for v in got[key]]}, the model"
                        f" was trained with {[round(v, 4) for v in expected[key]]}; pass the codec it was trained on"
                    )
        object.__setattr__(self, "codec", codec.eval())

    def _need_codec(self) -> Any:
        if self.codec is None:
            raise ConfigError("this diffusion model has no codec attached (LatentDiffusionModel.set_codec)")
        return self.codec

    @torch.no_grad()
    def encode_video(self, x: Any) -> Tensor:
        """Video (uint8 (F, H, W, 3) or float (B, 3, F, H, W)) -> normalized latents (B, C, f, h, w)."""
        codec = self._need_codec()
        return codec.normalize_latents(codec.encode_latents(x)).float()

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Normalized latents (B, C, f, h, w) -> video float (B, 3, F, H, W) in [-1, 1], via the codec decoder."""
        codec = self._need_codec()
        z = codec.denormalize_latents(z.to(codec.device).float())
        if self.config.quantize_decode:
            return codec.decode(codec.latents_to_ids(z))
        return codec.decode_latents(z)

    # ------------------------------------------------------------------ text
    def encode_prompts(self, prompts: Sequence[str], pad_to: int | None = None) -> TextCond:
        ids, mask = self.text_encoder.tokenize(prompts, pad_to)
        dev = next(self.denoiser.parameters()).device
        return self.text_encoder(ids.to(dev), mask.to(dev))

    def null_cond(self, T: int, batch: int = 1) -> TextCond:
        """The unconditional condition (the empty prompt) padded to T tokens, repeated `batch` times."""
        ids, mask = self.text_encoder.null_ids(T)
        dev = next(self.denoiser.parameters()).device
        return self.text_encoder(ids.to(dev), mask.to(dev)).repeat(batch)

    # ------------------------------------------------------------------ training
    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """The DDPM training loss on one batch (Ho et al. 2020, Algorithm 1), with caption dropout for CFG.

        Draws (from torch's global RNG, in this order) the dropped captions when training, t ~ U{0..N-1}
        and eps ~ N(0, I), and returns the mean of `loss_per_example` at them.
        """
        z0, ids, mask = batch["latents"].float(), batch["text_ids"], batch["text_mask"].bool()
        if self.training and self.config.cond_dropout > 0:
            drop = torch.rand(ids.shape[0], device=ids.device) < self.config.cond_dropout  # (B,)
            if bool(drop.any()):
                null_ids, null_mask = self.text_encoder.null_ids(ids.shape[1])
                ids = torch.where(drop[:, None], null_ids.to(ids.device), ids)
                mask = torch.where(drop[:, None], null_mask.to(mask.device), mask)
        t = self.schedule.sample_timesteps(z0.shape[0], device=z0.device)  # (B,)
        eps = randn_like(z0)
        return self.loss_per_example({"latents": z0, "text_ids": ids, "text_mask": mask}, t=t, noise=eps).mean()

    def loss_per_example(self, batch: dict[str, Tensor], t: Tensor | int, noise: Tensor) -> Tensor:
        """Each example's denoising loss at the caller's timesteps and noise: (B,) float32.

        batch as for `forward` (latents (B, C, f, h, w) normalized, text_ids, text_mask); t: (B,) int64 or
        one int for all; noise: eps (B, C, f, h, w). No caption dropout: every example is scored under its
        own caption, so passing the same t and noise for each candidate caption of one clip compares the
        captions alone (a diffusion classifier's score, Li et al. 2023). Min-SNR weighted when the model
        trains with `snr_gamma`, so the mean over a batch is `forward`'s loss at the same t and noise.
        """
        z0 = batch["latents"].float()
        if tuple(noise.shape) != tuple(z0.shape):
            raise DataError(f"noise must have the latents' shape {tuple(z0.shape)}, got {tuple(noise.shape)}")
        t = torch.as_tensor(t, device=z0.device).long().expand(z0.shape[0])  # (B,)
        cond = self.text_encoder(batch["text_ids"], batch["text_mask"].bool())
        return denoising_loss(self.denoiser, z0, cond, self.schedule, self.config.prediction_type, t,
                              noise.to(z0), snr_gamma=self.config.snr_gamma)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample_latents(
        self,
        prompts: Sequence[str],
        n: int = 1,
        seed: int = 0,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        guidance: float | None = None,
        guidance_rescale: float = 0.0,
        eta: float = 0.0,
        ddpm_variance: str | None = None,
        negative_prompt: str | None = None,
        spacing: str = "trailing",
        callback: Callable | None = None,
        noise: Tensor | None = None,
        latents: Tensor | None = None,
        start_step: int = 0,
    ) -> Tensor:
        """Normalized latents (len(prompts) * n, C, f, h, w), sample i*n + j for prompt i.

        `eta` is DDIM's noise scale; `ddpm_variance` is DDPM's sigma_t^2, 'beta' or 'beta_tilde' (Ho et al. 2020,
        Sec. 3.2; None = the scheduler's default, beta_tilde).

        Where to start: by default from x_T = `initial_noise(B, seed)`; `noise` (B, C, f, h, w) gives x_T
        instead; `latents` (B, C, f, h, w) with `start_step` = k starts the loop at its k-th step from that
        sample (at timestep `timesteps(steps, spacing)[k]`; SDEdit). The seed's generator still draws x_T
        first, so the noise of the later steps (DDPM, DDIM with eta > 0) is the same stream either way.
        """
        from .guidance import check_guidance
        from .sampling import sample
        from .schedulers import make_scheduler

        cfg = self.config
        steps = cfg.steps if steps is None else steps
        sampler = {"dpm": "dpm_solver", "dpm++": "dpm_solver"}.get(sampler or cfg.sampler, sampler or cfg.sampler)
        guidance = cfg.guidance if guidance is None else guidance
        check_guidance(guidance, guidance_rescale)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"n (clips per prompt) must be a positive integer, got {n!r}")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise DataError(f"a negative prompt must be a string, got {type(negative_prompt).__name__}")
        if noise is not None and latents is not None:
            raise ConfigError("give noise= (start from x_T) or latents= with start_step= (start mid-way), not both")
        if latents is None and start_step != 0:
            raise ConfigError(f"start_step={start_step} needs latents= (the sample at that step) to start from")
        kwargs: dict[str, Any] = {"eta": eta} if sampler == "ddim" else {}
        if ddpm_variance is not None:
            if sampler != "ddpm":
                raise ConfigError(f"ddpm_variance sets the DDPM sampler's sigma_t; the sampler here is {sampler!r}"
                                  " (use sampler='ddpm' or leave ddpm_variance unset)")
            kwargs["variance"] = ddpm_variance
        scheduler = make_scheduler(sampler, self.schedule, cfg.prediction_type, **kwargs)
        was_training = self.training
        self.eval()
        cond = self.encode_prompts(prompts).repeat(n)  # (B, T, D)
        T = cond.tokens.shape[1]
        if negative_prompt:
            ids, mask = self.text_encoder.tokenize([negative_prompt], pad_to=T)
            dev = cond.tokens.device
            uncond = self.text_encoder(ids.to(dev), mask.to(dev))
        else:
            uncond = self.null_cond(T)
        if uncond.tokens.shape[1] != T:  # a negative prompt longer than the prompts: pad the prompts
            both = TextCond.cat([cond, uncond])
            cond, uncond = both.index(slice(0, len(cond))), both.index(slice(len(cond), None))
        B = len(cond)
        gen = torch.Generator().manual_seed(int(seed))
        dev = next(self.denoiser.parameters()).device
        x_T = self.initial_noise(B, gen)
        start = noise if noise is not None else latents
        if start is not None:
            start = torch.as_tensor(start)
            if tuple(start.shape) != tuple(x_T.shape):
                what = "noise" if noise is not None else "latents"
                raise DataError(f"{what} must have shape {tuple(x_T.shape)} (clips, C, f, h, w),"
                                f" got {tuple(start.shape)}")
            x_T = start.float()
        z = sample(self.denoiser, scheduler, x_T.to(dev), cond, steps=steps, spacing=spacing,
                   guidance=float(guidance), uncond=uncond, guidance_rescale=guidance_rescale,
                   generator=gen, callback=callback, device=dev, start_step=start_step)
        self.train(was_training)
        return z

    def initial_noise(self, batch: int, generator: torch.Generator) -> Tensor:
        """x_T ~ N(0, I): (batch, C, f, h, w) float32, drawn on the generator's device (CPU seeds reproduce anywhere)."""
        return torch.randn((batch, *self.config.latent), generator=generator, device=generator.device)

    def timesteps(self, steps: int | None = None, spacing: str = "trailing") -> Tensor:
        """The sampler's descending timesteps for `steps` steps: (steps,) int64; `start_step` = k starts at [k]."""
        from .schedulers import make_timesteps

        return make_timesteps(self.schedule.num_train_timesteps, self.config.steps if steps is None else steps, spacing)

    # ------------------------------------------------------------------ files
    def save_pretrained(self, directory: str | Path) -> Path:
        """config.json (kind "diffusion"), model.safetensors (text encoder + denoiser), text.model, codec/."""
        from .. import config as cfglib
        from ..io import save_model_dir

        files: dict[str, Any] = {}
        if self.tokenizer is not None:
            files.update(self.tokenizer.files())  # text.model (+ text_tokens.json with placeholders)
        conf: dict[str, Any] = {"kind": KIND, "config": cfglib.to_dict(self.config)}
        if self.codec is not None:
            conf["codec"] = "codec"
            conf["codec_stats"] = codec_stats(self.codec)
            with tempfile.TemporaryDirectory() as tmp:
                self.codec.save_pretrained(Path(tmp) / "codec")
                for p in (Path(tmp) / "codec").iterdir():
                    files[f"codec/{p.name}"] = p.read_bytes()
        return save_model_dir(directory, conf, self.state_dict(), files)

    @classmethod
    def from_pretrained(cls, directory: str | Path, codec: Any = None, map_location: str = "cpu") -> "LatentDiffusionModel":
        """Load a model directory; `codec` (a codec or a codec directory) overrides the bundled `codec/`."""
        from .. import config as cfglib
        from ..io import load_model_dir, load_weights_into

        directory = Path(directory)
        conf, state = load_model_dir(directory)
        if conf.get("kind") != KIND:
            raise CheckpointError(f"{directory}: holds a {conf.get('kind')!r} model, not a diffusion model")
        cfg = cfglib.from_dict(LatentDiffusionConfig, conf["config"])
        tokenizer = None
        if cfg.text.kind == "transformer":
            from ..tokenizers.text import TextTokenizer

            tokenizer = TextTokenizer.load(directory / "text.model")
        model = cls(cfg, tokenizer)
        load_weights_into(model, state, directory / "model.safetensors")
        if codec is None and conf.get("codec"):
            codec = directory / conf["codec"]
        if codec is not None:
            if isinstance(codec, (str, Path)):
                from ..tokenizers import load as load_codec

                codec = load_codec(Path(codec))
            model.set_codec(codec, conf.get("codec_stats"))
        return model.to(map_location).eval()
