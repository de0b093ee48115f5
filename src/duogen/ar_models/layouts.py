"""Sequence layouts: how a task's condition and output sit in one token sequence (VideoPoet-style).

Owns: the named tasks and their task tokens, the fixed segment plan of each
task, building training sequences (global ids, loss mask, prefix length) and
the prompt prefix + output plan that the sampler decodes.

Every layout has a fixed length for a given `LayoutSpec`: the text segment
is left-padded with `<pad>` to `max_text` tokens, so visual tokens always sit
at the same positions (no per-sample offsets anywhere, batched decoding needs
no padding masks). The loss covers only the output segment. Segments:

    t2v       <bos> <t2v> pad.. <bot> text <eot> <bov> | V <eov> <eos>
    t2i       <bos> <t2i> pad.. <bot> text <eot> <boi> | I <eoi> <eos>      (I = first latent frame)
    i2v       <bos> <i2v> pad.. <bot> text <eot> <bov> V[:k] | V[k:] <eov> <eos>
    inpaint   <bos> <inpaint> pad.. <bot> text <eot> <bov> Vmasked <eov> <sep> <bov> | V <eov> <eos>
    outpaint  (as inpaint, with the outpaint token; the masked clip keeps the centre)
    t2a       <bos> <t2a> pad.. <bot> text <eot> <boa> | A <eoa> <eos>      (A: time-major, levels interleaved)
    v2a       <bos> <v2a> pad.. <bot> text <eot> <bov> V <eov> <boa> | A <eoa> <eos>
    uncond    <bos> <uncond> pad.. <bot> <eot> <bov> | V <eov> <eos>
    edit      <bos> <edit> pad.. <bot> instruction <eot> <bov> Vsource <eov> <sep> <bov> | V <eov> <eos>
              (InstructPix2Pix; `<edit>` is added to a trained vocabulary with `MultimodalLM.add_tokens`; a
              dropped source, `cond["source"] = NULL_CLIP`, is the clip's tokens all `<pad>`)
    control   <bos> <control> pad.. <bot> text <eot> <bov> Vcond <eov> <sep> <bov> | V <eov> <eos>
              (VideoPoet-style control: Vcond = the condition clip (a mask or edge video) through the same codec;
              `cond["control"]`, NULL_CLIP = dropped)
    layout    <bos> <layout> pad.. <bot> text <eot> L <sep> <bov> | V <eov> <eos>
              (layout tokens: L = `spec.layout_tokens` global ids given whole in `cond["layout"]`, e.g. quantised
              box coordinates, built by `ar_models/control.py`; NULL_CLIP = all `<pad>`)

`|` marks the end of the prefix (the condition); the prefix LM attends
bidirectionally to everything before it.

Does not own: id offsets (`UnifiedVocab`), the network (`model.py`), decoding (`sampling.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

from ..errors import DataError

TASKS = ("t2v", "t2i", "i2v", "inpaint", "outpaint", "t2a", "v2a", "uncond")
ADDED_TASKS = ("edit", "control", "layout")  # tasks whose token a trained vocabulary grows (`MultimodalLM.add_tokens`), not built in
NULL_CLIP = "null"  # cond["source"] of the edit task: no source clip (IP2P's image dropout and unconditional stream)
AUDIO_TASKS = ("t2a", "v2a")
MASKED_TASKS = ("inpaint", "outpaint")


@dataclass
class LayoutSpec:
    """Sizes that fix every layout: text budget, the video codec's latent grid, audio length."""

    max_text: int = 24
    latent: tuple[int, int, int] = (3, 8, 8)  # (f, h, w) latent grid of one clip
    cond_frames: int = 1  # i2v: latent frames given as the condition
    video_codec: str = "video"
    audio_codec: str = "audio"
    audio_tokens: int = 0  # audio time steps per clip (0 = no audio)
    audio_levels: int = 1
    tasks: list[str] = field(default_factory=lambda: ["t2v"])
    layout_tokens: int = 0  # the layout task's condition length (0 = no layout task)

    def check(self) -> None:
        from ..errors import ConfigError

        bad = [t for t in self.tasks if t not in TASKS + ADDED_TASKS]
        if bad:
            raise ConfigError(f"unknown task {bad[0]!r}; allowed values: {', '.join(TASKS + ADDED_TASKS)}")
        if any(t in AUDIO_TASKS for t in self.tasks) and self.audio_tokens <= 0:
            raise ConfigError("tasks t2a / v2a need audio (audio_tokens > 0); the data set has none")
        if "layout" in self.tasks and self.layout_tokens <= 0:
            raise ConfigError("task layout needs layout_tokens > 0 (the length of its condition segment)")
        if not 1 <= self.cond_frames < self.latent[0] and "i2v" in self.tasks:
            raise ConfigError(f"cond_frames must be 1..{self.latent[0] - 1} for i2v (latent clip has {self.latent[0]} frames)")

    @property
    def text_block(self) -> int:
        """Tokens of the text block every layout starts with: <bos> <task> pad.. <bot> text <eot>."""
        return self.max_text + 4

    @property
    def frame_tokens(self) -> int:
        return self.latent[1] * self.latent[2]

    @property
    def video_tokens(self) -> int:
        return self.latent[0] * self.frame_tokens


class Example(NamedTuple):
    """One training sequence in global ids."""

    ids: list[int]  # (T,)
    prefix_len: int  # tokens 0..prefix_len-1 are the condition
    out_start: int  # output content spans [out_start, out_end)
    out_end: int


class DecodePlan(NamedTuple):
    """What the sampler needs: a fixed prefix and, per output position, the allowed global id range."""

    prefix: list[int]  # (P,)
    ranges: list[tuple[int, int]]  # (N_out,) [lo, hi) per output token
    suffix: list[int]  # structural tokens after the output (forced, never sampled)


def check_task(task: str, spec: LayoutSpec | None = None) -> None:
    if task not in TASKS + ADDED_TASKS:
        raise DataError(f"unknown task {task!r}; choose one of: {', '.join(TASKS + ADDED_TASKS)}")
    if spec is not None and task not in spec.tasks and not (task == "uncond" and "t2v" in spec.tasks):
        raise DataError(f"this model was not trained for task {task!r}; it knows: {', '.join(spec.tasks)}")


class Layouts:
    """Builds sequences for every task over one vocabulary and one `LayoutSpec`."""

    def __init__(self, vocab: Any, spec: LayoutSpec):
        self.vocab, self.spec = vocab, spec
        self.t = vocab.tokens  # name -> global id

    # ------------------------------------------------------------------ pieces
    def _text_block(self, task: str, text_ids: Sequence[int]) -> list[int]:
        """<bos> <task> <pad>*k <bot> text <eot>: always `spec.text_block` = 4 + max_text tokens."""
        m = self.spec.max_text
        if len(text_ids) > m:
            raise DataError(f"text has {len(text_ids)} tokens; the layout allows {m} (truncate with encode_prompt)")
        g = self.vocab.text_to_global(list(text_ids))
        return [self.t["<bos>"], self.t[f"<{task}>"]] + [self.t["<pad>"]] * (m - len(g)) + [self.t["<bot>"]] + g + [self.t["<eot>"]]

    def _video(self, ids: Any) -> list[int]:
        flat = [int(i) for i in _flat(ids)]
        if len(flat) != self.spec.video_tokens:
            raise DataError(
                f"a clip must give {self.spec.video_tokens} codec ids (latent grid {tuple(self.spec.latent)}),"
                f" got {len(flat)}: is the clip the size and length the model was trained on?"
            )
        return self.vocab.codec_to_global(self.spec.video_codec, flat)

    def _audio(self, ids: Any) -> list[int]:
        """(T, L) residual ids -> time-major global ids with each level in its own range."""
        import numpy as np

        a = np.asarray(ids, dtype=np.int64).reshape(-1, self.spec.audio_levels)
        if a.shape[0] != self.spec.audio_tokens:
            raise DataError(f"audio must give {self.spec.audio_tokens} time steps, got {a.shape[0]}")
        return np.asarray(self.vocab.codec_to_global(self.spec.audio_codec, a) if self.spec.audio_levels > 1
                          else self.vocab.codec_to_global(self.spec.audio_codec, a[:, 0])).reshape(-1).tolist()

    def _audio_ranges(self) -> list[tuple[int, int]]:
        L = self.spec.audio_levels
        rs = [self.vocab.codec_range(self.spec.audio_codec, lvl if L > 1 else None) for lvl in range(L)]
        return [(r.start, r.stop) for _ in range(self.spec.audio_tokens) for r in rs]

    def _video_range(self) -> tuple[int, int]:
        r = self.vocab.codec_range(self.spec.video_codec)
        return (r.start, r.stop)

    # ------------------------------------------------------------------ the two views of a layout
    def segments(self, task: str, text_ids: Sequence[int], cond: dict[str, Any] | None = None,
                 target: Any = None) -> tuple[list[int], list[tuple[int, int]], list[int], list[int]]:
        """(prefix, output ranges, output ids, suffix) for `task`.

        `cond` holds the condition in codec ids: "first" (i2v: the given latent
        frames), "masked" (inpaint / outpaint: the masked clip), "video" (v2a), "source" (edit: the clip to
        edit, or NULL_CLIP).
        `target` is the output in codec ids (a clip, or (T, L) audio) for
        training; None when decoding (output ids come back empty).
        """
        check_task(task)
        cond = dict(cond or {})
        t = self.t
        if task == "uncond":
            text_ids = []
        pre = self._text_block(task, text_ids)
        vr = self._video_range()
        nv, nf = self.spec.video_tokens, self.spec.frame_tokens
        if task in ("t2v", "uncond"):
            out = self._video(target) if target is not None else []
            return pre + [t["<bov>"]], [vr] * nv, out, [t["<eov>"], t["<eos>"]]
        if task == "t2i":
            out = self._video(target)[:nf] if target is not None else []
            return pre + [t["<boi>"]], [vr] * nf, out, [t["<eoi>"], t["<eos>"]]
        if task == "i2v":
            k = self.spec.cond_frames * nf
            if cond.get("first") is not None:
                given = self.vocab.codec_to_global(self.spec.video_codec, _flat(cond["first"]))
                if len(given) != k:
                    raise DataError(
                        f"i2v needs {k} codec ids for its {self.spec.cond_frames} given latent frame(s), got"
                        f" {len(given)}: is the condition image the size the model was trained on?"
                    )
            elif target is not None:
                given = self._video(target)[:k]
            else:
                raise DataError("task i2v needs the first frame(s) as its condition (--image or --video)")
            out = self._video(target)[k:] if target is not None else []
            return pre + [t["<bov>"]] + list(given), [vr] * (nv - k), out, [t["<eov>"], t["<eos>"]]
        if task == "layout":
            lay = cond.get("layout")
            if lay is None:
                raise DataError("task layout needs its layout tokens as its condition (cond['layout'])")
            lay = [t["<pad>"]] * self.spec.layout_tokens if _is_null(lay) else [int(i) for i in _flat(lay)]
            if len(lay) != self.spec.layout_tokens:
                raise DataError(f"task layout needs {self.spec.layout_tokens} layout tokens, got {len(lay)}")
            out = self._video(target) if target is not None else []
            return pre + lay + [t["<sep>"], t["<bov>"]], [vr] * nv, out, [t["<eov>"], t["<eos>"]]
        if task in MASKED_TASKS or task in ("edit", "control"):
            key = {"edit": "source", "control": "control"}.get(task, "masked")
            if cond.get(key) is None:
                raise DataError(f"task {task} needs a {key} clip as its condition")
            masked = [t["<pad>"]] * nv if _is_null(cond[key]) else self._video(cond[key])
            out = self._video(target) if target is not None else []
            return pre + [t["<bov>"]] + masked + [t["<eov>"], t["<sep>"], t["<bov>"]], [vr] * nv, out, [t["<eov>"], t["<eos>"]]
        if self.spec.audio_tokens <= 0:
            raise DataError(f"task {task} needs audio, and this model has no audio codec")
        out = self._audio(target) if target is not None else []
        if task == "t2a":
            return pre + [t["<boa>"]], self._audio_ranges(), out, [t["<eoa>"], t["<eos>"]]
        if cond.get("video") is None:  # v2a
            raise DataError("task v2a needs a video as its condition (--video)")
        video = self._video(cond["video"])
        return pre + [t["<bov>"]] + video + [t["<eov>"], t["<boa>"]], self._audio_ranges(), out, [t["<eoa>"], t["<eos>"]]

    def example(self, task: str, text_ids: Sequence[int], target: Any, cond: dict[str, Any] | None = None) -> Example:
        """A full training sequence with the output `target` (codec ids) in place."""
        prefix, ranges, out, suffix = self.segments(task, text_ids, cond, target)
        if len(out) != len(ranges):
            raise DataError(f"task {task}: the output has {len(out)} ids, the layout needs {len(ranges)}")
        return Example(prefix + list(out) + suffix, len(prefix), len(prefix), len(prefix) + len(out))

    def decode_plan(self, task: str, text_ids: Sequence[int], cond: dict[str, Any] | None = None) -> DecodePlan:
        prefix, ranges, _, suffix = self.segments(task, text_ids, cond, None)
        return DecodePlan(prefix, ranges, suffix)

    def batch(self, examples: Sequence[Example]) -> dict[str, Any]:
        """Examples -> the model's batch: ids (B,T) right-padded with <pad>, prefix_len (B,), loss_mask (B,T)
        True where ids[t] is an output token (what `MultimodalLM.loss` trains on and `score` scores)."""
        import torch

        T = max(len(e.ids) for e in examples)
        ids = torch.full((len(examples), T), self.t["<pad>"], dtype=torch.long)
        loss_mask = torch.zeros((len(examples), T), dtype=torch.bool)
        for i, e in enumerate(examples):
            ids[i, : len(e.ids)] = torch.tensor(e.ids)
            loss_mask[i, e.out_start : e.out_end] = True
        prefix_len = torch.tensor([e.prefix_len for e in examples], dtype=torch.long)
        return {"ids": ids, "prefix_len": prefix_len, "loss_mask": loss_mask}

    def max_len(self) -> int:
        """Longest sequence over the spec's tasks and `uncond` (sizes the position table)."""
        zeros_v = [0] * self.spec.video_tokens
        zeros_a = [[0] * self.spec.audio_levels for _ in range(self.spec.audio_tokens)]
        n = 0
        for task in list(self.spec.tasks) + ["uncond"]:
            target = zeros_a if task in AUDIO_TASKS else zeros_v
            conds = {"masked": zeros_v, "video": zeros_v, "source": zeros_v, "control": zeros_v, "layout": NULL_CLIP}
            n = max(n, len(self.example(task, [], target, conds).ids))
        return n


def _is_null(cond: Any) -> bool:
    return isinstance(cond, str) and cond == NULL_CLIP


def _flat(ids: Any) -> list[int]:
    if hasattr(ids, "reshape"):
        return ids.reshape(-1).tolist()
    out: list[int] = []
    for x in ids:
        out.extend(_flat(x) if isinstance(x, (list, tuple)) or hasattr(x, "reshape") else [int(x)])
    return out


class TrainCollator:
    """Pre-tokenized records -> a training batch, with a random task per record and condition dropout.

    A record is a dict with "text_ids" (SentencePiece ids), "video_ids" (codec
    ids (f,h,w)), and where the tasks need them "masked_ids" / "outpaint_ids"
    (the masked clip's codec ids) and "audio_ids" ((T, L)). Condition dropout
    replaces the text with nothing (the task token stays), which is the
    unconditional stream classifier-free guidance subtracts at sampling time.
    The returned batch: ids (B,T) right-padded with <pad>, prefix_len (B,),
    loss_mask (B,T) True where ids[t] is an output token.
    """

    def __init__(self, layouts: Layouts, tasks: Sequence[str] | None = None, cond_dropout: float = 0.1):
        self.layouts = layouts
        self.tasks = list(tasks or layouts.spec.tasks)
        for t in self.tasks:
            check_task(t)
        self.cond_dropout = float(cond_dropout)

    def _rand(self) -> float:
        """Draws come from torch's global generator, which the engine seeds and checkpoints (exact resume)."""
        import torch

        return float(torch.rand(()))

    def build(self, rec: dict[str, Any], task: str) -> Example:
        text = list(rec.get("text_ids", []))[: self.layouts.spec.max_text]
        if task != "uncond" and self.cond_dropout > 0 and self._rand() < self.cond_dropout:
            text = []
        cond: dict[str, Any] = {}
        target: Any = rec.get("video_ids")
        if task in MASKED_TASKS:
            cond["masked"] = rec.get("masked_ids" if task == "inpaint" else "outpaint_ids")
        if task in AUDIO_TASKS:
            target = rec.get("audio_ids")
            cond["video"] = rec.get("video_ids")
        return self.layouts.example(task, text, target, cond)

    def __call__(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        exs = [self.build(r, self.tasks[min(int(self._rand() * len(self.tasks)), len(self.tasks) - 1)]) for r in records]
        return self.layouts.batch(exs)


def masked_clip(video: Any, task: str, box: tuple[int, int, int, int] | None = None) -> Any:
    """The condition clip of inpaint / outpaint: uint8 (F,H,W,3) with a box blanked (inpaint) or kept (outpaint).

    `box` = (y0, x0, y1, x1); the default is the centred half-size box.
    """
    import numpy as np

    v = np.asarray(video)
    if v.ndim != 4 or v.shape[-1] != 3:
        raise DataError(f"a clip must be uint8 (F, H, W, 3), got shape {v.shape}")
    H, W = v.shape[1:3]
    y0, x0, y1, x1 = box or (H // 4, W // 4, H - H // 4, W - W // 4)
    out = np.zeros_like(v)
    if task == "inpaint":
        out[:] = v
        out[:, y0:y1, x0:x1] = 0
    elif task == "outpaint":
        out[:, y0:y1, x0:x1] = v[:, y0:y1, x0:x1]
    else:
        raise DataError(f"masked_clip is for inpaint / outpaint, not {task!r}")
    return out
