"""Measure again every bridge figure that reads the reference DiT: what a new reference DiT needs before it ships.

    python scripts/measure_dit_bridges.py --out OUT [--dit DIR] [--ar DIR] [--lanes 5] [--dry-run]

The README's DiT rows of editing (SDEdit, DiffEdit, inversion; Prompt-to-Prompt, Imagic, InstructPix2Pix),
personalization (four methods and the quick read, the layers DreamBooth and Custom Diffusion move), zero-shot
classification, generated data and control (ControlNet boxes / mask / edges, T2I-Adapter, GLIGEN), the 96-clip
compare and the accuracy against sampling steps, each by the bench or command the README names, on `--dit`
(default: the shipped reference) beside `--ar` where a bench runs both paradigms. Session 33 ran it on the DiT it
shipped: five lanes of one-thread jobs on a 2-core CPU, 43 minutes with the sampling-steps job run beside them
(docs/references/cpu_d4800_2026-12-04/measure_dit_bridges.txt).

Jobs run in `--lanes` parallel lanes (a lane runs its jobs in order: a control's bench after its training), one
thread each. Each job logs to OUT/logs/NAME.log and leaves OUT/logs/NAME.done when it succeeds; a job already done
is skipped, so a cut run resumes. The data sets are made first under OUT/data (the demo world, 4,000 edit pairs, the
20,000-clip world) unless given. The 10-minute trainings (controls, InstructPix2Pix) are time budgets: how many steps
they make depends on the machine and on what else runs beside them. Exit status 1 names the jobs that failed (a
lane stops at its first failure; the other lanes go on).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / "src" / "duogen" / "assets" / "reference"
CONTROL = ["train.max_minutes=10", "train.batch_size=8", "train.lr=2e-3", "train.warmup_steps=5", "frames_per_token=4"]


Job = tuple[str, list[str]]  # (name, argv)


def plan(a: argparse.Namespace, out: Path) -> tuple[list[Job], list[list[Job]], list[Job]]:
    """(data jobs, lanes of jobs, jobs after every lane: the control table merges sections of two lanes)."""
    py, dg = [sys.executable], [sys.executable, "-m", "duogen"]
    data, edits, world = Path(a.data or out / "data/shapes"), Path(a.edits or out / "data/edits"), out / "data/shapes20k"
    runs, dit, ar = out / "runs", str(a.dit), str(a.ar)
    prep = []
    if not a.data:
        prep.append(("data_shapes", dg + ["data", "make", "shapes", "--out", str(data)]))
    if not a.edits:
        prep.append(("data_edits", dg + ["data", "make", "edits", "--out", str(edits), "--n", "4000"]))
    prep.append(("data_shapes20k", dg + ["data", "make", "shapes", "--out", str(world), "--n", "20000"]))

    def control(name: str, method: str, cond: str, settings: list[str], bench: list[str]) -> list[Job]:
        train = dg + ["train", "control", "--model", dit, "--method", method, "--condition", cond, "--data", str(data),
                      "--out", str(runs / name), *settings]
        return [(name, train), (f"bench_{name}", py + [str(ROOT / "bench/bench_control.py"), "--model", dit, "--data",
                                                        str(data), "--steps", "20", "--section",
                                                        str(out / f"control/{name}.json"), *bench])]

    # lanes of about equal length (minutes in session 33, five lanes on 2 cores: 53, 39, 52, 41, 38)
    lanes = [
        control("cn_boxes", "controlnet", "boxes", CONTROL, ["--n", "64", "--control", f"{runs}/cn_boxes/final:0.5,1,2"])
        + control("cn_mask", "controlnet", "mask", CONTROL, ["--n", "64", "--no-text-only", "--control",
                                                              f"{runs}/cn_mask/final:1"])
        + [("edit", py + [str(ROOT / "bench/bench_edit.py"), "--pairs", "12", "--curve-pairs", "6", "--inversion-pairs",
                          "3", "--n", "1", "--ar", ar, "--dit", dit, "--section", str(out / "edit/section.json")])],
        control("t2i_boxes", "t2i-adapter", "boxes", CONTROL, ["--n", "64", "--no-text-only", "--control",
                                                                f"{runs}/t2i_boxes/final:1"])
        + control("cn_edges", "controlnet", "edges", CONTROL, ["--n", "64", "--no-text-only", "--control",
                                                                f"{runs}/cn_edges/final:1"])
        + control("gligen", "gligen", "boxes", ["train.max_minutes=10", "train.batch_size=8", "train.lr=3e-3",
                                                 "train.warmup_steps=5", "gate_gain=10"],
                  ["--n", "32", "--control", f"{runs}/gligen/final", "--scales", "1,2", "--beta", "0.3,1"]),
        [("compare", dg + ["compare", "--out", str(out / "compare"), "--data", str(data), "--n", "2", "--per-split",
                           "24", "--steps-sweep", "20", "--ar", f"ar={ar}", "--diffusion", f"dit={dit}"]),
         ("zero_shot", py + [str(ROOT / "bench/bench_zero_shot.py"), "--ar", ar, "--diffusion", dit, "--data",
                             str(data), "--n", "12", "--trials", "8,24", "--keep", "3", "--seed", "0", "--threads",
                             "1", "--section", str(out / "zero_shot/section.json")]),
         *[(f"zero_shot_{split}", dg + ["eval", "zero-shot", "--model", dit, "--data", str(data), "--attribute", "all",
                                        "--split", split, "--n", "50"]) for split in ("validation", "heldout")],
         ("scores", py + [str(ROOT / "bench/bench_scores.py"), "--n", "20", "--ar", ar, "--diffusion", dit]),
         ("sampling_steps", py + [str(ROOT / "bench/bench_diffusion_accuracy.py"), "--model", dit, "--data",
                                  str(data), "--prompts", "16", "--n", "2", "--json",
                                  str(out / "sampling_steps.json")])],
        [("ip2p_dit", dg + ["train", "ip2p", "--paradigm", "diffusion", "--data", str(edits), "--init-from", dit,
                            "--out", str(runs / "ip2p_dit"), "train.max_minutes=10", "train.lr=5e-4",
                            "max_clips=1200"])]
        + [(f"sweep_{name}", py + [str(ROOT / "bench/bench_edit_techniques.py"), "--data", str(edits), "--pairs", "6",
                                   "--ar", ar, "--dit", dit, *flags, "--section", str(out / f"edit/sweep_{name}.json")])
           for name, flags in (("p2p", ["--methods", "p2p", "--no-blend", "--taus", "0,0.4,0.8,1"]),
                               ("imagic", ["--methods", "imagic", "--etas", "0.4,0.6,0.8,1.0", "--imagic-steps",
                                           "50,20"]),
                               ("ip2p", ["--methods", "ip2p", "--paradigms", "diffusion", "--ip2p-dit",
                                         str(runs / "ip2p_dit/final"), "--image-scales", "1,1.5,2"]),
                               ("p2p_blend", ["--methods", "p2p", "--taus", "0,0.4,0.8,1"]))],
        [("personalize", py + [str(ROOT / "bench/bench_personalize.py"), "--paradigms", "diffusion", "--methods",
                               "lora,textual-inversion,dreambooth,custom", "--steps", "100", "--max-minutes", "1.5",
                               "--n-class", "16", "--ar", ar, "--dit", dit, "--work", str(runs / "personalize"),
                               "--section", str(out / "personalize/section.json")]),
         *[(f"analyze_{m}", dg + ["personalize", "analyze", dit, str(runs / f"personalize/diffusion_{m}/final"),
                                  "--out", str(out / f"personalize/analyze_{m}")]) for m in ("dreambooth", "custom")],
         ("personalize_quick", py + [str(ROOT / "bench/bench_personalize_quick.py"), "--out",
                                     str(out / "personalize_quick"), "--steps", "200", "--max-minutes", "3.5", "--n",
                                     "16", "--paradigms", "dit", "--ar", ar, "--dit", dit]),
         ("generated_data", dg + ["eval", "generated-data", "--ar", ar, "--diffusion", dit, "--data", str(world),
                                  "--out", str(out / "generated_data"), "--n-real", "100"])],
    ]
    merge = ("control_table", py + [str(ROOT / "bench/bench_control.py"), "--table",
                                    *[str(out / f"control/{n}.json") for n in ("cn_boxes", "t2i_boxes", "cn_mask",
                                                                               "cn_edges")],
                                    "--section", str(out / "control/dit.json")])
    n = max(1, min(a.lanes, len(lanes)))
    merged: list[list[Job]] = [[] for _ in range(n)]
    for i, lane in enumerate(lanes):
        merged[i % n] += lane
    return prep, merged, [merge]


class Runner:
    def __init__(self, out: Path, threads: int):
        self.logs, self.failed, self.lock, self.t0 = out / "logs", [], threading.Lock(), time.monotonic()
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
                    "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        self.logs.mkdir(parents=True, exist_ok=True)

    def say(self, msg: str) -> None:
        with self.lock:
            print(f"[{(time.monotonic() - self.t0) / 60:5.1f} min] {msg}", flush=True)

    def run(self, name: str, argv: list[str]) -> bool:
        done = self.logs / f"{name}.done"
        if done.exists():
            self.say(f"{name}: done before, skipped")
            return True
        self.say(f"{name}: start")
        t = time.monotonic()
        with open(self.logs / f"{name}.log", "w") as log:
            log.write("$ " + " ".join(argv) + "\n")
            log.flush()
            rc = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        if rc != 0:
            with self.lock:
                self.failed.append(f"{name} (exit {rc}, log {self.logs / f'{name}.log'})")
            self.say(f"{name}: FAILED (exit {rc}) after {time.monotonic() - t:.0f} s")
            return False
        done.write_text(f"{time.monotonic() - t:.0f} s\n")
        self.say(f"{name}: done in {time.monotonic() - t:.0f} s")
        return True

    def lane(self, jobs: list[Job]) -> None:
        for name, argv in jobs:
            if not self.run(name, argv):
                return


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (logs, runs, sections); a second run resumes there")
    ap.add_argument("--dit", default=str(REF / "dit"), help="the diffusion model to measure (default: the shipped reference)")
    ap.add_argument("--ar", default=str(REF / "ar"), help="the AR model beside it, for the benches that run both")
    ap.add_argument("--data", default=None, help="a shapes world (`duogen data make shapes`); default: made under OUT")
    ap.add_argument("--edits", default=None, help="edit pairs (`duogen data make edits --n 4000`); default: made under OUT")
    ap.add_argument("--lanes", type=int, default=5, help="jobs at once (default 5: the session-33 layout)")
    ap.add_argument("--threads", type=int, default=1, help="threads per job (OMP_NUM_THREADS)")
    ap.add_argument("--dry-run", action="store_true", help="print the jobs, lane by lane, and run nothing")
    return ap


def main() -> None:
    a = build_parser().parse_args()
    for flag, path in (("--dit", a.dit), ("--ar", a.ar)):
        if not (Path(path) / "config.json").is_file():
            sys.exit(f"error: {flag} {path}: not a duogen model directory (no config.json)")
    out = Path(a.out)
    prep, lanes, finish = plan(a, out)
    if a.dry_run:
        for title, jobs in [("data (in order)", prep), *((f"lane {i + 1}", j) for i, j in enumerate(lanes)),
                            ("after every lane", finish)]:
            print(title)
            for name, argv in jobs:
                print(f"  {name}: {' '.join(argv)}")
        return
    r = Runner(out, a.threads)
    r.say(f"measuring {a.dit} (beside {a.ar}) in {len(lanes)} lanes; logs in {r.logs}")
    r.lane(prep)
    if r.failed:
        sys.exit("failed: " + "; ".join(r.failed))
    threads = [threading.Thread(target=r.lane, args=(lane,)) for lane in lanes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if not r.failed:
        r.lane(finish)
    if r.failed:
        sys.exit("failed: " + "; ".join(r.failed))
    r.say(f"all done: sections and JSON under {out}")


if __name__ == "__main__":
    main()
