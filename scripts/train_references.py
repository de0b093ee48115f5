"""Train duogen's reference checkpoints (tiny codec, AR model, DiT) with the project's own recipes.

    python scripts/train_references.py --out runs/references

Each stage is one `duogen` command, logged to OUT/logs/<stage>.log and skipped when its
`final/` already exists, so a cut run resumes. Budgets are step counts (not minutes), so
the same command trains the same recipe on any machine: the defaults are the step counts of
the checkpoints in `src/duogen/assets/reference/`, sized to fit two hours on two CPU cores
(docs/references/README.md gives the measured time per stage and the training logs).

`--codec DIR` trains the models on a given codec (the shipped one, say) instead of training a new one;
`--codec-set KEY=VALUE` (repeatable) changes the codec that is trained, after the shipped codec's own overrides
(DEFAULT_CODEC: `model.latent_norm=rms model.latent_attention=0`), e.g. `--codec-set model.latent_norm=batch
--codec-set model.latent_attention=1` for the `tiny` preset's.

Extra models to train beside the defaults (a sweep) are given as NAME:key=value,key=value:
    --ar ar_long:train.steps=8000 --dit dit_p1:dit.patch_size=1,train.steps=2500

At the end every model is sampled and scored by the probes with `duogen compare`
(OUT/compare/results.json) and OUT/references.json gathers steps, FLOPs, wall time,
device and accuracy per model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# the shipped AR is 256 wide (tiny is 128 now), a prefix LM with flat positions (tiny is causal, factorized)
DEFAULT_AR = "ar:train.steps=2600,model.hidden=256,model.mlp=704,model.prefix_lm=true,model.factorized_positions=false"
# the shipped DiT is 192 wide (tiny is 128), trained 4,800 steps at the tiny preset's lr 2e-3 (the DiT shipped
# before session 33: 2,400 steps at 5e-4, shape 57% against 77%; docs/references/README.md, "The reference DiT")
DEFAULT_DIT = "dit:train.steps=4800,dit.hidden=192,dit.heads=6,train.lr=2e-3"
# the shipped codec is the tiny preset with an RMS-normalised latent (since session 34; the preset standardizes
# it per channel, which spreads the background a DiT has to tell objects from: docs/references/README.md), without
# the latent attention the preset has had since session 36 (the shipped codec predates it)
DEFAULT_CODEC = ["model.latent_norm=rms", "model.latent_attention=0"]


def duogen(args: list[str], log: Path, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:  # the child keeps its own copy of the handle
        f.write(f"$ duogen {' '.join(args)}\n")
        f.flush()
        return subprocess.Popen([sys.executable, "-m", "duogen", *args], stdout=f, stderr=subprocess.STDOUT, env=env)


def wait_all(procs: dict[str, tuple[subprocess.Popen, Path]]) -> None:
    failed = []
    for name, (p, log) in procs.items():
        if p.wait() != 0:
            failed.append(f"{name} (exit {p.returncode}, log {log})")
    if failed:
        sys.exit("failed: " + "; ".join(failed))


def parse_specs(specs: list[str]) -> list[tuple[str, list[str]]]:
    """["NAME:k=v,k2=v2", "NAME2"] -> [(NAME, ["k=v", "k2=v2"]), (NAME2, [])]; a value cannot hold a comma."""
    out = []
    for s in specs:
        name, _, ov = s.partition(":")
        out.append((name, [o for o in ov.split(",") if o]))
    return out


def model_jobs(ar: list[str], dit: list[str]) -> list[tuple[str, str, list[str]]]:
    """--ar / --dit specs (the defaults where none) -> [(kind, name, overrides)], AR models first."""
    jobs = [("ar", n, ov) for n, ov in parse_specs(ar or [DEFAULT_AR])]
    return jobs + [("diffusion", n, ["denoiser=dit", *ov]) for n, ov in parse_specs(dit or [DEFAULT_DIT])]


def model_args(kind: str, overrides: list[str], data: Path, codec: Path, text: Path, run: Path, seed: int) -> list[str]:
    """The `duogen` command line that trains one model of the set on `codec`'s ids or latents."""
    return ["train", kind, "--data", str(data), "--tokenizer", str(codec), "--text", str(text), "--seed", str(seed),
            "--out", str(run), "--resume", "auto", *overrides]


def codec_args(a: argparse.Namespace, data: Path, out: Path) -> list[str]:
    """The `duogen` command line that trains the set's codec (the `tiny` preset and DEFAULT_CODEC) as the parsed
    options `a` ask; `--codec-set` overrides last so they win."""
    return ["train", "tokenizer", "--modality", "video", "--data", str(data), "--out", str(out), "--preset", "tiny",
            "--seed", str(a.seed), f"train.max_minutes={a.codec_minutes:g}", f"train.steps={a.codec_steps}",
            *DEFAULT_CODEC, *a.codec_set]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/references")
    ap.add_argument("--world-n", type=int, default=20000, help="clips in the tiny shapes world (default: 20000)")
    ap.add_argument("--codec-steps", type=int, default=2465)
    ap.add_argument("--codec-minutes", type=float, default=0.0, help="also stop the codec at this many minutes (0: no cap)")
    ap.add_argument("--codec", default=None,
                    help="train the models on this codec directory (e.g. src/duogen/assets/reference/codec) instead of training one")
    ap.add_argument("--codec-set", action="append", default=[], metavar="KEY=VALUE",
                    help="an override for the codec's training, after the tiny preset and the shipped codec's "
                         f"{' '.join(DEFAULT_CODEC)} (e.g. model.latent_norm=batch: the preset's); repeatable")
    ap.add_argument("--ar", action="append", default=[], help=f"NAME:overrides (default: {DEFAULT_AR})")
    ap.add_argument("--dit", action="append", default=[], help=f"NAME:overrides (default: {DEFAULT_DIT})")
    ap.add_argument("--parallel", action="store_true", help="train the AR and diffusion models at once (on a GPU, or on a CPU with --threads 1 per model)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads per process")
    ap.add_argument("--eval-n", type=int, default=2, help="samples per prompt in the final comparison")
    ap.add_argument("--eval-per-split", type=int, default=32, help="validation and heldout prompts in the comparison")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def main() -> None:
    a = build_parser().parse_args()
    out, t0 = Path(a.out), time.time()
    logs, data, text = out / "logs", out / "data", out / "text"
    codec_final = Path(a.codec) if a.codec else out / "codec" / "final"
    if a.codec and not (codec_final / "config.json").is_file():
        sys.exit(f"--codec {a.codec}: not a codec directory (no config.json)")
    if a.codec and a.codec_set:
        sys.exit("--codec-set changes how the codec trains; with --codec no codec is trained")
    if bad := [o for o in a.codec_set if "=" not in o]:
        sys.exit(f"--codec-set wants KEY=VALUE, got {bad}")
    timing: dict[str, float] = {}

    def stage(name: str, args: list[str], done: Path) -> None:
        if done.exists():
            print(f"[{name}] done already ({done})", flush=True)
            return
        t = time.time()
        print(f"[{name}] duogen {' '.join(args)}", flush=True)
        wait_all({name: (duogen(args, logs / f"{name}.log", a.threads), logs / f"{name}.log")})
        timing[name] = round(time.time() - t, 1)

    seed = ["--seed", str(a.seed)]
    stage("data", ["data", "make", "shapes", "--out", str(data), "--n", str(a.world_n), "--overwrite", *seed],
          data / "dataset_dict.json")
    stage("text", ["train", "tokenizer", "--modality", "text", "--data", str(data), "--out", str(text), *seed],
          text / "final" / "text.model")
    if not a.codec:
        stage("codec", codec_args(a, data, out / "codec"),
              codec_final / "config.json")

    jobs = model_jobs(a.ar, a.dit)
    pending: dict[str, tuple[subprocess.Popen, Path]] = {}
    for kind, name, ov in jobs:
        run = out / name / "run"  # one folder per model: its own encode cache beside it
        if (run / "final" / "config.json").exists():
            continue
        args = model_args(kind, ov, data, codec_final, text / "final" / "text.model", run, a.seed)
        print(f"[{name}] duogen {' '.join(args)}", flush=True)
        pending[name] = (duogen(args, logs / f"{name}.log", a.threads), logs / f"{name}.log")
        if not a.parallel:
            wait_all(pending)
            pending = {}
    wait_all(pending)
    timing["models"] = round(time.time() - t0 - sum(timing.values()), 1)

    cmp_args = ["compare", "--out", str(out / "compare"), "--data", str(data), "--n", str(a.eval_n),
                "--per-split", str(a.eval_per_split), "--steps-sweep", "20,50", *seed]
    for kind, name, _ in jobs:
        cmp_args += ["--ar" if kind == "ar" else "--diffusion", f"{name}={out / name / 'run' / 'final'}"]
    stage("compare", cmp_args, out / "compare" / "results.json")

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from duogen.eval.compare import headline

    codec_summary = codec_final.parent / "summary.json"  # a given codec directory may have none beside it
    codec_scores = json.loads(codec_summary.read_text())["heldout"] if codec_summary.is_file() else {"dir": str(codec_final)}
    summary = {"out": str(out), "seconds": timing, "codec": codec_scores, "models": headline(out / "compare")["models"]}
    for kind, name, ov in jobs:
        s = json.loads((out / name / "run" / "summary.json").read_text())
        summary["models"].setdefault(name, {}).update(
            overrides=ov, steps=s.get("steps"), train_flops=s.get("flops"), train_wall_s=s.get("wall_s"))
    (out / "references.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
