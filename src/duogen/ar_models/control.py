"""AR control by tokens in the prefix (VideoPoet's way): a condition video, or box layout tokens.

Owns: `TokenControlConfig`; the layout tokens of boxes (`quantise_boxes` / `dequantise_boxes`, K bins per
coordinate, one new vocabulary token per bin, `LayoutTokens`); `make_token_control` (the base model grown by the
task token and the bin tokens: the control model, which starts as a copy of the base); `TokenControl` (what
generation reads: `make_condition` and `sampling`, the AR control protocol of `bridges/control.py`);
`save_token_control` / `load_token_control` (the tensors that differ from the base, the config in the
safetensors metadata, refused for another base); `model_fingerprint`.

Layouts (`layouts.py`): mask / edges use `control`,
`<bos> <control> pad.. <bot> text <eot> <bov> Vcond <eov> <sep> <bov> | V <eov> <eos>`, Vcond = the condition
rendered white on black (F, H, W, 3) through the model's own codec (VideoPoet, Kondratyuk et al. 2024, Sec. 3:
every condition is tokens of the one vocabulary in the prefix); boxes use `layout`,
`<bos> <layout> pad.. <bot> text <eot> L <sep> <bov> | V <eov> <eos>`, L = per object slot
`<bot> phrase (pad to phrase_tokens) <eot> b(x0) b(y0) b(x1) b(y1)` for every frame, empty slots `<pad>`.

Sampling steers the base with the control model as a `ControlStream` (sampling.py): classifier-free guidance
over the condition, l = l_base + s (l_ctrl - l_base), the base (t2v layout, no condition) being the
unconditional stream: s = 1 is the control model alone, s = 0 exactly the base.

Does not own: rendering conditions (`data/conditions.py`), the sampler, training (`train/ar_control_recipe.py`),
finding a run's loader by method (`bridges/control.py`).
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..control_parts import weights_fingerprint
from ..errors import CheckpointError, ConfigError, DataError

CONDITIONS = ("boxes", "mask", "edges")
# a new task token's rows start as <t2v>'s: every control steers t2v, the one task every base trained (the
# reference AR trained only t2v: its <inpaint> row never got a gradient)
TASK_INIT = {"control": "<t2v>", "layout": "<t2v>"}


@dataclass
class TokenControlConfig:
    paradigm: str = "ar"
    method: str = "tokens"
    condition: str = "mask"  # boxes | mask | edges
    bins: int = 32  # K: bins per box coordinate (boxes)
    max_objects: int = 2  # object slots in the layout (boxes)
    phrase_tokens: int = 6  # text tokens of each object's phrase (boxes)
    frames: int = 9  # the codec's clip: frames and side in pixels
    size: int = 32
    base_fingerprint: str = ""  # `model_fingerprint` of the base it was made from
    codec: str = ""  # the codec that tokenizes mask / edges conditions (the base's), when the loader is given none

    @property
    def task(self) -> str:
        return "layout" if self.condition == "boxes" else "control"

    @property
    def layout_tokens(self) -> int:
        return self.max_objects * (self.phrase_tokens + 2 + 4 * self.frames) if self.condition == "boxes" else 0

    def check(self) -> None:
        if self.condition not in CONDITIONS:
            raise ConfigError(f"condition {self.condition!r}; choose one of {', '.join(CONDITIONS)}")
        if self.bins < 2 or self.max_objects < 1 or self.phrase_tokens < 1:
            raise ConfigError("bins must be >= 2, max_objects and phrase_tokens >= 1")


def model_fingerprint(model: nn.Module) -> str:
    """Which base a control belongs to: `control_parts.weights_fingerprint`, the hash every control records."""
    return weights_fingerprint(model)


# ----------------------------------------------------------------------------- layout tokens


def quantise_boxes(boxes: Any, size: int, bins: int) -> np.ndarray:
    """(..., 4) [x0, y0, x1, y1] pixels (x1 / y1 exclusive) -> (..., 4) int bins in [0, K): the bins of the first
    and the last covered pixel (K = size: exact pixels)."""
    b = np.asarray(boxes, np.float64) * (bins / size)
    q = np.stack([np.floor(b[..., 0]), np.floor(b[..., 1]), np.ceil(b[..., 2]) - 1, np.ceil(b[..., 3]) - 1], -1)
    return q.clip(0, bins - 1).astype(np.int64)


def dequantise_boxes(q: Any, size: int, bins: int) -> np.ndarray:
    """Bins (..., 4) -> pixel boxes (..., 4): from the start of the first bin to the end of the last."""
    q = np.asarray(q, np.float64)
    return np.stack([q[..., 0], q[..., 1], q[..., 2] + 1, q[..., 3] + 1], -1) * (size / bins)


def bin_token(k: int) -> str:
    return f"<bin{k}>"


class LayoutTokens:
    """Box tracks (with phrases) <-> the `layout` task's condition tokens of one model."""

    def __init__(self, model: Any, cfg: TokenControlConfig):
        self.model, self.cfg = model, cfg
        self.bin_ids = np.asarray([model.vocab.id(bin_token(k)) for k in range(cfg.bins)], np.int64)

    def ids(self, tracks: Sequence[Any]) -> list[int]:
        """[BoxTrack] (phrase, (F, 4) boxes) -> `layout_tokens` global ids."""
        c, t, v = self.cfg, self.model.vocab.tokens, self.model.vocab
        if len(tracks) > c.max_objects:
            raise DataError(f"{len(tracks)} boxes tracks; this control was trained for at most {c.max_objects} objects")
        out: list[int] = []
        for tr in tracks:
            b = np.asarray(tr.boxes, np.float64)
            if b.shape != (c.frames, 4):
                raise DataError(f"boxes of {tr.phrase!r}: shape {b.shape}, expected one box per frame ({c.frames}, 4)")
            words = self.model.text.encode(tr.phrase)[: c.phrase_tokens] if tr.phrase else []
            phrase = v.text_to_global(list(words)) + [t["<pad>"]] * (c.phrase_tokens - len(words))
            out += [t["<bot>"], *phrase, t["<eot>"], *self.bin_ids[quantise_boxes(b, c.size, c.bins)].reshape(-1).tolist()]
        per = c.phrase_tokens + 2 + 4 * c.frames
        return out + [t["<pad>"]] * (per * (c.max_objects - len(tracks)))

    def boxes(self, ids: Sequence[int]) -> list[np.ndarray]:
        """The inverse on the boxes: layout ids -> (F, 4) pixel boxes per filled slot (phrases not decoded)."""
        c = self.cfg
        per, out = c.phrase_tokens + 2 + 4 * c.frames, []
        lookup = {int(g): k for k, g in enumerate(self.bin_ids)}
        for m in range(c.max_objects):
            seg = list(ids)[m * per: (m + 1) * per]
            if seg[0] != self.model.vocab.tokens["<bot>"]:
                continue
            q = np.asarray([lookup[int(g)] for g in seg[c.phrase_tokens + 2:]]).reshape(c.frames, 4)
            out.append(dequantise_boxes(q, c.size, c.bins))
        return out


# ----------------------------------------------------------------------------- the control model


@torch.no_grad()
def make_token_control(base: Any, cfg: TokenControlConfig, seed: int = 0) -> Any:
    """A new `MultimodalLM`: the base's weights, its vocabulary grown by the task token (rows copied from
    `TASK_INIT`) and, for boxes, K bin tokens (rows drawn N(0, init_std) from `seed`), the task enabled.
    The base is not modified."""
    from .model import MultimodalLM

    cfg.check()
    spec = copy.deepcopy(base.spec)
    spec.layout_tokens = cfg.layout_tokens
    m = MultimodalLM(copy.deepcopy(base.cfg), copy.deepcopy(base.vocab), spec, base.text, base.codec_ref,
                     base.audio_codec_ref)
    m.load_state_dict(base.state_dict())
    bins = [bin_token(k) for k in range(cfg.bins)] if cfg.condition == "boxes" else []
    new = m.add_tokens(tasks={f"<{cfg.task}>": TASK_INIT[cfg.task], **{b: "<pad>" for b in bins}})
    g = torch.Generator().manual_seed(int(seed))
    for table in {id(t): t for t in (m.lm.get_input_embeddings(), m.lm.get_output_embeddings())}.values():
        for b in bins:
            table.weight[new[b]] = torch.randn(table.weight.shape[1], generator=g) * base.cfg.init_std
    m.enable_task(cfg.task)
    return m.eval()


def _rows(x: torch.Tensor, B: int, what: str) -> torch.Tensor:
    if x.shape[0] == B:
        return x
    if x.shape[0] == 1:
        return x.expand(B, *x.shape[1:])
    raise DataError(f"{what}: condition batch {x.shape[0]}; give 1 or one per clip ({B})")


def render_condition(raster: np.ndarray) -> np.ndarray:
    """(F, H, W) bool -> the condition clip the codec reads: (F, H, W, 3) uint8, white on black."""
    return np.repeat(np.asarray(raster, bool)[..., None], 3, -1).astype(np.uint8) * 255


class TokenControl(nn.Module):
    """A trained `tokens` control: the control model, its config and (mask / edges) the codec that tokenizes
    conditions. The AR control protocol (`bridges/control.py`): `make_condition`, `sampling`."""

    def __init__(self, model: Any, config: TokenControlConfig, codec: Any = None):
        super().__init__()
        self.model, self.config, self.codec = model.eval(), config, codec
        self._decoder = None

    def make_condition(self, kind: str, *, frames: int, size: int, tracks: Any = None, video: Any = None) -> torch.Tensor:
        """One clip's condition: (1, layout_tokens) global ids (boxes) or (1, f, h, w) codec ids (mask / edges)."""
        c = self.config
        if kind != c.condition:
            raise DataError(f"this control was trained on {c.condition} conditions; give --{c.condition}, not --{kind}")
        if (frames, size) != (c.frames, c.size):
            raise DataError(f"condition for {frames} frames of {size}px; this control reads {c.frames} of {c.size}px")
        from ..data.conditions import condition_clip

        if kind == "boxes":
            if tracks is None:
                raise DataError("a boxes condition needs box tracks (a boxes JSON file)")
            return torch.tensor([LayoutTokens(self.model, c).ids(tracks)])
        raster = condition_clip(kind, frames, size, video=video)  # (F, H, W) bool, checked against the size
        if self.codec is None:
            raise ConfigError("a mask / edges token control needs the model's codec to tokenize its condition")
        with torch.inference_mode():
            return self.codec.encode(render_condition(raster)).long().cpu()  # (1, f, h, w)

    def decoder(self) -> Any:
        if self._decoder is None:
            self._decoder = self.model.decoder()
        return self._decoder

    def prefixes(self, text_ids: Sequence[Sequence[int]], condition: torch.Tensor) -> torch.Tensor:
        """Per row: its text ids and its condition (rows of `condition`, or one for all) -> (B, P') prefixes."""
        cond = _rows(torch.as_tensor(condition), len(text_ids), "tokens control")
        key = self.config.task
        return torch.tensor([self.model.layouts.decode_plan(key, list(ids), {key: cond[i]}).prefix
                             for i, ids in enumerate(text_ids)])

    @contextlib.contextmanager
    def sampling(self, rows: Any, condition: torch.Tensor, scale: float) -> Iterator[Any]:
        """The protocol: a `ControlStream` (this model on its layout) for rows (`ControlRows`)."""
        from .sampling import ControlStream

        uncond = self.prefixes([rows.negative_ids] * len(rows.text_ids), condition) if rows.guided else None
        yield ControlStream(self.decoder(), self.prefixes(rows.text_ids, condition), scale, uncond,
                            self.model.cfg.prefix_lm)


# ----------------------------------------------------------------------------- files


def save_token_control(model: Any, config: TokenControlConfig, base: Any, path: str | Path) -> Path:
    """The control model's tensors that differ from `base` (grown tables whole), the config in the metadata."""
    from ..io import save_state_dict

    ref = base.state_dict()
    state = {k: v for k, v in model.state_dict().items()
             if k not in ref or ref[k].shape != v.shape or not torch.equal(ref[k], v)}
    return save_state_dict(state, path, metadata={"control_config": json.dumps(asdict(config))})


def load_token_control(path: str | Path, config: dict[str, Any], base: Any, codec: Any = None) -> TokenControl:
    """A `tokens` control saved by `save_token_control` over `base`; CheckpointError for another base."""
    from ..io import load_state_dict

    try:
        cfg = TokenControlConfig(**config)
    except TypeError as e:
        raise CheckpointError(f"{path}: unreadable tokens control config ({e})") from None
    if cfg.base_fingerprint and cfg.base_fingerprint != model_fingerprint(base):
        raise CheckpointError(f"{path}: this control was trained for another base model; use the model its"
                              " control.json names")
    if codec is None and cfg.condition != "boxes" and cfg.codec and Path(cfg.codec).is_dir():
        from ..tokenizers import load as load_codec

        codec = load_codec(cfg.codec)
    model = make_token_control(base, cfg)
    state, own = load_state_dict(path), model.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{path}: tensor {bad[0]} does not fit this base model; use the model it was trained for")
    own.update(state)
    model.load_state_dict(own)
    return TokenControl(model.eval(), cfg, codec)
