"""What a generation returns, for both paradigms: `GenerationResult`, the `Generator` protocol, `to_uint8`.

Kept below both generators (`generate.py` for AR and dispatch, `diffusion.py`)
so that they import it and not each other. A result carries what produced each
clip (AR output ids; diffusion initial noise and final latents), which
`generate` accepts back (`ids=`; `noise=`; `latents=` with `start_step=`).
Does not own: sampling (`duogen.ar_models.sampling`, `duogen.diffusion.sampling`),
writing files (`generate.generate_to_dir`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np


@dataclass
class GenerationResult:
    """Clips as uint8 (B, F, H, W, 3), sample i*n + j for prompt i, with what produced them.

    Audio tasks (t2a, v2a) give no clips (`videos` has B = 0) and `audio` instead.
    """

    videos: np.ndarray
    prompts: list[str]  # (B,): the prompt of each clip
    seeds: list[int]  # (B,): the seed that reproduces each clip's call
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    tokens: int = 0  # AR: tokens sampled (cost for the comparison); diffusion: 0
    forward_passes: int = 0  # diffusion: denoiser evaluations; AR: 0
    info: dict[str, Any] = field(default_factory=dict)
    audio: np.ndarray | None = None  # (B, S) float32 in [-1, 1] at `sample_rate`, for audio tasks
    sample_rate: int = 0
    # What produced each clip, to continue from (torch tensors on the CPU, row i = clip i):
    ids: Any = None  # AR: (B, ...) int64 codec ids of the output segment ((B, f, h, w); i2v: the generated frames)
    noise: Any = None  # diffusion: (B, C, f, h, w) float32 x_T; None when the sampler started from given latents
    latents: Any = None  # diffusion: (B, C, f, h, w) float32 final normalized latents z_0 (what was decoded)

    def tensors(self) -> dict[str, Any]:
        """The per-clip tensors this result carries ({"ids"} or {"noise", "latents"}), for `--save-latents`."""
        return {k: v for k, v in (("ids", self.ids), ("noise", self.noise), ("latents", self.latents)) if v is not None}


class Generator(Protocol):
    kind: str

    def generate(self, prompts: Sequence[str], n: int = 1, seed: int = 0, **kwargs: Any) -> GenerationResult: ...


def to_uint8(x: Any) -> np.ndarray:
    """float (B, 3, F, H, W) in [-1, 1] -> uint8 (B, F, H, W, 3)."""
    import torch

    x = x.detach().float().clamp(-1, 1) if isinstance(x, torch.Tensor) else torch.as_tensor(x).float().clamp(-1, 1)
    return ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
