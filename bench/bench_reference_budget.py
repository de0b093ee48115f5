"""How long the reference recipe (scripts/train_references.py) takes on this machine's CPU.

    .venv/bin/python bench/bench_reference_budget.py [--data runs/data_shapes_tiny] [--steps 60]

Trains each reference stage (video codec, AR model, DiT) for a few steps with the recipe's own
settings, times the steady-state steps (those after the first logged interval, so start-up and the
FLOP count are excluded) and the one-off encode, and multiplies out to the reference step counts.
The world and text stages take seconds and are left out. Prints one line per stage and the total
against the two-hour budget that the reference checkpoints must fit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from train_references import DEFAULT_AR, DEFAULT_DIT, parse_specs  # noqa: E402


def run(args: list[str]) -> float:
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "duogen", *args], env={**os.environ, "DUOGEN_QUIET": "1"},
                         capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"duogen {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return time.perf_counter() - t


def steady_rate(metrics: Path, time_key: str) -> float:
    """Seconds per step between the first and the last logged step."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    rows = [r for r in rows if "step" in r and time_key in r and "loss" in r]
    a, b = rows[0], rows[-1]
    return (b[time_key] - a[time_key]) / (b["step"] - a["step"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/data_shapes_tiny", help="a tiny shapes world (duogen data make shapes)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--codec-steps", type=int, default=2465, help="the reference step counts to project to")
    ap.add_argument("--world-n", type=int, default=20000, help="clips the reference world has (for the encode time)")
    a = ap.parse_args()
    (ar_steps, ar_model), (dit_steps, dit_model) = (
        (int(ov.pop("train.steps")), [f"{k}={v}" for k, v in ov.items()])  # steps, and the spec's other overrides
        for ov in (dict(o.split("=", 1) for o in parse_specs([spec])[0][1]) for spec in (DEFAULT_AR, DEFAULT_DIT)))
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        data = Path(a.data)
        run(["train", "tokenizer", "--modality", "video", "--data", str(data), "--out", str(t / "codec"), "--preset", "tiny",
             "train.max_minutes=0", f"train.steps={a.steps}", "train.eval_every_s=100000", "train.device=cpu"])
        codec = steady_rate(t / "codec" / "metrics.jsonl", "seconds")
        common = ["--data", str(data), "--tokenizer", str(t / "codec" / "final"), "train.log_every=10"]
        enc_ar = run(["train", "ar", *common, "--out", str(t / "ar" / "run"), *ar_model, "train.steps=1"])
        run(["train", "ar", *common, "--out", str(t / "ar" / "run2"), *ar_model, f"train.steps={a.steps}"])
        ar = steady_rate(t / "ar" / "run2" / "metrics.jsonl", "wall_s")
        enc_dit = run(["train", "diffusion", *common, "--out", str(t / "dit" / "run"), "denoiser=dit", *dit_model, "train.steps=1"])
        run(["train", "diffusion", *common, "--out", str(t / "dit" / "run2"), "denoiser=dit", *dit_model, f"train.steps={a.steps}"])
        dit = steady_rate(t / "dit" / "run2" / "metrics.jsonl", "wall_s")
    from duogen.data import load_dataset

    n_world = len(load_dataset(data)["train"])
    scale = a.world_n / (n_world / 0.9)  # whole 1-step runs (load, encode, build, save), scaled up: an over-estimate
    rows = [("codec", codec, a.codec_steps, 0.0), ("ar", ar, ar_steps, enc_ar * scale), ("dit", dit, dit_steps, enc_dit * scale)]
    total = 0.0
    for name, rate, steps, enc in rows:
        minutes = (rate * steps + enc) / 60
        total += minutes
        print(f"{name:6s} {rate:6.3f} s/step x {steps:5d} steps + encode/start-up {enc / 60:4.1f} min = {minutes:5.1f} min")
    print(f"total  {total:5.1f} min of the 120-minute budget ({torch_threads()} threads)")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
