"""DreamBooth (Ruiz et al. 2023) on both paradigms: fine-tune the whole model (or the parameters `trainable`
names) on a few clips of a concept captioned with a new identifier, with prior preservation:

    L = L(x, c) + lambda * L(x_pr, c_pr)        (Eq. 2; lambda = prior_weight)

where x_pr are class clips the frozen model generates from the class prompts (the instance captions with the
identifier replaced by the class word: "<v1> moving left" -> "star moving left"). The identifier is a new
placeholder token whose row starts as the class word's (`add_tokens`); the training itself is the AR or
diffusion recipe (`--init-from` the base, `prior_data` / `prior_weight`, train/concept.py).

    dreambooth("assets/reference/dit", "data/star", "runs/db", DreamBoothConfig(class_word="star"))

Run directory: `concept/` (the concept fitted to the model's clip size), `class_clips/` (the prior data set), the recipe's run (config.yaml, metrics.jsonl, final/: a
model directory; a delta over the base when `trainable` is set), `personalize.json`.

Owns: the concept and placeholder checks, making the class clips, the DreamBooth run. Does not own: the loss
(train/concept.py), the recipes, generation (bridges.generate).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from ...errors import CheckpointError, ConfigError, DataError


@dataclass
class DreamBoothConfig:
    token: str = "<v1>"  # the identifier; must be new to the base model's vocabulary
    class_word: str = ""  # the concept's class ("triangle"); "" = the concept's own; the identifier starts as it
    prior_weight: float = 1.0  # lambda; 0 = no prior preservation (no class clips made)
    n_class: int = 32  # class clips the frozen model makes
    steps: int = 150
    lr: float = 2e-4
    batch_size: int = 4
    trainable: str = ""  # "" = the whole model
    max_minutes: float = 5.0  # time budget of the training (0 = none)
    class_guidance: float | None = None  # guidance of the class clips (None = the model's default)

    def check(self) -> None:
        if not self.token.strip() or " " in self.token:
            raise ConfigError(f"--token must be one word such as <v1>, got {self.token!r}")
        if self.prior_weight < 0 or self.n_class < 1 or self.steps < 1:
            raise ConfigError("prior_weight must be >= 0, n_class and steps >= 1")


def model_kind(model: str | Path) -> str:
    from ...io import read_json

    conf = read_json(Path(model) / "config.json")
    kind = conf.get("kind") if isinstance(conf, dict) else None
    if kind not in ("ar", "diffusion"):
        raise CheckpointError(f"{model}: holds a {kind!r} model; personalization needs an AR or a diffusion model")
    return kind


def clip_size(model: str | Path) -> tuple[int, int]:
    """(frames, size) of the clips the model's codec was trained on: what a concept's clips are fitted to."""
    from ...io import read_json

    model = Path(model)
    ref = read_json(model / "config.json").get("codec")
    if not ref:
        raise CheckpointError(f"{model}: names no codec; personalization needs the model's codec")
    path = Path(ref) if Path(ref).is_absolute() else model / ref
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{model}: its codec {path} is missing")
    c = read_json(path / "config.json").get("config", {})
    return int(c.get("frames", 9)), int(c.get("size", 32))


def prepare_concepts(model: str | Path, concepts: Sequence[tuple[str | Path, str]], out: Path) -> list[Any]:
    """Each (concept, token) read by `data.concepts.load_concept` (a made concept or a `data import` folder),
    fitted to the model's clip size, written together as one data set at `out` (`video`, `caption`) that the
    recipes read; returns the `ConceptData`s."""
    import datasets
    import numpy as np

    from ...data.concepts import load_concept
    from ...data.folder import write_dataset

    frames, size = clip_size(model)
    cs = [load_concept(c, size=size, frames=frames, token=t) for c, t in concepts]
    for (path, _), c in zip(concepts, cs):
        if len(c.videos) == 0:
            raise DataError(f"{path}: the concept folder holds no usable clip")
    videos = np.concatenate([c.videos for c in cs])  # (N, F, H, W, 3)
    captions = [t for c in cs for t in c.captions]
    feats = datasets.Features({"video": datasets.Array4D(tuple(videos.shape[1:]), "uint8"),
                               "caption": datasets.Value("string")})
    write_dataset(out, {"train": lambda: ({"video": v, "caption": t} for v, t in zip(videos, captions))}, feats,
                  overwrite=True)
    return cs


def check_new_token(model: str | Path, kind: str, token: str) -> None:
    """A placeholder the base model already has is refused (its row would be overwritten)."""
    from ...tokenizers.text import TextTokenizer

    tok = TextTokenizer.load(Path(model) / "text.model")
    known = set(getattr(tok, "placeholders", []))
    if kind == "ar":
        from ...tokenizers.vocab import UnifiedVocab

        known |= set(UnifiedVocab.load(Path(model)).tokens)
    if token in known:
        raise ConfigError(f"{token!r} is already in the vocabulary of {model}; choose another --token")


def class_prompts(captions: Sequence[str], token: str, class_word: str, n: int) -> list[str]:
    """The instance captions with the identifier replaced by the class word, cycled to n prompts."""
    base = [c.replace(token, class_word) for c in captions]
    return [base[i % len(base)] for i in range(n)]


def make_class_clips(model: str | Path, prompts: Sequence[str], out: str | Path, *, seed: int = 0,
                     guidance: float | None = None, batch: int = 16) -> Path:
    """Generate one clip per prompt with the frozen model (the generate API) into a data set at `out`
    (`video`, `caption`; split `train`): DreamBooth's class clips."""
    import datasets

    from ...data.folder import write_dataset
    from ...utils import progress
    from ..generate import load_generator

    gen = load_generator(model)
    kw = {} if guidance is None else {"guidance": guidance}
    clips = []
    for i in progress(range(0, len(prompts), batch), desc="class clips", unit="call"):
        res = gen.generate(list(prompts[i: i + batch]), n=1, seed=seed + i, **kw)
        clips += [(v, p) for v, p in zip(res.videos, res.prompts)]
    F, H, W, _ = clips[0][0].shape
    feats = datasets.Features({"video": datasets.Array4D((F, H, W, 3), "uint8"), "caption": datasets.Value("string")})
    write_dataset(out, {"train": lambda: ({"video": v, "caption": p} for v, p in clips)}, feats, overwrite=True)
    return Path(out)


def run_recipe(kind: str, model: str | Path, data: str | Path, out: Path, overrides: list[str], seed: int) -> dict[str, Any]:
    """The AR or diffusion recipe, fine-tuning `model` on `data` into the run `out`."""
    if kind == "ar":
        from ...train.ar_recipe import train_ar

        return train_ar(data, None, out, init_from=model, overrides=overrides, seed=seed)
    from ...train.diffusion_recipe import train_diffusion

    return train_diffusion(data, None, out, init_from=model, overrides=overrides, seed=seed)


def fine_tune_on_concept(model: str | Path, concepts: Sequence[tuple[str | Path, str, str]], out: str | Path, *,
                         method: str, prior_weight: float, n_class: int, train: list[str], seed: int,
                         class_guidance: float | None = None, extra: Sequence[str] = ()) -> dict[str, Any]:
    """What DreamBooth and Custom Diffusion share, for one concept or several trained jointly: the checks, the
    concepts as one data set, class clips from the frozen model (prior_weight > 0), the recipe run.
    `concepts`: (folder, token, class word or "" for the concept's own)."""
    model, out = Path(model), Path(out)
    kind = model_kind(model)
    tokens = [t for _, t, _ in concepts]
    if len(set(tokens)) != len(tokens):
        raise ConfigError(f"each concept needs its own placeholder; got {tokens}")
    for t in tokens:
        check_new_token(model, kind, t)
    cs = prepare_concepts(model, [(c, t) for c, t, _ in concepts], out / "concept")
    words = []
    for (path, _, word), c in zip(concepts, cs):
        word = word or c.class_word or ""
        if not word.strip():
            raise ConfigError(f"{path} names no class word: pass --class-word (the concept's coarse class, e.g. star)")
        words.append(word)
    t0 = time.perf_counter()
    overrides = ["add_tokens=[" + ",".join(f"{t}={w}" for t, w in zip(tokens, words)) + "]", *train, *extra]
    n_made = 0
    if prior_weight > 0:
        per = [class_prompts(c.captions, t, w, max(1, n_class // len(cs))) for c, t, w in zip(cs, tokens, words)]
        prompts = [p for ps in per for p in ps]
        make_class_clips(model, prompts, out / "class_clips", seed=seed, guidance=class_guidance)
        overrides += [f"prior_data={out / 'class_clips'}", f"prior_weight={prior_weight}"]
        n_made = len(prompts)
    t_class = time.perf_counter() - t0
    info = run_recipe(kind, model, out / "concept", out, overrides, seed)
    summary = {"method": method, "kind": kind, "base": str(model), "concepts": [str(c) for c, _, _ in concepts],
               "tokens": tokens, "class_words": words, "captions": [c.captions for c in cs],
               "prior_weight": prior_weight, "class_clips": n_made, "class_clips_s": round(t_class, 2),
               "train_s": round(float(info["wall_s"]), 2), "final": info["final"], "steps": info["steps"],
               "final_loss": info["final_loss"], "delta": info["delta"], "overrides": overrides}
    from ...io import atomic_write_json

    atomic_write_json(out / "personalize.json", summary)
    return summary


def dreambooth(model: str | Path, concept: str | Path, out: str | Path, cfg: DreamBoothConfig | None = None, *,
               seed: int = 0, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """DreamBooth on an AR or diffusion model directory; returns the run's summary (`personalize.json`)."""
    cfg = cfg or DreamBoothConfig()
    cfg.check()
    train = [f"train.steps={cfg.steps}", f"train.lr={cfg.lr}", f"train.batch_size={cfg.batch_size}",
             f"train.max_minutes={cfg.max_minutes}", "train.warmup_steps=0", "train.ema=0", "train.log_every=10"]
    if cfg.trainable:
        train.append(f"train.trainable={cfg.trainable}")
    s = fine_tune_on_concept(model, [(concept, cfg.token, cfg.class_word)], out, method="dreambooth",
                             prior_weight=cfg.prior_weight, n_class=cfg.n_class, train=train, seed=seed,
                             class_guidance=cfg.class_guidance, extra=overrides)
    return {**s, "config": asdict(cfg)}
