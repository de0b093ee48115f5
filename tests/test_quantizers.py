"""Quantizer adapters: shapes, id round trips, the FSQ continuous path, statistics on constructed cases."""

import math
from dataclasses import replace

import pytest
import torch

from duogen.errors import ConfigError, DataError
from duogen.tokenizers.quantizers import CodebookUsage, Quantizer, QuantizerConfig, _to_seq, code_stats, fsq_entropy_loss

CONFIGS = {
    "fsq": QuantizerConfig(kind="fsq", dim=4, levels=[8, 5, 5, 5]),
    "fsq_odd": QuantizerConfig(kind="fsq", dim=3, levels=[7, 5, 3]),
    "fsq_symmetric": QuantizerConfig(kind="fsq", dim=4, levels=[8, 5, 5, 5], symmetric=True, noise_dropout=0.5),
    "vq": QuantizerConfig(kind="vq", dim=6, codebook_size=8, kmeans_init=True, kmeans_iters=2),
    "lfq": QuantizerConfig(kind="lfq", dim=4, codebook_size=16),
    "rvq": QuantizerConfig(kind="rvq", dim=6, codebook_size=8, num_quantizers=3, kmeans_iters=2),
}


def _z(dim, spatial=(3, 4, 4), b=2):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, dim, *spatial, generator=g) * 2


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("spatial", [(7,), (4, 4), (3, 4, 4)])
def test_shapes_and_eval_roundtrip(name, spatial):
    cfg = CONFIGS[name]
    q = Quantizer(cfg)
    z = _z(cfg.dim, spatial)
    q.train()
    q(z)  # k-means init / EMA step for vq and rvq
    q.eval()
    out = q(z)
    assert out.quantized.shape == z.shape
    id_shape = (2, *spatial) + ((3,) if name == "rvq" else ())
    assert tuple(out.ids.shape) == id_shape
    assert int(out.ids.min()) >= 0 and int(out.ids.max()) < q.codebook_size
    # eval mode: the quantized latent equals the latent rebuilt from the ids
    torch.testing.assert_close(q.ids_to_latents(out.ids), out.quantized, atol=1e-5, rtol=0)
    # the continuous latent maps to the same ids as the forward pass
    assert torch.equal(q.latents_to_ids(q.continuous(z)), out.ids)
    # ids -> latents -> ids is the identity (not for rvq: greedy re-encoding of a sum of codes may pick others)
    if name != "rvq":
        assert torch.equal(q.latents_to_ids(q.ids_to_latents(out.ids)), out.ids)
    assert 0 < out.stats["usage"] <= 1 and 1 <= out.stats["perplexity"] <= q.codebook_size


def test_fsq_continuous_rounds_to_library_codes():
    q = Quantizer(CONFIGS["fsq"])
    z = _z(4)
    cont = q.continuous(z)
    levels = torch.tensor([8, 5, 5, 5]).view(1, 4, 1, 1, 1)
    half = levels // 2
    # rounding the continuous latent onto the level grid reproduces the library's quantized output
    torch.testing.assert_close(torch.round(cont * half) / half, q(z).quantized, atol=1e-6, rtol=0)
    assert float((cont - q(z).quantized).abs().max()) <= 0.5 / 2 + 1e-4  # within half a bin of the coarsest level
    assert float(cont.abs().max()) <= 1.0 + 1e-3


def test_symmetric_fsq_spreads_levels_evenly_and_noise_is_training_only():
    cfg = CONFIGS["fsq_symmetric"]
    q = Quantizer(cfg).eval()
    z = _z(4)
    out = q(z)
    # every channel's codes are L evenly spaced values from -1 to 1 (the original grid of an even L is lopsided)
    for d, L in enumerate(cfg.levels):
        want = torch.linspace(-1, 1, L)
        got = out.quantized[:, d].unique()
        assert torch.allclose(got, want[(got[:, None] - want).abs().argmin(1)]) and float(got.min()) == -1.0
    assert torch.equal(q(z).quantized, out.quantized)  # eval: deterministic, no noise
    q.train()
    noisy = q(z).quantized
    off_grid = (noisy - out.quantized).abs() > 1e-6
    assert 0.3 < off_grid.float().mean() < 0.7  # about noise_dropout of the values get noise instead of rounding only
    with pytest.raises(ConfigError, match="symmetric"):
        QuantizerConfig(kind="fsq", dim=4, levels=[8, 5, 5, 5], noise_dropout=0.5).check()


def test_fsq_gradient_is_straight_through():
    q = Quantizer(CONFIGS["fsq"])
    z = _z(4).requires_grad_()
    q(z).quantized.sum().backward()
    assert z.grad is not None and float(z.grad.abs().sum()) > 0


def test_code_stats_constructed_case():
    # 4 codes used equally out of 8: usage 0.5, perplexity 4 (exp of ln 4)
    ids = torch.tensor([0, 1, 2, 3] * 5)
    s = code_stats(ids, 8)
    assert s["usage"] == pytest.approx(0.5)
    assert s["perplexity"] == pytest.approx(4.0, rel=1e-5)
    # one code only: perplexity 1
    assert code_stats(torch.zeros(10, dtype=torch.long), 8)["perplexity"] == pytest.approx(1.0)
    # a 3:1 split: perplexity exp(H) with H = -(.75 ln .75 + .25 ln .25)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert code_stats(torch.tensor([5, 5, 5, 6]), 8)["perplexity"] == pytest.approx(math.exp(h), rel=1e-5)
    acc = CodebookUsage(8)
    acc.update(torch.tensor([[0, 1]]))
    acc.update(torch.tensor([[2, 3]]))
    assert acc.stats()["usage"] == pytest.approx(0.5) and acc.stats()["perplexity"] == pytest.approx(4.0, rel=1e-5)
    racc = CodebookUsage(8, levels=2)
    racc.update(torch.tensor([[[0, 0], [1, 0]]]))  # level 0 uses 2 codes, level 1 uses 1
    assert racc.stats()["usage"] == pytest.approx((2 / 8 + 1 / 8) / 2)


def test_vq_dead_codes_are_replaced():
    # a codebook initialised far from the data: dead-code replacement must pull codes onto the data
    cfg = QuantizerConfig(kind="vq", dim=2, codebook_size=8, kmeans_init=False, dead_code_threshold=2.0, decay=0.8)
    q = Quantizer(cfg)
    with torch.no_grad():
        q.q._codebook.embed.fill_(100.0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, 64, generator=g)
    q.train()
    for _ in range(5):
        out = q(x)
    assert out.stats["usage"] >= 0.5  # with all codes at 100 the first batch used exactly 1 of 8


def test_vq_kmeans_init_runs_on_the_first_training_batch():
    q = Quantizer(CONFIGS["vq"])
    codebook = q.q._codebook  # the library's EuclideanCodebook: `initted` flips once k-means has run
    assert not bool(codebook.initted) and not q.q.codebook.any()  # kmeans_init starts from all-zero codes
    z = _z(6)
    q.train()
    q(z)
    assert bool(codebook.initted)
    x = z.transpose(0, 1).reshape(6, -1).T  # (N, D)

    def distortion(codes):
        return float(torch.cdist(x, codes).min(1).values.square().mean())

    # k-means centres fit the batch: measured 13.7 against 25.0 for the all-zero codebook
    assert distortion(q.q.codebook) < 0.7 * distortion(torch.zeros(8, 6))
    assert torch.unique(q.q.codebook, dim=0).shape[0] == 8


def test_lfq_entropy_loss_is_on_in_training_only():
    cfg = QuantizerConfig(kind="lfq", dim=4, codebook_size=16, commitment_weight=0.0)  # aux is the entropy term alone
    q = Quantizer(cfg).train()
    z = _z(4).requires_grad_()
    aux = q(z).aux_loss
    # MAGVIT-v2 eq. 5: w * (mean per-sample entropy - gamma * batch entropy), each entropy in [0, ln K]
    assert aux.ndim == 0 and float(aux.detach()) != 0
    assert -0.1 * math.log(16) <= float(aux.detach()) <= 0.1 * math.log(16)
    aux.backward()
    assert float(z.grad.abs().sum()) > 0
    with torch.no_grad():
        assert float(Quantizer(replace(cfg, entropy_weight=0.0)).train()(z).aux_loss) == 0
        assert float(q.eval()(z).aux_loss) == 0


def test_fsq_entropy_loss_constructed_cases():
    levels = [8, 5, 5, 5]
    g = torch.Generator().manual_seed(0)
    spread = torch.stack([torch.randint(0, n, (20000,), generator=g) for n in levels], 1).float()  # on level centres
    one_code = torch.zeros_like(spread) + torch.tensor([3.0, 2.0, 2.0, 2.0])
    low, high = fsq_entropy_loss(spread, levels, 0.25), fsq_entropy_loss(one_code, levels, 0.25)
    # a batch spread over the codebook reads about -ln(1000) plus the per-position part; one code about +0
    assert float(low) < -0.85 * math.log(1000) and abs(float(high)) < 0.05
    assert float(low) < float(high)
    # the same two codes in use, each position sure of its code against each halfway between them: the
    # batch part is about the same (ln 2), the per-position part penalises the unsure ones
    two_codes = one_code.clone()
    two_codes[::2, 0] += 1
    halfway = one_code.clone()
    halfway[:, 0] += 0.5
    gap = float(fsq_entropy_loss(halfway, levels, 0.25) - fsq_entropy_loss(two_codes, levels, 0.25))
    assert 0.5 < gap <= math.log(2) + 1e-3  # short of ln 2 by the soft codes' tails at the level centres
    # batch_mask: the batch part reads the selected positions only; none selected, the per-position part alone
    half = fsq_entropy_loss(spread[:10000], levels, 0.25)
    both = fsq_entropy_loss(torch.cat([spread[:10000], one_code[:10000]]), levels, 0.25, batch_mask=torch.arange(20000) < 10000)
    per_both = fsq_entropy_loss(torch.cat([spread[:10000], one_code[:10000]]), levels, 0.25, batch_mask=torch.zeros(20000, dtype=torch.bool))
    per_half = fsq_entropy_loss(spread[:10000], levels, 0.25, batch_mask=torch.zeros(10000, dtype=torch.bool))
    assert float(per_both) >= 0 and float(per_half) >= 0
    torch.testing.assert_close(both - per_both, half - per_half, atol=1e-4, rtol=0)
    # cell_weight scales the per-position part alone (0: the batch part alone)
    parts = [fsq_entropy_loss(spread, levels, 0.25, cell_weight=w) for w in (0.0, 1.0, 2.0)]
    torch.testing.assert_close(parts[2] - parts[1], parts[1] - parts[0], atol=1e-4, rtol=0)
    assert float(parts[1] - parts[0]) > 0 and float(parts[0]) < float(parts[1])


@pytest.mark.parametrize("name", ["fsq", "fsq_symmetric"])
def test_fsq_entropy_term_is_on_in_training_only_and_rounds_to_the_ids(name):
    cfg = replace(CONFIGS[name], fsq_entropy_weight=0.1, noise_dropout=0.0)
    q = Quantizer(cfg).train()
    z = _z(4).requires_grad_()
    out = q(z)
    # the level units the term reads round to the very codes the forward pass drew
    units = q._level_units(_to_seq(z.detach())[0])
    assert float(units.min()) >= -1e-2 and float(units.max()) <= max(cfg.levels) - 1 + 1e-2  # FSQ bounds with a 1e-3 margin
    rounded = torch.round(units).long().clamp(min=0)
    mixed_radix = torch.tensor([math.prod(cfg.levels[:i]) for i in range(4)])
    assert torch.equal((rounded * mixed_radix).sum(-1), out.ids.reshape(-1))
    assert float(out.aux_loss.detach()) < 0  # a random batch spreads over many codes
    out.aux_loss.backward()
    assert float(z.grad.abs().sum()) > 0
    with torch.no_grad():
        assert float(Quantizer(replace(cfg, fsq_entropy_weight=0.0)).train()(z).aux_loss) == 0
        assert float(q.eval()(z).aux_loss) == 0
    with pytest.raises(ConfigError, match="fsq_entropy"):
        replace(cfg, fsq_entropy_weight=-1.0).check()
    with pytest.raises(ConfigError, match="fsq_entropy"):
        replace(cfg, fsq_entropy_temperature=0.0).check()
    with pytest.raises(ConfigError, match="fsq_entropy"):
        replace(cfg, fsq_entropy_cell_weight=-1.0).check()


def test_vq_commitment_loss_trains_encoder():
    q = Quantizer(QuantizerConfig(kind="vq", dim=3, codebook_size=8, kmeans_iters=2))
    z = _z(3, (5,)).requires_grad_()
    out = q(z)
    assert out.aux_loss.ndim == 0 and float(out.aux_loss.detach()) > 0
    out.aux_loss.backward()
    assert float(z.grad.abs().sum()) > 0


def test_bad_configs_and_ids():
    with pytest.raises(ConfigError):
        QuantizerConfig(kind="fsq", dim=3, levels=[8, 5, 5, 5]).check()
    with pytest.raises(ConfigError):
        QuantizerConfig(kind="lfq", dim=4, codebook_size=20).check()
    q = Quantizer(CONFIGS["fsq"])
    with pytest.raises(DataError, match="out of range"):
        q.check_ids(torch.tensor([[0, 1000]]))
    with pytest.raises(DataError):
        q.check_ids(torch.tensor([[0.5]]))
    q.check_ids(torch.tensor([[0, 999]]))
