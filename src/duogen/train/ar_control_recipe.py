"""Recipe: train a `tokens` control (VideoPoet's way) for a trained AR model.

    train_ar_control(model="assets/reference/ar", data="runs/shapes", out="runs/ar_ctl", condition="boxes")

Steps: load the base `MultimodalLM` and its codec; encode every clip once (the AR recipe's cache, shared with
AR runs on the same data) and its condition: mask / edges rendered white on black (`ar_models.control.
render_condition` of `data.conditions.condition_clip`) through the same codec (cached beside it), boxes as layout
tokens (each object's phrase "a <color> <shape>" and its per-frame box quantised to `bins` bins per coordinate);
grow the base into the control model (`make_token_control`: a `<control>` / `<layout>` task token and the bin
tokens) and fine-tune it with the shared engine on the `control` / `layout` layout's next-token loss. Condition
dropout: for `drop` of the examples the condition is all `<pad>` (NULL_CLIP), for `text_drop` the text is
empty, so the control model keeps a text-only and a condition-only stream. What trains: everything by default
(`train.trainable` globs choose a part: the engine then checkpoints only that).

`final/` holds `control.safetensors` (the tensors that differ from the base, `save_token_control`, with the
config and the base's fingerprint in its metadata) and `control.json` (paradigm "ar", method "tokens", condition,
the base directory and the SHA-256 of its weights). The base directory is never written.

Does not own: the control model and its layouts (`ar_models/control.py`, `ar_models/layouts.py`), sampling with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .. import config as cfglib
from ..errors import ConfigError, DataError
from .control_recipe import CONTROL_FILE, CONTROL_JSON
from .engine import LossOutput, TrainConfig, fit
from .recipe_common import encode_clips, load_ar_base, load_split, resolve_cache_dir

CACHE_VERSION = 1
METHODS = ("tokens", "controlar")  # controlar: ControlAR control embeddings, train/controlar_recipe.py


@dataclass
class ARControlRecipeConfig:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=100000, batch_size=16, lr=1e-3, weight_decay=0.0, warmup_steps=20, min_lr_ratio=0.1,
        precision="auto", ema=0.0, log_every=20, ckpt_every=0, max_minutes=10.0))
    bins: int = 32  # K bins per box coordinate (boxes)
    max_objects: int = 2  # object slots of the layout (boxes)
    phrase_tokens: int = 6  # text tokens per object phrase (boxes)
    drop: float = 0.1  # condition dropout: the condition replaced by <pad>
    text_drop: float = 0.1  # text dropout: the prompt emptied
    split: str = "train"
    max_clips: int = 0  # 0 = the whole split
    cache_dir: str = ""  # "" = OUT/../.cache

    def check(self) -> None:
        if not (0.0 <= self.drop < 1.0 and 0.0 <= self.text_drop < 1.0):
            raise ConfigError("drop and text_drop must be in [0, 1)")


class ControlCollator:
    """Records (text ids, video ids, condition) -> `control` / `layout` batches with condition and text dropout."""

    def __init__(self, layouts: Any, task: str, drop: float, text_drop: float):
        self.layouts, self.task, self.drop, self.text_drop = layouts, task, drop, text_drop

    def __call__(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        from ..ar_models.layouts import NULL_CLIP

        exs = []
        for r in records:  # draws from torch's global generator: the engine seeds and checkpoints it (exact resume)
            no_text, no_cond = float(torch.rand(())) < self.text_drop, float(torch.rand(())) < self.drop
            text = [] if no_text else list(r["text_ids"])[: self.layouts.spec.max_text]
            exs.append(self.layouts.example(self.task, text, r["video_ids"],
                                            {self.task: NULL_CLIP if no_cond else r["cond"]}))
        return self.layouts.batch(exs)


class Records:
    """Index -> one clip's text ids, codec ids and condition (what the engine's loader reads)."""

    def __init__(self, text_ids: list[list[int]], video_ids: Any, cond: Any):
        self.text_ids, self.video_ids, self.cond = text_ids, video_ids, cond

    def __len__(self) -> int:
        return len(self.text_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"text_ids": self.text_ids[i], "video_ids": self.video_ids[i], "cond": self.cond[i]}


def row_tracks(row: dict[str, Any]) -> list[Any]:
    """A shapes clip's ground-truth boxes with the phrases `data.conditions.clip_tracks` gives them."""
    import numpy as np

    from ..data.conditions import BoxTrack

    return [BoxTrack(f"a {a['color']} {a['shape']}", np.asarray(b, np.float64))
            for a, b in zip(row["attributes"], row["boxes"])]


def _condition_ids(split: Any, kind: str, codec: Any, codec_dir: Path, data: Path, name: str, cache: Path) -> Any:
    """(N, f, h, w) codec ids of every clip's mask / edges condition rendered white on black, cached."""
    import numpy as np
    import torch

    from ..ar_models.control import render_condition
    from ..data.conditions import condition_clip

    frames, size = int(codec.cfg.frames), int(codec.cfg.size)

    def fn(b: dict[str, Any]) -> dict[str, Any]:
        clips = np.stack([render_condition(condition_clip(kind, frames, size, video=np.asarray(v, np.uint8)))
                          for v in b["video"]])  # (B, F, H, W, 3)
        with torch.inference_mode():
            return {"cond_ids": codec.encode(clips).to(torch.int32).cpu().numpy()}  # (B, f, h, w)

    enc = encode_clips(split, fn, codec_dir, data, name, cache, batch_size=32, desc=f"encoding {kind} conditions",
                       v=CACHE_VERSION, what="ar-control", kind=kind)
    return np.asarray(enc.with_format("numpy")["cond_ids"], dtype=np.int64)


def train_ar_control(model: str | Path, data: str | Path, out: str | Path, *, method: str = "tokens",
                     condition: str = "boxes", overrides: Sequence[str] = (), seed: int | None = None,
                     resume: str | None = None) -> dict[str, Any]:
    """Train a `tokens` control for the AR model in `model` on the shapes data set `data`; returns the engine's
    summary plus the control's facts (see the module docstring)."""
    import numpy as np

    from ..ar_models.control import (CONDITIONS, LayoutTokens, TokenControlConfig, make_token_control,
                                     model_fingerprint, save_token_control)
    from ..io import atomic_write_json, file_sha256
    from ..utils import count_parameters, seed_everything
    from .ar_recipe import encode_dataset
    from .engine import apply_resume
    from .recipe_common import codec_on_accelerator

    if method not in METHODS:
        raise ConfigError(f"--method {method!r} for an AR model: choose one of {', '.join(METHODS)}")
    if method == "controlar":
        from .controlar_recipe import train_controlar

        return train_controlar(model, data, out, condition=condition, overrides=overrides, seed=seed, resume=resume)
    if condition not in CONDITIONS:
        raise ConfigError(f"--condition {condition!r}: choose one of {', '.join(CONDITIONS)}")
    cfg = cfglib.load(ARControlRecipeConfig, overrides=cfglib.seed_first(overrides, seed))
    cfg.check()
    cfg.train = apply_resume(cfg.train, resume)
    model_dir, data, out = Path(model), Path(data), Path(out)
    base, codec, codec_dir = load_ar_base(model_dir, method)
    frames, size = int(codec.cfg.frames), int(codec.cfg.size)
    split = load_split(data, cfg.split, cfg.max_clips)
    if condition == "boxes" and not {"boxes", "attributes"} <= set(split.column_names):
        raise DataError(f"{data}: no boxes / attributes columns; make a shapes data set (`duogen data make shapes`)")
    cache = resolve_cache_dir(cfg.cache_dir, out)
    with codec_on_accelerator(codec):
        encoded = encode_dataset(split, codec, Path(codec_dir), data, cfg.split, ["t2v"], cache)
        video_ids = np.asarray(encoded.with_format("numpy")["video_ids"], dtype=np.int64)  # (N, f, h, w)
        if list(video_ids.shape[1:]) != list(base.spec.latent):
            raise ConfigError(f"the clips of {data} make codec ids {list(video_ids.shape[1:])}; {model_dir} was"
                              f" trained on {list(base.spec.latent)}: use data of the base model's clip size")
        cond_ids = None if condition == "boxes" else _condition_ids(split, condition, codec, Path(codec_dir), data,
                                                                    cfg.split, cache)

    seed_everything(cfg.train.seed)
    ccfg = TokenControlConfig(condition=condition, bins=cfg.bins, max_objects=cfg.max_objects,
                              phrase_tokens=cfg.phrase_tokens, frames=frames, size=size,
                              base_fingerprint=model_fingerprint(base), codec=str(Path(codec_dir).resolve()))
    ctl = make_token_control(base, ccfg, seed=cfg.train.seed)
    if condition == "boxes":
        lay = LayoutTokens(ctl, ccfg)
        rows = split.select_columns(["boxes", "attributes"])
        cond: Any = np.asarray([lay.ids(row_tracks(r)) for r in rows], np.int64)  # (N, layout_tokens)
    else:
        cond = cond_ids
    text_ids = [base.text.encode(c)[: base.spec.max_text] for c in split["caption"]]
    records = Records(text_ids, video_ids, cond)
    collate = ControlCollator(ctl.layouts, ccfg.task, cfg.drop, cfg.text_drop)
    base_sha = file_sha256(model_dir / "model.safetensors")

    def save(m: Any, p: Path) -> None:
        p.mkdir(parents=True, exist_ok=True)
        save_token_control(m, ccfg, base, p / CONTROL_FILE)
        atomic_write_json(p / CONTROL_JSON, {"kind": "control", "paradigm": "ar", "method": method,
                                             "condition": condition, "base": str(model_dir.resolve()),
                                             "base_sha256": base_sha, "task": ccfg.task})

    def loss_fn(m: Any, batch: dict[str, Any]) -> LossOutput:
        return LossOutput(*m.loss(batch))

    summary = fit(ctl, loss_fn, records, cfg.train, out, collate=collate, save_model=save,
                  run_config={**cfglib.to_dict(cfg), "model": str(model_dir.resolve()), "data": str(data.resolve()),
                              "method": method, "condition": condition, "paradigm": "ar"})
    trained = sum(p.numel() for p in ctl.parameters() if p.requires_grad)
    return {**vars(summary), "final": str(out / "final"), "method": method, "condition": condition,
            "paradigm": "ar", "parameters": count_parameters(ctl), "trained_parameters": int(trained),
            "clips": len(records), "base": str(model_dir)}
