"""A patch-level AR model over a video codec's ids: a global Llama steps once per patch, a local one draws its ids.

MEGABYTE (Yu et al. 2023) and the RQ-Transformer's depth transformer (Lee et al. 2022) split next-token prediction
in two: a large model over coarse positions and a small one inside each. Here the global model reads the prompt,
then one embedding per p x p patch of a latent frame's ids (the sum of its ids' embeddings, from one table per
slot, so the sum keeps which id sits where); its state at a patch predicts the next one, and the local model
decodes that patch's p*p ids in raster order from it. The likelihood is still the exact product of next-id
probabilities in one raster-of-patches order, so classifier-free guidance, temperature and top-k act on each id as
in `sampling.py`; the global model runs once per p*p ids, which buys it depth at the flat model's FLOPs.

This module holds the model, its loss and its sampler; `bench/bench_patch_ar.py` trains it with the engine on a
demo run's codec and data and scores it with the probes (docs/demo_runs/record.md, "A patch-level AR model").

    model = PatchAR(PatchARConfig(), latent=(3, 8, 8), codec_vocab=1000, text_vocab=512)
    loss = model.loss(batch)                       # batch = model.collate(records): "text" (B,T), "ids" (B,f,h,w)
    ids = model.sample(text_ids, guidance=3.0, generator=g)   # (B,f,h,w) codec ids
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError, DataError

KIND = "patch_ar"  # config.json "kind" of a saved PatchAR (`bridges.generate.load_generator` dispatches on it)
FORMAT_VERSION = 1


@dataclass
class PatchARConfig:
    # global model: 4 layers of the `tiny` preset's width. At the demo's slow-machine 6.87e12 FLOPs it makes
    # about 413 steps where the flat one-layer model makes 426 (`bench/bench_patch_ar.py`).
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    mlp: int = 352
    # local model: one narrow layer; it runs once per id, so its head (local_hidden x codec ids) is most of its cost
    local_hidden: int = 64
    local_layers: int = 1
    local_heads: int = 2
    local_mlp: int = 176
    patch: int = 2
    max_text: int = 32
    cond_dropout: float = 0.1  # probability that a training example's prompt is dropped (classifier-free guidance)
    init_std: float = 0.02

    def check(self) -> None:
        if self.patch < 1:
            raise ConfigError(f"patch must be >= 1, got {self.patch}")
        if self.hidden % self.heads or self.local_hidden % self.local_heads:
            raise ConfigError("hidden must divide by heads and local_hidden by local_heads")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ConfigError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")

    def check_grid(self, latent: Sequence[int]) -> None:
        self.check()
        _, h, w = latent
        if h % self.patch or w % self.patch:
            raise ConfigError(f"patch ({self.patch}) must divide the latent grid {h}x{w}")


def patch_config(model: Any, max_text: int) -> PatchARConfig:
    """The `PatchARConfig` an `ARConfig` with `patch` > 0 asks for (its global and local sizes, dropout, init)."""
    return PatchARConfig(hidden=model.hidden, layers=model.layers, heads=model.heads, mlp=model.mlp,
                         local_hidden=model.local_hidden, local_layers=model.local_layers,
                         local_heads=max(1, model.local_hidden // 32), local_mlp=int(model.local_hidden * 2.75),
                         patch=model.patch, max_text=max_text, cond_dropout=model.cond_dropout, init_std=model.init_std)


def _llama(width: int, layers: int, heads: int, mlp: int, max_len: int, init_std: float) -> nn.Module:
    """A randomly initialised `LlamaModel` (no embedding table of its own: it reads `inputs_embeds`)."""
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(vocab_size=1, hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_len,
                      initializer_range=init_std, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = LlamaModel._from_config(cfg, attn_implementation="sdpa")
    model.embed_tokens = None  # never used: every call passes inputs_embeds
    return model


class PatchAR(nn.Module):
    """Prompt -> codec ids (f, h, w), a global Llama per patch and a local Llama per id (module docstring)."""

    def __init__(self, cfg: PatchARConfig, latent: Sequence[int], codec_vocab: int, text_vocab: int,
                 text: Any = None, codec_ref: str | None = None):
        super().__init__()
        cfg.check_grid(latent)
        self.cfg, self.latent = cfg, tuple(int(x) for x in latent)
        self.text_tokenizer, self.codec_ref = text, codec_ref  # its SentencePiece model; the codec it was trained on
        self.codec_vocab, self.text_vocab = int(codec_vocab), int(text_vocab)
        f, h, w = self.latent
        p, D, d = cfg.patch, cfg.hidden, cfg.local_hidden
        self.k = p * p  # ids per patch
        self.n_patches = f * (h // p) * (w // p)
        self.pad, self.null = text_vocab, text_vocab + 1  # the text table's padding row and its "no prompt" row
        self.text = nn.Embedding(text_vocab + 2, D)
        self.ids = nn.Embedding(self.k * codec_vocab, D)  # one table per slot of a patch: id + slot * codec_vocab
        self.register_buffer("slot_offset", torch.arange(self.k) * codec_vocab, persistent=False)
        self.start = nn.Parameter(torch.zeros(D))  # the input that predicts the first patch
        # (frame, row, column) of the patch each global state predicts, zero at the start like `VisualPositions`
        self.frame, self.row, self.col = nn.Embedding(f, D), nn.Embedding(h // p, D), nn.Embedding(w // p, D)
        q = torch.arange(self.n_patches)
        self.register_buffer("q_frame", q // ((h // p) * (w // p)), persistent=False)
        self.register_buffer("q_row", (q // (w // p)) % (h // p), persistent=False)
        self.register_buffer("q_col", q % (w // p), persistent=False)
        self.glob = _llama(D, cfg.layers, cfg.heads, cfg.mlp, cfg.max_text + self.n_patches, cfg.init_std)
        self.down = nn.Linear(D, d)
        self.local_ids = nn.Embedding(codec_vocab + 1, d)  # + the "patch starts" id
        self.local_pos = nn.Parameter(torch.zeros(self.k, d))
        self.local = _llama(d, cfg.local_layers, cfg.local_heads, cfg.local_mlp, self.k, cfg.init_std)
        self.head = nn.Linear(d, codec_vocab, bias=False)  # torch's default init (std 1/sqrt(3 d)), not init_std
        for e in (self.text, self.ids, self.local_ids):
            nn.init.normal_(e.weight, std=cfg.init_std)
        for e in (self.frame, self.row, self.col):
            nn.init.zeros_(e.weight)

    # ------------------------------------------------------------------ layout
    def to_patches(self, ids: torch.Tensor) -> torch.Tensor:
        """(B,f,h,w) codec ids -> (B, patches, p*p): patches in raster order per frame, ids in raster order inside.
        Fewer frames than the clip's (B,f0,h,w) give its first f0 frames' patches, the first patches of the order."""
        _, h, w = self.latent
        p, f = self.cfg.patch, ids.shape[-3]
        x = ids.reshape(-1, f, h // p, p, w // p, p).permute(0, 1, 2, 4, 3, 5)
        return x.reshape(-1, f * (h // p) * (w // p), self.k)

    def from_patches(self, x: torch.Tensor) -> torch.Tensor:
        f, h, w = self.latent
        p = self.cfg.patch
        return x.reshape(-1, f, h // p, w // p, p, p).permute(0, 1, 2, 4, 3, 5).reshape(-1, f, h, w)

    def text_block(self, text_ids: Sequence[Sequence[int]], drop: Sequence[bool] | None = None) -> torch.Tensor:
        """Prompts' SentencePiece ids -> (B, max_text), padded; a dropped (or empty) prompt is the "no prompt" row."""
        T = self.cfg.max_text
        out = torch.full((len(text_ids), T), self.pad, dtype=torch.long)
        for i, ids in enumerate(text_ids):
            ids = list(ids)[:T]
            if (drop is not None and drop[i]) or not ids:
                out[i, 0] = self.null
            else:
                out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def collate(self, records: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """`TokenRecords` items -> a training batch; each prompt dropped with probability cond_dropout. The draws
        come from torch's global generator, which the engine seeds and checkpoints (exact resume)."""
        drop = (torch.rand(len(records)) < self.cfg.cond_dropout).tolist()
        ids = torch.stack([torch.as_tensor(rec["video_ids"], dtype=torch.long) for rec in records])
        return {"text": self.text_block([rec["text_ids"] for rec in records], drop), "ids": ids}

    # ------------------------------------------------------------------ the two models
    def _where(self, q: torch.Tensor) -> torch.Tensor:
        """(frame, row, column) embedding of patch indices q (the patch a global state predicts)."""
        q = q.clamp(max=self.n_patches - 1)
        return self.frame(self.q_frame[q]) + self.row(self.q_row[q]) + self.col(self.q_col[q])

    def _patch_inputs(self, patches: torch.Tensor, first: int) -> torch.Tensor:
        """Patches (B,n,k) -> the global model's inputs for them, the i-th predicting patch first + i + 1."""
        q = torch.arange(first + 1, first + 1 + patches.shape[1], device=patches.device)
        return self.ids(patches + self.slot_offset).sum(2) + self._where(q)

    def _prompt_inputs(self, text: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """text (B,T), the first n patches (B,n,k) -> the global model's inputs: the prompt, the start, the patches."""
        start = self.start.expand(text.shape[0], 1, -1) + self._where(text.new_zeros(1))
        return torch.cat([self.text(text), start, self._patch_inputs(patches, 0)], 1)

    def global_states(self, text: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """text (B,T), the first n patches (B,n,k) -> (B, n+1, D): state j predicts patch j."""
        return self.glob(inputs_embeds=self._prompt_inputs(text, patches)).last_hidden_state[:, text.shape[1]:]

    def local_logits(self, state: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """state (B,D) of a patch, its first j ids (B,j) -> logits (B, j+1, codec ids) for ids 0..j."""
        B, j = prev.shape
        start = torch.full((B, 1), self.codec_vocab, dtype=torch.long, device=prev.device)
        x = self.local_ids(torch.cat([start, prev], 1)) + self.local_pos[: j + 1] + self.down(state)[:, None]
        return self.head(self.local(inputs_embeds=x).last_hidden_state)

    def token_logp(self, text: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """text (B,T), codec ids (B,f,h,w) -> log p of each id given the prompt and the ids before it, (B, patches, k)."""
        x = self.to_patches(ids)
        B, P, k = x.shape
        state = self.global_states(text, x[:, :-1]).reshape(B * P, -1)
        logits = self.local_logits(state, x.reshape(B * P, k)[:, :-1]).float()
        return -F.cross_entropy(logits.reshape(-1, self.codec_vocab), x.reshape(-1), reduction="none").reshape(B, P, k)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, dict[str, float]]:
        """Mean next-id cross-entropy over the clips' ids: (loss, ids counted, metrics), as `LossOutput` takes."""
        logp = self.token_logp(batch["text"], batch["ids"])
        loss = -logp.mean()
        return loss, int(logp.numel()), {"loss": float(loss.detach())}

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, text_ids: Sequence[Sequence[int]], *, guidance: float = 3.0, temperature: float = 1.0,
               top_k: int = 0, negative: Sequence[int] = (), first: torch.Tensor | None = None,
               generator: torch.Generator | None = None, layout_candidates: int = 1) -> torch.Tensor:
        """Prompts' ids -> (B,f,h,w) codec ids, one clip per prompt; guidance != 1 runs a second stream beside
        them (no prompt, or the `negative` prompt's ids) and draws each id from log p_u + guidance * (log p_c -
        log p_u) (`sampling.py`'s rule). The global model keeps its keys and values: one new position per patch.
        `first` (f0,h,w) or (B,f0,h,w), 1 <= f0 < f: the clips' first latent frames, given (frame continuation,
        i2v); the model, trained on whole clips in frame order, draws the frames after them.

        `layout_candidates` K > 1: the first latent frame the sampler draws is drawn K times per prompt, and the
        one the prompt explains best is kept and continued: the highest sum, over its drawn ids, of log p(id |
        prompt, ids before) - log p(id | no prompt, ids before) (the model's own implicit classifier, the ratio
        guidance amplifies; the second stream runs for it with or without guidance). That frame holds the
        layout, where an object the prompt names goes missing; it costs (K - 1) frames of ids more per clip.
        """
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        K = int(layout_candidates)
        if K < 1:
            raise ConfigError(f"layout_candidates must be >= 1, got {layout_candidates}")
        B = len(text_ids)
        x = torch.zeros(B, 0, self.k, dtype=torch.long)  # the clips' patches so far
        if first is not None:
            x = self.to_patches(self._check_first(first, B))
        run = dict(guidance=guidance, temperature=temperature, top_k=top_k, negative=negative, generator=generator)
        if K > 1:
            per_frame = self.n_patches // self.latent[0]
            rows = [t for t in text_ids for _ in range(K)]
            cand, score = self._draw(rows, x.repeat_interleave(K, 0), x.shape[1] + per_frame, scored=True, **run)
            x = cand[score.view(B, K).argmax(1) + torch.arange(B, device=score.device) * K]
        if x.shape[1] < self.n_patches:
            x, _ = self._draw(text_ids, x, self.n_patches, scored=False, **run)
        return self.from_patches(x)

    def _draw(self, text_ids: Sequence[Sequence[int]], x: torch.Tensor, stop: int, *, guidance: float,
              temperature: float, top_k: int, negative: Sequence[int], generator: torch.Generator | None,
              scored: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Patches x (B,n,k) given -> (B,stop,k) with patches n..stop-1 drawn, and (scored) each row's sum over
        its drawn ids of log p_c - log p_u, the second stream being the no-prompt (or negative) one."""
        from transformers import DynamicCache

        from .sampling import draw

        B = len(text_ids)
        guided = guidance != 1.0
        two = guided or scored  # the second stream: guidance mixes it in, the score reads it
        text = self.text_block(text_ids)
        if two:
            text = torch.cat([text, self.text_block([list(negative)] * B)])
        text = text.to(self.head.weight.device)
        x = x.to(text.device)
        score = text.new_zeros(B, dtype=torch.float32) if scored else None

        def both(t: torch.Tensor) -> torch.Tensor:  # the clips' rows for every stream
            return torch.cat([t, t]) if two else t

        cache = DynamicCache()  # the global model's keys and values: one new position per patch
        h = self.glob(inputs_embeds=self._prompt_inputs(text, both(x)), cache=cache, use_cache=True)
        for j in range(x.shape[1], stop):
            state = h.last_hidden_state[:, -1]
            prev = text.new_zeros(B, 0)
            for _ in range(self.k):
                logp = self.local_logits(state, both(prev))[:, -1].float().log_softmax(-1)
                mixed = logp[B:] + guidance * (logp[:B] - logp[B:]) if guided else logp[:B]
                tok = draw(mixed, temperature, top_k, 1.0, generator)
                if scored:
                    gap = logp[:B] - logp[B:]
                    score += gap.gather(1, tok[:, None])[:, 0]
                prev = torch.cat([prev, tok[:, None]], 1)
            x = torch.cat([x, prev[:, None]], 1)
            if j + 1 < stop:
                new = self._patch_inputs(both(prev)[:, None], j)
                h = self.glob(inputs_embeds=new, cache=cache, use_cache=True)
        return x, score

    def _check_first(self, first: Any, B: int) -> torch.Tensor:
        """Given first latent frames -> (B,f0,h,w) long, or a DataError naming what is wrong."""
        f, h, w = self.latent
        t = torch.as_tensor(first)
        if t.dim() == 3:
            t = t[None].expand(B, -1, -1, -1)
        if t.dim() != 4 or t.shape[0] != B or tuple(t.shape[2:]) != (h, w) or not 1 <= t.shape[1] < f:
            raise DataError(f"the given first frames must be codec ids (f0, {h}, {w}) or ({B}, f0, {h}, {w}) with"
                            f" 1 <= f0 < {f}, got shape {tuple(t.shape)}")
        if t.is_floating_point() or int(t.min()) < 0 or int(t.max()) >= self.codec_vocab:
            raise DataError(f"the given first frames must be integer codec ids in [0, {self.codec_vocab})")
        return t.long()

    # ------------------------------------------------------------------ files
    def config_dict(self) -> dict[str, Any]:
        return {"kind": KIND, "format_version": FORMAT_VERSION, "model": asdict(self.cfg), "latent": list(self.latent),
                "codec_vocab": self.codec_vocab, "text_vocab": self.text_vocab, "codec": self.codec_ref}

    def save_pretrained(self, directory: str | Path) -> Path:
        """config.json (kind "patch_ar"), the weights, and text.model when the model has its tokenizer."""
        from ..io import save_model_dir

        files = self.text_tokenizer.files() if self.text_tokenizer is not None else {}
        return save_model_dir(directory, self.config_dict(), self.state_dict(), files)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "PatchAR":
        from .. import config as cfglib
        from ..io import load_model_of_kind, load_weights_into
        from ..tokenizers.text import TEXT_MODEL_NAME, TextTokenizer

        directory = Path(directory)
        conf, state = load_model_of_kind(directory, KIND, "a patch AR model", FORMAT_VERSION)
        try:
            cfg = cfglib.from_dict(PatchARConfig, conf["model"])
            latent, codec_vocab, text_vocab = conf["latent"], conf["codec_vocab"], conf["text_vocab"]
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{directory / 'config.json'}: {e}") from None
        text = TextTokenizer.load(directory / TEXT_MODEL_NAME) if (directory / TEXT_MODEL_NAME).is_file() else None
        model = cls(cfg, latent, codec_vocab, text_vocab, text=text, codec_ref=conf.get("codec"))
        load_weights_into(model, state, directory / "model.safetensors")
        return model.eval()

    def codec_path(self, directory: str | Path | None = None) -> Path | None:
        """The codec this model was trained on; a relative reference resolves against the model dir."""
        from ..io import resolve_ref

        return resolve_ref(self.codec_ref, directory)
