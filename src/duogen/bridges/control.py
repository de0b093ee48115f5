"""Sampling either paradigm with trained controls: load `duogen train control` runs, build their condition.

Owns `parse_control` ("RUN[:scale]"), `load_control_run` (a run's control for this model: a DiT's, or an AR
model's by `AR_METHODS`; refused when trained for another base or the other paradigm), `read_condition_file` (a
boxes JSON / mask video / edges clip), `condition_for` / `collate_conditions` (the condition as a given control
module reads it, per clip and batched) and `active_controls` (what `DiffusionGenerator.generate` and
`ARGenerator.generate` (controls=..., condition=...) sample through).

The AR control protocol: a module (what an `AR_METHODS` loader returns) has `make_condition(kind, *, frames, size,
tracks, video)` (optionally `collate_conditions`) and `sampling(rows, condition, scale)`, a context manager given
`ar_models.sampling.ControlRows` (the base model and decoder, each row's prompt ids) and the batched condition,
yielding a `ControlStream` to decode beside the base (method `tokens`) or None after installing what it needs on
`rows.decoder` for the call (a control that adds to hidden states). The safetensors metadata `control_config` of
an AR run says "paradigm": "ar" and its "method".
Does not own: the control modules (`diffusion/control.py`, `ar_models/control.py`), the conditions
(`data/conditions.py`), training.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

from ..errors import CheckpointError, ConfigError


def parse_control(spec: str | tuple[Any, float]) -> tuple[Path, float]:
    """"RUN[:scale]" (or (run, scale)) -> (the directory holding control.safetensors, scale)."""
    if isinstance(spec, tuple):
        run, scale = spec
    else:
        run, _, s = str(spec).rpartition(":") if ":" in str(spec) and not Path(spec).exists() else (spec, "", "1")
        try:
            scale = float(s)
        except ValueError:
            raise ConfigError(f"--control {spec!r}: the scale after ':' must be a number (RUN[:SCALE])") from None
    run = Path(run)
    for d in (run / "final", run):
        if (d / "control.safetensors").is_file():
            return d, float(scale)
    raise CheckpointError(f"{run}: no control.safetensors in it or its final/; give a `duogen train control` run")


def _ar_loaders() -> dict[str, Any]:
    """AR method -> loader(path, control_config dict, base MultimodalLM, codec) -> module (the protocol above)."""
    from ..ar_models.control import load_token_control
    from ..ar_models.control_embed import load_control_embed

    return {"tokens": load_token_control, "controlar": lambda path, conf, model, codec: load_control_embed(path, model)}


AR_METHODS = ("tokens", "controlar")  # what `_ar_loaders` knows (kept import-free for the CLI's choices)


def control_config(path: Path) -> dict[str, Any]:
    """The `control_config` JSON in a control file's safetensors metadata ({} when there is none)."""
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        return json.loads(meta.get("control_config", "{}"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable control file ({e})") from None


def load_control_run(directory: Path, target: Any, codec: Any = None) -> Any:
    """The control in `directory` for `target` (a diffusion denoiser or `LatentDiffusionModel`, or a `MultimodalLM` with
    its `codec`); CheckpointError when
    it was trained for another base model or for the other paradigm."""
    from ..ar_models.model import MultimodalLM

    path = directory / "control.safetensors"
    conf = control_config(path)
    method = conf.get("method", "?")
    if conf.get("paradigm") == "ar":
        if not isinstance(target, MultimodalLM):
            raise CheckpointError(f"{directory}: an AR control ({method}); use it with the AR model it was trained"
                                  " for, not a diffusion model")
        loaders = _ar_loaders()
        if method not in loaders:
            raise CheckpointError(f"{directory}: AR control method {method!r}; this duogen knows {', '.join(loaders)}")
        return loaders[method](path, dict(conf), target, codec)
    if isinstance(target, MultimodalLM):
        raise CheckpointError(f"{directory}: a diffusion control ({method}); use it with the diffusion model it was"
                              " trained for, not an AR model")
    return _load_dit_control(directory, target)


def _load_dit_control(directory: Path, dit: Any) -> Any:
    """The DiT / U-Net control in `directory` for `dit` (a denoiser, or a `LatentDiffusionModel`: its denoiser, and
    its text encoder for GLIGEN's phrases); CheckpointError when it was trained for another base model."""
    from ..diffusion.control import base_fingerprint, load_control

    text_encoder = getattr(dit, "text_encoder", None)
    dit = getattr(dit, "denoiser", dit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # same shape, other weights: refused below, not warned
        module = load_control(directory / "control.safetensors", dit, text_encoder)
    if module.config.base_fingerprint and module.config.base_fingerprint != base_fingerprint(dit):
        raise CheckpointError(f"{directory}: this control was trained for another base model; use the model it names"
                              " in its control.json")
    return module


def read_condition_file(kind: str, path: str | Path, frames: int, size: int) -> dict[str, Any]:
    """A condition file -> {"tracks": [BoxTrack]} (boxes JSON, `read_boxes`) or {"video": (F, H, W, 3)} (a mask /
    edges clip; one of the model's frame count but another frame size is resized with a warning; another frame
    count: DataError when the condition is built)."""
    from ..data.conditions import read_boxes
    from ..data.media import read_video

    if kind == "boxes":
        return {"tracks": read_boxes(path, frames, size)}
    v = read_video(path)
    if v.shape[0] == frames and v.shape[1:3] != (size, size):  # e.g. duogen's own upscaled MP4s: fitted
        from ..data.media import resize_video

        warnings.warn(f"{path}: {kind} clip of {v.shape[1]}x{v.shape[2]} fitted to the model's {size}x{size}",
                      UserWarning, stacklevel=2)
        v = resize_video(v, size, frames)
    return {"video": v}


def condition_for(module: Any, kind: str, *, frames: int, size: int, tracks: Any = None, video: Any = None) -> Any:
    """One clip's condition as `module` reads it. A module with `make_condition(kind, frames=, size=, tracks=,
    video=)` builds its own (e.g. grounding tokens from boxes and phrases); the raster controls (ControlNet,
    T2I-Adapter) read the condition clip as (1, 1, F, H, W) float."""
    make = getattr(module, "make_condition", None)
    if make is not None:
        return make(kind, frames=frames, size=size, tracks=tracks, video=video)
    from ..data.conditions import condition_clip
    from ..diffusion.control import as_condition

    return as_condition(condition_clip(kind, frames, size, tracks=tracks, video=video))


def collate_conditions(module: Any, conditions: Sequence[Any]) -> Any:
    """Per-clip conditions from `condition_for` -> one batch (B = len(conditions)) for an `ActiveControl`."""
    collate = getattr(module, "collate_conditions", None)
    if collate is not None:
        return collate(list(conditions))
    import torch

    return torch.cat(list(conditions))


def condition_from_file(kind: str, path: str | Path, frames: int, size: int, module: Any = None) -> Any:
    """A condition file read for `module` (default: a raster control's (1, 1, F, H, W))."""
    return condition_for(module, kind, frames=frames, size=size, **read_condition_file(kind, path, frames, size))


def active_controls(model: Any, controls: Sequence[Any], condition: tuple[str, Any] | None,
                    beta: float = 1.0) -> list[Any]:
    """Controls for `model` (a `LatentDiffusionModel`, or an `ARGenerator`): "RUN[:scale]" / (run, scale) specs,
    read against one `condition` (kind, file) and, for diffusion, acting for the first `beta` of the sampling
    steps; or ActiveControl-like objects (.module, .condition, .scale) as they are."""
    from ..diffusion.control import ActiveControl

    if getattr(model, "kind", None) == "ar":
        target, codec = model.model, model.codec
    else:
        target, codec = model.denoiser, model._need_codec()
    out = []
    for c in controls:
        if all(hasattr(c, k) for k in ("module", "condition", "scale")):
            out.append(c)
            continue
        if condition is None:
            raise ConfigError("a control needs a condition: boxes (a JSON file), mask or edges (a video file)")
        d, scale = parse_control(c)
        if getattr(model, "kind", None) == "ar":
            module = load_control_run(d, target, codec)
        else:
            module = load_control_run(d, model)  # the model: GLIGEN embeds phrases with its text encoder
        cond = condition_from_file(condition[0], condition[1], int(codec.cfg.frames), int(codec.cfg.size), module)
        out.append(ActiveControl(module.to(next(target.parameters()).device), cond, scale, beta))
    return out
