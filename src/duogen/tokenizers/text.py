"""Text tokenizer: SentencePiece trained on a data set's captions.

Owns: training a small BPE (or unigram) model on captions, byte fallback so that
any prompt encodes (unicode, emoji, control characters), exact round trips
(identity normalization, whitespace kept), save/load as `text.model`, and the
prompt policy shared by every generator: an empty prompt means unconditional
generation (warned), a prompt longer than the budget is truncated (warned).

Does not own: where text ids sit in the multimodal id space (that is
`duogen.tokenizers.vocab.UnifiedVocab`) nor the structural / task tokens, which
live outside the text range so no prompt can ever produce one.

Reserved ids inside the SentencePiece model: 0 <pad>, 1 <unk>, 2 <s>, 3 </s>
(the diffusion text encoder uses <s> </s>); then 256 byte pieces; then merges.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import CheckpointError, DataError

TEXT_MODEL_NAME = "text.model"
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_N_BYTES = 256


class PromptWarning(UserWarning):
    """A prompt was used differently from how it was given (empty -> unconditional, or truncated)."""


class TextTokenizer:
    """A loaded SentencePiece model. `encode(str) -> list[int]`, `decode(list[int]) -> str`."""

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self._proto)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError on a bad proto
            raise CheckpointError(f"not a SentencePiece model ({type(e).__name__}: {e})") from None

    # ------------------------------------------------------------------ basics
    @property
    def vocab_size(self) -> int:
        return int(self._sp.GetPieceSize())

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def encode(self, text: str) -> list[int]:
        """Text -> ids (no <s> / </s>). Any string encodes: unknown characters become bytes."""
        if not isinstance(text, str):
            raise DataError(f"a prompt must be a string, got {type(text).__name__}")
        return list(self._sp.EncodeAsIds(text))

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise DataError(f"text id {bad[0]} is outside the text tokenizer's range 0..{self.vocab_size - 1}")
        return self._sp.DecodeIds(ids)

    def piece(self, i: int) -> str:
        return self._sp.IdToPiece(int(i))

    def encode_prompt(self, text: str, max_tokens: int) -> list[int]:
        """The prompt policy: empty -> [] with a warning (unconditional), too long -> truncated with a warning."""
        if not isinstance(text, str):
            raise DataError(f"a prompt must be a string, got {type(text).__name__}")
        if text.strip() == "":
            warnings.warn("empty prompt: generating unconditionally (no text condition)", PromptWarning, stacklevel=2)
            return []
        ids = self.encode(text)
        if len(ids) > max_tokens:
            kept = self.decode(ids[:max_tokens])
            warnings.warn(
                f"prompt is {len(ids)} tokens, longer than the model's text budget of {max_tokens};"
                f" truncated to {kept!r}",
                PromptWarning,
                stacklevel=2,
            )
            ids = ids[:max_tokens]
        return ids

    # ------------------------------------------------------------------ files
    def to_bytes(self) -> bytes:
        return self._proto

    def save(self, path: str | Path) -> Path:
        """Write the model file (a directory gets `text.model` inside it)."""
        from ..io import atomic_write_bytes

        path = Path(path)
        if path.is_dir() or path.suffix == "":
            path = path / TEXT_MODEL_NAME
        return atomic_write_bytes(path, self._proto)

    @classmethod
    def load(cls, path: str | Path) -> "TextTokenizer":
        path = Path(path)
        if path.is_dir():
            path = path / TEXT_MODEL_NAME
        if not path.is_file():
            raise CheckpointError(f"{path}: text tokenizer file not found")
        try:
            return cls(path.read_bytes())
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None


def train_text_tokenizer(
    captions: Iterable[str],
    out_dir: str | Path | None = None,
    vocab_size: int = 384,
    model_type: str = "bpe",
) -> TextTokenizer:
    """Train SentencePiece on captions; write `out_dir/text.model` when `out_dir` is given.

    `vocab_size` counts the 4 reserved ids and the 256 byte pieces, so it must be
    above 260; it is an upper bound (a small caption set may yield fewer pieces).
    """
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise DataError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    if vocab_size <= _N_BYTES + 4:
        raise DataError(f"vocab_size must be above {_N_BYTES + 4} (4 reserved ids + 256 byte pieces), got {vocab_size}")
    unique = sorted({c for c in captions if isinstance(c, str) and c.strip()})
    if not unique:
        raise DataError("cannot train a text tokenizer: no non-empty captions")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(unique),
        model_writer=buf,
        model_type=model_type,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        num_threads=1,
        minloglevel=2,
    )
    tok = TextTokenizer(buf.getvalue())
    if out_dir is not None:
        tok.save(Path(out_dir) / TEXT_MODEL_NAME)
    return tok
