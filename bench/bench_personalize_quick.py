"""A quick read of LoRA and Textual Inversion on the shipped reference models (AR and DiT).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_personalize_quick.py --out runs/pq [--kind star] [--steps 200]
        [--max-minutes 3.5] [--n 16] [--section runs/pq/section.json]

For each paradigm and method: `duogen personalize` on a `duogen data make concept` set (training wall time,
steps, adapter bytes against the base's model.safetensors bytes), then `duogen generate --adapter` on the
prompt-fidelity prompts, read by the probes (duogen.eval.probes): the share of clips whose object has the
prompt's color, and the share whose object moves in the prompt's direction, next to the base model without
the adapter on the same prompts and seeds; and the concept loss (`personalize.common.concept_loss`: the model's
deterministic loss on the concept clips under their captions) with the adapter and without, on the training clips
and on held-out ones: the concept in the palette colors its clips lack, at other places, sizes and motions
(`duogen data make concept --seed 1 colors=...`). A model that learned the concept lowers both; one that
memorised its clips lowers the first and raises the second. Shape similarity to the concept is the full benchmark's
(bench/bench_personalize.py). Every number printed comes from the commands this script runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / "src" / "duogen" / "assets" / "reference"
PROMPTS = {"a red <v1> moves left": ("red", "left"), "<v1> moving left, in red": ("red", "left")}


def duogen(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "DUOGEN_QUIET": "1"}
    res = subprocess.run([sys.executable, "-m", "duogen", *args, "--json"], env=env, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"duogen {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout)


def read(gen_dir: Path, color: str, motion: str) -> tuple[float, float]:
    """(color share, direction share) over the clips of one `duogen generate` output."""
    import imageio.v3 as iio
    import numpy as np

    from duogen.eval.probes import prompt_accuracy

    accs = []
    for f in json.loads((gen_dir / "generation.json").read_text())["files"]:
        if not f.endswith(".gif"):
            continue
        clip = np.asarray(iio.imread(gen_dir / Path(f).name, index=None))[..., :3]  # (F, H', W', 3)
        accs.append(prompt_accuracy(_fit(clip), [{"color": color, "motion": motion, "shape": "?"}]))
    return (float(np.mean([a["color"] for a in accs])), float(np.mean([a["direction"] for a in accs])))


def _fit(clip, size: int = 32):
    """The GIF is upscaled by a whole factor k (nearest): every k-th pixel gives back the clip."""
    k = clip.shape[1] // size
    return clip[:, k // 2::k, k // 2::k]


def unseen_colors(concept: Path) -> list[str]:
    """The palette colors none of the concept's clips has."""
    from duogen.data import load_dataset
    from duogen.data.shapes import PALETTE

    seen = {a["color"] for clip in load_dataset(concept)["train"]["attributes"] for a in clip}
    return [c for c in PALETTE if c not in seen]


def concept_losses(base: Path, concepts: list[Path], run: Path | None) -> list[float]:
    """`concept_loss` on each concept set, of the base model or of the base with the run's adapter loaded (one load)."""
    from duogen.ar_models.model import MultimodalLM
    from duogen.bridges.personalize import load_adapter
    from duogen.bridges.personalize.common import concept_loss
    from duogen.diffusion.latent import LatentDiffusionModel

    kind = json.loads((base / "config.json").read_text())["kind"]
    m = (MultimodalLM if kind == "ar" else LatentDiffusionModel).from_pretrained(base)
    if run is not None:
        load_adapter(m, run, base)
    return [concept_loss(m, base, c) for c in concepts]


def grid(out: Path, concept: Path, paradigms: list[str], methods: list[str], n: int = 8) -> Path:
    """A PNG: the middle frame of the first `n` clips of prompt 0, one row per (paradigm, base | method), and the
    concept's clips in the last row."""
    import imageio.v3 as iio
    import numpy as np

    from duogen.data import load_dataset

    rows = []
    for p in paradigms:
        for tag in ["base", *methods]:
            files = sorted((out / f"gen_{p}_{tag}_0").glob("*.gif"))[:n]
            if files:
                frames = [np.asarray(iio.imread(f, index=None))[..., :3] for f in files]
                rows.append(np.concatenate([fr[len(fr) // 2] for fr in frames], 1))
    if not rows:
        sys.exit(f"{out}: no generated clips to show")
    H, W = rows[0].shape[:2]
    k = H // 32
    clips = [np.kron(np.asarray(v, np.uint8)[4], np.ones((k, k, 1), np.uint8)) for v in
             load_dataset(concept)["train"]["video"][:n]]
    last = np.zeros((H, W, 3), np.uint8)
    last[:, : H * len(clips)] = np.concatenate(clips, 1)[:, :W]
    rows = [r if r.shape[1] == W else np.pad(r, ((0, 0), (0, W - r.shape[1]), (0, 0))) for r in rows]
    path = out / "grid.png"
    iio.imwrite(path, np.concatenate(rows + [last], 0))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--kind", default="star")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--max-minutes", type=float, default=3.5)
    ap.add_argument("--lr", type=float, default=None, help="learning rate for every method (default: each method's own)")
    ap.add_argument("--shifts", type=int, default=None,
                    help="`duogen personalize --shifts` for every method (default: its own, 8; 1 = the clips as they are)")
    ap.add_argument("--n", type=int, default=16, help="clips per prompt")
    ap.add_argument("--methods", default="lora,textual-inversion")
    ap.add_argument("--paradigms", default="ar,dit")
    ap.add_argument("--section", default=None, help="also write a report section (JSON) here")
    ap.add_argument("--grid-only", action="store_true", help="only draw OUT/grid.png from an earlier run's clips")
    ap.add_argument("--ar", default=str(REF / "ar"), help="the AR base model (default: the shipped reference)")
    ap.add_argument("--dit", default=str(REF / "dit"), help="the DiT base model (default: the shipped reference)")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    out = Path(a.out)
    concept = out / f"concept_{a.kind}"
    if a.grid_only:
        print(grid(out, concept, a.paradigms.split(","), a.methods.split(",")))
        return
    if not concept.exists():
        duogen("data", "make", "concept", "--kind", a.kind, "--out", str(concept))
    heldout = out / f"heldout_{a.kind}"
    if not heldout.exists():
        duogen("data", "make", "concept", "--kind", a.kind, "--out", str(heldout), "--n", "8", "--seed", "1",
               "colors=" + ",".join(unseen_colors(concept)))
    rows = []
    for paradigm in a.paradigms.split(","):
        base = Path(a.ar if paradigm == "ar" else a.dit)
        gen_extra = ["--steps", "50"] if paradigm == "dit" else []
        base_reads = {}
        base_loss, base_held = concept_losses(base, [concept, heldout], None)
        for i, (p, (color, motion)) in enumerate(PROMPTS.items()):
            g = out / f"gen_{paradigm}_base_{i}"
            duogen("generate", "--model", str(base), "--prompt", p, "--n", str(a.n), "--out", str(g), "--overwrite",
                   *gen_extra)
            base_reads[p] = read(g, color, motion)
        for method in a.methods.split(","):
            run = out / f"{paradigm}_{method}"
            t = time.perf_counter()
            s = duogen("personalize", "--model", str(base), "--concept", str(concept), "--method", method,
                       "--out", str(run), "--overwrite", "--steps", str(a.steps), "--max-minutes", str(a.max_minutes),
                       *(["--lr", str(a.lr)] if a.lr is not None else []),
                       *(["--shifts", str(a.shifts)] if a.shifts is not None else []))
            wall = time.perf_counter() - t
            loss, held = concept_losses(base, [concept, heldout], run)
            for i, (p, (color, motion)) in enumerate(PROMPTS.items()):
                g = out / f"gen_{paradigm}_{method}_{i}"
                duogen("generate", "--model", str(base), "--adapter", str(run), "--prompt", p, "--n", str(a.n),
                       "--out", str(g), "--overwrite", *gen_extra)
                c, d = read(g, color, motion)
                bc, bd = base_reads[p]
                rows.append([paradigm, method, p, s["steps"], round(s["wall_s"], 1), round(wall, 1),
                             s["adapter_bytes"], s["model_bytes"], f"{100 * s['adapter_fraction']:.2f}%",
                             f"{loss:.4f} ({base_loss:.4f})", f"{held:.4f} ({base_held:.4f})", f"{c:.2f} ({bc:.2f})",
                             f"{d:.2f} ({bd:.2f})"])
                print(" | ".join(map(str, rows[-1])), flush=True)
    cols = ["paradigm", "method", "prompt", "steps", "train s", "command s", "adapter B", "model B", "adapter/model",
            "concept loss (base)", "held-out loss (base)", "color (base)", "direction (base)"]
    print("\n" + " | ".join(cols))
    for r in rows:
        print(" | ".join(map(str, r)))
    png = grid(out, concept, a.paradigms.split(","), a.methods.split(","))
    print(f"grid: {png} (rows: per paradigm base, then each method; last row: the concept)")
    if a.section:
        cmd = "OMP_NUM_THREADS=1 python bench/bench_personalize_quick.py " + " ".join(sys.argv[1:])
        sec = {"title": "Personalization: LoRA and Textual Inversion, quick read",
               "intro": f"Concept: {a.kind}; {a.n} clips per prompt; probes' color and direction, base in brackets.",
               "tables": [{"caption": "per paradigm, method and prompt", "columns": cols, "rows": rows}],
               "plots": [os.path.relpath(png, Path(a.section).parent)],
               "notes": "one thread on a loaded shared 2-core CPU", "command": cmd}
        Path(a.section).parent.mkdir(parents=True, exist_ok=True)
        Path(a.section).write_text(json.dumps(sec, indent=2))


if __name__ == "__main__":
    main()
