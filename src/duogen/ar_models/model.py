"""The multimodal next-token model: a `transformers` Llama over the unified vocabulary.

Owns: `ARConfig` and its presets, building the Llama (random init, SDPA
attention, no hub access), the prefix-LM attention mask, the output-only
next-token loss and per-example log-likelihoods (`score`, the same path),
and model directories (`config.json` with `"kind": "ar"`, `model.safetensors`,
`vocab.json`, `text.model`, and the paths of the codecs the model was trained
on: the video codec, and the audio codec where it has audio tasks).

Does not own: sequence layouts (`layouts.py`), decoding (`sampling.py`),
codecs (`duogen.tokenizers`), training loops (`duogen.train`).

Shape notation: B batch, T tokens, D width, V vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import config as cfglib
from ..errors import CheckpointError
from ..tokenizers.text import TEXT_MODEL_NAME, TextTokenizer
from ..tokenizers.vocab import VOCAB_NAME, UnifiedVocab
from .layouts import LayoutSpec, Layouts
from .text_context import TextContext
from .text_states import TEXT_STATES, PretrainedTextStates

FORMAT_VERSION = 1


@dataclass
class ARConfig:
    """Llama size and the attention pattern. `prefix_lm`: bidirectional attention over the condition."""

    # tiny = 128 wide (1.2M parameters): at the 10-minute CPU budget it beat the 256-wide model (4.0M) in
    # the same wall time: 1,120 vs 515 steps, final loss 1.94 vs 2.40, direction 66% vs 56%, shape 14% vs 11%
    # (two 16-minute runs side by side on one core each, `duogen compare ... --n 2 --per-split 32`; README).
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 4
    mlp: int = 352
    rope_theta: float = 10000.0
    init_std: float = 0.02
    tie_embeddings: bool = False
    attn_dropout: float = 0.0
    # Plain causal by default, measured (bench/bench_ar_prefix_lm.py, shapes world, 128 wide, same inits and
    # batches, 3 seeds): validation loss at 600 steps causal 0.550 vs prefix LM 0.558 (flat positions),
    # 0.542 vs 0.544 (factorized); at 300 steps 0.634 vs 0.675, causal lower for every seed (README). With one
    # layer it changes nothing the loss sees: the output tokens read the prompt's keys and values, which come from
    # its embeddings alone (the demo's one-layer model trained the same weights bit for bit either way).
    prefix_lm: bool = False
    # Learned (frame, row, column) embeddings added to every visual token's input, on top of RoPE over
    # the flat sequence (`VisualPositions`). Off here so that model directories written before the option
    # existed load unchanged; the presets turn it on: same bench, 600 steps, 3 seeds, it lowered the loss
    # for every seed (prefix LM 0.544 vs 0.558, causal 0.542 vs 0.550).
    factorized_positions: bool = False
    cond_dropout: float = 0.1  # probability that training drops the text (for classifier-free guidance)
    # Bidirectional transformer layers over the text block before the Llama reads it (`TextContext`, VideoPoet's
    # text encoder in small). 0 here so that model directories written before the option existed load unchanged,
    # and 0 in the presets and the demo: on the demo's one-layer model at its slow-machine 6.87e12 FLOPs one such
    # layer (400 steps for 426) drew the prompt's color less often, 77.0 / 73.8% against 86.7 / 84.0% on 128 clips
    # (two seeds; two-object prompts 56.2 / 47.3% against 69.6 / 65.2%; docs/demo_runs/record.md, "What moves the AR model's color").
    text_layers: int = 0
    # The loss's softmax over the output token's own id range (its codec's, or its residual level's) instead of
    # the whole vocabulary: the range the sampler draws from anyway, so training, `score` and sampling read one
    # distribution, and the head computes only those rows. False here so that model directories written before
    # the option existed load (and score) unchanged, and False in the presets and the demo: on the demo's one-layer
    # model at its slow-machine 6.87e12 FLOPs it bought 505 steps for 426 (0.85x the FLOPs per step) and drew the
    # prompt's color as often, 84.0 / 84.0% against 86.7 / 84.0% on 128 clips (two seeds; docs/demo_runs/record.md, "What moves the
    # AR model's color").
    range_softmax: bool = False
    # "minilm": each text row of the prompt gets a learned map (starting at zero) of its word's state in the frozen,
    # pretrained all-MiniLM-L6-v2 (`PretrainedTextStates`, VideoPoet's pretrained text encoder in small): contextual
    # states bind a color to the shape it names before the decoder reads them. "none" here so that model
    # directories written before the option existed load unchanged.
    text_states: str = "none"
    # > 0: the patch-level model instead (`ar_models/patch.py`, MEGABYTE / RQ-Transformer style): a global Llama
    # of the hidden / layers / heads / mlp above steps once per `patch` x `patch` block of codec ids, and a local
    # Llama `local_hidden` wide with `local_layers` layers draws each block's ids. Text-to-video, and frame
    # continuation (i2v) from that training. 0 here and in the presets; the demo's model (`DEMO_AR_MODEL`) uses 2.
    patch: int = 0
    local_hidden: int = 64
    local_layers: int = 1

    def check(self) -> None:
        from ..errors import ConfigError

        if self.text_states not in TEXT_STATES:
            raise ConfigError(f"text_states must be one of {', '.join(TEXT_STATES)}; got {self.text_states!r}")
        if self.text_layers < 0:
            raise ConfigError(f"text_layers must be >= 0, got {self.text_layers}")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ConfigError(f"hidden ({self.hidden}) must divide by heads ({self.heads}), heads by kv_heads ({self.kv_heads})")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ConfigError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")


AR_PRESETS: dict[str, ARConfig] = {
    "tiny": ARConfig(factorized_positions=True),
    "small": ARConfig(hidden=512, layers=8, heads=8, kv_heads=8, mlp=1408, factorized_positions=True),
    "base": ARConfig(hidden=1024, layers=16, heads=16, kv_heads=8, mlp=2816, factorized_positions=True),
}


class LossOutput(NamedTuple):
    loss: torch.Tensor
    n_items: int
    metrics: dict[str, float]


class ScoreOutput(NamedTuple):
    """Per-example scores of the output tokens (`MultimodalLM.score`)."""

    logp_sum: torch.Tensor  # (B,) float32: sum of log p(token | tokens before it) over the example's output tokens
    logp_tokens: torch.Tensor  # (B,T) float32: log p(ids[b, t] | ids[b, :t]) at output tokens, 0 elsewhere
    n_tokens: torch.Tensor  # (B,) int64: output tokens scored (logp_sum / n_tokens is the per-token mean)


def build_llama(cfg: ARConfig, vocab_size: int, max_len: int) -> nn.Module:
    """A randomly initialised `LlamaForCausalLM` with SDPA attention, open to attention processors."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from .attention import enable_processors

    lc = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.mlp,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=max_len,
        rope_theta=cfg.rope_theta,
        initializer_range=cfg.init_std,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_dropout=cfg.attn_dropout,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return enable_processors(LlamaForCausalLM._from_config(lc, attn_implementation="sdpa"))


def prefix_lm_mask(prefix_len: torch.Tensor, T: int) -> torch.Tensor:
    """(B,1,T,T) boolean mask, True = may attend: causal, plus full attention inside the prefix (VideoPoet)."""
    i = torch.arange(T, device=prefix_len.device)
    causal = i[None, :] <= i[:, None]  # (T, T): key j <= query i
    in_prefix = i[None, :] < prefix_len[:, None]  # (B, T)
    both = in_prefix[:, :, None] & in_prefix[:, None, :]  # (B, T, T)
    return (causal[None] | both)[:, None]  # (B, 1, T, T)


class VisualPositions(nn.Module):
    """Factorized positions for visual tokens: emb(frame) + emb(row) + emb(column), zero elsewhere.

    A token is visual when its id is in the video codec's range; its index in
    the clip counts the visual tokens since the last `<bov>` / `<boi>` marker,
    so every layout (t2v, i2v, inpaint's masked clip and output, v2a's
    condition) numbers its clips from frame 0, row 0, column 0. The tables start
    at zero: a fresh model equals one without them.

    forward(ids (B,t), state) -> (embeddings (B,t,D), state); `state` carries
    (visual tokens seen, count at the last marker) per row across the chunks of
    a KV-cached decode; None starts a sequence.
    """

    def __init__(self, dim: int, latent: tuple[int, int, int], video_range: tuple[int, int], markers: list[int]):
        super().__init__()
        f, h, w = latent
        self.h, self.w, self.n = h, w, f * h * w
        self.lo, self.hi = video_range
        self.register_buffer("markers", torch.tensor(markers, dtype=torch.long), persistent=False)
        self.frame, self.row, self.col = nn.Embedding(f, dim), nn.Embedding(h, dim), nn.Embedding(w, dim)
        for e in (self.frame, self.row, self.col):
            nn.init.zeros_(e.weight)

    def index(self, ids: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """ids (B,t) -> (index in the clip (B,t), -1 for non-visual tokens; the state after the chunk)."""
        visual = (ids >= self.lo) & (ids < self.hi)
        marker = torch.isin(ids, self.markers.to(ids.device))
        seen0, base0 = state if state is not None else (ids.new_zeros(ids.shape[0]), ids.new_zeros(ids.shape[0]))
        seen = seen0[:, None] + visual.long().cumsum(1)  # visual tokens up to and including t
        base = torch.maximum(base0[:, None], torch.where(marker, seen, torch.zeros_like(seen)).cummax(1).values)
        idx = torch.where(visual, (seen - base - 1) % self.n, torch.full_like(seen, -1))
        return idx, (seen[:, -1], base[:, -1])

    def forward(self, ids: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        idx, state = self.index(ids, state)
        k = idx.clamp(min=0)
        emb = self.frame(k // (self.h * self.w)) + self.row((k // self.w) % self.h) + self.col(k % self.w)
        return emb * (idx >= 0)[..., None].to(emb.dtype), state


class MultimodalLM(nn.Module):
    """Llama + the vocabulary, text tokenizer and layouts it was trained with."""

    def __init__(self, cfg: ARConfig, vocab: UnifiedVocab, spec: LayoutSpec, text: TextTokenizer | None = None,
                 codec_ref: str | None = None, audio_codec_ref: str | None = None):
        super().__init__()
        spec.check()
        self.cfg, self.vocab, self.spec, self.text = cfg, vocab, spec, text
        self.codec_ref, self.audio_codec_ref = codec_ref, audio_codec_ref
        self.layouts = Layouts(vocab, spec)
        self.max_len = self.layouts.max_len()
        self.lm = build_llama(cfg, vocab.size, self.max_len)
        self.visual_pos: VisualPositions | None = None
        if cfg.factorized_positions:
            r = vocab.codec_range(spec.video_codec)
            markers = [vocab.tokens["<bov>"], vocab.tokens["<boi>"]]
            self.visual_pos = VisualPositions(cfg.hidden, tuple(spec.latent), (r.start, r.stop), markers)
        self.text_context: TextContext | None = None
        if cfg.text_layers > 0:
            self.text_context = TextContext(cfg.hidden, cfg.heads, cfg.text_layers, spec.text_block, cfg.mlp,
                                            vocab.tokens["<pad>"])
        self.text_states: PretrainedTextStates | None = None
        if cfg.text_states == "minilm":
            self.text_states = PretrainedTextStates(cfg.hidden, spec.text_block, vocab, text)

    # ------------------------------------------------------------------ forward and loss
    def attention_mask(self, prefix_len: torch.Tensor | None, T: int) -> torch.Tensor | None:
        if prefix_len is None or not self.cfg.prefix_lm:
            return None  # plain causal: transformers builds it (and SDPA may use its causal kernel)
        return prefix_lm_mask(prefix_len, T)

    def hidden(self, ids: torch.Tensor, prefix_len: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B,T) -> final hidden states (B,T,D)."""
        mask = self.attention_mask(prefix_len, ids.shape[1])
        if self.visual_pos is None and self.text_context is None and self.text_states is None:
            return self.lm.model(input_ids=ids, attention_mask=mask).last_hidden_state
        x = self.lm.model.embed_tokens(ids)
        if self.visual_pos is not None:
            x = x + self.visual_pos(ids)[0].to(x.dtype)
        x = self.text_prefix(ids, x)
        return self.lm.model(inputs_embeds=x, attention_mask=mask).last_hidden_state

    def text_prefix(self, ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The text block's rows of x (B,T,D) as the Llama reads them: plus the pretrained text states, then
        through the text context (each only if the model has it); every other row unchanged."""
        if self.text_states is not None:
            x = self.text_states(ids, x)
        if self.text_context is not None:
            x = self.text_context(ids, x)
        return x

    def decoder(self) -> Any:
        """A KV-cached `LlamaDecoder` over this model's weights (and its visual positions, text states and text
        context, if any)."""
        from .sampling import LlamaDecoder

        has_prefix = self.text_context is not None or self.text_states is not None
        return LlamaDecoder(self.lm, self.max_len, self.visual_pos, self.text_prefix if has_prefix else None)

    def forward(self, ids: torch.Tensor, prefix_len: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B,T), prefix_len (B,) -> logits (B,T,V); logits[:, t] predict ids[:, t+1]."""
        return self.lm.lm_head(self.hidden(ids, prefix_len))

    def output_ranges(self) -> list[tuple[int, int]]:
        """[lo, hi) of every id range an output token is drawn from: each codec's, one per residual level."""
        return [(r.start, r.stop) for name, r in self.vocab.ranges.items()
                if name.split(".")[0] in self.vocab.codec_levels]

    def output_logp(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """log p of each output token (`loss_mask`) given the tokens before it: (logp (N,) float32, where (B,T-1)).

        where[b, t] is True when position t predicts output token t+1; N = where.sum(). Logits are computed at
        those positions only; with `range_softmax`, only over the target's own range (`output_ranges`), which
        is where the sampler draws that token from. `loss` and `score` share it.
        """
        ids, mask = batch["ids"], batch["loss_mask"]
        h = self.hidden(ids, batch.get("prefix_len"))  # (B,T,D)
        pred_at = mask[:, 1:]  # position t predicts token t+1
        hs, target = h[:, :-1][pred_at], ids[:, 1:][pred_at]  # (N,D), (N,)
        head = self.lm.lm_head
        if not self.cfg.range_softmax:
            return -F.cross_entropy(head(hs).float(), target, reduction="none"), pred_at
        from .sampling import _plain  # the sampler's test for a head it may slice (no LoRA, bias or hooks)

        logp = torch.full(target.shape, float("nan"), device=target.device)
        todo = torch.ones_like(target, dtype=torch.bool)
        plain = _plain(head)
        for lo, hi in self.output_ranges():
            sel = (target >= lo) & (target < hi)
            n = int(sel.sum())
            if n == 0:
                continue
            x = hs if n == len(target) else hs[sel]
            logits = F.linear(x, head.weight[lo:hi]) if plain else head(x)[:, lo:hi]  # (n, hi-lo)
            logp[sel] = -F.cross_entropy(logits.float(), target[sel] - lo, reduction="none")
            todo &= ~sel
        if todo.any():  # an output id outside every codec range (none of the layouts makes one): the whole row
            logp[todo] = -F.cross_entropy(head(hs[todo]).float(), target[todo], reduction="none")
        return logp, pred_at

    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        """Next-token cross-entropy on output tokens only (`loss_mask`), logits computed only there."""
        logp, _ = self.output_logp(batch)
        loss = -logp.mean()
        return LossOutput(loss, int(logp.numel()), {"loss": float(loss.detach())})

    def score(self, batch: dict[str, torch.Tensor]) -> ScoreOutput:
        """Each example's log-likelihood of its output tokens given everything before them (its condition).

        The same batch and log-probabilities as `loss` (`TrainCollator`, or `layouts.batch` of
        `layouts.example`s), so loss = -logp_sum.sum() / n_tokens.sum(). Gradients flow; wrap in
        `torch.no_grad()` to only score.
        """
        logp, pred_at = self.output_logp(batch)
        per = torch.zeros(pred_at.shape, dtype=logp.dtype, device=logp.device).masked_scatter(pred_at, logp)  # (B,T-1)
        logp_tokens = F.pad(per, (1, 0))  # (B,T): the log-prob of token t sits at t
        return ScoreOutput(logp_tokens.sum(1), logp_tokens, pred_at.sum(1))

    # ------------------------------------------------------------------ prompts
    def encode_prompt(self, prompt: str) -> list[int]:
        """Prompt -> SentencePiece ids under the policy: empty = unconditional, too long = truncated (warned)."""
        if self.text is None:
            raise CheckpointError("this model has no text tokenizer (text.model); it cannot read prompts")
        return self.text.encode_prompt(prompt, self.spec.max_text)

    # ------------------------------------------------------------------ growing the vocabulary
    @torch.no_grad()
    def add_tokens(self, text: dict[str, str] | None = None, tasks: dict[str, str] | None = None) -> dict[str, int]:
        """Append new text tokens (placeholders, {"<v1>": "circle"}) and task tokens ({"<edit>": "<t2v>"});
        returns their global ids. No existing id moves; each new embedding row (and lm_head row) starts as a
        copy of the given word's (the mean over its text pieces) or of the given existing token's row."""
        from ..errors import ConfigError

        if text and self.text is None:
            raise ConfigError("this model has no text tokenizer (text.model): it cannot take text placeholders")
        if text and self.text.vocab_size != self.vocab.text_size:
            raise ConfigError(f"text tokenizer has {self.text.vocab_size} ids, the vocabulary's text range"
                              f" {self.vocab.text_size}: they must grow together")
        inits = {**(text or {}), **(tasks or {})}
        src = {tok: self._init_rows(word) for tok, word in inits.items()}  # before any id changes
        new: dict[str, int] = {}
        for tok in text or {}:
            self.text.add_placeholder(tok)
            new[tok] = self.vocab.add_text_token(tok)
        for tok in tasks or {}:
            new[tok] = self.vocab.add_task_token(tok)
        self.lm.resize_token_embeddings(self.vocab.size, mean_resizing=False)
        for tok, i in new.items():
            for table in {id(t): t for t in (self.lm.get_input_embeddings(), self.lm.get_output_embeddings())}.values():
                table.weight[i] = table.weight[src[tok]].mean(0)
        self.layouts = Layouts(self.vocab, self.spec)
        return new

    def enable_task(self, task: str) -> None:
        """Train and sample `task` from now on (its task token must be in the vocabulary; `add_tokens` first for a
        new one such as "<edit>"): the layouts and the position budget grow to fit it; no weight changes."""
        from .layouts import check_task
        from ..errors import ConfigError

        check_task(task)
        if f"<{task}>" not in self.vocab.tokens:
            raise ConfigError(f"the vocabulary has no <{task}> token: add it first (add_tokens(tasks={{'<{task}>': ...}}))")
        if task not in self.spec.tasks:
            self.spec.tasks = [*self.spec.tasks, task]
        self.layouts = Layouts(self.vocab, self.spec)
        self.max_len = self.layouts.max_len()
        self.lm.config.max_position_embeddings = max(self.lm.config.max_position_embeddings, self.max_len)

    def _init_rows(self, word: str) -> list[int]:
        """Global ids whose rows a new token copies: an existing token's, or the pieces of a text word."""
        from ..errors import ConfigError

        if word in self.vocab.tokens:
            return [self.vocab.tokens[word]]
        if self.text is None:
            raise ConfigError(f"cannot initialise from {word!r}: not a token, and the model has no text tokenizer")
        ids = self.text.encode(word)
        if not ids:
            raise ConfigError(f"cannot initialise a new token from {word!r}: it encodes to no text pieces")
        return [int(i) for i in self.vocab.text_to_global(ids)]

    # ------------------------------------------------------------------ files
    def config_dict(self) -> dict[str, Any]:
        return {
            "kind": "ar",
            "format_version": FORMAT_VERSION,
            "model": cfglib.to_dict(self.cfg),
            "layout": cfglib.to_dict(self.spec),
            "codec": self.codec_ref,
            "audio_codec": self.audio_codec_ref,
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        from ..io import save_model_dir

        files: dict[str, Any] = {VOCAB_NAME: self.vocab.to_dict()}
        if self.text is not None:
            files.update(self.text.files())  # text.model (+ text_tokens.json when placeholders were added)
        return save_model_dir(directory, self.config_dict(), self.state_dict(), files)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "MultimodalLM":
        from ..io import load_model_of_kind, load_weights_into

        directory = Path(directory)
        conf, state = load_model_of_kind(directory, "ar", "an AR model", FORMAT_VERSION)
        try:
            cfg = cfglib.from_dict(ARConfig, conf["model"])
            spec = cfglib.from_dict(LayoutSpec, conf["layout"])
        except KeyError as e:
            raise CheckpointError(f"{directory / 'config.json'}: missing key {e}") from None
        vocab = UnifiedVocab.load(directory / VOCAB_NAME)
        text = TextTokenizer.load(directory / TEXT_MODEL_NAME) if (directory / TEXT_MODEL_NAME).is_file() else None
        model = cls(cfg, vocab, spec, text, codec_ref=conf.get("codec"), audio_codec_ref=conf.get("audio_codec"))
        load_weights_into(model, state, directory / "model.safetensors")
        model.eval()
        return model

    def codec_path(self, directory: str | Path | None = None, *, audio: bool = False) -> Path | None:
        """The video codec this model was trained on (`audio=True`: the audio codec); a relative reference
        resolves against the model dir."""
        from ..io import resolve_ref

        return resolve_ref(self.audio_codec_ref if audio else self.codec_ref, directory)
