"""Personalization benchmark: every method of `duogen.bridges.personalize.METHODS` on both paradigms, from the
shipped reference models, on one concept (`duogen data make concept`, default: star).

Per method and paradigm:
- concept fidelity: cosine similarity, in the probe shape classifier's 128-d penultimate features (object
  crops, mean over frames), of each generated object to each example clip's object, averaged, divided by the
  examples' mean similarity to each other (1.0 = as close to the examples as they are to each other). Prompts
  "a {color} <v1> moves {direction}". The row "base, class word" is the base model prompted with the class
  word instead (the floor).
- prompt fidelity: share of those clips whose probes read the prompt's color / direction (duogen.eval.probes);
  "beside": prompts "a {color} <v1> moves {direction} and a {color2} circle sits still", share with both
  objects' colors found.
- prior drift: probe accuracy (mean of color, direction, shape) on validation prompts of the shapes world, base
  minus tuned, in points; leak: share of class-word prompts ("a red triangle moves left") whose object is
  closer to the concept than the midpoint between the base's class objects and the examples (by the similarity
  above). DreamBooth runs with and without prior preservation.
- size on disk (the weight files of OUT/final), its share of the base's model.safetensors bytes (the references
  ship float16, fine-tunes save float32), parameters stored there, training
  time (the engine's wall time, plus the class clips where made).

Run: OMP_NUM_THREADS=1 PYTHONPATH=src python bench/bench_personalize.py [--paradigms ar,diffusion]
     [--methods lora,dreambooth] [--steps 100] [--max-minutes 1.5] [--shifts K] [--section out/personalize.json]
Figures depend on the machine's load (a shared 2-core CPU here); targets are printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REF = Path(__file__).resolve().parents[1] / "src" / "duogen" / "assets" / "reference"
TARGETS = {"fidelity": 0.85, "direction": 0.85, "color": 0.90, "drift": 2.0, "lora_fraction": 0.01, "minutes": 5.0}
PAIRS = [("red", "left"), ("blue", "up"), ("green", "right"), ("yellow", "down")]


def object_features(clip: np.ndarray, color: str | None = None) -> np.ndarray | None:
    """128-d penultimate features of the shape classifier for one object (the prompt's color, else the largest)."""
    from duogen.eval.objects import object_crops, object_masks
    from duogen.eval.shape_classifier import load_shape_classifier

    masks = object_masks(np.asarray(clip, np.uint8))
    if not masks:
        return None
    name = color if color in masks else max(masks, key=lambda k: masks[k].sum())
    crops = object_crops(np.asarray(clip, np.uint8), masks[name])
    if len(crops) == 0:
        return None
    net = load_shape_classifier().model
    with torch.no_grad():
        x = torch.as_tensor(np.asarray(crops, np.float32))[:, None] * 2.0 - 1.0
        f = net.head[:3](net.features(x))  # (n, 128)
    return f.mean(0).numpy()


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def similarity(feats: list, examples: list) -> float:
    """Mean cosine similarity of each feature to each example (a clip with no object scores 0)."""
    if not feats:
        return 0.0
    return float(np.mean([np.mean([cos(f, e) for e in examples]) if f is not None else 0.0 for f in feats]))


def clip_scores(clips, colors, motions) -> dict[str, float]:
    from duogen.eval.probes import prompt_accuracy

    acc = [prompt_accuracy(c, [{"color": col, "motion": m, "shape": ""}]) for c, col, m in zip(clips, colors, motions)]
    return {"color": float(np.mean([a["color"] for a in acc])), "direction": float(np.mean([a["direction"] for a in acc]))}


def val_accuracy(gen, prompts, attrs, seed) -> float:
    from duogen.eval.probes import prompt_accuracy

    clips = gen.generate(prompts, n=1, seed=seed).videos
    acc = [prompt_accuracy(c, a) for c, a in zip(clips, attrs)]
    return 100.0 * float(np.mean([(a["color"] + a["direction"] + a["shape"]) / 3 for a in acc]))


def weight_bytes(d: Path) -> int:
    """Bytes of the weight files in a run's final/ (the adapter, the embedding, or the model / delta; not the
    codec copy a diffusion model directory carries)."""
    return sum(p.stat().st_size for p in Path(d).glob("*.safetensors"))


def stored_params(d: Path) -> int:
    from duogen.io import load_state_dict

    return sum(int(t.numel()) for p in Path(d).glob("*.safetensors") for t in load_state_dict(p).values())


def evaluate(gen, token: str, class_word: str, examples: list, val, seed: int, base_class: list | None) -> dict:
    """Concept fidelity, prompt fidelity, beside, validation accuracy and leak of one generator."""
    prompts = [f"a {c} {token} moves {d}" for c, d in PAIRS for _ in range(2)]
    colors = [c for c, _ in PAIRS for _ in range(2)]
    motions = [d for _, d in PAIRS for _ in range(2)]
    clips = gen.generate(prompts, n=1, seed=seed).videos
    feats = [object_features(c, col) for c, col in zip(clips, colors)]
    out = {"sim": similarity(feats, examples), **clip_scores(clips, colors, motions)}
    beside = [f"a {c} {token} moves {d} and a {'white' if c != 'white' else 'red'} circle sits still" for c, d in PAIRS]
    bclips = gen.generate(beside, n=1, seed=seed + 1).videos
    from duogen.eval.probes import probe_clip

    found = [{r.color for r in probe_clip(v)} for v in bclips]
    out["beside"] = float(np.mean([c in f and ("white" if c != "white" else "red") in f for (c, _), f in zip(PAIRS, found)]))
    out["val"] = val_accuracy(gen, val[0], val[1], seed + 2)
    cls_prompts = [f"a {c} {class_word} moves {d}" for c, d in PAIRS]
    cclips = gen.generate(cls_prompts, n=1, seed=seed + 3).videos
    cfeats = [object_features(c, col) for c, (col, _) in zip(cclips, PAIRS)]
    out["class_feats"] = cfeats
    if base_class is not None:
        s_ex = np.mean([np.mean([cos(a, b) for b in examples if b is not a]) for a in examples])
        s_base = similarity(base_class, examples)
        mid = (s_ex + s_base) / 2
        out["leak"] = float(np.mean([f is not None and np.mean([cos(f, e) for e in examples]) > mid for f in cfeats]))
    return out


def plot_rows(rows: list, path: Path) -> Path:
    """Concept fidelity and drift per method, one bar group per paradigm (targets dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    paradigms = list(dict.fromkeys(r[0] for r in rows))
    methods = list(dict.fromkeys(r[1] for r in rows))
    w = 0.8 / len(paradigms)
    for k, (ax, col, title, target) in enumerate(zip(axes, (2, 7), ("concept fidelity", "drift (points)"),
                                                     (TARGETS["fidelity"], TARGETS["drift"]))):
        for j, p in enumerate(paradigms):
            vals = [next((float(r[col]) for r in rows if r[0] == p and r[1] == m and r[col] != "-"), 0.0)
                    for m in methods]
            ax.bar(np.arange(len(methods)) + j * w, vals, w, label=p)
        ax.axhline(target, ls="--", color="gray", lw=1)
        ax.set_xticks(np.arange(len(methods)) + w * (len(paradigms) - 1) / 2, methods, rotation=30, ha="right")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def tuned_generator(method: str, base: Path, run: Path):
    from duogen.bridges.generate import load_generator
    from duogen.bridges.personalize import apply_adapters

    if method in ("lora", "textual-inversion"):
        gen = load_generator(base)
        apply_adapters(gen, base, [str(run)])
        return gen
    return load_generator(run / "final")


def main() -> None:
    from duogen.bridges.generate import load_generator
    from duogen.bridges.personalize import METHODS, personalize
    from duogen.data import load_dataset, make_dataset
    from duogen.data.concepts import make_concept

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paradigms", default="ar,diffusion")
    ap.add_argument("--methods", default=",".join(METHODS), help="keys of METHODS (dreambooth also runs without prior)")
    ap.add_argument("--concept", default="star")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--max-minutes", type=float, default=1.5, help="training budget per method")
    ap.add_argument("--n-class", type=int, default=16, help="class clips for dreambooth / custom")
    ap.add_argument("--n-val", type=int, default=12, help="validation prompts for the drift")
    ap.add_argument("--shifts", type=int, default=None,
                    help="`personalize`'s shifts for every method (default: each method's own for the paradigm)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--section", default=None, help="write a report section JSON here (+ its plot beside it)")
    ap.add_argument("--ar", default=str(REF / "ar"), help="the AR base model (default: the shipped reference)")
    ap.add_argument("--dit", default=str(REF / "dit"), help="the diffusion base model (default: the shipped reference)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("DUOGEN_QUIET", "1")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_pers_"))
    token = "<v1>"
    info = make_concept(args.concept, work / "concept", n=6, overwrite=True)
    class_word = info["class_word"]
    ex = load_dataset(work / "concept")["train"].with_format("numpy")
    examples = [object_features(np.asarray(v, np.uint8)) for v in ex["video"]]
    examples = [e for e in examples if e is not None]
    s_ex = float(np.mean([np.mean([cos(a, b) for j, b in enumerate(examples) if j != i]) for i, a in enumerate(examples)]))
    make_dataset("shapes", work / "shapes", n=20 * args.n_val, seed=7, overwrite=True)
    vs = load_dataset(work / "shapes")["validation"]
    val = (list(vs["caption"][: args.n_val]), list(vs["attributes"][: args.n_val]))
    rows, raw = [], []
    for paradigm in args.paradigms.split(","):
        base = Path(args.ar if paradigm == "ar" else args.dit)
        gen = load_generator(base)
        b = evaluate(gen, class_word, class_word, examples, val, args.seed, None)  # the floor: the class word
        base_class = b["class_feats"]
        rows.append([paradigm, "base, class word", round(b["sim"] / s_ex, 3), f"{b['color']:.0%}", f"{b['direction']:.0%}",
                     f"{b['beside']:.0%}", f"{b['val']:.1f}", "-", "-", "-", "-", "-", "-"])
        model_bytes = (base / "model.safetensors").stat().st_size
        runs = [(m, {}) for m in args.methods.split(",")]
        if "dreambooth" in args.methods.split(","):
            runs.append(("dreambooth", {"prior_weight": 0.0, "_name": "dreambooth, no prior"}))
        for method, extra in runs:
            name = extra.pop("_name", method)
            run = work / f"{paradigm}_{name.replace(', ', '_').replace(' ', '_')}"
            kw = dict(extra)
            if args.shifts is not None:
                kw["shifts"] = args.shifts
            if method in ("dreambooth", "custom"):
                kw["n_class"] = args.n_class
            t0 = time.perf_counter()
            s = personalize(method, base, work / "concept", run, token=token, steps=args.steps,
                            max_minutes=args.max_minutes, seed=args.seed, overrides=("train.log_every=10",), **kw)
            wall = time.perf_counter() - t0
            e = evaluate(tuned_generator(method, base, run), token, class_word, examples, val, args.seed, base_class)
            final = run / "final"
            frac = weight_bytes(final) / model_bytes
            rows.append([paradigm, name, round(e["sim"] / s_ex, 3), f"{e['color']:.0%}", f"{e['direction']:.0%}",
                         f"{e['beside']:.0%}", f"{e['val']:.1f}", f"{b['val'] - e['val']:+.1f}", f"{e['leak']:.0%}",
                         f"{weight_bytes(final) / 1024:.0f} KiB ({frac:.2%})", f"{stored_params(final):,}",
                         f"{float(s.get('wall_s', 0)):.0f} s / {s.get('steps')} steps", f"{wall:.0f} s"])
            raw.append({"paradigm": paradigm, "method": name, "eval": {k: v for k, v in e.items() if k != "class_feats"},
                        "summary": {k: v for k, v in s.items() if isinstance(v, (int, float, str))}})
            print(" | ".join(map(str, rows[-1])), flush=True)
    cols = ["paradigm", "method", "concept fidelity", "color", "direction", "beside", "val acc", "drift (pts)", "leak",
            "size on disk", "params stored", "training", "total (train+class clips+eval)"]
    width = [max(len(str(r[i])) for r in rows + [cols]) for i in range(len(cols))]
    for r in [cols] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, width)))
    cmd = ("OMP_NUM_THREADS=1 PYTHONPATH=src python bench/bench_personalize.py --paradigms " + args.paradigms
           + f" --methods {args.methods} --steps {args.steps} --max-minutes {args.max_minutes} --n-class {args.n_class}"
           + "".join(f" --{k} {v}" for k, v in (("ar", args.ar), ("dit", args.dit)) if Path(v) != REF / k))
    if args.section:
        from duogen.io import atomic_write_json

        plot = plot_rows(rows, Path(args.section).with_name("personalize_bench.png"))
        sec = {"title": "Personalization: concept, prompt fidelity, drift and cost per method",
               "intro": (f"Concept {args.concept!r} (class word {class_word!r}), {args.steps} steps or"
                         f" {args.max_minutes} min per method, from {args.ar} (AR) and {args.dit} (DiT), {args.threads} thread(s) on"
                         " a shared loaded CPU. Targets: concept fidelity >= 0.85, color >= 90%, direction >= 85%,"
                         " drift <= 2 points with prior preservation, LoRA <= 1% of the model's bytes,"
                         " <= 5 minutes per method."),
               "tables": [{"caption": "per method and paradigm", "columns": cols, "rows": rows}],
               "plots": [plot.name],
               "notes": ("concept fidelity: mean cosine similarity of generated objects to the examples in the probe"
                         " classifier's features / the examples' own mean similarity; drift: validation probe"
                         " accuracy (color, direction, shape) of the base minus the tuned model, in points; leak:"
                         " class-word prompts whose object is closer to the concept than the midpoint between the"
                         " base's class objects and the examples. Per-run details: personalize_raw.json beside."),
               "command": cmd}
        atomic_write_json(Path(args.section), sec)
        atomic_write_json(Path(args.section).with_name("personalize_raw.json"), raw)
    print("command:", cmd)


if __name__ == "__main__":
    main()
