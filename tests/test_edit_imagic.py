"""Imagic on both paradigms: eta=1 without fine-tuning is the target prompt's generation (fixed noise / seed),
the embedding and the fine-tune lower their losses, the base model is never modified, eta moves the output."""

import numpy as np
import pytest
import torch

from duogen.bridges.edit.imagic import imagic_edit
from duogen.errors import ConfigError
from _edit_helpers import A, B, ar_dir, gen, kw, model, text  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def source(gen):
    return gen.generate([A], seed=9, **kw(gen)).videos[0]


def test_eta_one_without_fine_tune_is_the_target_prompt_generation(gen, source):
    res = imagic_edit(gen, source, prompt=B, eta=1.0, emb_steps=3, tune_steps=0, seed=5, n=2, **kw(gen))
    assert np.array_equal(res.videos, gen.generate([B], n=2, seed=5, **kw(gen)).videos)
    moved = imagic_edit(gen, source, prompt=B, eta=-2.0, emb_steps=20, emb_lr=0.05, tune_steps=0, seed=5, **kw(gen))
    assert not np.array_equal(moved.videos[0], res.videos[0])  # the optimised embedding does change the output


def test_a_list_of_etas_samples_each_eta_from_one_optimisation(gen, source):
    res = imagic_edit(gen, source, prompt=B, eta=[0.5, 1.0], emb_steps=5, emb_lr=0.05, tune_steps=0, seed=5, **kw(gen))
    assert sorted(res.state["by_eta"]) == [0.5, 1.0] and np.array_equal(res.videos, res.state["by_eta"][0.5])
    assert np.array_equal(res.state["by_eta"][1.0], gen.generate([B], seed=5, **kw(gen)).videos)  # eta=1: target
    one = imagic_edit(gen, source, prompt=B, eta=0.5, emb_steps=5, emb_lr=0.05, tune_steps=0, seed=5, **kw(gen))
    assert np.array_equal(one.videos, res.state["by_eta"][0.5])  # the same as its own run


def test_stages_lower_their_losses_and_leave_the_base_model_alone(gen, source):
    base = gen.model if gen.kind == "ar" else gen.model.denoiser
    before = {k: v.clone() for k, v in base.state_dict().items()}
    grads = [p.requires_grad for p in base.parameters()]
    steps = 30 if gen.kind == "ar" else 60
    res = imagic_edit(gen, source, prompt=B, eta=0.5, emb_steps=steps, emb_lr=0.05, tune_steps=steps, tune_lr=1e-3,
                      batch=16, seed=0, **kw(gen))
    after = base.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert grads == [p.requires_grad for p in base.parameters()]
    e0, e1 = res.info["emb_loss"]
    t0, t1 = res.info["tune_loss"]
    if gen.kind == "ar":  # a deterministic loss: it must fall
        assert e1 < e0 and t1 < t0
    else:  # a random (t, noise) batch per step: the last quarter of the steps below the first
        assert e1 < e0 * 0.9 and t1 < t0 * 0.9


def test_bad_settings_are_clear_errors(gen, source):
    with pytest.raises(ConfigError, match="given clip"):
        imagic_edit(gen, None, prompt=B)
    with pytest.raises(ConfigError, match="emb_steps"):
        imagic_edit(gen, source, prompt=B, emb_steps=-1)
    with pytest.raises(ConfigError, match="eta"):
        imagic_edit(gen, source, prompt=B, eta=[])
    with pytest.raises(ConfigError, match="mask"):
        imagic_edit(gen, source, prompt=B, mask=np.ones(source.shape[:3], bool))
