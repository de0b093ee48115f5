"""DreamBooth (Ruiz et al. 2023) on both paradigms: fine-tune the whole model (or the parameters `trainable`
names) on a few clips of a concept captioned with a new identifier, with prior preservation:

    L = L(x, c) + lambda * L(x_pr, c_pr)        (Eq. 2; lambda = prior_weight)

where x_pr are class clips the frozen model generates from the class prompts (the instance captions with the
identifier replaced by the class word: "<v1> moving left" -> "star moving left"). The identifier is a new
placeholder token whose row starts as the class word's (`add_tokens`); the training itself is the AR or
diffusion recipe (`--init-from` the base, `prior_data` / `prior_weight`, train/concept.py).

    train_dreambooth(Path("assets/reference/dit"), "data/star", Path("runs/db"), token="<v1>")  # METHODS signature

Run directory: `concept/` (the concept fitted to the base's clip size), `class_clips/` (the prior data set),
the recipe's run (config.yaml, metrics.jsonl, final/: a model directory; a delta over the base when
`trainable` is set), `personalize.json`.

Owns: making the class clips, the run DreamBooth and Custom Diffusion share (`fine_tune_on_concept`), the
DreamBooth method. Does not own: the loss (train/concept.py), the recipes, concept reading and the base
checks (common.py), generation (bridges.generate).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from ...errors import ConfigError


def class_prompts(captions: Sequence[str], token: str, class_word: str, n: int) -> list[str]:
    """The instance captions with the identifier replaced by the class word, cycled to n prompts."""
    base = [c.replace(token, class_word) for c in captions]
    return [base[i % len(base)] for i in range(n)]


def sample_clips(model: Any, prompts: Sequence[str], seed: int, guidance: float | None = None,
                 codec: Any = None) -> Any:
    """Clips uint8 (B, F, H, W, 3), one per prompt, from a loaded AR or diffusion model through the paradigms'
    own sampling (`ar_models.sampling.generate_ids` + the codec's decoder; `sample_latents` + `decode`).
    Not `bridges.generate`, which imports this package for `--adapter`. `codec`: the AR model's video codec."""
    import torch

    from ..result import to_uint8

    with torch.no_grad():
        if hasattr(model, "sample_latents"):
            return to_uint8(model.decode(model.sample_latents(list(prompts), n=1, seed=seed, guidance=guidance)))
        from ...ar_models.sampling import SamplingConfig, generate_ids

        ids = generate_ids(model, list(prompts), "t2v", n=1, seed=seed, sampling=SamplingConfig(guidance=guidance))
        return to_uint8(codec.decode(ids.to(codec.device)))


def make_class_clips(base_dir: str | Path, prompts: Sequence[str], out: str | Path, *, seed: int = 0,
                     guidance: float | None = None, batch: int = 16) -> Path:
    """One clip per prompt from the frozen base model into a data set at `out` (`video`, `caption`; split
    `train`): DreamBooth's class clips."""
    import datasets

    from ...data.folder import write_dataset
    from ...utils import progress
    from .common import base_info

    base_dir, codec = Path(base_dir), None
    if base_info(base_dir).paradigm == "ar":
        from ...ar_models.model import MultimodalLM
        from ...tokenizers import load as load_codec

        model = MultimodalLM.from_pretrained(base_dir)
        codec = load_codec(model.codec_path(base_dir))
    else:
        from ...diffusion.latent import LatentDiffusionModel

        model = LatentDiffusionModel.from_pretrained(base_dir)
    clips = []
    for i in progress(range(0, len(prompts), batch), desc="class clips", unit="call"):
        chunk = list(prompts[i: i + batch])
        clips += list(zip(sample_clips(model, chunk, seed + i, guidance, codec), chunk))
    F, H, W, _ = clips[0][0].shape
    feats = datasets.Features({"video": datasets.Array4D((F, H, W, 3), "uint8"), "caption": datasets.Value("string")})
    write_dataset(out, {"train": lambda: ({"video": v, "caption": p} for v, p in clips)}, feats, overwrite=True)
    return Path(out)


def concepts_data(info: Any, concepts: Sequence[tuple[str | Path, str]], out: Path, *, shifts: int | None = None,
                  seed: int = 0) -> list[Any]:
    """`common.prepare_concept` for each (concept, token), with its shifted copies; several concepts are joined
    into one data set at OUT/concept (the recipes read one). Returns the `PreparedConcept`s."""
    import shutil

    from ...data import load_dataset
    from ...data.folder import clip_features, write_dataset
    from .common import prepare_concept

    if len(concepts) == 1:
        return [prepare_concept(concepts[0][0], info, out, concepts[0][1], shifts=shifts, seed=seed)]
    parts = [prepare_concept(c, info, out / f"concept_{i}", t, shifts=shifts, seed=seed)
             for i, (c, t) in enumerate(concepts)]
    rows = [r for p in parts for r in load_dataset(p.data_dir)["train"].with_format("numpy")]
    write_dataset(out / "concept", {"train": lambda: ({"video": r["video"], "caption": str(r["caption"]),
                                                       "attributes": [], "boxes": []} for r in rows)},
                  clip_features(info.frames, info.size), overwrite=True)
    for i in range(len(parts)):
        shutil.rmtree(out / f"concept_{i}", ignore_errors=True)
    for p in parts:
        p.data_dir = out / "concept"
    return parts


def fine_tune_on_concept(base_dir: str | Path, concepts: Sequence[tuple[str | Path, str, str | None]],
                         out: str | Path, *, method: str, prior_weight: float, n_class: int, train: list[str],
                         seed: int, class_prompt: str | None = None, class_guidance: float | None = None,
                         resume: str | None = None, extra: Sequence[str] = (), shifts: int | None = None
                         ) -> dict[str, Any]:
    """What DreamBooth and Custom Diffusion share, for one concept or several trained jointly: the checks, the
    concepts as one data set, class clips from the frozen model (prior_weight > 0), the recipe run.
    `concepts`: (folder, token, class word or None for the concept's own)."""
    from ...io import atomic_write_json
    from .common import base_info, check_new_token, run_recipe

    out = Path(out)
    info = base_info(base_dir)
    tokens = [t for _, t, _ in concepts]
    if len(set(tokens)) != len(tokens):
        raise ConfigError(f"each concept needs its own placeholder; got {tokens}")
    for t in tokens:
        check_new_token(info, t)
    cs = concepts_data(info, [(c, t) for c, t, _ in concepts], out, shifts=shifts, seed=seed)
    words = []
    for (path, _, word), c in zip(concepts, cs):
        word = word or c.class_word or ""
        if not word.strip():
            raise ConfigError(f"{path} names no class word: pass --init-word (its coarse class, e.g. triangle)")
        words.append(word)
    t0 = time.perf_counter()
    overrides = ["add_tokens=[" + ",".join(f"{t}={w}" for t, w in zip(tokens, words)) + "]", *train, *extra]
    n_made = 0
    if prior_weight > 0:
        if class_prompt:
            prompts = [class_prompt] * n_class
        else:
            per = [class_prompts(c.captions, t, w, max(1, n_class // len(cs))) for c, t, w in zip(cs, tokens, words)]
            prompts = [p for ps in per for p in ps]
        if not (resume and (out / "class_clips").is_dir()):
            make_class_clips(info.path, prompts, out / "class_clips", seed=seed, guidance=class_guidance)
        overrides += [f"prior_data={out / 'class_clips'}", f"prior_weight={prior_weight}"]
        n_made = len(prompts)
    t_class = time.perf_counter() - t0
    summary = run_recipe(info, cs[0].data_dir, out, overrides, seed=seed, resume=resume)
    final = Path(summary["final"])
    model_bytes = (info.path / "model.safetensors").stat().st_size
    run = {"method": method, "paradigm": info.paradigm, "base": str(info.path),
           "concepts": [str(c) for c, _, _ in concepts], "tokens": tokens, "class_words": words,
           "captions": [c.captions for c in cs], "prior_weight": prior_weight, "class_clips": n_made,
           "class_clips_s": round(t_class, 2), "shifts": cs[0].shifts, "adapter": str(final),
           "adapter_bytes": (final / "model.safetensors").stat().st_size, "model_bytes": model_bytes}
    atomic_write_json(out / "personalize.json", {**run, "final": str(final), "overrides": overrides})
    return {**summary, **run}


def train_dreambooth(base_dir: Path, concept: str | Path, out_dir: Path, *, token: str, init_word: str | None = None,
                     class_prompt: str | None = None, prior_weight: float = 1.0, steps: int = 150,
                     max_minutes: float = 0.0, seed: int = 0, resume: str | None = None, lr: float = 2e-4,
                     n_class: int = 32, batch_size: int = 4, trainable: str = "", class_guidance: float | None = None,
                     shifts: int | None = None, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """DreamBooth with the METHODS signature (`duogen personalize --method dreambooth`). `init_word`: the class
    word (default the concept's); `class_prompt`: one prompt for every class clip (default: each caption with
    the class word for the placeholder); prior_weight 0 = no prior preservation. OUT/final is a model
    directory (a delta over the base when `trainable` is set): `duogen generate --model OUT/final`. shifts:
    `common.prepare_concept`'s (None: the paradigm's default)."""
    if prior_weight < 0 or n_class < 1 or steps < 1:
        raise ConfigError("prior_weight must be >= 0, n_class and steps >= 1")
    train = [f"train.steps={steps}", f"train.lr={lr}", f"train.batch_size={batch_size}",
             f"train.max_minutes={max_minutes}", "train.warmup_steps=0", "train.ema=0", "train.log_every=10"]
    if trainable:
        train.append(f"train.trainable={trainable}")
    return fine_tune_on_concept(base_dir, [(concept, token, init_word)], out_dir, method="dreambooth",
                                prior_weight=prior_weight, n_class=n_class, train=train, seed=seed,
                                class_prompt=class_prompt, class_guidance=class_guidance, resume=resume,
                                extra=overrides, shifts=shifts)
