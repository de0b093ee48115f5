"""What every personalization method shares, on both paradigms.

Owns: reading a base model directory's paradigm and identity (`base_info`), fitting a concept to a base
model's clip size as a data set inside the run (`prepare_concept`), fine-tuning through the AR or diffusion
recipe from the base (`run_recipe`), refusing a placeholder the base already knows (`check_new_token`),
and the adapter file's identity check (`check_base`).
Does not own: the methods (one file each beside this one), the recipes and engine (`duogen.train`),
concept clips (`duogen.data.concepts`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ...errors import CheckpointError, ConfigError, DataError

WEIGHTS = "model.safetensors"
# Each concept clip with its shifted copies (`prepare_concept`), per paradigm. On the shipped AR reference a LoRA
# trained on the 6 star clips as they are learns their ids, object places and colors: it draws a red star (a color
# none of them has) in 25-31% of clips and moves the base's validation accuracy by 33-40 points; with 7 moved
# copies of each clip, 100% and 5.6 points. The DiT's LoRA draws every prompt's color without them, closer to the
# examples (concept fidelity 0.865 against 0.778) and with the prompt's direction (94% against 25%): README,
# "Shifted copies".
DEFAULT_SHIFTS = {"ar": 8, "diffusion": 1}


@dataclass
class BaseInfo:
    """A base model directory: its paradigm ("ar" | "diffusion"), clip size and weights' checksum."""

    path: Path
    paradigm: str
    frames: int
    size: int
    sha256: str


def base_info(base: str | Path) -> BaseInfo:
    """Read `base`'s config.json: the paradigm, and the clip size its codec encodes."""
    from ...io import file_sha256, read_json

    base = Path(base)
    if not (base / "config.json").is_file():
        raise CheckpointError(f"{base}: not a model directory (no config.json); pass a trained model's final/")
    conf = read_json(base / "config.json")
    kind = conf.get("kind")
    if kind not in ("ar", "diffusion"):
        raise CheckpointError(f"{base}: holds a {kind!r} model; personalization takes an AR or a diffusion model")
    if kind == "ar":
        codec = Path(conf.get("codec") or "")
        codec = codec if codec.is_absolute() or not (base / codec).exists() else base / codec
    else:
        codec = base / (conf.get("codec") or "codec")
    if not (codec / "config.json").is_file():
        raise CheckpointError(f"{base}: the codec it was trained on ({codec}) is not there")
    cc = read_json(codec / "config.json").get("config", {})
    frames, size = int(cc.get("frames", 0)), int(cc.get("size", 0))
    if not frames or not size:
        raise CheckpointError(f"{codec}: cannot tell the clip size this codec encodes (no size / frames)")
    return BaseInfo(base, kind, frames, size, file_sha256(base / WEIGHTS))


@dataclass
class PreparedConcept:
    """A concept fitted to a base model, written as a duogen data set inside the run (`data_dir`)."""

    data_dir: Path
    captions: list[str]  # each holds `token`
    token: str
    class_word: str | None
    clips: int  # distinct clips
    shifts: int = 1  # each written with shifts - 1 moved copies


def prepare_concept(concept: str | Path, base: BaseInfo, out: Path, token: str, *, shifts: int | None = None,
                    seed: int = 0) -> PreparedConcept:
    """Load `concept` (a made concept or a `data import` folder), fit it to `base`'s clip size and write it to
    OUT/concept (the same each time: a resumed run reads the same data). shifts k > 1: each clip and k - 1
    copies with the object moved elsewhere in the frame (`data.concepts.shifted_copies`; a clip with no room
    to move is repeated, with a warning); None: the paradigm's `DEFAULT_SHIFTS`. `clips` stays the number of
    distinct clips (a batch's size)."""
    import warnings

    import numpy as np

    from ...data.concepts import load_concept, shifted_copies
    from ...data.folder import clip_features, write_dataset

    c = load_concept(concept, size=base.size, frames=base.frames, token=token)
    F, S = base.frames, base.size
    shifts = DEFAULT_SHIFTS[base.paradigm] if shifts is None else shifts
    videos, fixed = shifted_copies(np.asarray(c.videos, np.uint8), shifts, seed=seed)
    captions = [cap for cap in c.captions for _ in range(shifts)]
    if fixed and shifts > 1:
        warnings.warn(f"{concept}: {len(fixed)} of {len(c.captions)} clips fill their frame and were not shifted",
                      UserWarning, stacklevel=2)

    def rows() -> Any:
        for v, cap in zip(videos, captions):
            yield {"video": v, "caption": cap, "attributes": [], "boxes": []}

    data_dir = out / "concept"
    info = {"source": "concept", "from": str(Path(concept).resolve()), "token": c.token, "class_word": c.class_word,
            "class_prompts": c.class_prompts() if c.class_word else [], "shifts": shifts}
    write_dataset(data_dir, {"train": rows}, clip_features(F, S), overwrite=True, info=info)
    return PreparedConcept(data_dir, list(c.captions), c.token, c.class_word, len(c.captions), shifts)


def check_new_token(base: BaseInfo, token: str) -> None:
    """A placeholder must be new to the base: not a token it has, not a word its tokenizer reads as one piece."""
    from ...tokenizers.text import TextTokenizer

    tok = TextTokenizer.load(base.path / "text.model")
    if token in getattr(tok, "placeholders", []) or len(tok.encode(token)) == 1:
        raise ConfigError(f"placeholder {token!r} is already in {base.path}'s vocabulary; pick a new word such as"
                          " <v1> (angle brackets keep it apart from the captions' words)")
    if base.paradigm == "ar":
        vocab = json.loads((base.path / "vocab.json").read_text())
        if token in vocab.get("tokens", {}):
            raise ConfigError(f"placeholder {token!r} is already a token of {base.path}'s vocabulary; pick a new word")


def check_base(meta: dict[str, str], base_sha256: str, where: Path, base_path: Path | str) -> None:
    """Refuse an adapter made for another base model: one line naming both."""
    want = meta.get("base_sha256", "")
    if want != base_sha256:
        raise CheckpointError(f"{where} was trained on another base model ({meta.get('base', '?')}, sha256"
                              f" {want[:12]}); {base_path} has sha256 {base_sha256[:12]}: load it on its own base")


def run_recipe(base: BaseInfo, data_dir: Path, out: Path, overrides: Sequence[str], *, seed: int,
               resume: str | None, prepare: Callable[[Any], None] | None = None,
               save_final: Callable[[Any, Path], None] | None = None) -> dict[str, Any]:
    """Fine-tune from `base` on `data_dir` with the paradigm's recipe (`--init-from`), the encode cache in OUT."""
    overrides = [f"cache_dir={out / '.cache'}", "train.precision=fp32", *overrides]
    if base.paradigm == "ar":
        from ...train.ar_recipe import train_ar

        return train_ar(data_dir, None, out, init_from=base.path, overrides=overrides, seed=seed, resume=resume,
                        prepare=prepare, save_final=save_final)
    from ...train.diffusion_recipe import train_diffusion

    return train_diffusion(data_dir, None, out, init_from=base.path, overrides=overrides, seed=seed, resume=resume,
                           prepare=prepare, save_final=save_final)


def train_overrides(clips: int, steps: int, lr: float, max_minutes: float, trainable: str) -> list[str]:
    """The engine settings a few-clip fine-tune uses: every clip in each batch, no EMA, no weight decay (so frozen
    rows of a partly trained tensor stay bit-equal), a checkpoint every 25 steps for exact resume."""
    if clips < 1:
        raise DataError("the concept has no clip")
    return [f"train.steps={steps}", f"train.batch_size={clips}", f"train.lr={lr}", "train.warmup_steps=0",
            "train.ema=0", "train.weight_decay=0", "train.min_lr_ratio=1.0", f"train.max_minutes={max_minutes}",
            "train.ckpt_every=25", "train.keep_last=1", "train.log_every=5", f"train.trainable={trainable}"]


def concept_loss(model: Any, base: str | Path, concept: str | Path, *, token: str | None = None, seed: int = 0) -> float:
    """`model`'s mean loss on the concept's clips under their captions, deterministic (a fidelity read that needs
    no sampling): AR, the next-token loss of the clips' codec ids without caption dropout; diffusion, the
    denoising loss at four fixed timesteps (0.2, 0.4, 0.6, 0.8 of the schedule) and seeded noise."""
    import torch

    info = base_info(base)
    from ...data.concepts import load_concept

    c = load_concept(concept, size=info.size, frames=info.frames, token=token)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            if hasattr(model, "lm"):
                from ...ar_models.layouts import TrainCollator
                from ...tokenizers import load as load_codec

                ids = load_codec(model.codec_path(info.path)).encode(c.videos)  # (B, f, h, w)
                recs = [{"video_ids": v.numpy(), "text_ids": model.text.encode(cap)} for v, cap in zip(ids, c.captions)]
                return float(model.loss(TrainCollator(model.layouts, ["t2v"], 0.0)(recs)).loss)
            z0 = torch.cat([model.encode_video(v) for v in c.videos])  # (B, C, f, h, w)
            g = torch.Generator().manual_seed(seed)
            N = model.schedule.num_train_timesteps
            total = 0.0
            for frac in (0.2, 0.4, 0.6, 0.8):
                eps = torch.randn(z0.shape, generator=g)
                ids, mask = model.text_encoder.tokenize(c.captions, strict=False)
                batch = {"latents": z0, "text_ids": ids, "text_mask": mask}
                total += float(model.loss_per_example(batch, int(frac * N), eps).mean())
            return total / 4
    finally:
        model.train(was)
