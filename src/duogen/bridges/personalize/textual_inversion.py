"""Textual Inversion on both paradigms (Gal et al. 2022): v* = argmin_v E ||eps - eps_theta(z_t, t, c(v))||^2,
only the placeholder's embedding v trains, initialised from a coarse word's.

AR: the placeholder is a new text token of the unified vocabulary (`MultimodalLM.add_tokens`): a new row of
the Llama's input embedding, which trains, and a new row of its output head (`lm_head`), which does not. The
placeholder is only ever read, in the prompt: t2v's loss falls on video tokens and sampling is restricted to
the video range, so the output row never shapes a generated clip; it keeps its initial copy of the word's
rows (and is saved, so that loading is exact). Diffusion: a new row of the text encoder's embedding
(`TransformerTextEncoder.add_placeholder`).

Training goes through the recipes (`add_tokens=[<v1>=word]`, `train.trainable` = the embedding table) with a
gradient hook that zeroes every row but the new one, and no weight decay, so every other parameter stays bit
for bit the base's. On disk: `learned_embeds.safetensors`, the token's row(s) with the token, the init word,
the paradigm and the base's SHA-256 in the metadata: a few hundred bytes, loaded into the base by
`load_embedding`.

Owns: the `textual-inversion` method, saving and loading a learned embedding.
Does not own: growing vocabularies (`ar_models.model`, `diffusion.text_encoder`), the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import CheckpointError, ConfigError
from .common import base_info, check_base, check_new_token, prepare_concept, run_recipe, train_overrides

EMBEDS_NAME = "learned_embeds.safetensors"


def embedding_tables(model: nn.Module) -> tuple[str, nn.Parameter, nn.Parameter | None]:
    """(parameter name of the trained table, the input table, the AR output head or None)."""
    if hasattr(model, "lm"):
        return ("lm.model.embed_tokens.weight", model.lm.get_input_embeddings().weight,
                model.lm.get_output_embeddings().weight)
    if hasattr(model, "text_encoder") and hasattr(model.text_encoder, "embed"):
        return "text_encoder.embed.weight", model.text_encoder.embed.weight, None
    raise ConfigError(f"{type(model).__name__} has no trainable text embedding (a MiniLM text encoder is frozen)")


def token_row(model: nn.Module, token: str) -> int:
    """The embedding row of placeholder `token` in `model`."""
    if hasattr(model, "lm"):
        return model.vocab.tokens[token] if token in model.vocab.tokens else int(
            model.vocab.text_to_global(model.text.encode(token))[0])
    return int(model.tokenizer.encode(token)[0])


def add_placeholder(model: nn.Module, token: str, init_word: str) -> int:
    """Grow `model` by placeholder `token` initialised from `init_word`; returns its row."""
    if hasattr(model, "lm"):
        return model.add_tokens(text={token: init_word})[token]
    return model.text_encoder.add_placeholder(token, init_word)


def only_rows(param: nn.Parameter, rows: list[int]) -> Any:
    """Zero the gradient of every row of `param` except `rows` (a hook; returns its handle)."""
    keep = torch.zeros(param.shape[0], 1, dtype=param.dtype, device=param.device)
    keep[rows] = 1

    return param.register_hook(lambda g: g * keep.to(g.dtype))


def save_embedding(model: nn.Module, token: str, init_word: str, out: str | Path, base: str | Path) -> Path:
    """Write `token`'s learned row(s) as OUT/learned_embeds.safetensors; returns the file."""
    from ...io import save_state_dict

    info = base_info(base)
    _, emb, head = embedding_tables(model)
    i = token_row(model, token)
    state = {"embedding": emb[i].detach().clone()[None]}  # (1, D)
    if head is not None and head is not emb:
        state["lm_head"] = head[i].detach().clone()[None]  # (1, D)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": "textual-inversion", "token": token, "init_word": init_word, "paradigm": info.paradigm,
            "base": str(info.path.resolve()), "base_sha256": info.sha256}
    return save_state_dict(state, out / EMBEDS_NAME, metadata=meta)


def is_embedding_dir(path: str | Path) -> bool:
    return (Path(path) / EMBEDS_NAME).is_file()


@torch.no_grad()
def load_embedding(model: nn.Module, path: str | Path, base: str | Path, *, base_sha256: str | None = None) -> str:
    """Add the learned placeholder at `path` (a file or its folder) to `model`, loaded from `base`; returns the token."""
    from safetensors import safe_open

    from ...io import file_sha256, load_state_dict

    path = Path(path)
    path = path / EMBEDS_NAME if path.is_dir() else path
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "textual-inversion":
        raise CheckpointError(f"{path}: not a Textual Inversion embedding (no format metadata)")
    check_base(meta, base_sha256 or file_sha256(Path(base) / "model.safetensors"), path, base)
    token = meta["token"]
    known = model.text.placeholders if hasattr(model, "lm") else model.tokenizer.placeholders
    if token in known:
        raise ConfigError(f"placeholder {token!r} of {path} is already in this model's vocabulary; load it once")
    state = load_state_dict(path)
    i = add_placeholder(model, token, meta["init_word"])
    _, emb, head = embedding_tables(model)
    emb[i] = state["embedding"][0].to(emb.dtype)
    if head is not None and "lm_head" in state:
        head[i] = state["lm_head"][0].to(head.dtype)
    return token


# ----------------------------------------------------------------------------- the method


def train_textual_inversion(base_dir: Path, concept: str | Path, out_dir: Path, *, token: str,
                            init_word: str | None = None, class_prompt: str | None = None,
                            prior_weight: float = 0.0, steps: int = 300, max_minutes: float = 0.0, seed: int = 0,
                            resume: str | None = None, lr: float = 5e-3, shifts: int | None = None,
                            overrides: tuple[str, ...] = ()
                            ) -> dict[str, Any]:
    """Textual Inversion on the concept's clips; OUT/final/learned_embeds.safetensors holds the token's row.
    `init_word`: default the concept's class word; shifts: as LoRA's (`common.prepare_concept`)."""
    info = base_info(base_dir)
    check_new_token(info, token)
    c = prepare_concept(concept, info, out_dir, token, shifts=shifts, seed=seed)
    word = init_word or c.class_word
    if not word:
        raise ConfigError(f"{concept} names no class word; pass --init-word (a word the base knows, e.g. circle)")
    name = "lm.model.embed_tokens.weight" if info.paradigm == "ar" else "text_encoder.embed.weight"
    ov = train_overrides(c.clips, steps, lr, max_minutes, name) + [f"add_tokens=[{token}={word}]", *overrides]
    rows: dict[str, int] = {}

    def prepare(model: Any) -> None:
        _, emb, _ = embedding_tables(model)
        rows["i"] = token_row(model, token)
        only_rows(emb, [rows["i"]])

    def save(model: Any, path: Path) -> None:
        save_embedding(model, token, word, path, base_dir)

    summary = run_recipe(info, c.data_dir, out_dir, ov, seed=seed, resume=resume, prepare=prepare, save_final=save)
    final = out_dir / "final" / EMBEDS_NAME
    model_bytes = (info.path / "model.safetensors").stat().st_size
    return {**summary, "method": "textual-inversion", "paradigm": info.paradigm, "adapter": str(final.parent),
            "token": token, "init_word": word, "row": rows.get("i"), "adapter_bytes": final.stat().st_size,
            "model_bytes": model_bytes, "adapter_fraction": final.stat().st_size / model_bytes, "clips": c.clips,
            "shifts": c.shifts, "captions": c.captions}
