"""Recipe: train a ControlNet, T2I-Adapter or GLIGEN for a trained (frozen) DiT diffusion model (a U-Net: ControlNet
or T2I-Adapter).

    train_control(model="runs/dit/final", data="runs/shapes", out="runs/ctl", method="controlnet", condition="boxes")

Steps: load the base `LatentDiffusionModel` (its denoiser (a DiT or a U-Net), text encoder and codec all frozen);
encode every clip of the data set once into the codec's latents (the diffusion recipe's cache,
`encode_latents_dataset`, so a run next to a diffusion run reuses its cache), normalized like the base's training data; make a fresh control
(`diffusion.control.make_control`, an exact no-op at step 0) and train it alone with the shared engine on the
base's own loss (`LatentDiffusionModel.forward`: caption dropout, t ~ U, eps ~ N(0, I), the base's prediction
type) with the base's denoiser wrapped in `Controlled`. The condition of each clip comes from the world's ground
truth, per clip on the fly (`data.conditions.condition_clip`): `boxes` rasterises the clip's `boxes` column,
`mask` is the clip's objects (the shapes world is black elsewhere), `edges` the clip's Sobel edges.
GLIGEN reads boxes only, with each object's phrase from the world's attributes ("a red circle",
`data.conditions.clip_tracks`), as grounding tokens the control builds itself (`make_condition`, the phrases
pooled by the base's frozen text encoder) and batches with its own `collate_conditions`.

`final/` holds only the control: `control.safetensors` (`save_control`) and `control.json` (method, condition,
the base directory and the SHA-256 of its `model.safetensors`). The base directory is never written.

Does not own: the control modules (`diffusion/control.py`), the conditions (`data/conditions.py`), sampling with
a control (`bridges/control.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .. import config as cfglib
from ..errors import ConfigError
from .data import column_array
from .engine import LossOutput, TrainConfig, fit
from .recipe_common import load_split, resolve_cache_dir

CONTROL_FILE, CONTROL_JSON = "control.safetensors", "control.json"
METHODS = ("controlnet", "t2i-adapter", "gligen")


@dataclass
class ControlRecipeConfig:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=100000, batch_size=16, lr=1e-3, weight_decay=0.0, warmup_steps=20, min_lr_ratio=0.1,
        precision="auto", ema=0.0, log_every=20, ckpt_every=0, max_minutes=10.0))
    blocks: int = 0  # the first `blocks` DiT blocks are controlled; 0 = the method's default (2; GLIGEN: every block)
    enc_channels: int = 32  # width of the condition encoder
    gate_gain: float = 1.0  # GLIGEN: gates tanh(gate_gain * gamma) (1 = the paper's)
    frames_per_token: int = 1  # 1: condition frames averaged per token; the codec's temporal factor (4): stacked
    split: str = "train"
    max_clips: int = 0  # 0 = the whole split
    cache_dir: str = ""  # "" = OUT/../.cache

    def check(self) -> None:
        if self.blocks < 0 or self.enc_channels < 1 or self.frames_per_token < 1 or self.gate_gain <= 0:
            raise ConfigError("blocks must be >= 0 (0: the method's default), enc_channels and frames_per_token >= 1,"
                              " gate_gain > 0")


class ConditionRecords:
    """Index -> normalized latents, text ids / mask and the clip's condition, made on the fly: (1, F, H, W) float,
    or what `module.make_condition` builds from the clip's box tracks (GLIGEN: a `Grounding` of batch 1)."""

    def __init__(self, split: Any, kind: str, latents: Any, ids: Any, mask: Any, frames: int, size: int,
                 module: Any = None):
        from ..data import with_uint8_video

        # only the columns the condition needs, the video as uint8 numpy: a full row decodes the clip as Python lists
        split = (split.select_columns(["boxes", "attributes"]) if kind == "boxes"
                 else with_uint8_video(split.select_columns(["video"])))
        self.split, self.kind, self.latents, self.ids, self.mask = split, kind, latents, ids, mask
        self.frames, self.size = frames, size
        self.make = getattr(module, "make_condition", None)

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.split[int(i)]
        if self.make is not None:
            import numpy as np

            from ..data.conditions import clip_tracks
            from ..data.shapes import Clip

            tracks = clip_tracks(Clip(None, "", row["attributes"], np.asarray(row["boxes"])))
            return {"latents": self.latents[i], "text_ids": self.ids[i], "text_mask": self.mask[i],
                    "condition": self.make(self.kind, frames=self.frames, size=self.size, tracks=tracks)}
        return {"latents": self.latents[i], "text_ids": self.ids[i], "text_mask": self.mask[i],
                "condition": row_condition(row, self.kind, self.frames, self.size)}


def row_condition(row: dict[str, Any], kind: str, frames: int, size: int) -> torch.Tensor:
    """A data set row's ground-truth condition (1, F, H, W) float: its boxes rasterised, its objects, or its edges."""
    import numpy as np

    from ..data.conditions import BoxTrack, condition_clip

    if kind == "boxes":
        tracks = [BoxTrack("", np.asarray(b, np.float64)) for b in row["boxes"]]
        c = condition_clip("boxes", frames, size, tracks=tracks)
    else:
        c = condition_clip(kind, frames, size, video=np.asarray(row["video"], np.uint8))
    return torch.from_numpy(c[None].astype(np.float32))  # (1, F, H, W)


class ControlTrainer(nn.Module):
    """What the engine trains: the frozen base model plus the control (the only trainable parameters)."""

    def __init__(self, base: Any, control: Any) -> None:
        super().__init__()
        self.base, self.control = base, control
        for p in self.base.parameters():
            p.requires_grad_(False)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        from ..diffusion.control import ActiveControl, Controlled

        denoiser = self.base.denoiser
        self.base.denoiser = Controlled(denoiser, [ActiveControl(self.control, batch["condition"], 1.0)])
        try:  # the base's own loss (Algorithm 1 with its caption dropout), through the controlled DiT
            return self.base(batch)
        finally:
            self.base.denoiser = denoiser


def module_collate(module: Any):
    """The engine's `collate` for a control that batches its own conditions (None: the default collate)."""
    collate = getattr(module, "collate_conditions", None)
    if collate is None:
        return None

    def fn(items: list[dict[str, Any]]) -> dict[str, Any]:
        from torch.utils.data import default_collate

        out = default_collate([{k: v for k, v in it.items() if k != "condition"} for it in items])
        return {**out, "condition": collate([it["condition"] for it in items])}

    return fn


def control_saver(model_dir: Path, method: str, condition: str):
    """The engine's `save_model`: only the control's weights and a small config naming the base."""
    from ..diffusion.control import save_control
    from ..io import atomic_write_json, file_sha256

    base_sha = file_sha256(model_dir / "model.safetensors")

    def save(m: Any, p: Path) -> None:
        p.mkdir(parents=True, exist_ok=True)
        save_control(m.control, p / CONTROL_FILE)
        atomic_write_json(p / CONTROL_JSON, {"kind": "control", "method": method, "condition": condition,
                                             "base": str(model_dir.resolve()), "base_sha256": base_sha,
                                             "blocks": m.control.config.blocks})

    return save


def train_control(model: str | Path, data: str | Path, out: str | Path, *, method: str = "controlnet",
                  condition: str = "boxes", overrides: Sequence[str] = (), seed: int | None = None,
                  resume: str | None = None) -> dict[str, Any]:
    """Train a control for the diffusion model in `model` (frozen) on the data set `data`; returns the engine's
    summary plus the control's facts. `final/` is the control alone (see the module docstring)."""
    import numpy as np

    from ..data.conditions import CONDITIONS
    from ..diffusion.control import ControlConfig, make_control
    from ..diffusion.dit import DiT
    from ..diffusion.latent import LatentDiffusionModel
    from ..diffusion.unet_control import is_unet
    from ..io import read_json
    from ..utils import count_parameters, seed_everything
    from .diffusion_recipe import encode_latents_dataset
    from .engine import apply_resume
    from .recipe_common import codec_on_accelerator

    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if condition not in CONDITIONS:
        raise ConfigError(f"--condition {condition!r}: choose one of {', '.join(CONDITIONS)}")
    if method == "gligen" and condition != "boxes":
        raise ConfigError(f"--method gligen grounds boxes with phrases, not {condition}: use --condition boxes"
                          " (controlnet or t2i-adapter read mask / edges)")
    cfg = cfglib.load(ControlRecipeConfig, overrides=cfglib.seed_first(overrides, seed))
    cfg.train = apply_resume(cfg.train, resume)
    if not cfg.train.trainable:  # checkpoints and EMA hold the control alone; resuming checks the base is the same
        cfg.train.trainable = "control.*"
    model_dir, data, out = Path(model), Path(data), Path(out)
    conf = read_json(model_dir / "config.json")
    if not isinstance(conf, dict) or conf.get("kind") != "diffusion":
        raise ConfigError(f"{model_dir}: not a diffusion model directory (AR models: `train_ar_control`, method tokens)")
    base = LatentDiffusionModel.from_pretrained(model_dir)
    if not isinstance(base.denoiser, DiT) and not is_unet(base.denoiser):
        raise ConfigError(f"{model_dir}: its denoiser is a {type(base.denoiser).__name__}; controls attach to a DiT"
                          " or a U-Net here")
    if is_unet(base.denoiser) and method == "gligen":
        raise ConfigError(f"{model_dir}: its denoiser is a U-Net; --method gligen attaches to a DiT (a U-Net takes"
                          " controlnet or t2i-adapter)")
    codec = base._need_codec()
    codec_dir = model_dir / conf["codec"] if conf.get("codec") else model_dir / "codec"

    split = load_split(data, cfg.split, cfg.max_clips)
    frames, size = int(codec.cfg.frames), int(codec.cfg.size)
    with codec_on_accelerator(codec):
        encoded = encode_latents_dataset(split, codec, codec_dir, data, cfg.split, resolve_cache_dir(cfg.cache_dir, out))
    with torch.no_grad():
        raw = torch.from_numpy(column_array(encoded, "latents", np.float32))  # (N, C, f, h, w)
        latents = codec.normalize_latents(raw.to(codec.device)).cpu()
    if list(base.config.latent) != [int(v) for v in latents.shape[1:]]:
        raise ConfigError(f"the clips of {data} make latents {list(latents.shape[1:])}; {model_dir} was trained on"
                          f" {list(base.config.latent)}: use data of the base model's clip size")
    ids, mask = base.text_encoder.tokenize(list(split["caption"]), strict=False)  # (N, T) each
    seed_everything(cfg.train.seed)
    blocks = cfg.blocks or (base.denoiser.config.depth if method == "gligen" else 2)
    control = make_control(ControlConfig(method=method, cond_channels=1, blocks=blocks, enc_channels=cfg.enc_channels,
                                         frames_per_token=cfg.frames_per_token, gate_gain=cfg.gate_gain),
                           base.denoiser, text_encoder=base.text_encoder)
    records = ConditionRecords(split, condition, latents, ids, mask, frames, size, control)
    trainer = ControlTrainer(base, control)

    def loss_fn(m: Any, batch: dict[str, Any]) -> LossOutput:
        return LossOutput(m(batch), int(batch["latents"].shape[0]), {})

    summary = fit(trainer, loss_fn, records, cfg.train, out, save_model=control_saver(model_dir, method, condition),
                  collate=module_collate(control),
                  run_config={**cfglib.to_dict(cfg), "model": str(model_dir.resolve()), "data": str(data.resolve()),
                              "method": method, "condition": condition})
    return {**vars(summary), "final": str(out / "final"), "method": method, "condition": condition,
            "control_parameters": count_parameters(control), "clips": int(latents.shape[0]),
            **({"gates": control.gates()} if hasattr(control, "gates") else {}),  # GLIGEN: tanh(gain * gamma) per layer
            "base": str(model_dir)}
