"""LoRA on both paradigms through `peft` (Hu et al. 2021): h = W x + (alpha / r) * w * B A x, B = 0 at the start.

Where the adapters go: on the AR model, the Llama's attention and MLP projections (`q_proj k_proj v_proj
o_proj gate_proj up_proj down_proj` of every layer, in `model.lm`); on a diffusion model, the denoiser's
(DiT's or a U-Net's) attention projections (`to_q to_kv to_out`, self and cross attention) and MLP
projections (`mlp.net.0`, `mlp.net.2`). The layers are `peft`'s own (`inject_adapter_in_model`), so the
AR sampler, which reads peft LoRA layers live, samples the adapted model.

On disk an adapter is peft's format: `adapter_config.json` (a `LoraConfig`, `base_model_name_or_path` = the
base directory) + `adapter_model.safetensors` (peft's key names, relative to `model.lm` / `model.denoiser`),
whose metadata holds the paradigm, the module it adapts and the base's `model.safetensors` SHA-256: loading
on another base is refused. The weights are stored in the precision of the base's weight matrices (the
shipped references store float16 matrices; a float32 base gets float32 adapters, bit-exact round trips).

Several adapters at once, each with a weight w: `load_lora(model, dir, name=..., weight=...)` per adapter,
`set_lora_weights(model, {name: w})`; `fuse_lora` folds the active adapters into W (`unfuse_lora` takes them
out again).

Owns: LoRA settings, adding, saving, loading, weighting, fusing LoRA; `train_lora` (the `lora` method).
Does not own: the engine and recipes (`duogen.train`), concept data (`duogen.data.concepts`).
"""

from __future__ import annotations

import fnmatch
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ...errors import CheckpointError, ConfigError
from .common import BaseInfo, base_info, check_base, prepare_concept, run_recipe, train_overrides

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# Module-name globs per paradigm (relative to the adapted module): attention and MLP projections.
TARGETS = {
    "ar": ["*.self_attn.q_proj", "*.self_attn.k_proj", "*.self_attn.v_proj", "*.self_attn.o_proj",
           "*.mlp.gate_proj", "*.mlp.up_proj", "*.mlp.down_proj"],
    "diffusion": ["*.to_q", "*.to_kv", "*.to_out", "*.mlp.net.0", "*.mlp.net.2", "*.ff.net.0", "*.ff.net.2"],
}


@dataclass
class LoraSettings:
    """r: the rank; alpha: the scale numerator (alpha / r); targets: module-name globs ([] = the paradigm's)."""

    r: int = 2  # `train_lora` picks it when not given: the largest rank within the 1% size budget (`auto_rank`)
    alpha: float = 4.0
    targets: list[str] = field(default_factory=list)

    def check(self) -> None:
        if self.r < 1:
            raise ConfigError(f"LoRA rank r must be at least 1, got {self.r}")


def adapted_module(model: nn.Module) -> tuple[str, nn.Module]:
    """The part of a duogen model LoRA adapts: ("lm", the Llama) or ("denoiser", the DiT / U-Net)."""
    if hasattr(model, "lm"):
        return "lm", model.lm
    if hasattr(model, "denoiser"):
        return "denoiser", model.denoiser
    raise ConfigError(f"{type(model).__name__} is neither an AR model (.lm) nor a diffusion model (.denoiser)")


def target_names(module: nn.Module, globs: list[str]) -> list[str]:
    """Names of the `nn.Linear` modules matching any glob (peft's own LoRA layers are looked through)."""
    names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear) and ".lora_" not in n
             and not n.endswith(".base_layer")]
    hit = sorted(n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs))
    if not hit:
        raise ConfigError(f"LoRA targets {globs} match no linear layer; names look like: {', '.join(names[:6])}")
    return hit


def lora_layers(model: nn.Module) -> list[Any]:
    from peft.tuners.lora import LoraLayer

    return [m for m in adapted_module(model)[1].modules() if isinstance(m, LoraLayer)]


def add_lora(model: nn.Module, settings: LoraSettings | None = None, name: str = "default") -> Any:
    """Add a fresh adapter `name` (B = 0: a no-op until trained) to `model`; returns its `LoraConfig`."""
    from peft import LoraConfig, inject_adapter_in_model

    s = settings or LoraSettings()
    s.check()
    what, module = adapted_module(model)
    paradigm = "ar" if what == "lm" else "diffusion"
    cfg = LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=0.0, bias="none",
                     target_modules=target_names(module, s.targets or TARGETS[paradigm]))
    inject_adapter_in_model(cfg, module, adapter_name=name)
    _activate(model, [name])
    return cfg


def _activate(model: nn.Module, names: list[str]) -> None:
    for layer in lora_layers(model):
        layer.set_adapter([n for n in names if n in layer.lora_A])


def lora_state(model: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's tensors under peft's key names (relative to the adapted module, adapter name left out)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(
        adapted_module(model)[1], adapter_name=name, save_embedding_layers=False).items()}


def save_lora(model: nn.Module, out: str | Path, base: str | Path, name: str = "default") -> Path:
    """Write adapter `name` in peft's format (see the module doc) with the base's identity; returns `out`."""
    from ...io import atomic_write_json, load_state_dict, save_state_dict

    out, info = Path(out), base_info(base)
    out.mkdir(parents=True, exist_ok=True)
    what, module = adapted_module(model)
    cfg = module.peft_config[name]
    cfg.base_model_name_or_path = str(info.path.resolve())
    d = cfg.to_dict()
    d["target_modules"] = sorted(d["target_modules"])
    atomic_write_json(out / CONFIG_NAME, json.loads(json.dumps(d, default=list)))
    dtype = _stored_dtype(load_state_dict(info.path / "model.safetensors"))
    state = {k: v.to(dtype) for k, v in lora_state(model, name).items()}
    meta = {"format": "peft-lora", "paradigm": info.paradigm, "module": what, "base": str(info.path.resolve()),
            "base_sha256": info.sha256}
    save_state_dict(state, out / WEIGHTS_NAME, metadata=meta)
    return out


def _stored_dtype(state: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The dtype the base stores its weight matrices in (float16 for the shipped references)."""
    mats = [v.dtype for v in state.values() if v.ndim >= 2 and v.is_floating_point()]
    return max(set(mats), key=mats.count) if mats else torch.float32


def is_lora_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_NAME).is_file() and (Path(path) / WEIGHTS_NAME).is_file()


def load_lora(model: nn.Module, adapter: str | Path, base: str | Path, *, name: str | None = None,
              weight: float = 1.0, base_sha256: str | None = None) -> str:
    """Add the adapter saved at `adapter` to `model` (loaded from `base`) as `name`, active at `weight`;
    returns the name. Refuses an adapter whose base is another model, or another paradigm."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors import safe_open

    from ...io import file_sha256, load_state_dict

    adapter = Path(adapter)
    with safe_open(str(adapter / WEIGHTS_NAME), "pt") as f:
        meta = f.metadata() or {}
    check_base(meta, base_sha256 or file_sha256(Path(base) / "model.safetensors"), adapter, base)
    what, module = adapted_module(model)
    if meta.get("module") != what:
        raise CheckpointError(f"{adapter} adapts a model's {meta.get('module')!r}; this model's LoRA goes on {what!r}")
    name = name or f"adapter{len(getattr(module, 'peft_config', {}))}"
    if name in getattr(module, "peft_config", {}):
        raise ConfigError(f"an adapter named {name!r} is already loaded; give another name")
    cfg = LoraConfig.from_pretrained(str(adapter))
    with warnings.catch_warnings():  # peft warns that a second adapter makes "multiple adapters": that is the point
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        inject_adapter_in_model(cfg, module, adapter_name=name)
    dtype = next(module.parameters()).dtype
    state = {k: v.to(dtype) for k, v in load_state_dict(adapter / WEIGHTS_NAME).items()}
    res = set_peft_model_state_dict(module, state, adapter_name=name)
    missing = [k for k in getattr(res, "missing_keys", []) if f".{name}." in k and "lora_" in k]
    if missing:
        raise CheckpointError(f"{adapter}: {len(missing)} adapter tensors are missing (e.g. {missing[0]})")
    active = active_lora(model)
    _activate(model, [*active, name])
    set_lora_weights(model, {**{n: _weights(model).get(n, 1.0) for n in active}, name: weight})
    return name


def active_lora(model: nn.Module) -> list[str]:
    layers = lora_layers(model)
    return list(layers[0].active_adapters) if layers else []


def _weights(model: nn.Module) -> dict[str, float]:
    return dict(getattr(model, "_lora_weights", {}))


def set_lora_weights(model: nn.Module, weights: Mapping[str, float]) -> None:
    """Activate exactly the adapters named in `weights`, each scaled by its weight (0 = off, base output)."""
    if is_fused(model):
        raise ConfigError("the adapters are fused into the weights; unfuse_lora(model) before changing them")
    for layer in lora_layers(model):
        for n, w in weights.items():
            if n not in layer.lora_A:
                raise ConfigError(f"no adapter named {n!r} is loaded (loaded: {', '.join(layer.lora_A)})")
            layer.set_scale(n, float(w))  # scaling[n] = w * alpha / r
    _activate(model, list(weights))
    object.__setattr__(model, "_lora_weights", {n: float(w) for n, w in weights.items()})


def is_fused(model: nn.Module) -> bool:
    return any(layer.merged for layer in lora_layers(model))


@torch.no_grad()
def fuse_lora(model: nn.Module) -> None:
    """Fold the active adapters (at their weights) into the base weights: W <- W + sum_i w_i (alpha/r) B_i A_i."""
    for layer in lora_layers(model):
        layer.merge(adapter_names=list(layer.active_adapters))


@torch.no_grad()
def unfuse_lora(model: nn.Module) -> None:
    """Take fused adapters back out of the base weights (back to W, up to float rounding)."""
    for layer in lora_layers(model):
        layer.unmerge()


def auto_rank(model: nn.Module, budget_bytes: float, itemsize: int, targets: list[str] | None = None) -> int:
    """The largest rank whose adapter file fits `budget_bytes` (at least 1): each rank adds (in + out) values per
    adapted layer; the safetensors header costs about 160 bytes per tensor (two per layer)."""
    what, module = adapted_module(model)
    names = target_names(module, targets or TARGETS["ar" if what == "lm" else "diffusion"])
    mods = dict(module.named_modules())
    per_rank = sum(mods[n].in_features + mods[n].out_features for n in names) * itemsize
    return max(1, int((budget_bytes - 160 * 2 * len(names) - 1024) // per_rank))


def lora_bytes(adapter: str | Path) -> int:
    return sum((Path(adapter) / n).stat().st_size for n in (CONFIG_NAME, WEIGHTS_NAME))


# ----------------------------------------------------------------------------- the method


def train_lora(base_dir: Path, concept: str | Path, out_dir: Path, *, token: str, init_word: str | None = None,
               class_prompt: str | None = None, prior_weight: float = 0.0, steps: int = 300,
               max_minutes: float = 0.0, seed: int = 0, resume: str | None = None, lr: float = 3e-3,
               rank: int = 0, alpha: float = 0.0, budget: float = 0.01, shifts: int | None = None,
               overrides: tuple[str, ...] = ()
               ) -> dict[str, Any]:
    """LoRA on the concept's clips with their placeholder captions (the placeholder stays plain text: the
    base's tokenizer reads "<v1>" as its byte pieces, a rare identifier; no vocabulary change, so the adapter
    loads on the unmodified base). OUT/final holds the adapter.

    rank 0 = the largest rank whose adapter fits `budget` (a fraction) of the base's model.safetensors bytes;
    alpha 0 = 2 * rank (a fixed alpha / r = 2, so the learning rate need not change with the rank); shifts:
    each clip and shifts - 1 copies with the object moved (`common.prepare_concept`; None: the paradigm's
    default)."""
    from ...io import load_state_dict

    info: BaseInfo = base_info(base_dir)
    c = prepare_concept(concept, info, out_dir, token, shifts=shifts, seed=seed)
    model_bytes = (info.path / "model.safetensors").stat().st_size
    itemsize = _stored_dtype(load_state_dict(info.path / "model.safetensors")).itemsize
    ov = train_overrides(c.clips, steps, lr, max_minutes, "*.lora_A.*,*.lora_B.*") + list(overrides)
    chosen: dict[str, int] = {}

    def prepare(model: Any) -> None:
        r = rank or auto_rank(model, budget * model_bytes, itemsize)
        chosen["r"] = r
        add_lora(model, LoraSettings(r=r, alpha=alpha or 2.0 * r))

    def save(model: Any, path: Path) -> None:
        save_lora(model, path, base_dir)

    summary = run_recipe(info, c.data_dir, out_dir, ov, seed=seed, resume=resume, prepare=prepare, save_final=save)
    final = out_dir / "final"
    return {**summary, "method": "lora", "paradigm": info.paradigm, "adapter": str(final),
            "adapter_bytes": lora_bytes(final), "model_bytes": model_bytes,
            "adapter_fraction": lora_bytes(final) / model_bytes, "rank": chosen.get("r"), "clips": c.clips,
            "shifts": c.shifts, "captions": c.captions}
