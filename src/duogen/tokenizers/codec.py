"""The codec contract shared by the image and video codecs (DESIGN.md, Contracts).

`PixelCodec` owns what every pixel codec does the same way: turning user input
(uint8 arrays as read from files, or float tensors in [-1, 1]) into a checked
float tensor, the quantizer round trip (`encode`, `decode`, `encode_latents`,
`decode_latents`, `ids_to_latents`, `latents_to_ids`), the stored per-channel
latent statistics, and saving / loading a model directory. A subclass supplies
`encoder(x) -> z` (pre-quantization), `decoder(z) -> x`, `prepare(x)` and
`latent_shape(input_shape)`.

Invariants: `decode(ids) == decode_latents(ids_to_latents(ids))` (by
construction) and `encode(x) == latents_to_ids(encode_latents(x))`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import CheckpointError, DataError
from .quantizers import Quantizer, QuantizerOutput


def to_float_pixels(x: Any, channels_last_dims: int) -> Tensor:
    """uint8 array / tensor with channels last -> float in [-1, 1], channels moved to dim 1 after a batch dim.

    `channels_last_dims` is the number of dims of one uint8 item (3 for (H, W, C), 4 for (F, H, W, C)).
    Float input is returned as a float32 tensor unchanged (checked for range by the caller).
    """
    if isinstance(x, np.ndarray):
        if x.dtype == np.uint8:
            x = torch.from_numpy(np.ascontiguousarray(x))
        elif np.issubdtype(x.dtype, np.floating):
            x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        else:
            raise DataError(f"expected a uint8 array (pixels 0..255) or floats in [-1, 1], got dtype {x.dtype}")
    if not isinstance(x, Tensor):
        raise DataError(f"expected a uint8 array or a float tensor, got {type(x).__name__}")
    if x.dtype == torch.uint8:
        if x.ndim == channels_last_dims:
            x = x.unsqueeze(0)
        if x.ndim != channels_last_dims + 1 or x.shape[-1] not in (1, 3):
            raise DataError(f"uint8 input must have shape {'(F, H, W, 3)' if channels_last_dims == 4 else '(H, W, 3)'}"
                            f" (optionally with a batch dim in front), got {tuple(x.shape)}")
        x = x.float().div(127.5).sub(1.0)
        x = x.movedim(-1, 1)  # (B, C, ...)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, *x.shape[2:])
        return x.contiguous()
    if not x.dtype.is_floating_point:
        raise DataError(f"expected uint8 pixels or a float tensor in [-1, 1], got dtype {x.dtype}")
    x = x.float()
    if x.numel() and (float(x.min()) < -1.05 or float(x.max()) > 1.05):
        raise DataError(
            f"float input must lie in [-1, 1], got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]"
            " (pass uint8 pixels, or scale with x / 127.5 - 1)"
        )
    return x


class PixelCodec(nn.Module):
    """Base of the image and video codecs: the contract around an encoder, a quantizer and a decoder."""

    kind: ClassVar[str] = ""

    def __init__(self, cfg: Any, latent_channels: int, quantizer: Quantizer):
        super().__init__()
        self.cfg = cfg
        self.quantizer = quantizer
        # Per-channel statistics of `encode_latents` over training data, set at the end of training.
        self.register_buffer("latent_scale", torch.ones(latent_channels))
        self.register_buffer("latent_shift", torch.zeros(latent_channels))

    # subclass hooks -------------------------------------------------------
    def prepare(self, x: Any) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def encoder(self, x: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def decoder(self, z: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    # contract ---------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def device(self) -> torch.device:
        return self.latent_scale.device

    def forward(self, x: Tensor) -> tuple[Tensor, QuantizerOutput, Tensor | None]:
        """Training pass: x in [-1, 1] -> (reconstruction, quantizer output, None). No clamping, for the loss.

        The third item is the index of the frames rendered (video codecs may render a subset); None = all.
        """
        q = self.quantizer(self.encoder(x))
        return self.decoder(q.quantized), q, None

    def encode_latents(self, x: Any) -> Tensor:
        """Continuous pre-quantization latent (for FSQ: bounded, before rounding)."""
        return self.quantizer.continuous(self.encoder(self.prepare(x)))

    def latents_to_ids(self, z: Tensor) -> Tensor:
        return self.quantizer.latents_to_ids(z)

    def ids_to_latents(self, ids: Tensor) -> Tensor:
        ids = torch.as_tensor(ids, device=self.device)
        self.quantizer.check_ids(ids)
        return self.quantizer.ids_to_latents(ids)

    def encode(self, x: Any) -> Tensor:
        return self.latents_to_ids(self.encode_latents(x))

    def decode_latents(self, z: Tensor) -> Tensor:
        """Latent -> pixels in [-1, 1]."""
        return self.decoder(z.float()).float().clamp(-1.0, 1.0)

    def decode(self, ids: Tensor) -> Tensor:
        return self.decode_latents(self.ids_to_latents(ids))

    def normalize_latents(self, z: Tensor) -> Tensor:
        """(z - shift) / scale per channel: unit-variance latents for a diffusion model."""
        view = (1, -1) + (1,) * (z.ndim - 2)
        return (z - self.latent_shift.view(view)) / self.latent_scale.view(view)

    def denormalize_latents(self, z: Tensor) -> Tensor:
        view = (1, -1) + (1,) * (z.ndim - 2)
        return z * self.latent_scale.view(view) + self.latent_shift.view(view)

    @torch.no_grad()
    def set_latent_stats(self, latents: Tensor) -> None:
        """Store the per-channel mean / std of latents (B, C, ...) as `latent_shift` / `latent_scale`."""
        flat = latents.float().transpose(0, 1).reshape(latents.shape[1], -1)  # (C, N)
        self.latent_shift.copy_(flat.mean(1))
        self.latent_scale.copy_(flat.std(1).clamp(min=1e-4))

    # save / load --------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        from .. import config as cfgmod
        from ..io import save_model_dir

        conf = {"kind": self.kind, "config": cfgmod.to_dict(self.cfg), **(extra or {})}
        return save_model_dir(directory, conf, self.state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu") -> "PixelCodec":
        from .. import config as cfgmod
        from ..io import load_model_dir, load_weights_into

        conf, state = load_model_dir(directory)
        if conf.get("kind") != cls.kind:
            raise CheckpointError(f"{directory}: holds a '{conf.get('kind')}' model, not a {cls.kind}")
        model = cls(cfgmod.from_dict(cls.config_class(), conf["config"]))
        load_weights_into(model, state, Path(directory) / "model.safetensors")
        return model.to(map_location).eval()

    @classmethod
    def config_class(cls) -> type:  # pragma: no cover - overridden
        raise NotImplementedError
