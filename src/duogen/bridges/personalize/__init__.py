"""Personalization: teach a trained model (AR or diffusion) a new concept from a few clips.

    from duogen.bridges.personalize import personalize, load_adapter
    personalize("lora", "runs/ar/final", "data/star", "runs/star-lora", token="<v1>")
    gen = load_generator("runs/ar/final"); load_adapter(gen, "runs/star-lora", "runs/ar/final", weight=0.8)

`METHODS` maps a method name to its procedure. Every procedure has one signature:

    fn(base_dir: Path, concept: Path, out_dir: Path, *, token: str, init_word: str | None = None,
       class_prompt: str | None = None, prior_weight: float = ..., steps: int = ..., max_minutes: float = 0.0,
       seed: int = 0, resume: str | None = None, overrides: tuple[str, ...] = (), **settings) -> dict

- base_dir: the base model directory (never modified); concept: a `duogen data make concept` data set or a
  `data import`-style folder (`common.prepare_concept` fits it to the base into OUT/concept);
- token: the placeholder in the captions; init_word: the coarse word a new embedding starts from (default:
  the concept's class word); class_prompt / prior_weight: prior preservation (methods that use it);
- steps / max_minutes: the budget (train.steps / train.max_minutes); resume: None | "auto" | a checkpoint;
- overrides: extra recipe `key=value`s; settings: the method's own keyword settings (`lr`, `rank`, ...);
- returns the run's summary: the engine's fields plus at least "method", "paradigm", "adapter" (the folder
  `load_adapter` reads: OUT/final), "adapter_bytes", "model_bytes".
Methods train through `common.run_recipe` (the AR / diffusion recipe with `--init-from`), so progress bars,
time budgets, checkpoints and exact resume are the engine's.

Owns: the method table, `personalize`, loading adapters (LoRA or a learned embedding) into a model or a
generator (`load_adapter`, `apply_adapters`, weights, fuse / unfuse).
Does not own: the methods (one file each), generation (`bridges/generate.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from ...errors import ConfigError
from .custom_diffusion import train_custom
from .dreambooth import train_dreambooth
from .lora import fuse_lora, is_lora_dir, load_lora, set_lora_weights, train_lora, unfuse_lora
from .textual_inversion import is_embedding_dir, load_embedding, train_textual_inversion

Method = Callable[..., dict[str, Any]]
METHODS: dict[str, Method] = {
    "lora": train_lora,
    "textual-inversion": train_textual_inversion,
    "dreambooth": train_dreambooth,
    "custom": train_custom,
}

__all__ = ["METHODS", "personalize", "load_adapter", "apply_adapters", "set_adapter_weights", "fuse_adapters",
           "unfuse_adapters", "adapter_dir", "parse_adapter"]


def personalize(method: str, base_dir: str | Path, concept: str | Path, out_dir: str | Path, **kw: Any) -> dict[str, Any]:
    """Run method `method` (a key of METHODS) with the common signature (module doc)."""
    if method not in METHODS:
        raise ConfigError(f"unknown personalization method {method!r}; allowed values: {', '.join(METHODS)}")
    return METHODS[method](Path(base_dir), Path(concept), Path(out_dir), **kw)


def adapter_dir(run: str | Path) -> Path:
    """A personalize run (its final/) or an adapter folder -> the folder holding the adapter files."""
    run = Path(run)
    for d in (run / "final", run):
        if is_lora_dir(d) or is_embedding_dir(d):
            return d
    raise ConfigError(f"{run}: no adapter there (no adapter_config.json + adapter_model.safetensors or"
                      " learned_embeds.safetensors); pass a `duogen personalize` run or its final/")


def _model(target: Any) -> Any:
    return getattr(target, "model", target)  # a Generator holds its model as .model


def load_adapter(target: Any, run: str | Path, base: str | Path, *, weight: float = 1.0, name: str | None = None,
                 base_sha256: str | None = None) -> str:
    """Load the adapter of `run` into `target` (a model or a generator of either paradigm, loaded from `base`).

    LoRA: added beside any loaded adapters, active at `weight`; returns its name. Textual Inversion: the
    placeholder joins the vocabulary (weight must be 1); returns the token."""
    d = adapter_dir(run)
    model = _model(target)
    if is_lora_dir(d):
        return load_lora(model, d, base, name=name, weight=weight, base_sha256=base_sha256)
    if weight != 1.0:
        raise ConfigError(f"{run}: a learned embedding (Textual Inversion) takes no weight; drop ':{weight:g}'")
    return load_embedding(model, d, base, base_sha256=base_sha256)


def parse_adapter(spec: str) -> tuple[str, float]:
    """"RUN[:weight]" -> (RUN, weight)."""
    path, sep, w = str(spec).rpartition(":")
    if sep and path:
        try:
            return path, float(w)
        except ValueError:
            pass
    return str(spec), 1.0


def apply_adapters(target: Any, base: str | Path, specs: Sequence[str]) -> list[dict[str, Any]]:
    """`duogen generate --adapter RUN[:weight]` (repeatable): load each, in order; returns what was loaded."""
    from ...io import file_sha256

    sha = file_sha256(Path(base) / "model.safetensors")  # once, not per adapter
    loaded = []
    for spec in specs:
        run, w = parse_adapter(spec)
        name = load_adapter(target, run, base, weight=w, base_sha256=sha)
        loaded.append({"adapter": run, "weight": w, "name": name})
    return loaded


def set_adapter_weights(target: Any, weights: dict[str, float]) -> None:
    """Activate exactly the named LoRA adapters of `target` at the given weights."""
    set_lora_weights(_model(target), weights)


def fuse_adapters(target: Any) -> None:
    """Fold the active LoRA adapters into the base weights (faster sampling; `unfuse_adapters` undoes it)."""
    fuse_lora(_model(target))


def unfuse_adapters(target: Any) -> None:
    unfuse_lora(_model(target))
