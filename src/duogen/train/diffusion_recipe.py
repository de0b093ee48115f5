"""Recipe: train a latent diffusion model (DiT or video U-Net) on a data set, through a trained codec.

    train_diffusion(data="data/shapes", tokenizer="runs/vq/final", out="runs/dit", overrides=["denoiser=dit"])

Steps: train (or reuse) the SentencePiece model on the training captions (the
same ids the AR model reads); encode every clip once into the codec's
continuous latents, cached on disk (shared with an AR run on the same codec,
data and split whose tasks need no masked clips: the second encodes nothing),
then normalize them by the codec's stored
`latent_shift` / `latent_scale`; train text encoder + denoiser jointly with the
shared engine (v-prediction on a cosine schedule, EMA weights by default);
`final/` is a `LatentDiffusionModel` directory (config.json kind "diffusion",
model.safetensors, text.model, codec/).

Overrides: `model.*` keys may be given without the `model.` prefix
(`denoiser=unet`, `dit.depth=8`, `prediction_type=epsilon`), `train.*` as usual.

Fine-tuning (`init_from=MODEL_DIR`, `duogen train diffusion --init-from DIR`):
the model starts from DIR's weights, config and text tokenizer; the codec
defaults to DIR's and must be the same weights; a model override other than
the training / sampling behaviour (`FINETUNE_KEEP`) that differs from DIR's
config is an error. `add_tokens` (`<v1>=circle`) gives the text encoder new
placeholder rows first. With `train.trainable` set too, `final/` is a delta
over DIR (`duogen.io.write_delta`).

From Python, `prepare(model)` changes the built model before training (e.g. adds `peft` LoRA layers that
`train.trainable` then selects) and `save_final(model, dir)` writes `final/` instead of the model directory
(e.g. only the adapter); `duogen.bridges.personalize` trains through these.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import config as cfglib
from ..diffusion.latent import LatentDiffusionConfig, LatentDiffusionModel
from .concept import (PairedRecords, check_prior, load_prior_split, paired_collate, prior_preservation,
                      train_new_rows_only)
from .data import column_array
from .engine import LossOutput, TrainConfig, fit
from .recipe_common import (base_model_config, check_same_text, codec_on_accelerator, encode_videos, fine_tune_codec,
                            load_split, model_saver, parse_new_tokens, resolve_cache_dir, text_tokenizer)

# model keys a fine-tune may change from its base model's config (training and sampling behaviour, not shapes)
FINETUNE_KEEP = ("cond_dropout", "snr_gamma", "guidance", "sampler", "steps", "quantize_decode")


@dataclass
class DiffusionRecipeConfig:
    model: LatentDiffusionConfig = field(default_factory=LatentDiffusionConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=20000, batch_size=64, lr=5e-4, weight_decay=0.0, warmup_steps=100, min_lr_ratio=0.1,
        precision="auto", ema=0.995, log_every=20, ckpt_every=1000))
    text_vocab: int = 512  # SentencePiece size when training one (the AR recipe's default: same ids)
    split: str = "train"
    max_clips: int = 0  # 0 = the whole split
    cache_dir: str = ""  # "" = OUT/../.cache (shared by runs under one folder)
    add_tokens: list[str] = field(default_factory=list)  # text placeholders TOKEN=WORD, e.g. <v1>=circle
    # DreamBooth prior preservation and Custom Diffusion's modifier-token rows: as in the AR recipe (train/concept.py)
    prior_data: str = ""
    prior_weight: float = 1.0
    new_rows_only: bool = False

    def check(self) -> None:
        check_prior(self.prior_weight, self.train.weight_decay, self.new_rows_only)


def _preset(**model: Any) -> DiffusionRecipeConfig:
    from ..diffusion.dit import DIT_PRESETS
    from ..diffusion.unet import UNET_PRESETS
    from ..diffusion.video_unet import VIDEO_UNET_PRESETS

    size, lr = model.pop("size"), model.pop("lr", None)
    cfg = DiffusionRecipeConfig(model=LatentDiffusionConfig(
        dit=dataclasses.replace(DIT_PRESETS[size]), unet=dataclasses.replace(VIDEO_UNET_PRESETS[size]),
        unet2d=dataclasses.replace(UNET_PRESETS[size]), **model))
    if lr is not None:
        cfg.train.lr = lr
    return cfg


DIFFUSION_RECIPE_PRESETS: dict[str, DiffusionRecipeConfig] = {
    # tiny: lr 2e-3, measured at the 10-minute CPU budget (DiT, 874 steps x 64, same codec and data):
    # shape 13% / 20% / 27% and direction 65% / 73% / 74% at lr 5e-4 / 1e-3 / 2e-3 (docs/references/README.md)
    "tiny": _preset(size="tiny", lr=2e-3),
    "small": _preset(size="small"),
    "base": _preset(size="base"),
}


def _model_overrides(overrides: Sequence[str]) -> list[str]:
    """`denoiser=dit` -> `model.denoiser=dit`: model keys without their prefix are accepted."""
    model_keys = {f.name for f in dataclasses.fields(LatentDiffusionConfig)}
    out = []
    for o in overrides:
        key = o.split("=", 1)[0].strip()
        out.append(f"model.{o}" if key.split(".")[0] in model_keys else o)
    return out


def encode_latents_dataset(split: Any, codec: Any, codec_dir: Path, data: Path, split_name: str, cache_dir: Path,
                           batch_size: int = 32) -> Any:
    """The codec's continuous latents (`latents`, (N, C, f, h, w)) for every clip, un-normalized, cached on disk:
    the cache the AR recipe's ids share (`recipe_common.encode_videos`)."""
    return encode_videos(split, codec, codec_dir, data, split_name, cache_dir, batch_size=batch_size)


class LatentRecords:
    """What the engine indexes: normalized latents + padded text ids and masks, as tensors."""

    def __init__(self, latents: Any, ids: Any, mask: Any):
        self.latents, self.ids, self.mask = latents, ids, mask

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"latents": self.latents[i], "text_ids": self.ids[i], "text_mask": self.mask[i]}


def train_diffusion(
    data: str | Path,
    tokenizer: str | Path | None,
    out: str | Path,
    *,
    preset: str = "tiny",
    text: str | Path | None = None,
    file: str | Path | None = None,
    overrides: Sequence[str] = (),
    seed: int | None = None,
    resume: str | None = None,
    init_from: str | Path | None = None,
    prepare: Callable[[Any], None] | None = None,
    save_final: Callable[[Any, Path], None] | None = None,
) -> dict[str, Any]:
    """Train a latent diffusion model (from scratch, or from the model in `init_from`); returns the engine's
    summary plus the model's facts. `tokenizer` (the codec) may be None with `init_from`: the base model's."""
    import numpy as np
    import torch

    from ..tokenizers import load as load_codec
    from ..errors import ConfigError
    from ..utils import count_parameters, seed_everything
    from .backends import check_launch
    from .engine import apply_resume

    overrides = cfglib.seed_first(_model_overrides(overrides), seed)
    cfg = cfglib.load(DiffusionRecipeConfig, presets=DIFFUSION_RECIPE_PRESETS, preset=preset, file=file,
                      overrides=overrides)
    cfg.train = apply_resume(cfg.train, resume)
    base = None
    if init_from is not None:  # fine-tune: the base model decides the architecture and the text tokenizer
        from ..io import read_json

        init_from = Path(init_from)
        ref = read_json(init_from / "config.json").get("codec")
        tokenizer = fine_tune_codec(tokenizer, init_from / ref if ref else None, init_from)
        base = LatentDiffusionModel.from_pretrained(init_from, codec=tokenizer)  # refuses other latent statistics
        check_same_text(text, base.tokenizer, init_from)
    if tokenizer is None:
        raise ConfigError("pass --tokenizer DIR (the trained video codec), or --init-from a trained model")
    check_launch(cfg.train)  # a launch mistake fails here, before the data is prepared
    data, codec_dir, out = Path(data), Path(tokenizer), Path(out)
    t0 = time.perf_counter()

    split = load_split(data, cfg.split, cfg.max_clips)
    captions = list(split["caption"])

    codec = load_codec(codec_dir)
    if bool((codec.latent_scale == 1).all()) and bool((codec.latent_shift == 0).all()):
        warnings.warn(f"{codec_dir}: the codec stored no latent statistics (scale 1, shift 0); latents are used"
                      " unnormalized", UserWarning, stacklevel=2)
    with codec_on_accelerator(codec):
        encoded = encode_latents_dataset(split, codec, codec_dir, data, cfg.split, resolve_cache_dir(cfg.cache_dir, out))
    with torch.no_grad():
        raw = torch.from_numpy(column_array(encoded, "latents", np.float32))  # (N, C, f, h, w)
        latents = codec.normalize_latents(raw.to(codec.device)).cpu()
    t_encode = time.perf_counter() - t0

    mcfg = cfg.model
    tok = None
    if base is not None:
        mcfg = cfg.model = base_model_config(base.config, cfg.model, overrides, FINETUNE_KEEP, init_from)
        tok = base.tokenizer
        if list(mcfg.latent) != [int(v) for v in latents.shape[1:]]:
            raise ConfigError(f"the clips of {data} make latents {list(latents.shape[1:])}; --init-from {init_from}"
                              f" was trained on {list(mcfg.latent)}: use data of the base model's clip size")
    elif mcfg.text.kind == "transformer":
        tok = text_tokenizer(text, captions, out, cfg.text_vocab)
        mcfg.text.vocab_size = tok.vocab_size
    mcfg.latent = [int(v) for v in latents.shape[1:]]
    seed_everything(cfg.train.seed)
    model = LatentDiffusionModel(mcfg, tok, codec)
    if base is not None:
        model.load_state_dict(base.state_dict())
        del base
    old_rows = model.text_encoder.embed.num_embeddings if hasattr(model.text_encoder, "embed") else 0
    for token, word in parse_new_tokens(cfg.add_tokens, "add_tokens").items():
        model.text_encoder.add_placeholder(token, word)
    if prepare is not None:  # the caller's change to the built model (e.g. LoRA layers), before the engine sees it
        prepare(model)
    ids, mask = model.text_encoder.tokenize(captions, strict=False)  # (N, T) each
    records = LatentRecords(latents, ids, mask)
    n_params = count_parameters(model)

    def loss_fn(m: Any, batch: dict[str, Any]) -> LossOutput:
        return LossOutput(m(batch), int(batch["latents"].shape[0]), {})

    collate = None
    if cfg.prior_data:  # DreamBooth: pair every instance clip with a class clip; L = L_inst + w * L_class
        prior = load_prior_split(cfg.prior_data)
        with codec_on_accelerator(codec):
            prior_raw = encode_latents_dataset(prior, codec, codec_dir, Path(cfg.prior_data), "train",
                                               resolve_cache_dir(cfg.cache_dir, out))
        with torch.no_grad():
            prior_z = codec.normalize_latents(torch.from_numpy(column_array(prior_raw, "latents", np.float32))
                                              .to(codec.device)).cpu()  # (N, C, f, h, w)
        both, both_mask = model.text_encoder.tokenize(captions + list(prior["caption"]), strict=False)  # one T
        n = len(captions)
        records = PairedRecords(LatentRecords(latents, both[:n], both_mask[:n]),
                                LatentRecords(prior_z, both[n:], both_mask[n:]))
        collate, loss_fn = paired_collate(None), prior_preservation(loss_fn, cfg.prior_weight)
    if cfg.new_rows_only and old_rows:
        train_new_rows_only(model, {"text_encoder.embed.weight": old_rows})

    delta_of = init_from if init_from is not None and cfg.train.trainable else None  # final/: changed tensors only

    summary = fit(model, loss_fn, records, cfg.train, out, collate=collate,
                  save_model=save_final or model_saver(delta_of),
                  run_config={**cfglib.to_dict(cfg), "data": str(data.resolve()), "tokenizer": str(codec_dir.resolve()),
                              "init_from": str(init_from.resolve()) if init_from is not None else None})
    return {
        **vars(summary),
        "final": str(out / "final"),
        "parameters": n_params,
        "denoiser": mcfg.denoiser,
        "denoiser_parameters": count_parameters(model.denoiser),
        "latent": mcfg.latent,
        "latent_std_after_normalization": float(latents.std()),
        "clips": int(latents.shape[0]),
        "encode_s": round(t_encode, 2),
        "init_from": str(init_from) if init_from is not None else None,
        "delta": delta_of is not None and save_final is None,
    }
