"""A convolutional image codec: residual 2D encoder / decoder with 4x, 8x or 16x downsampling.

Shape notation: B batch, H W pixels, h w = H/s, W/s latent positions, D quantizer dim.

    x (B, 3, H, W) -> Encoder2d -> 1x1 conv -> z (B, D, h, w) -> quantizer -> ids (B, h, w)
    quantized (B, D, h, w) -> 3x3 conv -> Decoder2d -> x (B, 3, H, W)

Downsampling is pixel-unshuffle + 1x1 conv per level and upsampling is a 3x3
conv + pixel-shuffle (layers.py), so s = patch * 2**(len(widths) - 1). The video
codec uses the same 2D stacks per frame; this one is for still images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ..errors import ConfigError, DataError
from .codec import PixelCodec, to_float_pixels
from .layers import Decoder2d, Encoder2d
from .quantizers import Quantizer, QuantizerConfig


@dataclass
class ImageCodecConfig:
    size: int = 32  # training resolution (H = W); other multiples of s also encode
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])  # one per level; s = patch * 2**(L-1)
    patch: int = 1
    blocks: int = 1
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    @property
    def spatial_factor(self) -> int:
        return self.patch * 2 ** (len(self.widths) - 1)

    def check(self) -> None:
        if self.spatial_factor not in (2, 4, 8, 16):
            raise ConfigError(f"spatial factor {self.spatial_factor} (patch {self.patch}, widths {self.widths}); allowed: 2, 4, 8, 16")
        if self.size % self.spatial_factor:
            raise ConfigError(f"size {self.size} must be a multiple of the spatial factor {self.spatial_factor}")


IMAGE_CODEC_PRESETS: dict[str, ImageCodecConfig] = {
    # 4x: 32x32 -> 8x8 tokens
    "tiny": ImageCodecConfig(size=32, patch=2, widths=[64, 128], quantizer=QuantizerConfig("fsq", 4, [8, 5, 5, 5])),
    # 8x: 64x64 -> 8x8 tokens
    "small": ImageCodecConfig(size=64, widths=[32, 64, 128, 192], quantizer=QuantizerConfig("fsq", 5, [8, 8, 8, 5, 5])),
    # 16x: 128x128 -> 8x8 tokens
    "base": ImageCodecConfig(
        size=128, widths=[32, 64, 128, 256, 384], blocks=2, quantizer=QuantizerConfig("fsq", 6, [8, 8, 8, 5, 5, 5])
    ),
}


class ImageCodec(PixelCodec):
    """2D codec for still images; see the module docstring."""

    kind = "image_codec"

    def __init__(self, cfg: ImageCodecConfig):
        cfg.check()
        super().__init__(cfg, cfg.quantizer.dim, Quantizer(cfg.quantizer))
        self.enc = Encoder2d(3, cfg.widths, cfg.blocks, cfg.patch)
        self.enc_out = nn.Conv2d(cfg.widths[-1], cfg.quantizer.dim, 1)
        self.dec_in = nn.Conv2d(cfg.quantizer.dim, cfg.widths[-1], 3, padding=1)
        self.dec = Decoder2d(3, cfg.widths, cfg.blocks, cfg.patch)

    @classmethod
    def config_class(cls) -> type:
        return ImageCodecConfig

    def latent_shape(self, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(…, H, W) -> (D, h, w) for the continuous latent; ids drop D."""
        H, W = input_shape[-2:]
        self._check_dims(H, W)
        s = self.cfg.spatial_factor
        return (self.cfg.quantizer.dim, H // s, W // s)

    def _check_dims(self, H: int, W: int) -> None:
        s = self.cfg.spatial_factor
        if H % s or W % s or H == 0 or W == 0:
            raise DataError(
                f"image of {H}x{W} does not fit this codec: the size must be a multiple of {s}"
                f" (trained at {self.cfg.size}x{self.cfg.size}); resize it"
            )

    def prepare(self, x: Any) -> Tensor:
        """uint8 (H, W, 3) / (B, H, W, 3), or float (B, 3, H, W) in [-1, 1] -> float (B, 3, H, W)."""
        x = to_float_pixels(x, channels_last_dims=3)
        if x.ndim != 4 or x.shape[1] != 3:
            raise DataError(f"an image batch must be (B, 3, H, W) in [-1, 1] or uint8 (H, W, 3), got {tuple(x.shape)}")
        self._check_dims(*x.shape[2:])
        return x.to(self.device)

    def encoder(self, x: Tensor) -> Tensor:
        """x (B, 3, H, W) -> z (B, D, h, w)."""
        return self.enc_out(self.enc(x))

    def decoder(self, z: Tensor) -> Tensor:
        """z (B, D, h, w) -> x (B, 3, H, W), unclamped."""
        return self.dec(self.dec_in(z))


def build_image_codec(preset: str = "tiny", overrides: list[str] | tuple[str, ...] = ()) -> ImageCodec:
    from .. import config

    return ImageCodec(config.load(ImageCodecConfig, presets=IMAGE_CODEC_PRESETS, preset=preset, overrides=overrides))
