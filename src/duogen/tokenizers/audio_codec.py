"""A speech codec in the style of SoundStream (Zeghidour et al. 2021), sized for CPUs, at 16 kHz.

Shape notation: B batch, S samples, C channels, T latent frames (S / hop), D latent
dim, Q residual-VQ levels, K codes per level.

    x (B, 1, S) in [-1, 1]
      -> patch conv (kernel 2p, stride p)                                         (B, C, S / p)
      -> [residual units (dilated, ELU) -> strided Conv1d] per stride             (B, C*2^i, S / (p*prod))
      -> Conv1d 3 to D                                                            (B, D, T)     T = S / hop
      -> residual VQ, Q levels of K codes (SoundStream sec. 3.3)                   ids (B, Q, T)
    and the mirror image back (transposed convolutions), no output squashing.

With the default patch 4 and strides (2, 5, 8) the hop is 320 samples: 50 latent
frames a second, so Q=4 levels of K=256 codes give 50 * 4 * 8 = 1.6 kbit/s.
SoundStream runs its first residual units at the full sample rate; here the
first layer is a strided "patch" convolution (p samples per step) so that every
residual unit runs at 4 kHz or less: on a CPU that is the difference between
minutes and hours of training, at some cost in high-frequency detail.

Losses (`codec_loss`): waveform L1, multi-resolution STFT loss (spectral
convergence + log-magnitude L1, Yamamoto et al. 2020, eqs. 5-6) and the RVQ
commitment loss. There is no adversarial term: without one the codec gets the
spectral envelope right and smears fine phase, which SI-SNR punishes.

Metrics (`si_snr`, `mel_distance`) are defined in their docstrings; `evaluate`
reports both on whole utterances, with codebook usage, bits per second and the
compression ratio against 16-bit PCM. The training recipe lives in
`duogen.train.audio_codec_recipe` (tokenizers never import train).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from .codec import PixelCodec
from .quantizers import Quantizer, QuantizerConfig

SAMPLE_RATE = 16000
PCM_BITS = 16  # the reference for the compression ratio: 16-bit PCM, 256 kbit/s at 16 kHz


@dataclass
class AudioCodecConfig:
    """Sizes of the audio codec. hop = prod(strides) samples per latent frame."""

    sample_rate: int = SAMPLE_RATE
    channels: int = 16  # C: width of the first stage; doubles after each stride
    patch: int = 4  # p: samples per step of the first (strided) convolution; 1 = a kernel-7 conv at full rate
    strides: list[int] = field(default_factory=lambda: [2, 5, 8])
    dilations: list[int] = field(default_factory=lambda: [1, 3])  # residual units per stage (SoundStream: 1, 3, 9)
    latent_dim: int = 64  # D
    # dead_code_threshold is an EMA of hits per step: a batch of 8 half-second clips has only
    # 200 latent frames for 256 codes, so the quantizers' default (2 hits) would re-seed nearly
    # every code every step; 0.1 re-seeds codes used less than once in ten steps.
    quantizer: QuantizerConfig = field(
        default_factory=lambda: QuantizerConfig("rvq", dim=64, codebook_size=256, num_quantizers=4, dead_code_threshold=0.1)
    )
    # loss weights
    wave_weight: float = 1.0
    stft_weight: float = 1.0
    stft_resolutions: list[int] = field(default_factory=lambda: [256, 512, 1024])  # FFT sizes; hop = n/4

    def check(self) -> None:
        if self.sample_rate != SAMPLE_RATE:
            raise ConfigError(f"sample_rate: the audio codec runs at {SAMPLE_RATE} Hz, got {self.sample_rate}")
        if self.quantizer.kind != "rvq":
            raise ConfigError(f"quantizer.kind: the audio codec uses residual VQ ('rvq'), got {self.quantizer.kind!r}")
        if self.quantizer.dim != self.latent_dim:
            raise ConfigError(f"quantizer.dim ({self.quantizer.dim}) must equal latent_dim ({self.latent_dim})")
        if not self.strides or any(s < 1 for s in self.strides) or self.patch < 1:
            raise ConfigError(f"patch and strides must be positive integers, got {self.patch} and {self.strides}")

    @property
    def hop(self) -> int:
        return int(self.patch * math.prod(self.strides))


AUDIO_CODEC_PRESETS: dict[str, AudioCodecConfig] = {
    "tiny": AudioCodecConfig(),
    "small": AudioCodecConfig(
        channels=32, patch=2, strides=[2, 4, 5, 4], dilations=[1, 3, 9], latent_dim=128,
        quantizer=QuantizerConfig("rvq", dim=128, codebook_size=1024, num_quantizers=8, dead_code_threshold=0.1),
    ),
    "base": AudioCodecConfig(
        channels=32, patch=1, strides=[2, 4, 5, 8], dilations=[1, 3, 9], latent_dim=256,
        quantizer=QuantizerConfig("rvq", dim=256, codebook_size=1024, num_quantizers=12, dead_code_threshold=0.1),
    ),
}


# ----------------------------------------------------------------------------- blocks


class ResidualUnit1d(nn.Module):
    """x + Conv1x1(ELU(Conv7_dilated(ELU(x)))) (SoundStream fig. 3, without causal padding)."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 7, dilation=dilation, padding=3 * dilation)
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.proj(F.elu(self.conv(F.elu(x))))


def _down(c_in: int, c_out: int, stride: int) -> nn.Conv1d:
    # kernel 2s, padding ceil(s/2): S -> S / s exactly for S a multiple of s, odd or even s
    return nn.Conv1d(c_in, c_out, 2 * stride, stride=stride, padding=(stride + 1) // 2)


def _up(c_in: int, c_out: int, stride: int) -> nn.ConvTranspose1d:
    # the transpose of `_down`: T -> T * s
    return nn.ConvTranspose1d(c_in, c_out, 2 * stride, stride=stride, padding=(stride + 1) // 2, output_padding=stride % 2)


class AudioEncoder(nn.Module):
    def __init__(self, cfg: AudioCodecConfig):
        super().__init__()
        c = cfg.channels
        layers: list[nn.Module] = [nn.Conv1d(1, c, 7, padding=3) if cfg.patch == 1 else _down(1, c, cfg.patch)]
        for s in cfg.strides:
            layers += [ResidualUnit1d(c, d) for d in cfg.dilations]
            layers += [nn.ELU(), _down(c, 2 * c, s)]
            c *= 2
        layers += [nn.ELU(), nn.Conv1d(c, cfg.latent_dim, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, 1, S) -> (B, D, S / hop)


class AudioDecoder(nn.Module):
    def __init__(self, cfg: AudioCodecConfig):
        super().__init__()
        c = cfg.channels * 2 ** len(cfg.strides)
        layers: list[nn.Module] = [nn.Conv1d(cfg.latent_dim, c, 7, padding=3)]
        for s in reversed(cfg.strides):
            layers += [nn.ELU(), _up(c, c // 2, s)]
            c //= 2
            layers += [ResidualUnit1d(c, d) for d in cfg.dilations]
        layers += [nn.ELU(), nn.Conv1d(c, 1, 7, padding=3) if cfg.patch == 1 else _up(c, 1, cfg.patch)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)  # (B, D, T) -> (B, 1, T * hop)


# ----------------------------------------------------------------------------- codec


def to_float_audio(x: Any) -> Tensor:
    """1D float array (S,), (B, S) or (B, 1, S), float in [-1, 1] or int16 PCM -> float32 tensor (B, 1, S)."""
    if isinstance(x, np.ndarray):
        if x.dtype == np.int16:
            x = x.astype(np.float32) / 32768.0
        elif not np.issubdtype(x.dtype, np.floating):
            raise DataError(f"audio must be float in [-1, 1] or int16 PCM, got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if not isinstance(x, Tensor):
        raise DataError(f"expected an audio array or tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise DataError(f"audio tensor must be float in [-1, 1], got dtype {x.dtype}")
    x = x.float()
    if x.ndim == 1:
        x = x[None, None]
    elif x.ndim == 2:
        x = x[:, None]
    if x.ndim != 3 or x.shape[1] != 1:
        raise DataError(f"audio must be (S,), (B, S) or (B, 1, S) mono, got shape {tuple(x.shape)}")
    if x.shape[-1] == 0:
        raise DataError("audio is empty")
    if float(x.abs().max()) > 1.05:
        raise DataError(f"audio must lie in [-1, 1], got peak {float(x.abs().max()):.3g} (divide int16 PCM by 32768)")
    return x


class AudioCodec(PixelCodec):
    """SoundStream-style codec; see the module docstring. ids are (B, Q, T)."""

    kind = "audio_codec"

    def __init__(self, cfg: AudioCodecConfig):
        cfg.check()
        super().__init__(cfg, cfg.latent_dim, Quantizer(cfg.quantizer))
        self.enc = AudioEncoder(cfg)
        self.dec = AudioDecoder(cfg)

    @classmethod
    def config_class(cls) -> type:
        return AudioCodecConfig

    @property
    def hop(self) -> int:
        return self.cfg.hop

    @property
    def num_levels(self) -> int:
        return self.cfg.quantizer.num_quantizers

    @property
    def bits_per_second(self) -> float:
        """Bitrate of the ids: frames per second * Q levels * log2(K) bits."""
        return self.cfg.sample_rate / self.hop * self.num_levels * math.log2(self.cfg.quantizer.codebook_size)

    def latent_shape(self, input_shape: tuple[int, ...]) -> tuple[int, int]:
        """(…, S) -> (D, T) with T = ceil(S / hop) (inputs are zero-padded to a multiple of hop); ids are (Q, T)."""
        return (self.cfg.latent_dim, -(-int(input_shape[-1]) // self.hop))

    def prepare(self, x: Any) -> Tensor:
        """Any accepted audio -> (B, 1, S') on the model's device, zero-padded on the right to a multiple of hop."""
        x = to_float_audio(x).to(self.device)
        pad = (-x.shape[-1]) % self.hop
        return F.pad(x, (0, pad)) if pad else x

    def encoder(self, x: Tensor) -> Tensor:
        return self.enc(x)

    def decoder(self, z: Tensor) -> Tensor:
        return self.dec(z)

    # ids: the quantizer adapter uses (B, T, Q); the audio contract is (B, Q, T), levels first.
    def latents_to_ids(self, z: Tensor) -> Tensor:
        return self.quantizer.latents_to_ids(z).transpose(1, 2)  # (B, T, Q) -> (B, Q, T)

    def ids_to_latents(self, ids: Tensor) -> Tensor:
        ids = torch.as_tensor(ids, device=self.device)
        if ids.ndim != 3 or ids.shape[1] != self.num_levels:
            raise DataError(f"audio ids must be (B, {self.num_levels}, T), got shape {tuple(ids.shape)}")
        self.quantizer.check_ids(ids)
        return self.quantizer.ids_to_latents(ids.transpose(1, 2))  # (B, D, T)

    @torch.no_grad()
    def reconstruct(self, audio: Any) -> np.ndarray:
        """1D float audio -> its reconstruction through the ids, trimmed to the input length."""
        x = to_float_audio(audio)
        return self.decode(self.encode(x))[:, 0, : x.shape[-1]].cpu().numpy().squeeze(0)


def build_audio_codec(preset: str = "tiny", overrides: list[str] | tuple[str, ...] = ()) -> AudioCodec:
    from .. import config

    return AudioCodec(config.load(AudioCodecConfig, presets=AUDIO_CODEC_PRESETS, preset=preset, overrides=overrides))


# ----------------------------------------------------------------------------- losses


def _stft_mag(x: Tensor, n_fft: int) -> Tensor:
    """(B, S) -> magnitude (B, n_fft/2+1, frames), Hann window, hop n_fft/4."""
    win = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    spec = torch.stft(x, n_fft, hop_length=n_fft // 4, window=win, return_complex=True)
    return spec.abs().clamp(min=1e-7)


def multi_resolution_stft_loss(x_hat: Tensor, x: Tensor, resolutions: list[int]) -> Tensor:
    """Yamamoto et al. 2020 (Parallel WaveGAN) eqs. 5-6, averaged over resolutions:
    spectral convergence ||S - S_hat||_F / ||S||_F plus mean |log S - log S_hat|."""
    x_hat, x = x_hat.reshape(-1, x_hat.shape[-1]), x.reshape(-1, x.shape[-1])
    total = x.new_zeros(())
    for n in resolutions:
        s, s_hat = _stft_mag(x, n), _stft_mag(x_hat, n)
        sc = torch.linalg.norm(s - s_hat) / torch.linalg.norm(s).clamp(min=1e-7)
        mag = (s.log() - s_hat.log()).abs().mean()
        total = total + sc + mag
    return total / len(resolutions)


class CodecLoss(NamedTuple):
    loss: Tensor
    metrics: dict[str, float]


def codec_loss(model: AudioCodec, x: Tensor) -> CodecLoss:
    """Training objective on a batch x (B, 1, S): wave L1 + multi-resolution STFT + RVQ commitment."""
    q = model.quantizer(model.encoder(x))
    x_hat = model.decoder(q.quantized)  # (B, 1, S)
    wave = (x_hat - x).abs().mean()
    stft = multi_resolution_stft_loss(x_hat.float(), x.float(), model.cfg.stft_resolutions)
    loss = model.cfg.wave_weight * wave + model.cfg.stft_weight * stft + q.aux_loss
    return CodecLoss(loss, {"wave_l1": wave.item(), "stft": stft.item(), "commit": q.aux_loss.item(),
                            "usage": q.stats["usage"], "perplexity": q.stats["perplexity"]})


# ----------------------------------------------------------------------------- metrics


def si_snr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant signal-to-noise ratio in dB (Le Roux et al. 2019, "SDR - half-baked or well done?").

    Both signals are made zero-mean; s_t = (<s_hat, s> / ||s||^2) s is the part of
    the estimate along the reference, e = s_hat - s_t the rest;
    SI-SNR = 10 log10(||s_t||^2 / ||e||^2). 0 dB: as much error as signal.
    """
    s = np.asarray(reference, np.float64) - np.mean(reference)
    s_hat = np.asarray(estimate, np.float64) - np.mean(estimate)
    s_t = (np.dot(s_hat, s) / max(np.dot(s, s), 1e-12)) * s
    e = s_hat - s_t
    return float(10 * np.log10(max(np.dot(s_t, s_t), 1e-12) / max(np.dot(e, e), 1e-12)))


def mel_filterbank(n_fft: int = 1024, n_mels: int = 80, sample_rate: int = SAMPLE_RATE, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """Triangular filters on the HTK mel scale (mel = 2595 log10(1 + f/700)), unnormalized: (n_mels, n_fft/2+1)."""
    fmax = fmax or sample_rate / 2
    mel = lambda f: 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10 ** (np.asarray(m) / 2595.0) - 1.0)  # noqa: E731
    edges = hz(np.linspace(mel(fmin), mel(fmax), n_mels + 2))  # (n_mels + 2,)
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lo) / np.maximum(mid - lo, 1e-9)
    down = (hi - freqs[None]) / np.maximum(hi - mid, 1e-9)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


def log_mel(x: np.ndarray, n_fft: int = 1024, hop: int = 256, n_mels: int = 80, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """log10 of an 80-band mel power spectrogram, floored at 1e-5: (n_mels, frames)."""
    xt = torch.as_tensor(np.asarray(x, np.float32))
    spec = torch.stft(xt, n_fft, hop_length=hop, window=torch.hann_window(n_fft), return_complex=True).abs() ** 2
    mel = torch.from_numpy(mel_filterbank(n_fft, n_mels, sample_rate)) @ spec  # (n_mels, frames)
    return torch.log10(mel.clamp(min=1e-5)).numpy()


def mel_distance(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute difference of log10 mel power spectrograms (80 HTK mel bands, 0-8 kHz,
    1024-point Hann STFT, hop 256, floor 1e-5), over all bands and frames. 0 = identical;
    1.0 = off by a factor of 10 in power on average."""
    n = min(len(estimate), len(reference))
    return float(np.abs(log_mel(estimate[:n]) - log_mel(reference[:n])).mean())


@torch.no_grad()
def evaluate(codec: AudioCodec, utterances: list[np.ndarray]) -> dict[str, float]:
    """Codec reconstructions (through the ids) of whole utterances: mean SI-SNR (dB) and mel distance,
    codebook usage and perplexity over all of them (mean over RVQ levels), bits per second and the
    compression ratio against 16-bit PCM at the codec's sample rate."""
    from .quantizers import CodebookUsage

    if not utterances:
        raise DataError("no utterances to evaluate the audio codec on")
    codec.eval()
    usage = CodebookUsage(codec.cfg.quantizer.codebook_size, levels=codec.num_levels)
    snrs, mels = [], []
    for u in utterances:
        ids = codec.encode(u)  # (1, Q, T)
        usage.update(ids.transpose(1, 2))  # (1, T, Q)
        rec = codec.decode(ids)[0, 0, : len(u)].cpu().numpy()
        snrs.append(si_snr(rec, u))
        mels.append(mel_distance(rec, u))
    st = usage.stats()
    return {"si_snr_db": float(np.mean(snrs)), "mel_distance": float(np.mean(mels)), "utterances": len(utterances),
            "seconds": sum(len(u) for u in utterances) / codec.cfg.sample_rate,
            "codebook_usage": st["usage"], "perplexity": st["perplexity"], "codebook_size": codec.cfg.quantizer.codebook_size,
            "bits_per_second": codec.bits_per_second,
            "compression_ratio": PCM_BITS * codec.cfg.sample_rate / codec.bits_per_second}
