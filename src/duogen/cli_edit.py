"""`duogen edit`: edit a video or image file with a trained model (AR or diffusion) and any editing technique.

Owns: the command's parser wiring, reading the input and the mask file, writing the outputs (edited clips as MP4
+ GIF, the fitted source, the model's reconstruction of it, the mask, `edit.json`). Does not own: the techniques
(`bridges.edit`), the generators. Never writes over the input: --out may not be or hold the input file.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cli_common import command
from .errors import ConfigError, DataError
from .guards import add_overwrite_argument

if TYPE_CHECKING:
    import numpy as np

DESCRIPTION = (
    "Edit one clip or image (fitted to the model's size, with a warning) with a trained next-token or diffusion"
    " model, and write into --out: edit_NN.mp4 / .gif per edited clip, source.* (the fitted input),"
    " reconstruction.* (the input through the model: the codec's round trip, or the inversion's), mask.gif when"
    " a mask was used, and edit.json (method, settings, forward passes, seconds, files). The input is never"
    " modified.\n\nMethods: sdedit (noise to --strength and denoise under --prompt; AR: re-sample the --strength"
    " share of tokens least likely under --prompt), invert (invert under --source-prompt, sample under --prompt:"
    " DDIM + null-text for diffusion, the codec ids and the sampling noise for AR), diffedit (a mask from where the"
    " two prompts' predictions differ, then a masked edit); p2p, imagic, ip2p where this build has them."
)


def _read_input(path: str) -> np.ndarray:
    from .data.media import media_kind, read_image, read_video

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: input file not found")
    try:
        kind = media_kind(p)
    except DataError:
        raise DataError(f"{p}: not a video or image file this command reads (.mp4, .gif, .png, .jpg, ...)") from None
    if kind == "audio":
        raise DataError(f"{p}: an audio file; `duogen edit` edits video clips and images")
    return read_video(p) if kind == "video" else read_image(p)[None]  # (F, H, W, 3)


def _read_mask(path: str) -> np.ndarray:
    """A mask file: .npy of (F, H, W) / (H, W) (nonzero = edit), or an image / clip (a lit pixel = edit)."""
    import numpy as np

    p = Path(path)
    if p.suffix.lower() == ".npy":
        if not p.is_file():
            raise DataError(f"{p}: mask file not found")
        try:
            return np.load(p, allow_pickle=False) != 0
        except Exception as e:
            raise DataError(f"{p}: cannot read the mask ({type(e).__name__}: {e})") from None
    m = _read_input(path)  # (F, H, W, 3)
    m = m.max(-1) > 127
    return m[0] if m.shape[0] == 1 else m


def _model_kind(model: str) -> Any:
    from .errors import CheckpointError
    from .io import read_json

    p = Path(model) / "config.json"
    if not p.is_file():
        raise CheckpointError(f"{model}: no config.json; give a trained model directory (RUN/final)")
    conf = read_json(p)
    return conf.get("kind") if isinstance(conf, dict) else None


def _write_clip(out: Path, stem: str, clip: np.ndarray, fps: float) -> list[str]:
    from .data.media import write_gif, write_image, write_mp4

    if clip.shape[0] == 1:
        return [str(write_image(out / f"{stem}.png", clip[0]))]
    return [str(write_mp4(out / f"{stem}.mp4", clip, fps=fps)), str(write_gif(out / f"{stem}.gif", clip, fps=fps))]


def run_edit(a: argparse.Namespace) -> dict[str, Any]:
    from .bridges.edit import METHODS
    from .guards import claim_output

    t0 = time.perf_counter()
    if a.method not in METHODS:
        raise ConfigError(f"--method {a.method!r} is not available; allowed values: {', '.join(METHODS)}")
    if a.strength is not None and not 0.0 <= a.strength <= 1.0:
        raise ConfigError(f"--strength must be in [0, 1] (0 keeps the source, 1 redraws all), got {a.strength}")
    if a.eta is not None and a.method != "imagic":  # not the DDIM sampler's eta, which the other methods would take
        raise ConfigError(f"--eta is Imagic's embedding mix (--method imagic), not a setting of {a.method!r}")
    src_path, out = Path(a.input).resolve(), Path(a.out).resolve()
    if src_path == out or out in src_path.parents:
        raise ConfigError(f"--out {a.out} holds the input file; write the edit somewhere else")
    with claim_output(a.out, overwrite=a.overwrite, command="duogen edit") as target:  # refused before any work
        return _edit_into(a, target, t0)


def _edit_into(a: argparse.Namespace, target: Path, t0: float) -> dict[str, Any]:
    from .bridges.edit import edit
    from .bridges.generate import load_generator
    from .io import atomic_write_json

    video = _read_input(a.input)
    mask: Any = None
    if a.mask and a.mask != "auto":
        mask = _read_mask(a.mask)
    kind = _model_kind(a.model)
    if kind not in ("ar", "diffusion"):
        raise DataError(f"{a.model}: holds a {kind!r} model; `duogen edit` edits AR and diffusion video models")
    gen = load_generator(a.model)
    kw: dict[str, Any] = {"prompt": a.prompt, "source_prompt": a.source_prompt, "n": a.n, "seed": a.seed}
    for name in ("strength", "guidance", "steps", "tau", "eta", "threshold", "image_guidance", "instruction"):
        if getattr(a, name, None) is not None:
            kw[name] = getattr(a, name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if a.mask == "auto" and a.method != "diffedit":  # diffedit makes its own automatic mask
            from .bridges.edit.diffedit import auto_mask

            if not a.source_prompt:
                raise ConfigError("--mask auto needs --source-prompt (a caption of the input) to compare with --prompt")
            mask = auto_mask(gen, video, prompt=a.prompt, source_prompt=a.source_prompt, seed=a.seed)
        res = edit(gen, video, a.method, mask=mask, **kw)
    notes = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
    for note in notes:
        print(f"duogen: warning: {note}", file=sys.stderr)
    files: list[str] = []
    target.mkdir(parents=True, exist_ok=True)
    for k, clip in enumerate(res.videos):
        files += _write_clip(target, f"edit_{k:02d}", clip, a.fps)
    files += _write_clip(target, "source", res.source, a.fps)
    files += _write_clip(target, "reconstruction", res.reconstruction, a.fps)
    if res.mask is not None:
        import numpy as np

        from .data.media import write_gif

        lit = np.repeat(res.mask[..., None], 3, -1).astype(np.uint8) * 255  # (F, H, W, 3)
        files.append(str(write_gif(target / "mask.gif", lit, fps=a.fps)))
    summary = {"model": str(a.model), "kind": gen.kind, "input": str(a.input), "method": a.method,
               "files": files, "warnings": notes, "info": res.info, "seconds_total": time.perf_counter() - t0}
    atomic_write_json(target / "edit.json", summary)
    return summary


def add_edit(sub: Any) -> None:
    """Register `duogen edit` on the top-level subparsers."""
    p = command(sub, "edit", "edit a clip or image with a trained model (sdedit, invert, diffedit, ...)", run_edit,
                description=DESCRIPTION)
    p.add_argument("--model", required=True, help="model directory (AR or diffusion; RUN/final)")
    p.add_argument("--input", required=True, help="the clip or image to edit (.mp4 .gif .png .jpg ...); never modified")
    p.add_argument("--out", required=True, help="output directory")
    add_overwrite_argument(p)
    p.add_argument("--method", default="sdedit", help="sdedit | invert | diffedit | p2p | imagic | ip2p")
    p.add_argument("--prompt", "--target-prompt", dest="prompt", default=None, help="the target description")
    p.add_argument("--source-prompt", default=None, help="a caption of the input (invert, diffedit, --mask auto, p2p)")
    p.add_argument("--instruction", default=None, help="ip2p: the edit as an instruction ('make it blue')")
    p.add_argument("--mask", default=None,
                   help="FILE (.npy (F, H, W) or (H, W), or an image / clip: lit pixels may change) or 'auto'"
                        " (DiffEdit's mask from the two prompts); outside it the source is kept exactly")
    p.add_argument("--strength", type=float, default=None,
                   help="in [0, 1]: how much is redrawn (sdedit default 0.6; diffedit: inside the mask, default 0.8 /"
                        " AR 1); 0 returns the source's reconstruction")
    p.add_argument("--tau", type=float, default=None, help="p2p: share of the steps that inject the source's attention")
    p.add_argument("--eta", type=float, default=None,
                   help="imagic: the target embedding's share (1 = the target prompt, 0 = the input; default 0.7)")
    p.add_argument("--threshold", type=float, default=None, help="diffedit: mask threshold on the rescaled difference (0.5)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (text); default: a diffusion model's stored one, 3 for AR")
    p.add_argument("--image-guidance", type=float, default=None, help="ip2p: the image guidance scale")
    p.add_argument("--steps", type=int, default=None, help="diffusion: sampling steps (default: the model's)")
    p.add_argument("--n", type=int, default=1, help="edited clips")
    p.add_argument("--fps", type=float, default=8, help="frames per second of the written clips")
