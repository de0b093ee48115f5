"""Text tokenizer: byte fallback round trips, reserved ids, save/load, the prompt policy."""

import warnings

import pytest
from hypothesis import given, settings, strategies as st

from duogen.errors import CheckpointError, DataError
from duogen.tokenizers.text import PromptWarning, TextTokenizer, train_text_tokenizer

CAPTIONS = [
    f"a {size} {color} {shape} moves {d} {speed}"
    for color in ("red", "green", "blue", "yellow", "purple")
    for shape in ("circle", "square", "triangle")
    for d in ("left", "right", "up", "down")
    for speed in ("slowly", "quickly")
    for size in ("small", "large")
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_text_tokenizer(CAPTIONS, tmp_path_factory.mktemp("tt"), vocab_size=384)


def test_small_vocab_and_reserved_ids(tok):
    assert 260 < tok.vocab_size <= 384
    assert [tok.piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    # a training caption compresses to about one piece per word, not bytes
    ids = tok.encode("a red circle moves left")
    assert len(ids) <= 8 and all(i >= 4 for i in ids)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_any_text_round_trips(tok, s):
    ids = tok.encode(s)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == s


@pytest.mark.parametrize("s", ["\u2581", "a\u2581b", " \u2581 red\u2581\u2581", "\u2581\ue000"])
def test_sentencepiece_space_mark_itself_round_trips(tok, s):
    # U+2581 is how SentencePiece writes a space inside pieces; typed by a user it must stay itself
    assert tok.decode(tok.encode(s)) == s
    with_placeholder = TextTokenizer(tok._proto, placeholders=["<t1>"])
    assert with_placeholder.decode(with_placeholder.encode(f"{s} <t1> {s}")) == f"{s} <t1> {s}"


def test_emoji_and_unicode_use_byte_fallback(tok):
    s = "un chat 🐈 très rouge — 赤い"
    ids = tok.encode(s)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == s
    assert any(tok.piece(i).startswith("<0x") for i in ids)


def test_save_load_identical(tok, tmp_path):
    tok.save(tmp_path)
    back = TextTokenizer.load(tmp_path / "text.model")
    for c in CAPTIONS[:20] + ["🎉 new words xyz"]:
        assert back.encode(c) == tok.encode(c)


def test_bad_files_and_inputs(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        TextTokenizer.load(tmp_path / "missing.model")
    (tmp_path / "text.model").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="SentencePiece"):
        TextTokenizer.load(tmp_path)
    with pytest.raises(DataError, match="no non-empty captions"):
        train_text_tokenizer(["", "  "], None)
    with pytest.raises(DataError, match="vocab_size"):
        train_text_tokenizer(CAPTIONS, None, vocab_size=100)


def test_prompt_policy_empty_and_too_long(tok):
    with pytest.warns(PromptWarning, match="unconditionally"):
        assert tok.encode_prompt("   ", max_tokens=8) == []
    long = " ".join(["red circle"] * 30)
    with pytest.warns(PromptWarning, match="truncated"):
        ids = tok.encode_prompt(long, max_tokens=8)
    assert ids == tok.encode(long)[:8]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tok.encode_prompt("a red circle", max_tokens=8) == tok.encode("a red circle")
    with pytest.raises(DataError, match="string"):
        tok.encode_prompt(None, max_tokens=8)
