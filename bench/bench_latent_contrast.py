"""How far objects stand out from the background in a video codec's normalized latent (what a DiT denoises).

    .venv/bin/python bench/bench_latent_contrast.py --data runs/data_shapes_tiny \
        --codec shipped=src/duogen/assets/reference/codec --codec new=RUN/final

Encodes `--n` held-out clips to each codec's continuous latent, normalized per channel as a diffusion model sees it
(`codec.normalize_latents`). A latent cell is an object cell when any pixel it covers (its 2D block, over the frames
of its latent frame: frame 0 alone, then groups of r) is above the black background (`VideoCodec.object_cells`). Printed per
codec: the share of object cells, the per-channel spread of background and object cells, and the mean distance from
the background cells' mean of background cells and of object cells, with their ratio (how many background spreads
an object sits away: the larger, the more an object stands out against the noise a denoiser starts from). Then
where the codec's codebook usage comes from: the share of the codebook the ids of object cells, of background cells
and of all cells use, with each set's perplexity (`quantizers.code_stats`; usage over all cells is what `duogen
tokenizer eval` and `bench_codec_steps.py` read on the same clips).
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


def codes_by_region(ids: torch.Tensor, cells: torch.Tensor, codebook_size: int) -> dict[str, object]:
    """Ids (B, f, h, w) and object cells (B, f, h, w) -> codebook usage and perplexity of the object cells' ids,
    the background cells' ids and all ids."""
    from duogen.tokenizers.quantizers import code_stats

    out: dict[str, object] = {}
    for region, sel in (("objects", cells), ("background", ~cells), ("all", torch.ones_like(cells))):
        st = code_stats(ids[sel], codebook_size)
        out[region] = {"ids": int(sel.sum()), "usage": round(st["usage"], 4), "perplexity": round(st["perplexity"], 1)}
    return out


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
            latent = codec.encode_latents(x)
            ids = codec.latents_to_ids(latent)
            z = codec.normalize_latents(latent).float()
            cells = codec.object_cells(x)
        out[name or path] = {**contrast(z, cells), "codes": codes_by_region(ids, cells, codec.vocab_size)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
