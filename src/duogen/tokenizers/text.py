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

Placeholders (`add_placeholder("<v1>")`, for personalization) are words a
trained SentencePiece model cannot learn: this wrapper gives each one the next
id after the model's pieces (`vocab_size` counts them), splits a text around
them and encodes the pieces in between. A placeholder acts as a word: one
space on each side of it belongs to it (`"a <v1> moves"` encodes as
`encode("a") + [<v1>] + encode("moves")` and decodes back to the same text).
They are saved beside `text.model` in `text_tokens.json`, read by `load`.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import CheckpointError, DataError

TEXT_MODEL_NAME = "text.model"
TEXT_TOKENS_NAME = "text_tokens.json"  # placeholders added after training, beside text.model
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_N_BYTES = 256
_META = "\u2581"  # SentencePiece's space mark


class PromptWarning(UserWarning):
    """A prompt was used differently from how it was given (empty -> unconditional, or truncated)."""


class TextTokenizer:
    """A loaded SentencePiece model. `encode(str) -> list[int]`, `decode(list[int]) -> str`."""

    def __init__(self, model_proto: bytes, placeholders: Sequence[str] = ()):
        import sentencepiece as spm

        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self._proto)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError on a bad proto
            raise CheckpointError(f"not a SentencePiece model ({type(e).__name__}: {e})") from None
        self.placeholders: list[str] = []
        self._split: re.Pattern[str] | None = None
        for p in placeholders:
            self.add_placeholder(p)

    # ------------------------------------------------------------------ basics
    @property
    def sp_size(self) -> int:
        """Pieces of the SentencePiece model itself (placeholders come after them)."""
        return int(self._sp.GetPieceSize())

    @property
    def vocab_size(self) -> int:
        return self.sp_size + len(self.placeholders)

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def add_placeholder(self, token: str) -> int:
        """Give `token` (e.g. "<v1>") the next id; returns it. The text `token` then encodes as that one id."""
        if not isinstance(token, str) or not token.strip() or token != token.strip():
            raise DataError(f"a placeholder must be a non-empty string without surrounding spaces, got {token!r}")
        if token in self.placeholders:
            raise DataError(f"placeholder {token!r} already exists (id {self.placeholder_id(token)})")
        self.placeholders.append(token)
        alts = "|".join(re.escape(p) for p in sorted(self.placeholders, key=len, reverse=True))
        self._split = re.compile(f" ?({alts}) ?")
        return self.vocab_size - 1

    def placeholder_id(self, token: str) -> int:
        try:
            return self.sp_size + self.placeholders.index(token)
        except ValueError:
            raise DataError(f"unknown placeholder {token!r}; added: {', '.join(self.placeholders) or 'none'}") from None

    def encode(self, text: str) -> list[int]:
        """Text -> ids (no <s> / </s>). Any string encodes: unknown characters become bytes."""
        if not isinstance(text, str):
            raise DataError(f"a prompt must be a string, got {type(text).__name__}")
        if self._split is None:
            return self._encode_text(text)
        ids: list[int] = []
        parts = self._split.split(text)  # [text, placeholder, text, placeholder, ..., text]
        for k, part in enumerate(parts):
            if k % 2:
                ids.append(self.placeholder_id(part))
            elif part:
                ids.extend(self._encode_text(part))
        return ids

    def _encode_text(self, text: str) -> list[int]:
        """SentencePiece ids of `text`, with a literal U+2581 kept as its three UTF-8 bytes.

        SentencePiece writes spaces as U+2581 inside its pieces, so the character itself
        would come back as a space. It is swapped for a stand-in character the model has
        no piece for (so it falls back to bytes and merges with nothing), whose bytes are
        then replaced by U+2581's; byte pieces decode literally.
        """
        if _META not in text:
            return list(self._sp.EncodeAsIds(text))
        stand_in = next(
            c for c in map(chr, range(0xE000, 0xF900)) if c not in text and self._sp.PieceToId(c) == UNK_ID
        )
        ids = list(self._sp.EncodeAsIds(text.replace(_META, stand_in)))
        old = [self._sp.PieceToId(f"<0x{b:02X}>") for b in stand_in.encode()]
        new = [self._sp.PieceToId(f"<0x{b:02X}>") for b in _META.encode()]
        out, i = [], 0
        while i < len(ids):
            if ids[i : i + 3] == old:
                out += new
                i += 3
            else:
                out.append(ids[i])
                i += 1
        return out

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise DataError(f"text id {bad[0]} is outside the text tokenizer's range 0..{self.vocab_size - 1}")
        out, run = [], []
        for i in ids + [-1]:
            if 0 <= i < self.sp_size:
                run.append(i)
                continue
            if run:
                out.append(self._sp.DecodeIds(run))
                run = []
            if i >= self.sp_size:
                out.append(self.placeholders[i - self.sp_size])
        return " ".join(out)

    def piece(self, i: int) -> str:
        if int(i) >= self.sp_size:
            return self.placeholders[int(i) - self.sp_size]
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

    def files(self) -> dict[str, bytes | str]:
        """What a model directory holds for this tokenizer: `text.model`, and `text_tokens.json` with placeholders."""
        out: dict[str, bytes | str] = {TEXT_MODEL_NAME: self._proto}
        if self.placeholders:
            out[TEXT_TOKENS_NAME] = json.dumps({"placeholders": self.placeholders}, indent=2) + "\n"
        return out

    def save(self, path: str | Path) -> Path:
        """Write the model file (a directory gets `text.model` inside it) and its placeholders, if any."""
        from ..io import atomic_write_bytes, atomic_write_text

        path = Path(path)
        if path.is_dir() or path.suffix == "":
            path = path / TEXT_MODEL_NAME
        if self.placeholders:
            atomic_write_text(path.with_name(TEXT_TOKENS_NAME), str(self.files()[TEXT_TOKENS_NAME]))
        return atomic_write_bytes(path, self._proto)

    @classmethod
    def load(cls, path: str | Path) -> "TextTokenizer":
        path = Path(path)
        if path.is_dir():
            path = path / TEXT_MODEL_NAME
        if not path.is_file():
            raise CheckpointError(f"{path}: text tokenizer file not found")
        placeholders: list[str] = []
        extra = path.with_name(TEXT_TOKENS_NAME)
        if extra.is_file():
            from ..io import read_json

            placeholders = read_json(extra).get("placeholders", [])
        try:
            return cls(path.read_bytes(), placeholders)
        except (CheckpointError, DataError) as e:
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
