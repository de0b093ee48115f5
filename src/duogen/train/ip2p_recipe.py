"""Recipe: fine-tune a trained model into an InstructPix2Pix editor on edit pairs (`duogen data make edits`).

    train_ip2p(data="data/edits", out="runs/ip2p_ar", paradigm="ar", init_from="assets/reference/ar")

Both paradigms start from a trained text-to-video model (`init_from`) and its codec, encode every pair's
source and target once (cached like the other recipes), and train with the shared engine:
- AR: the vocabulary grows a `<edit>` task token (its rows copied from `<inpaint>`, the layout it resembles)
  and the model learns the `edit` layout [instruction][source clip] -> [target clip];
- diffusion: the denoiser is rebuilt with the source latents as extra input channels
  (`image_channels` = C) and the base weights copied in with the new input weights zero
  (`diffusion.image_cond.widen_state`): step 0 is exactly the base model.
Conditioning dropout is IP2P's (Sec. 3.2): for `drop` of the examples the instruction is dropped, for another
`drop` the source, for another `drop` both (AR: the empty instruction / a source of <pad> tokens; diffusion:
the empty prompt / zero latents), so that sampling can guide on each. `final/` is a model directory that
`load_generator` opens and `bridges/edit/ip2p.py` edits with.

Does not own: the model parts (`ar_models/layouts.py` edit layout, `diffusion/image_cond.py`), sampling.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .. import config as cfglib
from ..errors import ConfigError, DataError
from .engine import LossOutput, TrainConfig, fit
from .recipe_common import encode_clips, load_split, model_saver, resolve_cache_dir

CACHE_VERSION = 1
PARADIGMS = ("ar", "diffusion")
EDIT_TOKEN_INIT = "<inpaint>"  # the new <edit> token's rows start as this task token's


@dataclass
class IP2PRecipeConfig:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=100000, batch_size=16, lr=3e-4, weight_decay=0.0, warmup_steps=20, min_lr_ratio=0.1,
        precision="auto", log_every=20, ckpt_every=0, max_minutes=10.0))
    drop: float = 0.05  # IP2P: 5% instruction only, 5% source only, 5% both
    split: str = "train"
    max_clips: int = 0  # 0 = the whole split
    cache_dir: str = ""  # "" = OUT/../.cache

    def check(self) -> None:
        if not 0.0 <= self.drop <= 1.0 / 3.0:
            raise ConfigError(f"drop must be in [0, 1/3] (three disjoint shares of the batch), got {self.drop}")


def _dropped(p: float) -> tuple[bool, bool]:
    """(drop the instruction, drop the source), one draw from torch's global RNG (the engine seeds and resumes it)."""
    import torch

    r = float(torch.rand(()))
    return (r < p or 2 * p <= r < 3 * p), (p <= r < 3 * p)


class EditCollator:
    """AR records (instruction ids, source ids, target ids) -> `edit` layout batches with IP2P's dropout."""

    def __init__(self, layouts: Any, drop: float):
        self.layouts, self.drop = layouts, drop

    def __call__(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        from ..ar_models.layouts import NULL_CLIP

        exs = []
        for r in records:
            no_text, no_src = _dropped(self.drop)
            text = [] if no_text else list(r["text_ids"])[: self.layouts.spec.max_text]
            exs.append(self.layouts.example("edit", text, r["target_ids"],
                                            {"source": NULL_CLIP if no_src else r["source_ids"]}))
        return self.layouts.batch(exs)


class PairRecords:
    """Index -> one pair's tensors (what the engine's loader reads)."""

    def __init__(self, **cols: Any):
        self.cols = cols

    def __len__(self) -> int:
        return len(next(iter(self.cols.values())))

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: v[i] for k, v in self.cols.items()}


def _latents(split: Any, codec: Any, codec_dir: Path, data: Path, name: str, cache: Path) -> dict[str, Any]:
    """The codec's continuous latents of every pair's `source` and `target`, un-normalized, cached on disk (one cache
    for both paradigms: AR ids are their quantization) -> {"source": (N, C, f, h, w), "target": ...} float32."""
    import numpy as np
    import torch

    out = {}
    for col in ("source", "target"):
        def fn(b: dict[str, Any], c: str = col) -> dict[str, Any]:
            video = np.stack([np.asarray(v, np.uint8) for v in b[c]])  # (B, F, H, W, 3)
            with torch.inference_mode():
                return {"x": codec.encode_latents(video).float().cpu().numpy()}

        enc = encode_clips(split, fn, codec_dir, data, name, cache, batch_size=32, desc=f"encoding {col} clips",
                           column=col, v=CACHE_VERSION, what="ip2p-latents", col=col)
        out[col] = np.asarray(enc.with_format("numpy")["x"], dtype=np.float32)
    return out


def train_ip2p(data: str | Path, out: str | Path, *, paradigm: str, init_from: str | Path,
               overrides: Sequence[str] = (), seed: int | None = None, resume: str | None = None) -> dict[str, Any]:
    """Fine-tune the model in `init_from` into an IP2P editor on the edit pairs at `data`; returns the summary."""
    import numpy as np
    import torch

    from ..io import read_json
    from ..tokenizers import load as load_codec
    from ..utils import count_parameters, seed_everything
    from .engine import apply_resume

    if paradigm not in PARADIGMS:
        raise ConfigError(f"unknown paradigm {paradigm!r}; allowed values: {', '.join(PARADIGMS)}")
    cfg = cfglib.load(IP2PRecipeConfig, overrides=cfglib.seed_first(overrides, seed))
    cfg.check()
    cfg.train = apply_resume(cfg.train, resume)
    init_from, data, out = Path(init_from), Path(data), Path(out)
    conf = read_json(init_from / "config.json")
    if not isinstance(conf, dict) or conf.get("kind") != paradigm:
        raise ConfigError(f"--init-from {init_from} holds a {conf.get('kind') if isinstance(conf, dict) else '?'!r}"
                          f" model, not {paradigm!r}: pass a trained {paradigm} model directory")
    split = load_split(data, cfg.split, cfg.max_clips)
    missing = {"source", "target", "instruction"} - set(split.column_names)
    if missing:
        raise DataError(f"{data} is not an edit-pair data set (no {', '.join(sorted(missing))} column): make one with"
                        " `duogen data make edits --out DIR`")
    cache = resolve_cache_dir(cfg.cache_dir, out)
    instructions = list(split["instruction"])
    seed_everything(cfg.train.seed)
    if paradigm == "ar":
        from ..ar_models.model import MultimodalLM

        model = MultimodalLM.from_pretrained(init_from)
        codec_dir = model.codec_path(init_from)
        if codec_dir is None or not codec_dir.exists():
            raise ConfigError(f"{init_from}: the codec it was trained on ({model.codec_ref}) is not there")
        codec = load_codec(codec_dir)
        with torch.inference_mode():  # ids = the quantized latents (`codec.encode`), from the cache both paradigms share
            enc = {k: codec.latents_to_ids(torch.from_numpy(v)).cpu().numpy()
                   for k, v in _latents(split, codec, codec_dir, data, cfg.split, cache).items()}
        model.codec_ref = str(codec_dir.resolve())  # final/ lives elsewhere: an absolute reference
        if "<edit>" not in model.vocab.tokens:
            model.add_tokens(tasks={"<edit>": EDIT_TOKEN_INIT})
        model.enable_task("edit")
        text_ids = [model.text.encode(t)[: model.spec.max_text] for t in instructions]
        records = PairRecords(text_ids=text_ids, source_ids=enc["source"].astype(np.int64),
                              target_ids=enc["target"].astype(np.int64))
        collate: Any = EditCollator(model.layouts, cfg.drop)

        def loss_fn(m: Any, batch: dict[str, Any]) -> LossOutput:
            return LossOutput(*m.loss(batch))
    else:
        from ..diffusion.image_cond import EditCond, widen_state
        from ..diffusion.latent import LatentDiffusionModel
        from ..diffusion.schedules import denoising_loss, randn_like

        base = LatentDiffusionModel.from_pretrained(init_from)
        codec_dir = init_from / conf.get("codec", "codec")
        codec = base.codec
        with torch.inference_mode():
            enc = _latents(split, codec, codec_dir, data, cfg.split, cache)
            lat = {k: codec.normalize_latents(torch.from_numpy(v)).float() for k, v in enc.items()}
        C = base.config.latent[0]
        model = LatentDiffusionModel(dataclasses.replace(base.config, image_channels=C), base.tokenizer, codec)
        model.text_encoder.load_state_dict(base.text_encoder.state_dict())
        model.denoiser.net.load_state_dict(widen_state(base.denoiser.state_dict(), model.denoiser.net.state_dict(), C))
        del base
        ids, mask = model.text_encoder.tokenize(instructions, strict=False)
        records = PairRecords(latents=lat["target"], source=lat["source"], text_ids=ids, text_mask=mask)
        collate = None
        null_ids, null_mask = model.text_encoder.null_ids(ids.shape[1])

        def loss_fn(m: Any, batch: dict[str, Any]) -> LossOutput:
            z0, src, tid, tmask = batch["latents"].float(), batch["source"].float(), batch["text_ids"], batch["text_mask"]
            drops = torch.tensor([_dropped(cfg.drop) for _ in range(z0.shape[0])])  # (B, 2): text, source
            tid = torch.where(drops[:, :1], null_ids.to(tid.device), tid)
            tmask = torch.where(drops[:, :1], null_mask.to(tmask.device), tmask.bool())
            src = src * (~drops[:, 1]).view(-1, 1, 1, 1, 1).to(src)
            cond = EditCond(m.text_encoder(tid, tmask), src)
            t = m.schedule.sample_timesteps(z0.shape[0], device=z0.device)
            loss = denoising_loss(m.denoiser, z0, cond, m.schedule, m.config.prediction_type, t, randn_like(z0),
                                  snr_gamma=m.config.snr_gamma).mean()
            return LossOutput(loss, int(z0.shape[0]), {})

    n_params = count_parameters(model)
    summary = fit(model, loss_fn, records, cfg.train, out, collate=collate, save_model=model_saver(None),
                  run_config={**cfglib.to_dict(cfg), "paradigm": paradigm, "data": str(data.resolve()),
                              "init_from": str(init_from.resolve())})
    return {**vars(summary), "final": str(out / "final"), "paradigm": paradigm, "parameters": n_params,
            "pairs": len(records), "init_from": str(init_from)}
