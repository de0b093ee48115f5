"""Scores per example: the AR log-likelihood of each example's output tokens, the diffusion loss of each example at
given t and noise. Both are the training loss's own path: their mean is the loss on the same batch."""

import pytest
import torch
import torch.nn.functional as F

from duogen.ar_models.layouts import TrainCollator
from test_ar_model import make, records, text  # noqa: F401 (`text`: the SentencePiece fixture)
from test_latent_diffusion import CAPTIONS, model  # noqa: F401 (`model`: the tiny live DiT with its codec, a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ar(text):
    torch.manual_seed(0)
    return make(text, prefix_lm=True, factorized=True).eval()


# ----------------------------------------------------------------------------- AR


def test_ar_scores_are_the_loss_per_example(ar, text):
    """Over a batch of tasks with different output lengths (t2i 16 tokens, t2v / i2v / inpaint 32 / 16 / 32),
    the token-weighted mean of the scores is the training loss, and each token's log-prob is the full forward's
    log-softmax at that token (an independent computation)."""
    batch = TrainCollator(ar.layouts, ["t2v", "t2i", "i2v", "inpaint"], cond_dropout=0.0)(records(text, 6))
    with torch.no_grad():
        s = ar.score(batch)
        loss = ar.loss(batch).loss
        logits = ar(batch["ids"], batch["prefix_len"])  # (B,T,V)
    B, T = batch["ids"].shape
    assert s.logp_sum.shape == (B,) and s.logp_tokens.shape == (B, T) and s.n_tokens.shape == (B,)
    assert len(set(s.n_tokens.tolist())) > 1  # lengths differ, so a plain mean of per-example means would not do
    torch.testing.assert_close(-s.logp_sum.sum() / s.n_tokens.sum(), loss, rtol=1e-5, atol=1e-6)
    mask = batch["loss_mask"]
    assert torch.equal(s.n_tokens, mask.sum(1)) and (s.logp_tokens[~mask] == 0).all() and (s.logp_tokens[mask] < 0).all()
    ref = logits.float().log_softmax(-1)[:, :-1].gather(-1, batch["ids"][:, 1:, None])[..., 0]  # (B,T-1)
    torch.testing.assert_close(s.logp_tokens[:, 1:][mask[:, 1:]], ref[mask[:, 1:]], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s.logp_tokens.sum(1), s.logp_sum)
    # batched = one at a time (right padding and the batch do not leak into an example's score)
    with torch.no_grad():
        one = ar.score({k: v[2:3] for k, v in batch.items()})
    torch.testing.assert_close(one.logp_sum, s.logp_sum[2:3], rtol=1e-5, atol=1e-5)


def test_ar_score_depends_on_the_caption_and_reaches_the_weights(ar, text):
    """The same clip under two captions scores differently; scores carry gradients (for fine-tuning on them)."""
    clip = records(text, 1)[0]["video_ids"]
    exs = [ar.layouts.example("t2v", ar.encode_prompt(c), clip) for c in ("a red circle", "a blue square")]
    batch = ar.layouts.batch(exs)
    with torch.no_grad():
        a = ar.score(batch)
        b = ar.score(batch)
    assert torch.equal(a.logp_sum, b.logp_sum)  # deterministic
    assert torch.equal(a.n_tokens, torch.tensor([32, 32]))
    assert abs(float(a.logp_sum[0] - a.logp_sum[1])) > 1e-4
    # only the caption differs: the two sequences agree outside the text segment
    assert torch.equal(batch["ids"][0, batch["loss_mask"][0]], batch["ids"][1, batch["loss_mask"][1]])
    s = ar.score(batch)
    s.logp_sum.sum().backward()
    g = ar.lm.lm_head.weight.grad
    ar.zero_grad()
    assert g is not None and g.abs().sum() > 0


# ----------------------------------------------------------------------------- diffusion


def _batch(model, captions, latents):
    ids, mask = model.text_encoder.tokenize(captions, strict=False)
    return {"latents": latents, "text_ids": ids, "text_mask": mask}


@pytest.mark.parametrize("snr_gamma", [0.0, 5.0])
def test_diffusion_loss_per_example_is_the_training_loss(model, snr_gamma):
    """forward(batch) draws t then eps from the global RNG; at the same draws the per-example losses average to it."""
    z = torch.randn(4, *model.config.latent, generator=torch.Generator().manual_seed(1))
    batch = _batch(model, CAPTIONS[:4], z)
    model.config.snr_gamma = snr_gamma
    try:
        with torch.no_grad():
            torch.manual_seed(7)
            loss = model(batch)
            torch.manual_seed(7)
            t = model.schedule.sample_timesteps(4)
            eps = torch.randn_like(z)
            per = model.loss_per_example(batch, t=t, noise=eps)
            plain = F.mse_loss(_prediction(model, batch, t, eps), model.schedule.target(z, eps, t, model.config.prediction_type),
                               reduction="none").flatten(1).mean(1)
    finally:
        model.config.snr_gamma = 0.0
    assert per.shape == (4,) and len(set(t.tolist())) > 1
    torch.testing.assert_close(per.mean(), loss, rtol=1e-5, atol=1e-7)
    if snr_gamma == 0:  # the plain per-example MSE, computed here by hand
        torch.testing.assert_close(per, plain, rtol=1e-5, atol=1e-7)
    else:
        assert not torch.allclose(per, plain)


def _prediction(model, batch, t, eps):
    x_t = model.schedule.add_noise(batch["latents"], eps, t)
    return model.denoiser(x_t, t, model.text_encoder(batch["text_ids"], batch["text_mask"].bool()))


def test_diffusion_scores_share_noise_across_captions(model):
    """One clip, candidate captions, one t and one eps shared by all: the same call twice gives the same scores,
    and the captions alone make them differ (a diffusion classifier's comparison)."""
    z = torch.randn(1, *model.config.latent, generator=torch.Generator().manual_seed(2)).expand(3, -1, -1, -1, -1)
    eps = torch.randn(1, *model.config.latent, generator=torch.Generator().manual_seed(3)).expand(3, -1, -1, -1, -1)
    batch = _batch(model, ["a red circle moves left", "a blue square moves up", "a green circle moves left"], z)
    with torch.no_grad():
        a = model.loss_per_example(batch, t=500, noise=eps)
        b = model.loss_per_example(batch, t=torch.full((3,), 500), noise=eps.clone())
        other_t = model.loss_per_example(batch, t=100, noise=eps)
    assert torch.equal(a, b)
    assert (a[1:] - a[0]).abs().min() > 1e-6  # a different caption changes the score
    assert (a - other_t).abs().min() > 1e-6
    with pytest.raises(Exception, match="noise must have the latents' shape"):
        model.loss_per_example(batch, t=500, noise=eps[:1])
