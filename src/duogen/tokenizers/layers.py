"""Convolutional building blocks shared by the image and video codecs.

2D: a norm-free residual block, pixel-unshuffle downsampling and pixel-shuffle
upsampling, and the per-image encoder / decoder stacks built from them.
3D: a causal 3D convolution (MAGVIT-v2, Yu et al. 2023, sec. 3.1: pad only the
past in time, so frame t never sees frames > t) and the causal temporal
down / up sampling that maps 1 + r*k frames to 1 + k latent frames with the
first frame on its own. Latent: an attention block over the whole latent grid
(causal in time) and a batch whitening of the quantizer's input channels.

Norm-free: every residual branch ends in a zero-initialised convolution
(SkipInit, De & Smith 2020), so a deep stack starts as the identity and trains
at a high learning rate without GroupNorm, which is slow on small CPU tensors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class ChannelRMSNorm(nn.Module):
    """x / rms over channels at each position, times a learned per-channel gain. (B, C, ...) -> same.

    Used once, before the pre-quantization projection: without it a norm-free encoder
    can grow its output until FSQ's tanh saturates and every position gets one code.
    """

    def __init__(self, ch: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(ch))

    def forward(self, x: Tensor) -> Tensor:
        rms = x.float().square().mean(1, keepdim=True).add(self.eps).rsqrt().to(x.dtype)
        return x * rms * self.gain.view(1, -1, *([1] * (x.ndim - 2)))


class ResBlock2d(nn.Module):
    """x + conv(silu(conv(silu(x)))), last conv zero-initialised. (N, C, H, W) -> same."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class Down2d(nn.Module):
    """Space-to-depth by 2 then a 1x1 conv: (N, Cin, H, W) -> (N, Cout, H/2, W/2). Loses nothing before the conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = nn.Conv2d(4 * cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.pixel_unshuffle(x, 2))


class Up2d(nn.Module):
    """A 3x3 conv then depth-to-space by 2: (N, Cin, H, W) -> (N, Cout, 2H, 2W)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = nn.Conv2d(cin, 4 * cout, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(self.proj(x), 2)


class Encoder2d(nn.Module):
    """Image -> feature map at 1/(patch * 2^(L-1)) resolution; widths[i] is the width at level i (L = len(widths)).

    patch > 1 first folds patch x patch pixels into channels (pixel-unshuffle, as a
    ViT patch embedding does), so no convolution runs at full resolution.
    """

    def __init__(self, in_ch: int, widths: list[int], blocks: int, patch: int = 1):
        super().__init__()
        self.patch = patch
        self.conv_in = nn.Conv2d(in_ch * patch * patch, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, w in enumerate(widths):
            if i > 0:
                layers.append(Down2d(widths[i - 1], w))
            layers += [ResBlock2d(w) for _ in range(blocks)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """x (N, in_ch, H, W) -> (N, widths[-1], H/s, W/s)."""
        if self.patch > 1:
            x = F.pixel_unshuffle(x, self.patch)  # (N, in_ch*p*p, H/p, W/p)
        return self.body(self.conv_in(x))


class Decoder2d(nn.Module):
    """Feature map -> image; the mirror of `Encoder2d` (pixel-shuffle out of the last conv when patch > 1)."""

    def __init__(self, out_ch: int, widths: list[int], blocks: int, patch: int = 1):
        super().__init__()
        self.patch = patch
        layers: list[nn.Module] = []
        rev = list(reversed(widths))
        for i, w in enumerate(rev):
            if i > 0:
                layers.append(Up2d(rev[i - 1], w))
            layers += [ResBlock2d(w) for _ in range(blocks)]
        self.body = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(widths[0], out_ch * patch * patch, 3, padding=1)

    def forward(self, h: Tensor) -> Tensor:
        """h (N, widths[-1], h, w) -> (N, out_ch, H, W)."""
        x = self.conv_out(F.silu(self.body(h)))
        return F.pixel_shuffle(x, self.patch) if self.patch > 1 else x


class CausalConv3d(nn.Module):
    """A 3D convolution padded only on the past side in time (zeros), 'same' in space.

    (B, Cin, F, H, W) -> (B, Cout, F, H, W). Computed as a 2D convolution over the
    kt time-shifted copies of the input stacked on channels: the same function as a
    causal `nn.Conv3d` (bench/bench_codec.py checks the match, max |diff| ~1e-6). In fp32
    it runs at the speed of `nn.Conv3d`; the reason for it is bf16, where on this CPU
    oneDNN's 2D path uses AMX and its 3D path measured slower than fp32.
    """

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int] = (3, 3, 3)):
        super().__init__()
        kt, kh, kw = kernel
        self.kt = kt
        self.conv = nn.Conv2d(cin * kt, cout, (kh, kw), padding=(kh // 2, kw // 2))

    def forward(self, x: Tensor) -> Tensor:
        B, _, Fr = x.shape[:3]
        if self.kt > 1:
            xp = F.pad(x, (0, 0, 0, 0, self.kt - 1, 0))  # (B, C, F + kt - 1, H, W): zeros before frame 0
            x = torch.cat([xp[:, :, i : i + Fr] for i in range(self.kt)], dim=1)  # (B, kt*C, F, H, W), oldest first
        y = self.conv(rearrange(x, "b c f h w -> (b f) c h w"))
        return rearrange(y, "(b f) c h w -> b c f h w", b=B)


class CausalResBlock3d(nn.Module):
    """Residual block of causal 3D convolutions, zero-initialised last conv. (B, C, F, H, W) -> same.

    full: x + c333(silu(c333(silu(x)))). factorized ((2+1)D, Tran et al. 2018): spatial 1x3x3,
    causal temporal 3x1x1, spatial 1x3x3; 21/54 of the multiply-adds of the full block.
    """

    def __init__(self, ch: int, factorized: bool = False):
        super().__init__()
        if factorized:
            convs = [CausalConv3d(ch, ch, (1, 3, 3)), CausalConv3d(ch, ch, (3, 1, 1)), CausalConv3d(ch, ch, (1, 3, 3))]
        else:
            convs = [CausalConv3d(ch, ch), CausalConv3d(ch, ch)]
        self.convs = nn.ModuleList(convs)
        nn.init.zeros_(convs[-1].conv.weight)
        nn.init.zeros_(convs[-1].conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for conv in self.convs:
            h = conv(F.silu(h))
        return x + h


class CausalTimeDown(nn.Module):
    """1 + r*k frames -> 1 + k: repeat frame 0 r-1 times in front, fold each r frames into channels, 1x1x1 conv.

    Latent frame 0 sees only frame 0 and latent frame j sees frames r(j-1)+1 .. rj,
    so the map is causal and an image is a one-frame video.
    """

    def __init__(self, cin: int, cout: int, r: int):
        super().__init__()
        self.r = r
        self.proj = CausalConv3d(cin * r, cout, (1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, 1 + r*k, H, W) -> (B, Cout, 1 + k, H, W)."""
        if self.r > 1:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.r - 1, -1, -1), x], dim=2)  # (B, C, r(1+k), H, W)
        x = rearrange(x, "b c (f r) h w -> b (c r) f h w", r=self.r)
        return self.proj(x)


class CausalTimeUp(nn.Module):
    """1 + k latent frames -> 1 + r*k: a 1x1x1 conv to r*C channels, unfold into time, drop the r-1 padding frames."""

    def __init__(self, cin: int, cout: int, r: int):
        super().__init__()
        self.r = r
        self.proj = CausalConv3d(cin, cout * r, (1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, 1 + k, H, W) -> (B, Cout, 1 + r*k, H, W)."""
        x = rearrange(self.proj(x), "b (c r) f h w -> b c (f r) h w", r=self.r)
        return x[:, :, self.r - 1 :]


class CausalLatentAttention(nn.Module):
    """Self-attention over a whole latent grid, causal in time: the position (t, y, x) reads every position of latent
    frames <= t, so an image still encodes as a one-frame video. (B, C, f, h, w) -> same.

    x + proj(attn(rms(x) + pos)), `proj` zero-initialised (the block starts as the identity, like the residual
    blocks here). pos: fixed sinusoids of (t, y, x), a third of the channels each, computed for any grid size, so
    the block knows where the positions it reads are. The convolutions around it see 3x3 neighbourhoods; this lets
    a cell's code read the whole clip's objects (an object's shape and motion, told once for all its cells).
    """

    def __init__(self, ch: int, heads: int = 4):
        super().__init__()
        if ch % heads or ch < 6:
            raise ValueError(f"latent attention needs channels ({ch}) divisible by heads ({heads}), at least 6")
        self.heads = heads
        self.norm = ChannelRMSNorm(ch)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = nn.Linear(ch, ch)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    @staticmethod
    def positions(f: int, h: int, w: int, ch: int, device: torch.device) -> Tensor:
        """(f*h*w, ch): sinusoids of t, y and x, 2 * (ch // 6) channels each (any remainder channels stay 0)."""
        n = ch // 6
        freq = torch.exp(-torch.arange(n, device=device, dtype=torch.float32) * (math.log(100.0) / n))
        grids = torch.meshgrid(*(torch.arange(s, device=device, dtype=torch.float32) for s in (f, h, w)), indexing="ij")
        parts = [torch.cat([torch.sin(g.reshape(-1, 1) * freq), torch.cos(g.reshape(-1, 1) * freq)], 1) for g in grids]
        pe = torch.cat(parts, 1)
        return F.pad(pe, (0, ch - pe.shape[1]))

    def forward(self, x: Tensor) -> Tensor:
        B, C, f, h, w = x.shape
        t = rearrange(self.norm(x), "b c f h w -> b (f h w) c")
        t = t + self.positions(f, h, w, C, x.device).to(t.dtype)
        q, k, v = rearrange(self.qkv(t), "b n (three nh d) -> three b nh n d", three=3, nh=self.heads)
        frame = torch.arange(f, device=x.device).repeat_interleave(h * w)
        mask = frame[None, :] <= frame[:, None]  # (query, key): keys of the same or earlier latent frames
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        o = self.proj(rearrange(o, "b nh n d -> b n (nh d)"))
        return x + rearrange(o, "b (f h w) c -> b c f h w", f=f, h=h, w=w)


class LatentWhitening(nn.Module):
    """Decorrelate and standardize the D channels of a latent (B, D, ...) -> same (Huang et al. 2018's decorrelated
    batch norm, with a Cholesky factor instead of ZCA's eigendecomposition, whose gradient has 1 / (l_i - l_j) terms
    that blow up where two eigenvalues of the covariance meet).

    Training: y = L^-1 (x - mean) with mean and covariance L L^T of this batch (every position a sample), so the
    channels come out uncorrelated with unit variance; the running mean and covariance follow with `momentum`
    (None: a cumulative average, as `nn.BatchNorm` does, which `VideoCodec.calibrate_latent_norm` uses). Eval: the
    same map with the running statistics, a fixed linear map at each position (causality holds). BatchNorm
    standardizes each channel alone; channels that stay correlated leave the quantizer's joint codes unevenly used.
    """

    def __init__(self, dim: int, eps: float = 1e-4, momentum: float | None = 0.1):
        super().__init__()
        self.dim, self.eps, self.momentum = dim, eps, momentum
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_cov", torch.eye(dim))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_cov.copy_(torch.eye(self.dim))
        self.num_batches_tracked.zero_()

    def forward(self, x: Tensor) -> Tensor:
        last = x.movedim(1, -1)  # (B, ..., D)
        with torch.autocast(x.device.type, enabled=False):  # statistics and the factor in fp32 under bf16 training too
            y = self._whiten(last.reshape(-1, self.dim).float())
        return y.reshape(last.shape).movedim(-1, 1).to(x.dtype)

    def _whiten(self, flat: Tensor) -> Tensor:
        """(N, D) samples -> (N, D) whitened (training: by this batch's statistics, which the running ones follow)."""
        if self.training:
            mean = flat.mean(0)
            centred = flat - mean
            cov = centred.T @ centred / max(flat.shape[0] - 1, 1)
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), m)
                self.running_cov.lerp_(cov.detach(), m)
        else:
            mean, cov = self.running_mean, self.running_cov
            centred = flat - mean
        chol = torch.linalg.cholesky(cov + self.eps * torch.eye(self.dim, device=flat.device))
        return torch.linalg.solve_triangular(chol, centred.T, upper=False).T  # (N, D) = (L^-1 (x - mean))^T
