"""One `generate` over both paradigms: load any model directory, sample clips from prompts.

Owns: `load_generator(dir)` (dispatch on `config.json` "kind"), the AR implementation (`ARGenerator`:
prompt -> tokens -> the codec's decoder; t2a / v2a through the audio codec),
reading and fitting user condition files (--image / --video), and
`generate_to_dir` (MP4 + GIF per clip, or a WAV per sound, and a
`generation.json` with prompts, seeds and timings; with `save_latents`, the
result's ids / noise / latents as safetensors) behind `duogen generate`.

The diffusion paradigm plugs in at `_GENERATORS["diffusion"]` (`diffusion.py`;
its `from_pretrained(directory, codec)` returns a `Generator`). The
`Generator` protocol and `GenerationResult` live in `result.py`, below both.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import CheckpointError, DataError
from ..tokenizers import load as load_codec
from .conditions import first_frame_ids, fit_clip, read_media
from .diffusion import DiffusionGenerator
from .patch_generator import PatchARGenerator
from .result import GenerationResult, Generator, to_uint8


class ARGenerator:
    """A `MultimodalLM` + its codec (and audio codec, for t2a / v2a) behind the `Generator` protocol."""

    kind = "ar"

    def __init__(self, model: Any, codec: Any, audio_codec: Any = None):
        self.model, self.codec, self.audio_codec = model.eval(), codec, audio_codec
        self.decoder = model.decoder()  # built once (rotary tables); it reads the live model at every call

    @classmethod
    def from_pretrained(cls, directory: str | Path, codec: str | Path | None = None,
                        audio_codec: str | Path | None = None) -> "ARGenerator":
        """The model in `directory` with the codecs it references (or `codec` / `audio_codec` instead).

        A missing audio codec is an error only when an audio task is asked for (in `generate`).
        """
        from ..ar_models.model import MultimodalLM

        model = MultimodalLM.from_pretrained(directory)
        path = Path(codec) if codec is not None else model.codec_path(directory)
        if path is None or not Path(path).exists():
            raise CheckpointError(
                f"{directory}: the codec it was trained on ({model.codec_ref}) is not there; pass --codec DIR"
            )
        audio = Path(audio_codec) if audio_codec is not None else model.codec_path(directory, audio=True)
        return cls(model, load_codec(path), load_codec(audio) if audio is not None and audio.exists() else None)

    # ------------------------------------------------------------------ conditions
    def condition(self, task: str, image: Any = None, video: Any = None) -> dict[str, Any]:
        """User files or arrays -> codec ids of the condition segment for `task`."""
        import torch

        from ..ar_models.layouts import MASKED_TASKS, masked_clip

        image, video = read_media(image, video)
        with torch.inference_mode():
            if task == "i2v":
                return {"first": first_frame_ids(self.codec, image, video, self.model.spec.cond_frames)}
            if task in MASKED_TASKS or task == "v2a":
                if video is None:
                    raise DataError(f"task {task} needs a clip: pass --video FILE")
                clip = fit_clip(self.codec, np.asarray(video), stacklevel=3)
                if task == "v2a":
                    return {"video": self.codec.encode(clip)[0]}
                return {"masked": self.codec.encode(masked_clip(clip, task))[0]}
        if image is not None or video is not None:
            warnings.warn(f"task {task} takes no image or video; the file is ignored", UserWarning, stacklevel=2)
        return {}

    def _controls(self, task: str, controls: Sequence[Any], condition: tuple[str, Any] | None) -> list[Any]:
        """The controls that run (scale != 0), loaded and their conditions read (`bridges.control.active_controls`)."""
        if not controls:
            if condition is not None:
                raise DataError(f"a {condition[0]} condition steers only through a control: give controls=[RUN] too")
            return []
        if task != "t2v":
            raise DataError(f"controls steer text-to-video generation (task t2v), not {task}")
        from .control import active_controls

        return [a for a in active_controls(self, list(controls), condition) if float(a.scale) != 0.0]

    # ------------------------------------------------------------------ edit
    def edit(self, source: Any, method: str = "sdedit", **kw: Any) -> Any:
        """Edit one clip (uint8 (F, H, W, 3)) with a technique of `bridges.edit.METHODS` -> `EditResult`;
        keywords as `bridges.edit.edit` (prompt, source_prompt, n, seed, mask, strength, guidance, ...)."""
        from .edit import edit

        return edit(self, source, method, **kw)

    # ------------------------------------------------------------------ generate
    def generate(
        self,
        prompts: Sequence[str],
        n: int = 1,
        seed: int = 0,
        *,
        task: str = "t2v",
        guidance: float | None = None,
        negative_prompt: str | None = None,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        image: Any = None,
        video: Any = None,
        callback: Callable | None = None,
        ids: Any = None,
        controls: Sequence[Any] = (),
        condition: tuple[str, Any] | None = None,
        layout_candidates: int = 1,
        **unused: Any,
    ) -> GenerationResult:
        """Clips (or sounds) for `prompts`, n each. `ids`: output codec ids to keep instead of sampling, per clip
        (B = len(prompts) * n rows, or one row for all): a result's `ids` (the same seed decodes the same clip),
        a flat (B, k) prefix of them (the rest is sampled), entries < 0 sampled.

        `controls` (t2v): trained AR controls, each "RUN[:scale]" (read against `condition` = (kind, FILE), kind
        boxes / mask / edges) or an ActiveControl-like object (.module, .condition: a batch of 1 or
        len(prompts) * n from `bridges.control.collate_conditions`, .scale); see `bridges/control.py`. A control
        at scale 0 is not run: the clips are the base's, bit for bit."""
        import contextlib

        import torch

        from ..ar_models.sampling import ControlRows, SamplingConfig, generate_ids

        if unused:
            raise DataError(f"the AR generator does not take {', '.join(sorted(unused))}")
        from ..ar_models.layouts import AUDIO_TASKS, check_task

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        check_task(task, self.model.spec)
        if task in AUDIO_TASKS and self.audio_codec is None:
            raise DataError(f"task {task} decodes through the audio codec this model was trained on"
                            f" ({self.model.audio_codec_ref}), which is not there")
        t0 = time.perf_counter()
        cond = self.condition(task, image, video)
        s = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, guidance=guidance)
        forced = ids
        active = self._controls(task, controls, condition)
        t1 = time.perf_counter()
        with contextlib.ExitStack() as stack:
            streams = []
            if active:
                rows = ControlRows(self.model, self.decoder, [self.model.encode_prompt(p) for p in prompts for _ in range(n)],
                                   self.model.encode_prompt(negative_prompt) if negative_prompt else [], guidance is not None)
                for a in active:
                    st = stack.enter_context(a.module.sampling(rows, a.condition, float(a.scale)))
                    if st is not None:
                        streams.append(st)
            ids = generate_ids(self.model, prompts, task, n=n, seed=seed, sampling=s, negative_prompt=negative_prompt,
                               cond=cond, callback=callback, decoder=self.decoder, forced_ids=forced, streams=streams,
                               layout_candidates=layout_candidates)
        out_ids = ids.clone()  # (B, ...) the output segment's codec ids, before i2v prepends the given frames
        t2 = time.perf_counter()
        B = len(prompts) * n
        audio, rate = None, 0
        if task in AUDIO_TASKS:
            a = ids.reshape(B, self.model.spec.audio_tokens, -1).transpose(1, 2)  # (B, T, L) -> (B, L, T), the codec's order
            with torch.inference_mode():
                audio = self.audio_codec.decode(a.to(self.audio_codec.device))[:, 0].float().cpu().numpy()  # (B, S)
            videos, rate = np.zeros((0, 0, 0, 0, 3), np.uint8), int(self.audio_codec.cfg.sample_rate)
        else:
            if task == "i2v":
                first = torch.as_tensor(cond["first"]).to(ids.dtype)[None].expand(ids.shape[0], -1, -1, -1)
                ids = torch.cat([first, ids], dim=1)  # (B, f, h, w): given frames + generated ones
            with torch.inference_mode():
                videos = to_uint8(self.codec.decode(ids.to(self.codec.device)))
        t3 = time.perf_counter()
        return GenerationResult(
            videos=videos,
            prompts=[p for p in prompts for _ in range(n)],
            seeds=[seed] * B,
            timings={"condition_s": t1 - t0, "sample_s": t2 - t1, "decode_s": t3 - t2, "total_s": t3 - t0},
            tokens=B * (int(out_ids[0].numel())
                        + self._candidate_tokens(layout_candidates, guidance not in (None, 1.0))),
            info={"task": task, "guidance": guidance, "temperature": temperature, "top_k": top_k, "top_p": top_p,
                  "negative_prompt": negative_prompt, **({"sample_rate": rate} if audio is not None else {}),
                  **({"forced_ids": True} if forced is not None else {}),
                  **({"layout_candidates": int(layout_candidates)} if layout_candidates != 1 else {}),
                  **({"control_scales": [float(a.scale) for a in active]} if active else {})},
            audio=audio,
            sample_rate=rate,
            ids=out_ids,
        )

    def _candidate_tokens(self, k: int, guided: bool) -> int:
        """Token evaluations the layout candidates add per clip and stream: k first latent frames (none at k = 1;
        the kept one is decoded again, as given ids, in the output's pass); unguided, the no-prompt stream that
        scores them runs for them alone, so they count twice (the cost counts one stream then)."""
        _, h, w = self.model.spec.latent
        return int(k) * h * w * (1 if guided else 2) if int(k) > 1 else 0


LATENTS_FILE = "latents.safetensors"  # what `duogen generate --save-latents` writes beside the clips
BATCH = 16  # clips per generate call in `generate_to_dir`: memory stays bounded whatever --n is

# kind in config.json -> loader(directory, codec)
_GENERATORS: dict[str, Callable[..., Generator]] = {"ar": ARGenerator.from_pretrained,
                                                    "diffusion": DiffusionGenerator.from_pretrained,
                                                    "patch_ar": PatchARGenerator.from_pretrained}


def load_generator(directory: str | Path, codec: str | Path | None = None) -> Generator:
    """Any duogen model directory -> its `Generator` (dispatch on config.json "kind"); `codec`: decode through
    this codec directory instead of the one the model references."""
    from ..io import read_json

    directory = Path(directory)
    conf = read_json(directory / "config.json")
    kind = conf.get("kind") if isinstance(conf, dict) else None
    if kind not in _GENERATORS:
        raise CheckpointError(
            f"{directory}: config.json kind is {kind!r}; `generate` knows: {', '.join(sorted(_GENERATORS))}"
        )
    if codec is not None and not Path(codec).is_dir():
        raise CheckpointError(f"{codec}: --codec is not a directory (give a codec directory, RUN/final)")
    return _GENERATORS[kind](directory, codec)


def _n_calls(n_prompts: int, n: int, batch: int) -> int:
    """How many calls `_calls` makes, without listing them (a refused job of 10^9 clips is counted, not built)."""
    if n >= batch:
        return n_prompts * -(-n // batch)
    return -(-n_prompts // (batch // n))


def _calls(n_prompts: int, n: int, batch: int) -> Iterator[tuple[int, int, int, int]]:
    """Split prompts x n into generate calls of at most `batch` clips: (first prompt, prompts, first sample, n)."""
    if n >= batch:
        yield from ((p, 1, k, min(batch, n - k)) for p in range(n_prompts) for k in range(0, n, batch))
    else:
        per = batch // n
        yield from ((p, min(per, n_prompts - p), 0, n) for p in range(0, n_prompts, per))


def _write_result(res: GenerationResult, out: Path, p0: int, k0: int, n: int, fps: float) -> list[str]:
    """One call's clips (or sounds) as files named by prompt index p0 + i // n and sample index k0 + i % n."""
    from ..data.media import write_gif, write_image, write_mp4, write_wav

    files = []
    for i, clip in enumerate(res.videos):
        stem = out / f"clip_{p0 + i // n:03d}_{k0 + i % n:02d}"
        if clip.shape[0] == 1:  # an image (t2i)
            files.append(str(write_image(stem.with_suffix(".png"), clip[0])))
        else:
            files.append(str(write_mp4(stem.with_suffix(".mp4"), clip, fps=fps)))
            files.append(str(write_gif(stem.with_suffix(".gif"), clip, fps=fps)))
    for i, wave in enumerate(res.audio if res.audio is not None else []):
        files.append(str(write_wav(out / f"audio_{p0 + i // n:03d}_{k0 + i % n:02d}.wav", wave,
                                   sample_rate=res.sample_rate)))
    return files


def generate_to_dir(model: str | Path, prompts: Sequence[str], out: str | Path, *, n: int = 1, seed: int = 0,
                    fps: float = 8, save_latents: bool = False, codec: str | Path | None = None,
                    adapters: Sequence[str] = (), **kwargs: Any) -> dict[str, Any]:
    """`duogen generate`: write clip_PPP_NN.mp4 / .gif (audio tasks: audio_PPP_NN.wav) per sample and
    generation.json; return the summary.

    `save_latents`: also write LATENTS_FILE, the result's per-clip tensors as safetensors (row i = the
    i-th file: AR "ids"; diffusion "noise" and "latents"), which `generate` takes back (ids= / noise= /
    latents= with start_step=); generation.json names it under "latents_file".

    Clips are made BATCH at a time (a progress bar when there is more than one call; call c uses seed + c),
    so memory stays bounded; after the first call the whole job's bytes are estimated and refused when
    they cannot fit on the disk. `codec`: a codec directory to decode through instead of the model's.
    `adapters`: "RUN[:weight]" of `duogen personalize` runs, loaded on top of the model (`personalize.apply_adapters`).
    """
    from ..guards import check_fits
    from ..io import atomic_write_json, save_state_dict
    from ..utils import progress

    t0 = time.perf_counter()
    gen = load_generator(model, codec)
    loaded = []
    if adapters:
        from .personalize import apply_adapters

        loaded = apply_adapters(gen, model, adapters)
    t_load = time.perf_counter() - t0
    prompts = list(prompts)
    given = any(k in kwargs for k in ("ids", "noise", "latents"))  # tensors for every clip: one call
    calls = iter([(0, len(prompts), 0, n)]) if given else _calls(len(prompts), n, BATCH)  # lazily: a job may be huge
    n_calls = 1 if given else _n_calls(len(prompts), n, BATCH)
    out = Path(out)
    files: list[str] = []
    res_prompts: list[str] = []
    seeds: list[int] = []
    timings: dict[str, float] = {}
    tensors: dict[str, list[Any]] = {}
    tokens, info, kind = 0, {}, gen.kind
    bar = progress(total=len(prompts) * n, desc="generating", unit="clip", disable=None if n_calls > 1 else True)
    for c, (p0, np_, k0, nk) in enumerate(calls):
        # call c > 0 uses seed + c: a run of at most BATCH clips is one call with `seed`, as before
        res = gen.generate(prompts[p0: p0 + np_], n=nk, seed=seed + c, **kwargs)
        if c == 0 and n_calls > 1:  # the raw clip bytes bound what MP4 + GIF (or WAV) take: check the disk
            per_clip = (res.videos.nbytes + (res.audio.nbytes if res.audio is not None else 0)) / max(np_ * nk, 1)
            check_fits(out, per_clip * len(prompts) * n, f"{len(prompts) * n} clips")
        out.mkdir(parents=True, exist_ok=True)
        files += _write_result(res, out, p0, k0, nk, fps)
        res_prompts += res.prompts
        seeds += list(res.seeds)
        tokens += int(res.tokens or 0)
        info = res.info
        for key, v in res.timings.items():
            timings[key] = timings.get(key, 0.0) + float(v)
        if save_latents:
            for key, v in res.tensors().items():
                tensors.setdefault(key, []).append(v)
        bar.update(np_ * nk)
    bar.close()
    latents_file = None
    if save_latents:
        import torch

        cat = {key: torch.cat([torch.as_tensor(t) for t in v]) for key, v in tensors.items()}
        latents_file = str(save_state_dict(cat, out / LATENTS_FILE, {"kind": kind, "n": str(n)}))
    summary = {
        "model": str(model),
        "kind": kind,
        "prompts": res_prompts,
        "seeds": seeds,
        "n": n,
        "files": files,
        "timings": {"load_s": t_load, **timings},
        "tokens": tokens,
        "clips_per_s": len(res_prompts) / max(timings.get("total_s", 0.0), 1e-9),
        **({"calls": n_calls} if n_calls > 1 else {}),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in {**info, **kwargs}.items()
                     if k not in ("callback",) and not hasattr(v, "shape")},  # arrays and tensors are not settings
        **({"latents_file": latents_file} if latents_file else {}),
        **({"adapters": loaded} if loaded else {}),
    }
    atomic_write_json(out / "generation.json", summary)
    return summary
