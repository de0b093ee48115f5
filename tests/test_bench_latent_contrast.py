"""bench/bench_latent_contrast.py: how far objects sit from the background in a codec's normalized latent."""

import importlib.util
from pathlib import Path

import torch

spec = importlib.util.spec_from_file_location("bench_latent_contrast",
                                              Path(__file__).parents[1] / "bench" / "bench_latent_contrast.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


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


def test_codes_by_region_reads_usage_and_perplexity_of_object_and_background_ids():
    cells = torch.zeros(2, 1, 2, 4, dtype=torch.bool)
    cells[:, :, 0] = True  # 8 object cells, 8 background cells
    ids = torch.zeros(2, 1, 2, 4, dtype=torch.long)  # background: code 0 only
    ids[cells] = torch.tensor([1, 2, 3, 4, 1, 2, 3, 4])  # objects: four codes, evenly
    r = bench.codes_by_region(ids, cells, codebook_size=10)
    assert r["objects"] == {"ids": 8, "usage": 0.4, "perplexity": 4.0}
    assert r["background"] == {"ids": 8, "usage": 0.1, "perplexity": 1.0}
    assert r["all"]["ids"] == 16 and r["all"]["usage"] == 0.5
    assert r["all"]["perplexity"] == 4.0  # half the ids on code 0, an eighth on each of four: exp(2 ln 2)
