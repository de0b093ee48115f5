"""Which weights a fine-tune moved: Delta_l = ||theta'_l - theta_l|| / ||theta_l|| per layer (Kumari et al. 2023,
Custom Diffusion, Sec. 3.1, the figure that shows cross-attention K/V moving most), for both paradigms.

    wc = weight_change("assets/reference/dit", "runs/db/final")   # model dirs (deltas too) or state dicts
    analyze("assets/reference/dit", "runs/db/final", "out/analyze")  # + analyze.json, delta_by_type.png

A "layer" is a module: its weight and bias together. A fused projection is split where the lecture's figure
needs it (the denoisers' `to_kv` into its K and V halves). Layer types: attention q / k / v / o, cross-attention
q / k / v / o (diffusion: the projections that read the text), MLP, norms, embeddings, output head, adaLN
modulation / timestep conditioning, text encoder, visual positions, conv, other. An embedding table that grew
(placeholder tokens) is compared on its old rows; its new rows are counted.

Owns: the per-layer change, layer-type names, the JSON and the plot. Does not own: loading models (duogen.io)
or training them (duogen.train).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from ...errors import CheckpointError

# (glob over the module name, layer type); first match wins. AR names come from transformers' Llama under
# `lm.`, diffusion names from duogen's DiT / U-Nets under `denoiser.` and the text encoder under `text_encoder.`.
LAYER_TYPES: list[tuple[str, str]] = [
    ("*embed_tokens", "embedding"), ("text_encoder.embed", "embedding"), ("*lm_head", "output head"),
    ("*self_attn.q_proj", "attn q"), ("*self_attn.k_proj", "attn k"), ("*self_attn.v_proj", "attn v"),
    ("*self_attn.o_proj", "attn o"),
    ("text_encoder", "text encoder"), ("text_encoder.*", "text encoder"),
    ("*time_embed*", "embedding"), ("*pooled_proj*", "embedding"), ("*patch_embed", "embedding"),
    ("denoiser.proj_out", "output head"), ("*conv_out", "output head"),
    ("*.cross.to_q", "cross q"), ("*.cross.to_kv.k", "cross k"), ("*.cross.to_kv.v", "cross v"),
    ("*.cross.to_out", "cross o"),
    ("*.to_q", "attn q"), ("*.to_kv.k", "attn k"), ("*.to_kv.v", "attn v"), ("*.to_out", "attn o"),
    ("*mlp*", "mlp"), ("*norm*", "norm"), ("*.ada", "conditioning"), ("*ada_out", "conditioning"),
    ("*.emb", "conditioning"), ("visual_pos.*", "positions"), ("*conv*", "conv"),
]
TYPE_ORDER = ["embedding", "positions", "attn q", "attn k", "attn v", "attn o", "cross q", "cross k", "cross v",
              "cross o", "mlp", "norm", "conditioning", "conv", "text encoder", "output head", "other"]


@dataclass
class LayerChange:
    name: str  # module name (`lm.model.layers.0.self_attn.k_proj`, `denoiser.blocks.2.cross.to_kv.k`)
    type: str  # one of TYPE_ORDER
    index: int | None  # the block / layer number, None outside the stack
    delta: float | None  # ||theta' - theta|| / ||theta||; None when ||theta|| = 0
    abs_change: float  # ||theta' - theta||
    params: int  # elements compared
    new_rows: int = 0  # rows an embedding table grew by (not part of delta)


@dataclass
class WeightChange:
    layers: list[LayerChange]
    by_type: dict[str, dict[str, float]]  # type -> mean / max / n / params

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [asdict(x) for x in self.layers], "by_type": self.by_type}


def layer_type(module: str) -> str:
    for pattern, kind in LAYER_TYPES:
        if fnmatch.fnmatchcase(module, pattern):
            return kind
    return "other"


def _index(module: str) -> int | None:
    m = re.search(r"\.(?:layers|blocks|down|up|mid|levels)\.(\d+)", module)
    return int(m.group(1)) if m else None


def _modules(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Parameters grouped by module: {module: {"weight": t, "bias": t}}; a fused `to_kv` becomes `.k` and `.v`."""
    out: dict[str, dict[str, Any]] = {}
    for key, t in state.items():
        mod, _, leaf = key.rpartition(".")
        if mod.endswith(".to_kv"):  # (2D, in) rows: K then V (blocks.Attention)
            half = t.shape[0] // 2
            out.setdefault(mod + ".k", {})[leaf] = t[:half]
            out.setdefault(mod + ".v", {})[leaf] = t[half:]
        else:
            out.setdefault(mod or key, {})[leaf] = t
    return out


def _state(model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config, state dict) of a model directory (a delta lays its tensors over its base), a module, or a dict."""
    from ...io import load_model_dir

    if isinstance(model, (str, Path)):
        return load_model_dir(model)
    if hasattr(model, "state_dict"):
        return {}, dict(model.state_dict())
    return {}, dict(model)


def check_same_base(base: Any, tuned: Any) -> None:
    """A delta directory `tuned` must have been made over `base`'s weights (same checksum)."""
    from ...io import CONFIG_NAME, DELTA_KEY, WEIGHTS_NAME, file_sha256, read_json

    if not isinstance(base, (str, Path)) or not isinstance(tuned, (str, Path)):
        return
    conf = read_json(Path(tuned) / CONFIG_NAME)
    ref = conf.get(DELTA_KEY) if isinstance(conf, dict) else None
    if ref and isinstance(ref, dict) and ref.get("sha256") != file_sha256(Path(base) / WEIGHTS_NAME):
        raise CheckpointError(f"{tuned} was fine-tuned from {ref.get('path')}, not from {base} (other weights);"
                              f" pass its base model as BASE")


def weight_change(base: Any, tuned: Any) -> WeightChange:
    """Delta_l = ||theta'_l - theta_l||_F / ||theta_l||_F for every module of `base` (weight and bias together)."""
    import torch

    check_same_base(base, tuned)
    bconf, b = _state(base)
    tconf, t = _state(tuned)
    if bconf.get("kind") != tconf.get("kind"):
        raise CheckpointError(f"{tuned} holds a {tconf.get('kind')!r} model, {base} a {bconf.get('kind')!r} one;"
                              " compare a fine-tune with its own base model")
    missing = sorted(set(b) ^ set(t))
    if missing:
        raise CheckpointError(f"{tuned} and {base} are different architectures (e.g. {missing[0]!r} is in only one);"
                              " compare a fine-tune with its own base model")
    bm, tm = _modules(b), _modules(t)
    layers = []
    for mod, leaves in bm.items():
        num = den = 0.0
        n = new_rows = 0
        for leaf, x in leaves.items():
            y = tm[mod][leaf]
            x, y = x.float(), y.float()
            if x.shape != y.shape:
                if x.dim() != y.dim() or x.shape[1:] != y.shape[1:] or y.shape[0] < x.shape[0]:
                    raise CheckpointError(f"{mod}.{leaf}: shape {tuple(x.shape)} in {base}, {tuple(y.shape)} in"
                                          f" {tuned}; compare a fine-tune with its own base model")
                new_rows = y.shape[0] - x.shape[0]  # a table that grew: compare its old rows
                y = y[: x.shape[0]]
            num += float(torch.sum((y - x) ** 2))
            den += float(torch.sum(x ** 2))
            n += x.numel()
        delta = (num ** 0.5) / (den ** 0.5) if den > 0 else None
        layers.append(LayerChange(mod, layer_type(mod), _index(mod), delta, num ** 0.5, n, new_rows))
    by_type: dict[str, dict[str, float]] = {}
    for kind in TYPE_ORDER:
        ds = [x.delta for x in layers if x.type == kind and x.delta is not None]
        if ds:
            by_type[kind] = {"mean": sum(ds) / len(ds), "max": max(ds), "n": len(ds),
                             "params": sum(x.params for x in layers if x.type == kind)}
    return WeightChange(layers, by_type)


def plot_weight_change(wc: WeightChange, path: Path, title: str = "") -> Path:
    """Two panels: Delta per layer type (bar = mean, dots = layers) and Delta against depth per type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(wc.by_type)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    a.bar(range(len(kinds)), [wc.by_type[k]["mean"] for k in kinds], color="#9ecae1", label="mean")
    for i, k in enumerate(kinds):
        ds = [x.delta for x in wc.layers if x.type == k and x.delta is not None]
        a.scatter([i] * len(ds), ds, s=10, color="#08519c", zorder=3)
    a.set_xticks(range(len(kinds)), kinds, rotation=45, ha="right")
    a.set_yscale("symlog", linthresh=1e-4)
    a.set_ylabel("Delta_l = ||theta' - theta|| / ||theta||")
    a.set_title(title or "weight change per layer type")
    a.grid(alpha=0.3)
    for k in kinds:
        pts = sorted((x.index, x.delta) for x in wc.layers
                     if x.type == k and x.index is not None and x.delta is not None)
        if pts:
            by: dict[int, list[float]] = {}
            for i, d in pts:
                by.setdefault(i, []).append(d)
            xs = sorted(by)
            b.plot(xs, [sum(by[i]) / len(by[i]) for i in xs], marker="o", label=k)
    b.set_xlabel("layer / block index")
    b.set_yscale("symlog", linthresh=1e-4)
    b.set_title("by depth")
    b.grid(alpha=0.3)
    if b.lines:
        b.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def analyze(base: str | Path, tuned: str | Path, out: str | Path) -> dict[str, Any]:
    """`weight_change` of two model directories, written to OUT/analyze.json and OUT/delta_by_type.png."""
    from ...io import atomic_write_json

    out = Path(out)
    wc = weight_change(base, tuned)
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_weight_change(wc, out / "delta_by_type.png", f"{Path(tuned).name} vs {Path(base).name}")
    moved = sorted((x for x in wc.layers if x.delta is not None), key=lambda x: -x.delta)[:5]
    summary = {"base": str(base), "tuned": str(tuned), **wc.to_dict(), "plot": plot.name,
               "most_moved": [{"name": x.name, "type": x.type, "delta": x.delta} for x in moved]}
    atomic_write_json(out / "analyze.json", summary)
    return {"base": str(base), "tuned": str(tuned), "out": str(out), "by_type": wc.by_type,
            "most_moved": summary["most_moved"], "plot": str(plot)}
