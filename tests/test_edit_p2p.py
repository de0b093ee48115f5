"""Prompt-to-Prompt on both paradigms: tau=0 is plain generation, tau=1 with equal prompts is the source,
reweighting by 1 is a no-op (by 30 is not), a mask that keeps everything returns the source, token alignment."""

import numpy as np
import pytest
import torch

from duogen.bridges.edit.prompt_to_prompt import align, p2p_edit, word_tokens
from duogen.errors import ConfigError, DataError
from _edit_helpers import A, B, ar_dir, gen, kw, model, text  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tau_zero_is_plain_generation_of_the_target_prompt(gen):
    res = p2p_edit(gen, None, prompt=B, source_prompt=A, tau=0.0, seed=3, **kw(gen))
    plain = gen.generate([B], seed=3, **kw(gen))
    assert np.array_equal(res.videos, plain.videos)
    assert np.array_equal(res.reconstruction, gen.generate([A], seed=3, **kw(gen)).videos[0])


def test_equal_prompts_and_tau_one_reproduce_the_source_exactly(gen):
    res = p2p_edit(gen, None, prompt=A, source_prompt=A, tau=1.0, seed=1, n=2, **kw(gen))
    assert np.array_equal(res.videos[0], res.reconstruction)
    # and the injection acts: tau=1 from a different source prompt is not the plain target generation
    other = p2p_edit(gen, None, prompt=B, source_prompt=A, tau=1.0, seed=1, **kw(gen))
    assert not np.array_equal(other.videos, gen.generate([B], seed=1, **kw(gen)).videos)


def test_reweighting_by_one_is_a_no_op_and_by_thirty_is_not(gen):
    base = p2p_edit(gen, None, prompt=B, source_prompt=A, tau=0.5, seed=2, **kw(gen))
    one = p2p_edit(gen, None, prompt=B, source_prompt=A, tau=0.5, seed=2, reweight={"blue": 1.0}, **kw(gen))
    three = p2p_edit(gen, None, prompt=B, source_prompt=A, tau=0.5, seed=2, reweight={"blue": 30.0}, **kw(gen))
    # by 1: the same maps through the explicit softmax path instead of SDPA (float32 rounding, <= 1 grey level)
    assert np.abs(one.videos.astype(int) - base.videos.astype(int)).max() <= 1
    assert not np.array_equal(three.videos, base.videos)


def test_a_mask_that_keeps_everything_returns_the_source_reconstruction(gen):
    src = gen.generate([A], seed=4, **kw(gen)).videos[0]
    keep_all = np.zeros(src.shape[:3], dtype=bool)
    res = p2p_edit(gen, src, prompt=B, source_prompt=A, tau=0.5, mask=keep_all, seed=4, **kw(gen))
    assert np.array_equal(res.videos[0], res.reconstruction)
    assert res.mask is not None and not res.mask.any()
    free = p2p_edit(gen, src, prompt=B, source_prompt=A, tau=0.5, mask=~keep_all, seed=4, **kw(gen))
    assert not np.array_equal(free.videos[0], free.reconstruction)


def test_a_real_diffusion_source_is_null_text_inverted(gen):
    if gen.kind != "diffusion":
        pytest.skip("an AR source is its codec ids (exact)")
    from duogen.bridges.edit.inversion import ddim_pivot, guided_ddim
    from duogen.bridges.edit.prep import psnr
    from duogen.bridges.result import to_uint8

    src = gen.generate([A], seed=4, **kw(gen)).videos[0]
    m = gen.model
    with torch.inference_mode():
        codec_rec = to_uint8(m.decode(m.encode_video(src)))[0]
    res = p2p_edit(gen, src, prompt=B, source_prompt=A, tau=0.5, seed=4, steps=8, **kw(gen))
    assert res.info["null_text"] and res.info["inverted"]
    # plain DDIM inversion (guidance 1) then guided sampling with the fixed null drifts more
    cond = m.encode_prompts([A])
    pivot = ddim_pivot(gen, m.encode_video(src), cond, 8)
    with torch.inference_mode():
        drift = to_uint8(m.decode(guided_ddim(gen, pivot[-1], cond, m.null_cond(cond.tokens.shape[1]), 2.0, 8)))[0]
    assert psnr(res.reconstruction, codec_rec) > psnr(drift, codec_rec) + 1.0


def test_local_blend_masks_shrink_with_the_threshold(gen):
    lo, hi = (p2p_edit(gen, None, prompt=B, source_prompt=A, tau=0.5, seed=0, local_blend=["red", "blue"],
                       blend_threshold=th, **kw(gen)) for th in (0.3, 0.97))
    assert lo.mask.shape == hi.mask.shape == lo.videos.shape[1:4]
    assert hi.mask.mean() < 1 and not (hi.mask & ~lo.mask).any()  # a stricter threshold keeps a subset


def test_alignment_swap_refine():
    a = align([1, 5, 6, 7], [1, 9, 6, 7], "swap")
    assert torch.equal(a.W, torch.eye(4)) and bool(a.aligned.all()) and a.changed_src == [1] == a.changed_tgt
    r = align([1, 5, 6, 7], [1, 9, 6, 7], "refine")
    assert r.aligned.tolist() == [True, False, True, True] and r.W[1].sum() == 0
    s = align([1, 5, 7], [1, 8, 9, 7], "swap")  # one token replaced by two: spread, row sums kept
    assert torch.allclose(s.W.sum(1), torch.ones(3)) and s.W[1, 1] == s.W[1, 2] == 0.5
    i = align([1, 6, 7], [1, 6, 8, 7], "refine")  # an added word keeps its own map
    assert i.aligned.tolist() == [True, True, False, True] and i.changed_tgt == [2]


def test_word_tokens(text):  # noqa: F811
    ids = text.encode(A)
    idx = word_tokens(text.encode, A, ["circle"])
    assert idx and text.decode([ids[i] for i in idx]).strip() == "circle"


def test_bad_settings_are_clear_errors(gen):
    with pytest.raises(ConfigError, match="source-prompt"):
        p2p_edit(gen, None, prompt=B)
    with pytest.raises(ConfigError, match="tau"):
        p2p_edit(gen, None, prompt=B, source_prompt=A, tau=1.5)
    with pytest.raises(DataError, match="not a word"):
        p2p_edit(gen, None, prompt=B, source_prompt=A, reweight={"purple": 2.0}, **kw(gen))
