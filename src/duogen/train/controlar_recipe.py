"""Recipe: train ControlAR control embeddings for a trained (frozen) AR model.

    train_controlar(model="src/duogen/assets/reference/ar", data="runs/shapes", out="runs/ctl_ar", condition="boxes")

Steps: load the base `MultimodalLM` (frozen; its directory is never written) and the codec it was trained on;
encode every clip once into codec ids (the AR recipe's cache, `encode_dataset`, so a run next to an AR run reuses
it); make fresh control embeddings (`ar_models.control_embed.make_control_embed`, an exact no-op at step 0) and
train them alone with the shared engine on the base's own next-token loss over the t2v layout (`MultimodalLM.loss`
with the base's text dropout, so the text-free stream that guidance subtracts learns the control too), every
forward inside `control_embeddings`. The condition of each clip comes from the world's ground truth, per clip on
the fly (`control_recipe.row_condition`): `boxes` rasterises the clip's boxes, `mask` is its objects, `edges` its
Sobel edges.

`final/` holds only the control: `control.safetensors` (`save_control_embed`: its config, with the base's weights
fingerprint, in the metadata) and `control.json` (kind "control", paradigm "ar", method "controlar", the
condition, the base directory and the SHA-256 of its `model.safetensors`). Checkpoints hold the control alone
(`train.trainable=control.*`), and `--resume` continues exactly like every run.

Does not own: the control module (`ar_models/control_embed.py`), the conditions (`data/conditions.py`), sampling
with a control (`bridges/control.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .. import config as cfglib
from ..errors import ConfigError
from .control_recipe import CONTROL_FILE, CONTROL_JSON, row_condition
from .data import column_array
from .engine import LossOutput, TrainConfig, fit
from .recipe_common import load_ar_base, load_split, resolve_cache_dir

METHOD = "controlar"


@dataclass
class ControlARRecipeConfig:
    # batch 8: 150-200 steps in the 10-minute budget on the shared 2-core CPU; lr 1.5e-3 is the mask run's, on
    # boxes 5e-4 and 1.5e-3 measured alike within noise (bench/bench_control.py; figures in the README)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=100000, batch_size=8, lr=1.5e-3, weight_decay=0.0, warmup_steps=10, min_lr_ratio=0.1,
        precision="auto", ema=0.0, log_every=20, ckpt_every=0, max_minutes=10.0))
    every: int = 2  # the control is added to the outputs of decoder layers 0, every, 2*every, ...
    enc_channels: int = 32  # width of the condition encoder
    split: str = "train"
    max_clips: int = 0  # 0 = the whole split
    cache_dir: str = ""  # "" = OUT/../.cache

    def check(self) -> None:
        if self.every < 1 or self.enc_channels < 1:
            raise ConfigError("every and enc_channels must be >= 1")


class ConditionTokenRecords:
    """Index -> the clip's codec ids, text ids and ground-truth condition (1, F, H, W), made on the fly."""

    def __init__(self, split: Any, kind: str, video_ids: Any, text_ids: list[list[int]], frames: int, size: int):
        self.split, self.kind, self.video_ids, self.text_ids = split, kind, video_ids, text_ids
        self.frames, self.size = frames, size

    def __len__(self) -> int:
        return len(self.text_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"video_ids": self.video_ids[i], "text_ids": self.text_ids[i],
                "condition": row_condition(self.split[int(i)], self.kind, self.frames, self.size)}


class ControlARTrainer(nn.Module):
    """What the engine trains: the frozen base plus the control embeddings (the only trainable parameters)."""

    def __init__(self, base: Any, control: Any) -> None:
        super().__init__()
        self.base, self.control = base, control
        for p in self.base.parameters():
            p.requires_grad_(False)

    def loss(self, batch: dict[str, Any]) -> Any:
        from ..ar_models.control_embed import ControlUse, control_embeddings

        with control_embeddings(self.base, [ControlUse(self.control, batch["condition"])]):
            return self.base.loss(batch)


def controlar_saver(model_dir: Path, condition: str):
    """The engine's `save_model`: only the control's weights and a small config naming the base."""
    from ..ar_models.control_embed import save_control_embed
    from ..io import atomic_write_json, file_sha256

    facts = {"kind": "control", "paradigm": "ar", "method": METHOD, "condition": condition,
             "base": str(model_dir.resolve()), "base_sha256": file_sha256(model_dir / "model.safetensors")}

    def save(m: Any, p: Path) -> None:
        p.mkdir(parents=True, exist_ok=True)
        save_control_embed(m.control, p / CONTROL_FILE)
        atomic_write_json(p / CONTROL_JSON, {**facts, "every": m.control.config.every,
                                             "layers": m.control.config.layers()})

    return save


def train_controlar(model: str | Path, data: str | Path, out: str | Path, *, condition: str = "boxes",
                    overrides: Sequence[str] = (), seed: int | None = None, resume: str | None = None) -> dict[str, Any]:
    """Train control embeddings for the AR model in `model` (frozen) on the data set `data`; returns the engine's
    summary plus the control's facts. `final/` is the control alone (see the module docstring)."""
    import warnings

    import numpy as np

    from ..ar_models.control_embed import ControlARConfig, make_control_embed
    from ..ar_models.layouts import TrainCollator
    from ..data.conditions import CONDITIONS
    from ..utils import count_parameters, seed_everything
    from .ar_recipe import encode_dataset
    from .engine import apply_resume
    from .recipe_common import codec_on_accelerator

    if condition not in CONDITIONS:
        raise ConfigError(f"--condition {condition!r}: choose one of {', '.join(CONDITIONS)}")
    cfg = cfglib.load(ControlARRecipeConfig, overrides=cfglib.seed_first(overrides, seed))
    cfg.train = apply_resume(cfg.train, resume)
    if not cfg.train.trainable:  # checkpoints and EMA hold the control alone
        cfg.train.trainable = "control.*"
    model_dir, data, out = Path(model), Path(data), Path(out)
    base, codec, codec_dir = load_ar_base(model_dir, METHOD)
    frames, size = int(codec.cfg.frames), int(codec.cfg.size)

    split = load_split(data, cfg.split, cfg.max_clips)
    with codec_on_accelerator(codec):
        encoded = encode_dataset(split, codec, codec_dir, data, cfg.split, ["t2v"],
                                 resolve_cache_dir(cfg.cache_dir, out))
    video_ids = column_array(encoded, "video_ids", np.int64)  # (N, f, h, w)
    if list(video_ids.shape[1:]) != [int(v) for v in base.spec.latent]:
        raise ConfigError(f"the clips of {data} make codec latents {list(video_ids.shape[1:])}; {model_dir} was"
                          f" trained on {list(base.spec.latent)}: use data of the base model's clip size")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captions longer than max_text are truncated, as the AR recipe does
        text_ids = [base.text.encode(c)[: base.spec.max_text] for c in split["caption"]]
    records = ConditionTokenRecords(split, condition, video_ids, text_ids, frames, size)
    tokens = TrainCollator(base.layouts, ["t2v"], base.cfg.cond_dropout)

    def collate(recs: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {**tokens(recs), "condition": torch.stack([r["condition"] for r in recs])}  # (B, 1, F, H, W)

    seed_everything(cfg.train.seed)
    control = make_control_embed(ControlARConfig(every=cfg.every, enc_channels=cfg.enc_channels), base, frames, size)
    trainer = ControlARTrainer(base, control)

    def loss_fn(m: Any, batch: dict[str, Any]) -> LossOutput:
        return LossOutput(*m.loss(batch))

    summary = fit(trainer, loss_fn, records, cfg.train, out, collate=collate,
                  save_model=controlar_saver(model_dir, condition),
                  run_config={**cfglib.to_dict(cfg), "model": str(model_dir.resolve()), "data": str(data.resolve()),
                              "method": METHOD, "condition": condition})
    return {**vars(summary), "final": str(out / "final"), "method": METHOD, "paradigm": "ar",
            "condition": condition, "control_parameters": count_parameters(control), "clips": len(records),
            "layers": control.config.layers(), "base": str(model_dir)}
