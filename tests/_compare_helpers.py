"""Generators with known answers for the comparison tests.

`RenderGenerator` renders the ground truth of each prompt with the shapes world's
own renderer (mode "render"), or that clip with its first frame frozen (mode
"frozen": right color and shape, no motion). `NoiseGenerator` returns uniform
noise. The probes must score them in that order, which is what the tests check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from duogen.data.shapes import WorldConfig, render_clip
from duogen.eval.compare import ModelEntry, Prompt, Setting


@dataclass
class Result:
    videos: np.ndarray  # (B, F, H, W, 3) uint8
    tokens: int = 0


class RenderGenerator:
    kind = "diffusion"

    def __init__(self, prompts: list[Prompt]):
        self.attrs = {p.caption: p.attributes for p in prompts}
        self.cfg = WorldConfig()

    def generate(self, prompts, n=1, seed=0, mode="render", steps=1):
        rng = np.random.default_rng(seed)
        out = []
        for cap in prompts:
            for _ in range(n):
                v = render_clip(self.attrs[cap], self.cfg, rng).video
                if mode == "frozen":
                    v = np.repeat(v[:1], len(v), axis=0)
                out.append(v)
        return Result(np.stack(out))


class NoiseGenerator:
    kind = "ar"

    def generate(self, prompts, n=1, seed=0, tokens=192):
        rng = np.random.default_rng(seed)
        cfg = WorldConfig()
        v = rng.integers(0, 256, size=(len(prompts) * n, cfg.frames, cfg.size, cfg.size, 3), dtype=np.uint8)
        return Result(v, tokens * len(v))


def world_prompts() -> list[Prompt]:
    """Three prompts with known attributes: two single objects and a two-object composition."""
    one = [{"shape": "circle", "color": "red", "motion": "left", "speed": 1.5, "size": 12}]
    two = [{"shape": "square", "color": "blue", "motion": "down", "speed": 1.5, "size": 12}]
    both = [{"shape": "triangle", "color": "green", "motion": "right", "speed": 1.0, "size": 10},
            {"shape": "7", "color": "yellow", "motion": "up", "speed": 1.0, "size": 10}]
    return [Prompt("a red circle moves left", one, "validation"),
            Prompt("a blue square moves down", two, "validation"),
            Prompt("a green triangle moves right and a yellow 7 moves up", both, "heldout")]


def known_models(prompts: list[Prompt]) -> list[ModelEntry]:
    return [
        ModelEntry("render", RenderGenerator(prompts), "diffusion",
                   [Setting("exact", {"mode": "render", "steps": 4}), Setting("frozen", {"mode": "frozen", "steps": 1})]),
        ModelEntry("noise", NoiseGenerator(), "ar", [Setting("noise", {"tokens": 192})]),
    ]


def real_world_clips(n: int = 24, seed: int = 123) -> np.ndarray:
    """Real renders of random single-object attributes, the reference set for Frechet and temporal change."""
    from duogen.data.shapes import sample_attributes

    cfg = WorldConfig(max_objects=1)
    rng = np.random.default_rng(seed)
    return np.stack([render_clip(sample_attributes(rng, cfg), cfg, rng).video for _ in range(n)])
