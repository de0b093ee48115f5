"""How far objects stand out from the background in a video codec's normalized latent (what a DiT denoises).

    .venv/bin/python bench/bench_latent_contrast.py --data runs/data_shapes_tiny \
        --codec shipped=src/duogen/assets/reference/codec --codec new=RUN/final

Encodes `--n` held-out clips to each codec's continuous latent, normalized per channel as a diffusion model sees it
(`codec.normalize_latents`). A latent cell is an object cell when any pixel it covers (its 2D block, over the frames
of its latent frame: frame 0 alone, then groups of r) is above the black background (`VideoCodec.object_cells`). Printed per
codec: the share of object cells, the per-channel spread of background and object cells, and the mean distance from
the background cells' mean of background cells and of object cells, with their ratio (how many background spreads
an object sits away: the larger, the more an object stands out against the noise a denoiser starts from).
"""

from __future__ import annotations

import argparse
import json

import torch


def contrast(z: torch.Tensor, cells: torch.Tensor) -> dict[str, object]:
    """Normalized latents (B, C, f, h, w) and object cells (B, f, h, w) -> the figures the module prints."""
    z = z.movedim(1, -1)  # (B, f, h, w, C)
    bg, ob = z[~cells], z[cells]
    mu = bg.mean(0)
    d_bg, d_ob = (bg - mu).norm(dim=-1).mean(), (ob - mu).norm(dim=-1).mean()
    return {
        "object_cell_share": round(float(cells.float().mean()), 4),
        "background_std_per_channel": [round(float(v), 3) for v in bg.std(0)],
        "object_std_per_channel": [round(float(v), 3) for v in ob.std(0)],
        "background_distance": round(float(d_bg), 3),
        "object_distance": round(float(d_ob), 3),
        "object_to_background_ratio": round(float(d_ob / d_bg), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codec", action="append", required=True, help="NAME=DIR of a video codec; repeatable")
    ap.add_argument("--data", required=True, help="shapes data set directory")
    ap.add_argument("--split", default="heldout")
    ap.add_argument("--n", type=int, default=128, help="clips")
    a = ap.parse_args()

    from duogen.tokenizers import load
    from duogen.train.tokenizer_recipe import _to_batch, load_pixels

    x = _to_batch(load_pixels(a.data, a.split, "video", limit=a.n), "video")  # (B, 3, F, H, W) in [-1, 1]
    out = {}
    for spec in a.codec:
        name, _, path = spec.rpartition("=")
        codec = load(path).eval()
        with torch.no_grad():
            z = codec.normalize_latents(codec.encode_latents(x)).float()
            cells = codec.object_cells(x)
        out[name or path] = contrast(z, cells)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
