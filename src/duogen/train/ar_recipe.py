"""Recipe: train the multimodal next-token model on a data set, through a trained video codec.

    train_ar(data="data/shapes", tokenizer="runs/vq/final", out="runs/ar", preset="tiny")
    train_ar(..., audio_tokenizer="runs/audio/final", tasks=["t2v", "t2a", "v2a"])

Steps: train (or reuse) the SentencePiece model on the training captions;
encode every clip once with the codec into a cache keyed by the codec's
weights and the data set (`duogen.train.data.pretokenize`; the diffusion
recipe's latents come from the same pass and cache), and with audio
tasks every example's `audio`, cropped or padded with silence to
`audio_seconds`, with the audio codec into the same cache; build the unified
vocabulary and the layouts; train with the shared engine; `final/` is a
`MultimodalLM` directory (config.json kind "ar", model.safetensors,
vocab.json, text.model, the paths of the codecs).

Fine-tuning (`init_from=MODEL_DIR`, `duogen train ar --init-from DIR`): the
model starts from DIR's weights with DIR's config, vocabulary, text tokenizer
and layout (its tasks unless `tasks` is given); the codec defaults to DIR's and
must be the same weights; a `model.*` override other than `cond_dropout` /
`attn_dropout` that differs from DIR's config is an error. `add_tokens` /
`add_task_tokens` (`<v1>=circle`) grow the vocabulary first. With
`train.trainable` set too, `final/` is a delta over DIR (only the tensors that
changed, plus DIR's path and checksum; `duogen.io.write_delta`).

From Python, `prepare(model)` changes the built model before training (e.g. adds `peft` LoRA layers that
`train.trainable` then selects) and `save_final(model, dir)` writes `final/` instead of the model directory
(e.g. only the adapter); `duogen.bridges.personalize` trains through these.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import config as cfglib
from ..ar_models.layouts import AUDIO_TASKS, MASKED_TASKS, TASKS, LayoutSpec, TrainCollator, masked_clip
from ..ar_models.model import AR_PRESETS, ARConfig, MultimodalLM
from ..errors import ConfigError
from .concept import (PairedRecords, check_prior, load_prior_split, paired_collate, prior_preservation,
                      train_new_rows_only)
from .data import column_array
from .engine import LossOutput, TrainConfig, fit
from .recipe_common import (base_model_config, check_same_text, codec_on_accelerator, encode_clips, encode_videos,
                            fine_tune_codec, load_split, model_saver, parse_new_tokens, resolve_cache_dir,
                            text_tokenizer)

CACHE_VERSION = 1


@dataclass
class ARRecipeConfig:
    model: ARConfig = field(default_factory=ARConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=3000, batch_size=32, lr=1e-3, weight_decay=0.01, warmup_steps=50, min_lr_ratio=0.1,
        precision="auto", log_every=20, ckpt_every=500))
    tasks: list[str] = field(default_factory=lambda: ["t2v"])
    max_text: int = 32  # text tokens per prompt; longer prompts are truncated (warned)
    text_vocab: int = 512  # shapes captions: at most 26 pieces at 512, 43 at 384
    cond_frames: int = 1  # latent frames given to i2v
    # t2a / v2a: every example's audio is cropped (or padded with silence) to this many seconds, rounded to
    # whole codec frames, so the audio segment has a fixed length. Shapes captions spoken by espeak-ng last
    # 1.2-5.5 s (median 2.5 s); 2 s at the tiny audio codec is 100 frames x 4 levels = 400 tokens.
    audio_seconds: float = 2.0
    split: str = "train"
    max_clips: int = 0  # 0 = the whole split
    cache_dir: str = ""  # "" = OUT/../.cache (shared by runs under one folder)
    # New tokens appended to the vocabulary before training, TOKEN=WORD (the new embedding row starts as WORD's):
    # text placeholders (`<v1>=circle`: the text "<v1>" encodes as the one new id) and task tokens (`<edit>=<t2v>`)
    add_tokens: list[str] = field(default_factory=list)
    add_task_tokens: list[str] = field(default_factory=list)
    # DreamBooth prior preservation (train/concept.py): a data set of class clips made by the frozen model; each
    # batch pairs every instance clip with a class clip and the loss is L_instance + prior_weight * L_class
    prior_data: str = ""
    prior_weight: float = 1.0
    # of the embedding tables, train only the rows add_tokens appended (Custom Diffusion's modifier token)
    new_rows_only: bool = False

    def check(self) -> None:
        bad = [t for t in self.tasks if t not in TASKS]
        if bad:
            raise ConfigError(f"unknown task {bad[0]!r}; allowed values: {', '.join(TASKS)}")
        if not self.tasks:
            raise ConfigError("tasks must name at least one task")
        if self.audio_seconds <= 0:
            raise ConfigError(f"audio_seconds must be positive, got {self.audio_seconds}")
        check_prior(self.prior_weight, self.train.weight_decay, self.new_rows_only)


AR_RECIPE_PRESETS: dict[str, ARRecipeConfig] = {
    "tiny": ARRecipeConfig(model=AR_PRESETS["tiny"]),
    "small": ARRecipeConfig(model=AR_PRESETS["small"], train=TrainConfig(
        steps=20000, batch_size=32, lr=6e-4, weight_decay=0.01, warmup_steps=200, precision="auto",
        log_every=50, ckpt_every=1000), max_text=48, text_vocab=1024),
    "base": ARRecipeConfig(model=AR_PRESETS["base"], train=TrainConfig(
        steps=100000, batch_size=64, lr=3e-4, weight_decay=0.05, warmup_steps=1000, precision="auto",
        log_every=100, ckpt_every=2000), max_text=64, text_vocab=1024),
}


def encode_dataset(split: Any, codec: Any, codec_dir: Path, data: Path, split_name: str, tasks: Sequence[str],
                   cache_dir: Path, batch_size: int = 32) -> Any:
    """Codec ids for every clip (`video_ids`, and its masked versions for inpaint / outpaint), cached on disk:
    the cache the diffusion recipe's latents share (`recipe_common.encode_videos`)."""
    masked = [t for t in tasks if t in MASKED_TASKS]
    return encode_videos(split, codec, codec_dir, data, split_name, cache_dir, masked=masked, mask_clip=masked_clip,
                         batch_size=batch_size)


def fit_audio(waves: Sequence[Any], samples: int) -> Any:
    """Waveforms of any length -> float32 (B, samples): the first `samples` of each, zero-padded (silence) after."""
    import numpy as np

    out = np.zeros((len(waves), samples), np.float32)
    for i, a in enumerate(waves):
        a = np.asarray(a, dtype=np.float32).reshape(-1)[:samples]
        out[i, : len(a)] = a
    return out


def encode_audio(split: Any, codec: Any, codec_dir: Path, data: Path, split_name: str, frames: int, cache_dir: Path,
                 batch_size: int = 32) -> Any:
    """Audio codec ids (T, L) of every example's `audio`, cropped or padded to `frames` codec frames, cached on disk."""
    import torch

    samples = frames * codec.hop

    def fn(batch: dict[str, list[Any]]) -> dict[str, Any]:
        x = torch.from_numpy(fit_audio(batch["audio"], samples))[:, None]  # (B, 1, S)
        with torch.inference_mode():
            ids = codec.encode(x)  # (B, L, T)
        return {"audio_ids": ids.transpose(1, 2).to(torch.int32).cpu().numpy()}  # (B, T, L): time-major, as the layout

    return encode_clips(split, fn, codec_dir, data, split_name, cache_dir, batch_size=batch_size, column="audio",
                        desc="encoding audio with the audio codec", v=CACHE_VERSION, samples=samples)


class TokenRecords:
    """The dataset the engine indexes: pre-encoded codec ids (the `*_ids` columns) + text ids, as dicts the
    collator reads. The cache's other columns (the continuous `latents` it shares with diffusion) are left out."""

    def __init__(self, encoded: Any, text_ids: list[list[int]]):
        import numpy as np

        self.cols = {c: column_array(encoded, c, np.int64) for c in encoded.column_names if c.endswith("_ids")}
        self.text_ids = text_ids

    def __len__(self) -> int:
        return len(self.text_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = {c: v[i] for c, v in self.cols.items()}
        rec["text_ids"] = self.text_ids[i]
        return rec


def train_ar(
    data: str | Path,
    tokenizer: str | Path | None,
    out: str | Path,
    *,
    audio_tokenizer: str | Path | None = None,
    preset: str = "tiny",
    tasks: Sequence[str] | None = None,
    text: str | Path | None = None,
    file: str | Path | None = None,
    overrides: Sequence[str] = (),
    seed: int | None = None,
    resume: str | None = None,
    init_from: str | Path | None = None,
    prepare: Callable[[Any], None] | None = None,
    save_final: Callable[[Any, Path], None] | None = None,
) -> dict[str, Any]:
    """Train an AR model (from scratch, or from the model in `init_from`); returns the engine's summary plus the
    model's facts. `tokenizer` (the codec) may be None with `init_from`: the base model's codec.

    Audio tasks (t2a, v2a) need `audio_tokenizer` (an audio codec directory) and
    a data set with an `audio` column at the codec's sample rate.
    """
    import warnings

    import dataclasses

    from ..tokenizers import load as load_codec
    from ..tokenizers.vocab import UnifiedVocab
    from ..utils import count_parameters, seed_everything
    from .backends import check_launch
    from .engine import apply_resume

    overrides = cfglib.seed_first(overrides, seed)
    if tasks:
        overrides.append("tasks=" + ",".join(tasks))
    cfg = cfglib.load(ARRecipeConfig, presets=AR_RECIPE_PRESETS, preset=preset, file=file, overrides=overrides)
    cfg.train = apply_resume(cfg.train, resume)
    base = None
    if init_from is not None:  # fine-tune: the base model decides architecture, vocabulary, text and layout
        init_from = Path(init_from)
        base = MultimodalLM.from_pretrained(init_from)
        cfg.model = base_model_config(base.cfg, cfg.model, overrides, ("cond_dropout", "attn_dropout"), init_from)
        cfg.max_text = base.spec.max_text
        if not tasks:
            cfg.tasks = list(base.spec.tasks)
        tokenizer = fine_tune_codec(tokenizer, base.codec_path(init_from), init_from)
        check_same_text(text, base.text, init_from)
        if audio_tokenizer is None:
            audio_tokenizer = base.codec_path(init_from, audio=True)
    if tokenizer is None:
        raise ConfigError("pass --tokenizer DIR (the trained video codec), or --init-from a trained model")
    check_launch(cfg.train)  # a launch mistake fails here, before the data is prepared
    if cfg.model.patch:
        check_patch_recipe(cfg, init_from)
    data, codec_dir, out = Path(data), Path(tokenizer), Path(out)
    t0 = time.perf_counter()

    audio_tasks = [t for t in cfg.tasks if t in AUDIO_TASKS]
    if audio_tasks and audio_tokenizer is None:
        raise ConfigError(f"task(s) {', '.join(audio_tasks)} need an audio codec: pass --audio-tokenizer DIR"
                          " (the final/ of `duogen train tokenizer --modality audio`), or drop them from --tasks")
    if audio_tokenizer is not None and not audio_tasks:
        if base is None:
            warnings.warn("--audio-tokenizer is ignored: no audio task (t2a, v2a) in --tasks", UserWarning, stacklevel=2)
        audio_tokenizer = None
    audio_codec, audio_frames = None, 0
    if audio_tokenizer is not None:
        audio_dir = Path(audio_tokenizer)
        audio_codec = load_codec(audio_dir)
        if getattr(audio_codec, "kind", None) != "audio_codec":
            raise ConfigError(f"--audio-tokenizer {audio_dir} holds a {getattr(audio_codec, 'kind', '?')!r}, not an audio codec")
        audio_frames = max(1, round(cfg.audio_seconds * audio_codec.cfg.sample_rate / audio_codec.hop))
        if base is not None and base.spec.audio_tokens:
            audio_frames = base.spec.audio_tokens
    split = load_split(data, cfg.split, cfg.max_clips)
    if audio_tasks and "audio" not in split.column_names:
        raise ConfigError(f"task(s) {', '.join(audio_tasks)} need an `audio` column, and split {cfg.split!r} of {data}"
                          " has none: make the data with `duogen data make shapes --audio`")
    captions = list(split["caption"])

    tok = base.text if base is not None else text_tokenizer(text, captions, out, cfg.text_vocab)
    codec = load_codec(codec_dir)
    cache = resolve_cache_dir(cfg.cache_dir, out)
    with codec_on_accelerator(codec):
        encoded = encode_dataset(split, codec, codec_dir, data, cfg.split, cfg.tasks, cache)
    if audio_codec is not None:
        import datasets

        with codec_on_accelerator(audio_codec):
            audio = encode_audio(split, audio_codec, audio_dir, data, cfg.split, audio_frames, cache)
        encoded = datasets.concatenate_datasets([encoded, audio], axis=1)
    t_encode = time.perf_counter() - t0

    f, h, w = encoded.with_format("numpy")[:1]["video_ids"].shape[1:]  # (N, f, h, w) codec ids
    codecs: dict[str, Any] = {"video": codec.vocab_size}
    refs = {"video": str(codec_dir.resolve())}
    if audio_codec is not None:
        codecs["audio"] = (audio_codec.vocab_size, audio_codec.num_levels)
        refs["audio"] = str(audio_dir.resolve())
    vocab = UnifiedVocab(tok.vocab_size, codecs, codec_refs=refs)
    spec = LayoutSpec(max_text=cfg.max_text, latent=(int(f), int(h), int(w)), cond_frames=cfg.cond_frames, tasks=list(cfg.tasks),
                      audio_tokens=audio_frames, audio_levels=audio_codec.num_levels if audio_codec is not None else 1)
    if base is not None:
        if list(base.spec.latent) != [int(f), int(h), int(w)]:
            raise ConfigError(f"the clips of {data} make {f}x{h}x{w} codec latents; --init-from {init_from} was trained"
                              f" on {'x'.join(map(str, base.spec.latent))}: use data of the base model's clip size")
        for n, lv in vocab.codec_levels.items():
            lvl = 0 if lv > 1 else None
            if base.vocab.codec_levels.get(n) != lv or base.vocab.codec_range(n, lvl).size != vocab.codec_range(n, lvl).size:
                raise ConfigError(f"--init-from {init_from} has vocabulary {base.vocab!r}; the codecs given make"
                                  f" {vocab!r}: pass the codecs the model was trained on")
        vocab = base.vocab  # its codec_refs and any tokens added to it
        spec = dataclasses.replace(base.spec, tasks=list(cfg.tasks))
        if "audio" not in refs and base.audio_codec_ref:
            refs["audio"] = str(base.codec_path(init_from, audio=True))
    seed_everything(cfg.train.seed)
    if cfg.model.patch:
        return _train_patch(cfg, data, out, encoded, captions, tok, (int(f), int(h), int(w)), codec.vocab_size,
                            refs["video"], prepare, save_final, t_encode)
    model = MultimodalLM(cfg.model, vocab, spec, tok, codec_ref=refs["video"], audio_codec_ref=refs.get("audio"))
    if base is not None:
        model.load_state_dict(base.state_dict())
        del base
    old_rows = model.vocab.size
    if cfg.add_tokens or cfg.add_task_tokens:
        model.add_tokens(parse_new_tokens(cfg.add_tokens, "add_tokens"),
                         parse_new_tokens(cfg.add_task_tokens, "add_task_tokens"))
    if prepare is not None:  # the caller's change to the built model (e.g. LoRA layers), before the engine sees it
        prepare(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captions longer than max_text are truncated; counted below
        text_ids = [tok.encode(c)[: cfg.max_text] for c in captions]
    n_long = sum(len(tok.encode(c)) > cfg.max_text for c in captions)
    records = TokenRecords(encoded, text_ids)
    collate = TrainCollator(model.layouts, cfg.tasks, cfg.model.cond_dropout)
    n_params = count_parameters(model)

    def loss_fn(m: Any, batch: dict[str, Any]) -> LossOutput:
        return LossOutput(*m.loss(batch))

    if cfg.prior_data:  # DreamBooth: pair every instance clip with a class clip; L = L_inst + w * L_class
        prior = load_prior_split(cfg.prior_data)
        with codec_on_accelerator(codec):
            prior_enc = encode_dataset(prior, codec, codec_dir, Path(cfg.prior_data), "train", cfg.tasks, cache)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prior_text = [tok.encode(c)[: cfg.max_text] for c in prior["caption"]]
        records = PairedRecords(records, TokenRecords(prior_enc, prior_text))
        collate, loss_fn = paired_collate(collate), prior_preservation(loss_fn, cfg.prior_weight)
    if model.text_states is not None:  # every caption's frozen-encoder states now: the steps (and their FLOPs) run none
        t1 = time.perf_counter()
        model.text_states.warm(text_ids + (prior_text if cfg.prior_data else []))
        t_encode += time.perf_counter() - t1
    if cfg.new_rows_only:
        train_new_rows_only(model, {"lm.model.embed_tokens.weight": old_rows, "lm.lm_head.weight": old_rows})

    delta_of = init_from if init_from is not None and cfg.train.trainable else None  # final/: changed tensors only

    summary = fit(
        model, loss_fn, records, cfg.train, out, collate=collate, save_model=save_final or model_saver(delta_of),
        run_config={**cfglib.to_dict(cfg), "data": str(Path(data).resolve()), "tokenizer": refs["video"],
                    "audio_tokenizer": refs.get("audio"), "init_from": str(init_from.resolve()) if init_from else None},
    )
    return {
        **{k: v for k, v in vars(summary).items()},
        "final": str(out / "final"),
        "parameters": n_params,
        "sequence_tokens": model.max_len,
        "latent": [int(f), int(h), int(w)],
        "audio_tokens": [audio_frames, spec.audio_levels] if audio_codec is not None else None,
        "audio_s": audio_frames * audio_codec.hop / audio_codec.cfg.sample_rate if audio_codec is not None else None,
        "vocab_size": vocab.size,
        "text_vocab": tok.vocab_size,
        "captions_truncated": n_long,
        "encode_s": round(t_encode, 2),
        "tasks": list(cfg.tasks),
        "init_from": str(init_from) if init_from is not None else None,
        "delta": delta_of is not None and save_final is None,
    }


def check_patch_recipe(cfg: ARRecipeConfig, init_from: Any) -> None:
    """The patch-level model (`model.patch` > 0) trains text-to-video from scratch; refuse what it does not have."""
    m = cfg.model
    asked = [name for name, on in (
        ("tasks other than t2v", list(cfg.tasks) != ["t2v"]), ("--init-from", init_from is not None),
        ("add_tokens / add_task_tokens", bool(cfg.add_tokens or cfg.add_task_tokens)),
        ("prior_data", bool(cfg.prior_data)), ("new_rows_only", cfg.new_rows_only),
        ("model.text_layers", m.text_layers > 0), ("model.text_states", m.text_states != "none"),
        ("model.prefix_lm", m.prefix_lm), ("model.range_softmax", m.range_softmax)) if on]
    if asked:
        hint = (" (it continues frames from its text-to-video training: `duogen generate --task i2v` needs no i2v"
                " task here)" if "i2v" in cfg.tasks else "")
        raise ConfigError(f"model.patch={m.patch} (the patch-level model) trains text-to-video from scratch; it has"
                          f" no {', '.join(asked)}: drop them or set model.patch=0{hint}")


def _train_patch(cfg: ARRecipeConfig, data: Path, out: Path, encoded: Any, captions: list[str], tok: Any,
                 latent: tuple[int, int, int], codec_vocab: int, codec_ref: str, prepare: Any, save_final: Any,
                 t_encode: float) -> dict[str, Any]:
    """`train_ar` for `model.patch` > 0: a `PatchAR` (`ar_models/patch.py`) on the encoded clips, one engine run."""
    import warnings

    from ..ar_models.patch import PatchAR, patch_config
    from ..utils import count_parameters

    model = PatchAR(patch_config(cfg.model, cfg.max_text), latent, codec_vocab, tok.vocab_size, text=tok,
                    codec_ref=codec_ref)
    if prepare is not None:
        prepare(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captions longer than max_text are truncated, as the flat model's are
        text_ids = [tok.encode(c)[: cfg.max_text] for c in captions]
    summary = fit(
        model, lambda m, b: LossOutput(*m.loss(b)), TokenRecords(encoded, text_ids), cfg.train, out,
        collate=model.collate, save_model=save_final or model_saver(None),
        run_config={**cfglib.to_dict(cfg), "data": str(Path(data).resolve()), "tokenizer": codec_ref},
    )
    return {**vars(summary), "final": str(out / "final"), "parameters": count_parameters(model),
            "sequence_tokens": cfg.max_text + model.n_patches, "latent": list(latent), "vocab_size": codec_vocab,
            "text_vocab": tok.vocab_size, "captions_truncated": sum(len(tok.encode(c)) > cfg.max_text for c in captions),
            "encode_s": round(t_encode, 2), "tasks": ["t2v"], "init_from": None, "delta": False, "patch": cfg.model.patch}
