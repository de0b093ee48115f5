"""Where a video codec's reconstruction error lies: PSNR per frame, and the share on object pixels.

    .venv/bin/python bench/bench_codec_errors.py --model src/duogen/assets/reference/codec --data runs/data_shapes_tiny

Reconstructs `--n` held-out clips through the codec's ids and prints the mean per-item PSNR, the PSNR of
each frame position (frame 0 is coded alone; later frames share a latent frame with r - 1 others), the
share of the squared error on object pixels (any channel above the black background, dilated by one
pixel) and the mean squared error on the background.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="video codec directory")
    ap.add_argument("--data", required=True, help="shapes data set directory")
    ap.add_argument("--split", default="heldout")
    ap.add_argument("--n", type=int, default=128, help="clips")
    a = ap.parse_args()

    from duogen.tokenizers import load
    from duogen.tokenizers.video_codec import object_pixels
    from duogen.train.tokenizer_recipe import _to_batch, load_pixels

    codec = load(a.model).eval()
    x = _to_batch(load_pixels(a.data, a.split, "video", limit=a.n), "video")  # (B, 3, F, H, W) in [-1, 1]
    with torch.no_grad():
        rec = codec.decode(codec.encode(x)).clamp(-1, 1)
    se = ((rec - x) / 2).square()  # squared error on the [0, 1] scale
    psnr = lambda e: float((-10 * torch.log10(e.flatten(1).mean(1))).mean())  # noqa: E731
    fg = F.max_pool3d(object_pixels(x), (1, 3, 3), 1, (0, 1, 1))  # (B, 1, F, H, W), dilated by one pixel
    res = {
        "clips": int(x.shape[0]),
        "psnr": psnr(se),
        "psnr_per_frame": [round(psnr(se[:, :, f]), 2) for f in range(se.shape[2])],
        "object_pixel_share": float(fg.mean()),
        "error_share_on_objects": float((se * fg).sum() / se.sum()),
        "background_mse": float((se * (1 - fg)).sum() / ((1 - fg).sum() * se.shape[1])),
    }
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
