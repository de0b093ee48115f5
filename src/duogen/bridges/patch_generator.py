"""`PatchAR` (`ar_models/patch.py`) behind the `Generator` protocol: prompt -> codec ids -> the codec's decoder.

Text-to-video and frame continuation (i2v: a given image or clip's first latent frame, the rest drawn after it
by the same model, which learned whole clips in frame order); the patch model has no task layouts, so the other
tasks and id and control conditions are refused with their reason. It reports itself as kind "ar" to the
comparison harness, whose AR settings (`cfg-G`, `no-cfg`) and cost (ids drawn per clip, times 2 under guidance)
apply to it as they stand.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import CheckpointError, ConfigError, DataError
from ..tokenizers import load as load_codec
from .conditions import first_frame_ids
from .result import GenerationResult, to_uint8


class PatchARGenerator:
    kind = "ar"

    def __init__(self, model: Any, codec: Any):
        if model.text_tokenizer is None:
            raise CheckpointError("this patch AR model has no text tokenizer (text.model): it cannot read prompts")
        self.model, self.codec = model.eval(), codec

    @classmethod
    def from_pretrained(cls, directory: str | Path, codec: str | Path | None = None) -> "PatchARGenerator":
        from ..ar_models.patch import PatchAR

        model = PatchAR.from_pretrained(directory)
        path = Path(codec) if codec is not None else model.codec_path(directory)
        if path is None or not Path(path).exists():
            raise CheckpointError(f"{directory}: the codec it was trained on ({model.codec_ref}) is not there;"
                                  " pass --codec DIR")
        return cls(model, load_codec(path))

    def generate(self, prompts: Sequence[str], n: int = 1, seed: int = 0, *, task: str = "t2v",
                 guidance: float | None = None, negative_prompt: str | None = None, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, image: Any = None, video: Any = None,
                 layout_candidates: int = 1, **conditions: Any) -> GenerationResult:
        """Clips for `prompts`, n each (row i*n + j); guidance None or 1: one stream. task "i2v" continues from
        `image` (or `video`'s first latent frame): the output clips start with it. Any other argument the flat AR
        generator takes (ids, controls, a logits callback) is refused, not ignored. `layout_candidates` K > 1:
        the first drawn latent frame is drawn K times per clip and the one the prompt explains best is kept
        (`PatchAR.sample`); the result's `tokens` count every id drawn, the discarded candidates' too."""
        import torch

        if task not in ("t2v", "i2v"):
            raise DataError(f"a patch AR model draws text-to-video and i2v (frame continuation) only, not {task}")
        given = sorted(k for k, v in conditions.items() if v is not None and v != ())
        if given:
            raise DataError(f"a patch AR model takes no {', '.join(given)}: it draws from the prompt"
                            " (and, for i2v, the first frame) alone")
        if task == "t2v" and (image is not None or video is not None):
            raise DataError("task t2v takes no image or video: use task i2v to continue from a first frame")
        if top_p != 1.0:
            raise ConfigError("a patch AR model samples with temperature and top-k; top-p is not implemented for it")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        tok, T = self.model.text_tokenizer, self.model.cfg.max_text
        t0 = time.perf_counter()
        first = None
        if task == "i2v":
            with torch.inference_mode():
                first = first_frame_ids(self.codec, image, video, 1).cpu()
        text = [tok.encode_prompt(p, T) for p in prompts for _ in range(n)]
        negative = tok.encode_prompt(negative_prompt, T) if negative_prompt else []
        g = 1.0 if guidance is None else float(guidance)
        ids = self.model.sample(text, guidance=g, temperature=temperature, top_k=top_k, negative=negative,
                                first=first, generator=torch.Generator().manual_seed(int(seed)),
                                layout_candidates=layout_candidates)
        t1 = time.perf_counter()
        with torch.inference_mode():
            videos = to_uint8(self.codec.decode(ids.to(self.codec.device)))
        t2 = time.perf_counter()
        B, f0 = len(text), (0 if first is None else first.shape[0])
        # token evaluations per clip and stream: the output's ids and the discarded candidates'; unguided, the
        # no-prompt stream that scores the candidates runs for them alone (the cost counts one stream then)
        K, frame = int(layout_candidates), int(ids[0, 0].numel())
        drawn = int(ids[0, f0:].numel()) + (K - 1) * frame + (K * frame if K > 1 and g == 1.0 else 0)
        return GenerationResult(
            videos=videos, prompts=[p for p in prompts for _ in range(n)], seeds=[seed] * B,
            timings={"sample_s": t1 - t0, "decode_s": t2 - t1, "total_s": t2 - t0},
            tokens=B * drawn,
            info={"task": task, "guidance": guidance, "temperature": temperature, "top_k": top_k,
                  "negative_prompt": negative_prompt, "layout_candidates": int(layout_candidates),
                  "model": "patch_ar"},
            ids=ids[:, f0:],  # the output segment (i2v: the drawn frames), as the flat generator's
        )
