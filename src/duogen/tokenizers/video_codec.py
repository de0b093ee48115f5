"""A joint image-video codec in the style of MAGVIT-v2 (Yu et al. 2023), sized for CPUs.

Shape notation: B batch, F frames (1 + r*k), H W pixels, C channels,
f = 1 + k latent frames, h w = H/s, W/s latent positions, D quantizer dim.

    x (B, 3, F, H, W)
      -> per-frame 2D encoder (residual blocks, pixel-unshuffle downsampling)   (B, Cs, F, h, w)
      -> causal 3D residual blocks at frame rate                               (B, Cs, F, h, w)
      -> causal temporal fold r:1 (frame 0 alone)                              (B, Cs, f, h, w)
      -> causal 3D residual blocks at latent rate, 1x1x1 to D                  (B, D, f, h, w)
      -> quantizer (FSQ by default; ids (B, f, h, w))
    and the mirror image back to pixels.

Before the quantizer each of the D latent channels is standardized over the
batch (`latent_norm="batch"`: a BatchNorm without affine parameters; running
statistics in eval, a fixed per-channel affine map, so causality holds). FSQ
bounds with tanh: with only the per-position RMS norm (`"rms"`, the older
codecs) the encoder drifts channels into tanh's flat tails early in training,
few codes stay in use and similar colors share codes; standardized channels
keep every level of every channel in reach from the first steps.
`latent_norm="whiten"` also decorrelates them (`layers.LatentWhitening`): the
joint codes of correlated channels stay rare otherwise; whitened channels
ended four runs with 1.6-7.9 points more of the codebook in use at the same
PSNR. Not the preset: the AR model on its ids gained nothing
(docs/bench_codec_steps/README.md, "Decorrelated latent channels"). FSQ's
code-entropy term (`quantizer.fsq_entropy_weight`, `quantizers.fsq_entropy_loss`)
spreads the codes by training instead: it rewards a batch for spreading over
the codebook and each cell for sitting on one code. At 0.01 it ended 1,000-step
runs with 99% of the codes in use (83-89% without) at the same PSNR, and the
AR model on its ids drew colors as well as before, but the background then
spreads over codes too and a DiT on its latents counts objects worse; with
`entropy_cells="objects"` only object cells' codes are spread (the background
keeps few). Not the preset (docs/bench_codec_steps/README.md, "A code-entropy
term"). The 2D
decoder may have more levels than the encoder (`decoder_extra_levels`): pixels
folded into channels lose nothing on the way in, but sharp edges on the way
out want a stage at a finer grid.

With `background_weight` > 0 training also penalizes how far the continuous
latents of object-free cells (no pixel above the black background) spread
around their batch mean. Standardized channels otherwise spend much of their
variance on the background: objects then stand out from it by less in the
latent a diffusion model denoises (bench/bench_latent_contrast.py), and a DiT
on such a codec drops or recolors the second object of two-object prompts
(docs/references/README.md). The term lifts that contrast but, measured, did
not make a better DiT; `latent_norm="rms"` did (docs/bench_codec_steps/README.md,
"Objects against the background in the latent").

With `color_path` a linear map also carries each latent cell's mean input color
(the mean over its s x s pixels and the frames its latent frame covers) into the
latent before the standardization, and a linear map of the (quantized) latent
paints one flat color over the same pixels and frames on top of the decoder's
output. The convolutions then only learn what is not the cell's mean color.
Without it the codec learns colors late and unevenly: at the end of a 250-step
schedule it keeps 59-65% of the objects' colors (whole colors read as others),
with it 99% (bench/bench_codec_steps.py). The path goes through the quantizer,
never around it: ids decode to everything the codec draws. Its encoder side
starts as the identity into the first three latent channels, its decoder side
at zero, so a fresh codec decodes as one without it.

Every temporal operation is causal (pads only the past), so the first frame of
a clip is encoded exactly as that frame alone: an image is a one-frame video.
Spatial work happens per frame in 2D, where it is cheap; 3D convolutions run
only at the latent resolution, where motion is modelled. The decoder is causal
too, so later latent frames can borrow appearance from earlier ones and spend
their bits on motion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from einops import rearrange
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from .codec import PixelCodec, to_float_pixels
from .layers import (CausalConv3d, CausalLatentAttention, CausalResBlock3d, CausalTimeDown, CausalTimeUp, ChannelRMSNorm,
                     Decoder2d, Encoder2d, LatentWhitening)
from .quantizers import Quantizer, QuantizerConfig, QuantizerOutput


@dataclass
class VideoCodecConfig:
    """Sizes of the video codec. Spatial factor s = patch * 2**(len(widths) - 1); temporal factor r."""

    size: int = 32  # training resolution (H = W); other multiples of s also encode
    frames: int = 9  # training clip length (1 + r*k)
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    patch: int = 1  # pixels folded into channels before the first conv (1, 2 or 4)
    blocks: int = 1  # 2D residual blocks per level
    decoder_extra_levels: int = 0  # 2D decoder only: levels finer than the encoder's first (each halves the patch and the width)
    frame_blocks: int = 1  # causal 3D blocks at frame rate (each side)
    latent_blocks: int = 2  # causal 3D blocks at latent rate (each side)
    latent_attention: int = 0  # causal self-attention blocks over the whole latent grid (each side, after the latent-rate blocks in the encoder, before them in the decoder); 0 = none
    temporal_factor: int = 4  # r: 1 + r*k frames -> 1 + k latent frames
    factorized: bool = True  # (2+1)D causal blocks instead of full 3x3x3 ones
    latent_dropout: float = 0.1  # training: share of clips decoded from the continuous latent, not the quantized one
    train_frames: int = 0  # training: decode only this many frames per clip (frame 0 + random others); 0 = all
    color_path: bool = False  # a linear path from each latent cell's mean input color into the latent, and from the latent to one flat color per cell (module docstring); off so that codecs saved before it load unchanged
    latent_norm: str = "rms"  # rms: per-position channel RMS norm before the projection to D; batch: also standardize each of the D channels (running statistics); whiten: decorrelate and standardize them (layers.LatentWhitening)
    entropy_cells: str = "all"  # training, with quantizer.fsq_entropy_weight > 0: whose codes the term spreads over the codebook: all cells, or object cells only (the background keeps few codes; module docstring)
    background_weight: float = 0.0  # training: weight of the spread of object-free latent cells around their batch mean (module docstring); 0 = off
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    def check(self) -> None:
        s = self.spatial_factor
        if s < 2 or self.patch not in (1, 2, 4, 8):
            raise ConfigError(f"need a spatial factor of at least 2 (patch={self.patch}, widths={self.widths})")
        if self.size % s:
            raise ConfigError(f"size {self.size} must be a multiple of the spatial factor {s}")
        k = self.decoder_extra_levels
        if k < 0 or self.patch % 2**k or self.widths[0] % 2**k:
            raise ConfigError(
                f"decoder_extra_levels={k} needs a patch and a first width divisible by {2**max(k, 0)}"
                f" (patch={self.patch}, widths={self.widths}); each extra level halves both"
            )
        if self.background_weight < 0:
            raise ConfigError(f"background_weight must be >= 0 (0 = off), got {self.background_weight}")
        if self.entropy_cells not in ("all", "objects"):
            raise ConfigError(f"entropy_cells is {self.entropy_cells!r}; allowed values: all, objects")
        if self.latent_norm not in ("rms", "batch", "whiten"):
            raise ConfigError(f"latent_norm is {self.latent_norm!r}; allowed values: rms, batch, whiten")
        cs = self.widths[-1]
        if self.latent_attention < 0 or (self.latent_attention and (cs % 4 or cs < 6)):
            raise ConfigError(f"latent_attention={self.latent_attention} needs a count >= 0 and a last width"
                              f" ({cs}) divisible by 4 (heads), at least 8")
        if self.temporal_factor not in (1, 2, 4, 8):
            raise ConfigError(f"temporal_factor is {self.temporal_factor}; allowed values: 1, 2, 4, 8")
        if (self.frames - 1) % self.temporal_factor:
            raise ConfigError(f"frames {self.frames} must be 1 + {self.temporal_factor}k")

    @property
    def spatial_factor(self) -> int:
        return self.patch * 2 ** (len(self.widths) - 1)

    @property
    def dec_widths(self) -> list[int]:
        """The 2D decoder's widths, finest level first: the encoder's, after `decoder_extra_levels` finer ones."""
        k = self.decoder_extra_levels
        return [self.widths[0] // 2**i for i in range(k, 0, -1)] + list(self.widths)

    @property
    def dec_patch(self) -> int:
        return self.patch // 2**self.decoder_extra_levels


VIDEO_CODEC_PRESETS: dict[str, VideoCodecConfig] = {
    # tiny: standardized latent channels and a 16x16 decoder stage (issue 19: at 500 steps on the shapes world
    # 17.6 -> 20.0 dB, codebook usage 27% -> 92%, colors kept 40% -> 100%; bench/bench_codec_steps.py), and the
    # color path (a 250-step schedule, seeds 0 / 1: colors kept 65.0 / 59.0% -> 98.9 / 99.5%, 17.3 / 17.5 ->
    # 18.2 / 18.2 dB; at 452 steps 98.9 / 99.5% -> 100 / 100%, 19.8 / 19.8 -> 19.7 / 19.7 dB), and one
    # causal attention block over the latent grid on each side (session 36: +0.2 / +0.4 dB at 1,000 steps, +0.8 at
    # 3,000; the demo's AR model on its ids drew the prompt's color 87.7% against 82.9%, eight seeds over two codec
    # seeds). Every figure: docs/bench_codec_steps/README.md ("The color path", "Attention over the latent grid").
    # FSQ [5,5,5,5], 625 codes, not [8,5,5,5] (sessions 42-43): at 1,000 steps codebook usage 88.8-97.8% against
    # 76.2-89.0% over six codec seeds, -0.13 dB; in six emulated-AVX2 demo runs (worlds 6-11) usage >= 90% over the
    # held-out split in five (four), the fresh AR model and DiT >= 90% color in all six (five and six), paired color
    # -0.4 +- 1.1 and +0.5 +- 0.8 points (docs/bench_codec_steps/fsq_levels/, docs/demo_runs/fsq5_vs_preset/)
    "tiny": VideoCodecConfig(
        size=32, frames=9, patch=4, widths=[128], decoder_extra_levels=1, blocks=2, frame_blocks=0, latent_blocks=2,
        train_frames=4, latent_norm="batch", color_path=True, latent_attention=1,
        quantizer=QuantizerConfig("fsq", 4, [5, 5, 5, 5]),
    ),
    "small": VideoCodecConfig(
        size=64, frames=17, widths=[32, 64, 128, 192], train_frames=6, quantizer=QuantizerConfig("fsq", 5, [8, 8, 8, 5, 5])
    ),
    "base": VideoCodecConfig(
        size=128, frames=17, widths=[64, 128, 256, 384], blocks=2, frame_blocks=2, latent_blocks=4,
        quantizer=QuantizerConfig("fsq", 6, [8, 8, 8, 5, 5, 5]),
    ),
}


class VideoCodec(PixelCodec):
    """Causal video codec; see the module docstring for the layout."""

    kind = "video_codec"

    def __init__(self, cfg: VideoCodecConfig):
        cfg.check()
        super().__init__(cfg, cfg.quantizer.dim, Quantizer(cfg.quantizer))
        w, cs, r = cfg.widths, cfg.widths[-1], cfg.temporal_factor
        self.enc2d = Encoder2d(3, w, cfg.blocks, cfg.patch)
        self.enc_frame = nn.Sequential(*[CausalResBlock3d(cs, cfg.factorized) for _ in range(cfg.frame_blocks)])
        self.enc_down = CausalTimeDown(cs, cs, r)
        self.enc_latent = nn.Sequential(*[CausalResBlock3d(cs, cfg.factorized) for _ in range(cfg.latent_blocks)],
                                        *[CausalLatentAttention(cs) for _ in range(cfg.latent_attention)])
        self.enc_norm = ChannelRMSNorm(cs)
        self.enc_out = CausalConv3d(cs, cfg.quantizer.dim, (1, 1, 1))
        self.enc_std = {"batch": lambda d: nn.BatchNorm3d(d, affine=False), "whiten": LatentWhitening,
                        "rms": lambda d: nn.Identity()}[cfg.latent_norm](cfg.quantizer.dim)
        self.dec_in = CausalConv3d(cfg.quantizer.dim, cs)
        self.dec_latent = nn.Sequential(*[CausalLatentAttention(cs) for _ in range(cfg.latent_attention)],
                                        *[CausalResBlock3d(cs, cfg.factorized) for _ in range(cfg.latent_blocks)])
        self.dec_up = CausalTimeUp(cs, cs, r)
        self.dec_frame = nn.Sequential(*[CausalResBlock3d(cs, cfg.factorized) for _ in range(cfg.frame_blocks)])
        self.dec2d = Decoder2d(3, cfg.dec_widths, cfg.blocks, cfg.dec_patch)
        self.color_in = self.color_out = None
        if cfg.color_path:
            D = cfg.quantizer.dim
            self.color_in = nn.Conv3d(3, D, 1)
            self.color_out = nn.Conv3d(D, 3, 1)
            with torch.no_grad():
                self.color_in.weight.zero_()
                self.color_in.bias.zero_()
                for c in range(min(3, D)):
                    self.color_in.weight[c, c] = 1.0
                self.color_out.weight.zero_()
                self.color_out.bias.zero_()

    @classmethod
    def config_class(cls) -> type:
        return VideoCodecConfig

    def latent_shape(self, input_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """(…, F, H, W) or (B, 3, F, H, W) -> (D, f, h, w) for the continuous latent; ids drop D."""
        F_, H, W = input_shape[-3:]
        self._check_dims(F_, H, W)
        s, r = self.cfg.spatial_factor, self.cfg.temporal_factor
        return (self.cfg.quantizer.dim, 1 + (F_ - 1) // r, H // s, W // s)

    def _check_dims(self, F_: int, H: int, W: int) -> None:
        s, r = self.cfg.spatial_factor, self.cfg.temporal_factor
        if F_ < 1 or (F_ - 1) % r or H % s or W % s or H == 0 or W == 0:
            raise DataError(
                f"clip of {F_} frames at {H}x{W} does not fit this codec: it needs 1 + {r}k frames"
                f" (e.g. {self.cfg.frames}) and a size that is a multiple of {s} (trained at"
                f" {self.cfg.size}x{self.cfg.size}); resize or trim the clip"
            )

    def prepare(self, x: Any) -> Tensor:
        """uint8 (F, H, W, 3) / (B, F, H, W, 3), or float (B, 3, F, H, W) in [-1, 1] -> float (B, 3, F, H, W)."""
        x = to_float_pixels(x, channels_last_dims=4)
        if x.ndim != 5 or x.shape[1] != 3:
            raise DataError(f"a video must be (B, 3, F, H, W) in [-1, 1] or uint8 (F, H, W, 3), got {tuple(x.shape)}")
        self._check_dims(*x.shape[2:])
        return x.to(self.device)

    def encoder(self, x: Tensor) -> Tensor:
        """x (B, 3, F, H, W) -> pre-quantization z (B, D, f, h, w)."""
        B = x.shape[0]
        h = self.enc2d(rearrange(x, "b c f h w -> (b f) c h w"))  # (B*F, Cs, h, w)
        h = rearrange(h, "(b f) c h w -> b c f h w", b=B)
        h = self.enc_down(self.enc_frame(h))  # (B, Cs, f, h, w)
        z = self.enc_out(self.enc_norm(self.enc_latent(h)))
        if self.color_in is not None:
            z = z + self.color_in(self.cell_colors(x))
        return self.enc_std(z)

    def cell_colors(self, x: Tensor) -> Tensor:
        """x (B, 3, F, H, W) -> the mean color over each latent cell's pixels and frames (B, 3, f, h, w)."""
        return self._pool_cells(x, torch.nn.functional.avg_pool3d)

    def _pool_cells(self, x: Tensor, pool: Any) -> Tensor:
        """(B, c, F, H, W) -> (B, c, f, h, w), pooled over each latent cell's pixels and frames (frame 0 alone: it
        is repeated r - 1 times in front, so the first window holds it and nothing else)."""
        r, s = self.cfg.temporal_factor, self.cfg.spatial_factor
        if r > 1:
            x = torch.cat([x[:, :, :1].expand(-1, -1, r - 1, -1, -1), x], dim=2)
        return pool(x, (r, s, s))

    def object_cells(self, x: Tensor) -> Tensor:
        """x (B, 3, F, H, W) in [-1, 1] -> bool (B, f, h, w): latent cells whose pixels and frames hold any pixel above
        the black background (the shapes world's objects)."""
        return self._pool_cells(object_pixels(x), torch.nn.functional.max_pool3d)[:, 0] > 0.5

    def background_spread(self, x: Tensor, z: Tensor) -> Tensor:
        """Mean squared distance of the object-free cells' continuous latents (what a diffusion model denoises) from
        their mean over the batch; 0 when a batch has fewer than two such cells."""
        bg = self.quantizer.continuous(z).movedim(1, -1)[~self.object_cells(x)]  # (N, D)
        if bg.shape[0] < 2:
            return z.new_zeros(())
        return (bg - bg.mean(0)).square().sum(-1).mean()

    def cell_image(self, z: Tensor) -> Tensor:
        """z (B, D, f, h, w) -> each latent cell's flat color spread over its pixels and frames (B, 3, F, H, W)."""
        r, s = self.cfg.temporal_factor, self.cfg.spatial_factor
        c = self.color_out(z).repeat_interleave(r, 2)[:, :, r - 1:]
        return c.repeat_interleave(s, 3).repeat_interleave(s, 4)

    @torch.no_grad()
    def calibrate_latent_norm(self, clips: Iterable[Any]) -> None:
        """Set the latent standardization's running statistics to the exact mean and variance of the
        pre-standardized latent over `clips` (batches, as `prepare` takes them) under the current weights.

        Training moves the weights faster than a running average follows: a codec stopped at a high
        learning rate would otherwise encode with statistics of older weights. Touches only those
        statistics (nothing a training step reads) and draws no random numbers. No-op with latent_norm=rms.
        """
        bn = self.enc_std
        if not isinstance(bn, (nn.BatchNorm3d, LatentWhitening)):
            return
        was_training, momentum = self.training, bn.momentum
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the batches
        self.eval()
        bn.train()
        try:
            for x in clips:
                self.encoder(self.prepare(x))
        finally:
            bn.momentum = momentum
            self.train(was_training)

    def decode_features(self, z: Tensor) -> Tensor:
        """z (B, D, f, h, w) -> per-frame features (B, Cs, F, h, w)."""
        return self.dec_frame(self.dec_up(self.dec_latent(self.dec_in(z))))

    def render(self, h: Tensor) -> Tensor:
        """Per-frame features (B, Cs, F, h, w) -> pixels (B, 3, F, H, W), unclamped."""
        x = self.dec2d(rearrange(h, "b c f h w -> (b f) c h w"))  # (B*F, 3, H, W)
        return rearrange(x, "(b f) c h w -> b c f h w", b=h.shape[0])

    def decoder(self, z: Tensor) -> Tensor:
        """z (B, D, f, h, w) -> x (B, 3, F, H, W), unclamped."""
        x = self.render(self.decode_features(z))
        return x if self.color_out is None else x + self.cell_image(z)

    def forward(self, x: Tensor) -> tuple[Tensor, QuantizerOutput, Tensor]:
        """Training pass: x (B, 3, F, H, W) -> (reconstruction (B, 3, n, H, W), quantizer output, frame index (n,)).

        In training mode a `latent_dropout` share of clips is decoded from the continuous
        latent (so `decode_latents(encode_latents(x))` works for diffusion), and with
        `train_frames` > 0 only frame 0 and a random subset of the others are rendered:
        the per-frame 2D decoder dominates the cost and every frame shares its weights.
        """
        z = self.encoder(x)
        spread_cells = self.training and self.cfg.entropy_cells == "objects" and self.cfg.quantizer.fsq_entropy_weight > 0
        q = self.quantizer(z, self.object_cells(x) if spread_cells else None)
        if self.training and self.cfg.background_weight > 0:
            q = q._replace(aux_loss=q.aux_loss + self.cfg.background_weight * self.background_spread(x, z))
        zq = q.quantized
        if self.training and self.cfg.latent_dropout > 0:
            use_cont = torch.rand(x.shape[0], 1, 1, 1, 1, device=x.device) < self.cfg.latent_dropout
            zq = torch.where(use_cont, self.quantizer.continuous(z), zq)
        h = self.decode_features(zq)
        n_frames = h.shape[2]
        idx = torch.arange(n_frames, device=x.device)
        if self.training and 0 < self.cfg.train_frames < n_frames:
            rest = torch.randperm(n_frames - 1, device=x.device)[: self.cfg.train_frames - 1] + 1
            idx = torch.cat([idx[:1], rest.sort().values])
            h = h[:, :, idx]
        x_hat = self.render(h)
        if self.color_out is not None:
            x_hat = x_hat + self.cell_image(zq)[:, :, idx]
        return x_hat, q, idx


def object_pixels(x: Tensor) -> Tensor:
    """x (B, 3, F, H, W) in [-1, 1] -> float (B, 1, F, H, W): 1 where any channel is above the black background."""
    return (x.amax(1, keepdim=True) > -0.8).float()


def build_video_codec(preset: str = "tiny", overrides: list[str] | tuple[str, ...] = ()) -> VideoCodec:
    """A fresh codec from a preset name and `key=value` overrides (e.g. "quantizer.levels=[8,8,5,5]")."""
    from .. import config

    return VideoCodec(config.load(VideoCodecConfig, presets=VIDEO_CODEC_PRESETS, preset=preset, overrides=overrides))
