"""bench/bench_latent_contrast.py: which latent cells hold an object, and how far objects sit from the background."""

import importlib.util
from pathlib import Path

import torch

spec = importlib.util.spec_from_file_location("bench_latent_contrast",
                                              Path(__file__).parents[1] / "bench" / "bench_latent_contrast.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_object_cells_follow_the_causal_frame_groups_and_the_2d_blocks():
    from duogen.tokenizers.video_codec import build_video_codec

    codec = build_video_codec("tiny")
    x = -torch.ones(1, 3, 9, 32, 32)
    x[0, 1, 0, 0, 31] = 0.5  # frame 0 is latent frame 0 alone
    x[0, 0, 5, 10, 10] = 1.0  # frames 5-8 are latent frame 2; pixel (10, 10) is in 4x4 block (2, 2)
    x[0, :, 4, 20, 3] = -0.9  # below the threshold: background
    cells = codec.object_cells(x)
    assert cells.shape == (1, 3, 8, 8)
    assert sorted(map(tuple, cells.nonzero().tolist())) == [(0, 0, 0, 7), (0, 2, 2, 2)]


def test_contrast_reads_how_many_background_spreads_an_object_sits_away():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 4, 3, 8, 8, generator=g) * 0.1  # background: small spread around 0
    cells = torch.zeros(64, 3, 8, 8, dtype=torch.bool)
    cells[:, :, :2] = True
    z.movedim(1, -1)[cells] += torch.tensor([2.0, 0.0, 0.0, 0.0])  # objects: 2 away along one channel
    r = bench.contrast(z, cells)
    assert r["object_cell_share"] == 0.25
    # background distance: mean norm of 4-d N(0, 0.01) ~ 0.1 * 1.88; objects ~ 2
    assert 0.17 < r["background_distance"] < 0.21 and 1.95 < r["object_distance"] < 2.05
    assert 9 < r["object_to_background_ratio"] < 12
    assert r["object_std_per_channel"][0] < 0.12 and len(r["background_std_per_channel"]) == 4
