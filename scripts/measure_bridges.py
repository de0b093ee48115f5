"""Measure again every bridge figure the README quotes for the reference models: what a new reference set needs.

    python scripts/measure_bridges.py --out OUT [--ar DIR] [--dit DIR] [--paradigms ar,diffusion] [--lanes 5]

Every bridge figure of the README, on `--ar` and `--dit` (default: the shipped references; a candidate set's models
each read their own codec), by the bench or command the README names: editing (SDEdit, DiffEdit, inversion;
Prompt-to-Prompt, Imagic, InstructPix2Pix), personalization (four methods and the quick read, the layers
DreamBooth and Custom Diffusion move), zero-shot classification (the bench, every attribute at n 50, binding at n
100), generated data, control (DiT: ControlNet boxes / mask / edges, T2I-Adapter, GLIGEN; AR: tokens boxes / mask,
ControlAR boxes / mask; the merged tables), the 96-clip compare, `bench_scores.py` and the DiT's accuracy against
sampling steps. `--paradigms diffusion` measures the DiT's figures alone (session 33's run on the DiT it shipped:
43 minutes, five lanes on a 2-core CPU, docs/references/cpu_d4800_2026-12-04/measure_dit_bridges.txt, when this
script was measure_dit_bridges.py); `--paradigms ar` the AR model's; benches that run both paradigms at once
(bench_edit, the compare, bench_zero_shot, bench_scores, generated data) measure both either way.

Jobs run in `--lanes` parallel lanes, one thread each. A chain of jobs that depend on each other (a control's
bench after its training; InstructPix2Pix's sweep after its training) stays in one lane, in order; the chains are
spread over the lanes longest first, by the minutes they took in session 34's run of both paradigms (five lanes
on 2 cores). Each job logs to OUT/logs/NAME.log and leaves OUT/logs/NAME.done when it succeeds; a
job already done is skipped, so a cut run resumes. The data sets are made first under OUT/data (the demo world,
4,000 edit pairs, the 20,000-clip world) unless given. The 10-minute trainings (controls, InstructPix2Pix) are time
budgets: how many steps they make depends on the machine and on what else runs beside them. Exit status 1 names
the jobs that failed (a lane stops at its first failure; the other lanes go on).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / "src" / "duogen" / "assets" / "reference"
PARADIGMS = ("ar", "diffusion")
CONTROL = ["train.max_minutes=10", "train.batch_size=8", "train.lr=2e-3", "train.warmup_steps=5", "frames_per_token=4"]


@dataclass(frozen=True)
class Job:
    name: str
    argv: list[str]
    stdout: Path | None = None  # the command's stdout alone (a --json result), stderr to the log; None: both to the log


Chain = tuple[float, list[Job]]  # (minutes it takes, jobs in order)


def plan(a: argparse.Namespace, out: Path) -> tuple[list[Job], list[list[Job]], list[Job]]:
    """(data jobs, lanes of jobs, jobs after every lane: the control tables merge sections of several lanes)."""
    py, dg = [sys.executable], [sys.executable, "-m", "duogen"]
    paradigms = [p for p in PARADIGMS if p in a.paradigms.split(",")]
    want_ar, want_dit = "ar" in paradigms, "diffusion" in paradigms
    data, edits, world = Path(a.data or out / "data/shapes"), Path(a.edits or out / "data/edits"), out / "data/shapes20k"
    runs, dit, ar = out / "runs", str(a.dit), str(a.ar)
    bench = lambda name: py + [str(ROOT / "bench" / name)]  # noqa: E731
    prep = []  # --overwrite: a data job runs only when not done, so what is there is a cut run's part
    if not a.data:
        prep.append(Job("data_shapes", dg + ["data", "make", "shapes", "--out", str(data), "--overwrite"]))
    if not a.edits:
        prep.append(Job("data_edits", dg + ["data", "make", "edits", "--out", str(edits), "--n", "4000", "--overwrite"]))
    prep.append(Job("data_shapes20k", dg + ["data", "make", "shapes", "--out", str(world), "--n", "20000",
                                            "--overwrite"]))

    def control(minutes: float, name: str, model: str, method: str, cond: str, settings: list[str], scales: str,
                bench_args: list[str]) -> Chain:
        train = dg + ["train", "control", "--model", model, "--method", method, "--condition", cond, "--data",
                      str(data), "--out", str(runs / name), *settings]
        return minutes, [Job(name, train), Job(f"bench_{name}", bench("bench_control.py") + [
            "--model", model, "--data", str(data), "--steps", "20", "--section", str(out / f"control/{name}.json"),
            "--control", f"{runs / name}/final:{scales}", *bench_args])]

    def zero_shot(model: str, tag: str, attribute: str, n: int, split: str) -> Job:
        return Job(f"zero_shot_{tag}_{attribute}_{split}", dg + [
            "eval", "zero-shot", "--model", model, "--data", str(data), "--attribute", attribute, "--split", split,
            "--n", str(n), "--json"], stdout=out / f"zero_shot/{tag}_{attribute}_{split}.json")

    only = ["--paradigms", ",".join(paradigms)]
    # minutes: each chain's time in session 34 (both paradigms, five lanes on 2 cores; .done markers)
    chains: list[Chain] = [
        (16, [Job("edit", bench("bench_edit.py") + ["--pairs", "12", "--curve-pairs", "6", "--inversion-pairs", "3",
                                                    "--n", "1", "--ar", ar, "--dit", dit, "--section",
                                                    str(out / "edit/section.json")])]),
        (4, [Job("compare", dg + ["compare", "--out", str(out / "compare"), "--data", str(data), "--n", "2",
                                  "--per-split", "24", "--steps-sweep", "20", "--ar", f"ar={ar}", "--diffusion",
                                  f"dit={dit}"])]),
        (5.5, [Job("zero_shot", bench("bench_zero_shot.py") + [
            "--ar", ar, "--diffusion", dit, "--data", str(data), "--n", "12", "--trials", "8,24", "--keep", "3",
            "--seed", "0", "--threads", "1", "--section", str(out / "zero_shot/section.json")])]),
        (1, [Job("scores", bench("bench_scores.py") + ["--n", "20", "--ar", ar, "--diffusion", dit])]),
        (19, [Job("generated_data", dg + ["eval", "generated-data", "--ar", ar, "--diffusion", dit, "--data",
                                          str(world), "--out", str(out / "generated_data"), "--n-real", "100"])]),
        *[(minutes, [Job(f"sweep_{name}", bench("bench_edit_techniques.py") + [
            "--data", str(edits), "--pairs", "6", "--ar", ar, "--dit", dit, *only, *flags, "--section",
            str(out / f"edit/sweep_{name}.json")])])
          for minutes, name, flags in ((11, "p2p", ["--methods", "p2p", "--no-blend", "--taus", "0,0.4,0.8,1"]),
                                       (5, "imagic", ["--methods", "imagic", "--etas", "0.4,0.6,0.8,1.0",
                                                      "--imagic-steps", "50,20"]),
                                       (11, "p2p_blend", ["--methods", "p2p", "--taus", "0,0.4,0.8,1"]))],
        (8.5 * len(paradigms), [
            Job("personalize", bench("bench_personalize.py") + [
                *only, "--methods", "lora,textual-inversion,dreambooth,custom", "--steps", "100", "--max-minutes",
                "1.5", "--n-class", "16", "--ar", ar, "--dit", dit, "--work", str(runs / "personalize"), "--section",
                str(out / "personalize/section.json")]),
            *[Job(f"analyze_{tag}_{m}", dg + ["personalize", "analyze", model, str(runs / f"personalize/{p}_{m}/final"),
                                              "--out", str(out / f"personalize/analyze_{tag}_{m}")])
              for p, tag, model in (("ar", "ar", ar), ("diffusion", "dit", dit)) if p in paradigms
              for m in ("dreambooth", "custom")]]),
        (7.5 * len(paradigms), [Job("personalize_quick", bench("bench_personalize_quick.py") + [
            "--out", str(out / "personalize_quick"), "--steps", "200", "--max-minutes", "3.5", "--n", "16",
            "--paradigms", ",".join("dit" if p == "diffusion" else p for p in paradigms), "--ar", ar, "--dit", dit])]),
    ]
    # minutes: zero-shot at n 50 (all attributes), binding at n 100, InstructPix2Pix training and its sweep
    for p, tag, model, minutes in (("ar", "ar", ar, (3, 1, 12)), ("diffusion", "dit", dit, (8, 2.5, 12.5))):
        if p in paradigms:
            chains += [(minutes[0], [zero_shot(model, tag, "all", 50, split)]) for split in ("validation", "heldout")]
            chains += [(minutes[1], [zero_shot(model, tag, "binding", 100, split)]) for split in ("validation", "heldout")]
            chains.append((minutes[2], [
                Job(f"ip2p_{tag}", dg + ["train", "ip2p", "--paradigm", p, "--data", str(edits), "--init-from", model,
                                         "--out", str(runs / f"ip2p_{tag}"), "train.max_minutes=10", "train.lr=5e-4",
                                         "max_clips=1200"]),
                Job(f"sweep_ip2p_{tag}", bench("bench_edit_techniques.py") + [
                    "--data", str(edits), "--pairs", "6", "--ar", ar, "--dit", dit, "--methods", "ip2p", "--paradigms",
                    p, f"--ip2p-{tag}", str(runs / f"ip2p_{tag}/final"), "--image-scales", "1,1.5,2", "--section",
                    str(out / f"edit/sweep_ip2p_{tag}.json")])]))
    if want_dit:
        chains += [
            control(17, "cn_boxes", dit, "controlnet", "boxes", CONTROL, "0.5,1,2", ["--n", "64"]),
            control(11.5, "cn_mask", dit, "controlnet", "mask", CONTROL, "1", ["--n", "64", "--no-text-only"]),
            control(11.5, "t2i_boxes", dit, "t2i-adapter", "boxes", CONTROL, "1", ["--n", "64", "--no-text-only"]),
            control(11.5, "cn_edges", dit, "controlnet", "edges", CONTROL, "1", ["--n", "64", "--no-text-only"]),
            control(13, "gligen", dit, "gligen", "boxes", ["train.max_minutes=10", "train.batch_size=8",
                                                           "train.lr=3e-3", "train.warmup_steps=5", "gate_gain=10"],
                    "1", ["--n", "32", "--scales", "1,2", "--beta", "0.3,1"]),
            (40, [Job("sampling_steps", bench("bench_diffusion_accuracy.py") + [
                "--model", dit, "--data", str(data), "--prompts", "16", "--n", "2", "--json",
                str(out / "sampling_steps.json")])]),
        ]
    if want_ar:  # the AR controls' own recipes (train/ar_control_recipe.py, controlar_recipe.py: 10 minutes each)
        chains += [
            control(14, "ar_tokens_boxes", ar, "tokens", "boxes", [], "1,2", ["--n", "32"]),
            control(14.5, "ar_tokens_mask", ar, "tokens", "mask", [], "1,2", ["--n", "32", "--no-text-only"]),
            control(11.5, "controlar_boxes", ar, "controlar", "boxes", [], "1,2,4", ["--n", "32", "--real", "100"]),
            control(11, "controlar_mask", ar, "controlar", "mask", [], "1,2,4", ["--n", "32", "--real", "100",
                                                                             "--no-text-only"]),
        ]
    n = max(1, a.lanes)
    placed: list[list[list[Job]]] = [[] for _ in range(n)]
    load = [0.0] * n
    for minutes, jobs in sorted(chains, key=lambda c: -c[0]):  # longest first onto the least loaded lane
        i = load.index(min(load))
        placed[i].append(jobs)
        load[i] += minutes
    # the compare opens its lane: in minutes it says whether a candidate set is worth the rest of the hour
    lanes = [[j for chain in sorted(p, key=lambda c: c[0].name != "compare") for j in chain] for p in placed]
    finish = []
    sections = {"dit": ["cn_boxes", "t2i_boxes", "cn_mask", "cn_edges"], "gligen": ["gligen"],
                "ar": ["ar_tokens_boxes", "ar_tokens_mask", "controlar_boxes", "controlar_mask"]}
    for table, wanted in (("dit", want_dit), ("ar", want_ar)):
        if wanted:
            finish.append(Job(f"control_table_{table}", bench("bench_control.py") + [
                "--table", *[str(out / f"control/{s}.json") for s in sections[table]], "--section",
                str(out / f"control/{table}.json")]))
    if want_ar and want_dit:
        finish.append(Job("control_table_both", bench("bench_control.py") + [
            "--table", *[str(out / f"control/{s}.json") for s in ("dit", "gligen", *sections["ar"])], "--section",
            str(out / "control/both.json")]))
    return prep, [lane for lane in lanes if lane], finish


class Runner:
    def __init__(self, out: Path, threads: int):
        self.logs, self.failed, self.lock, self.t0 = out / "logs", [], threading.Lock(), time.monotonic()
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
                    "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        self.logs.mkdir(parents=True, exist_ok=True)

    def say(self, msg: str) -> None:
        with self.lock:
            print(f"[{(time.monotonic() - self.t0) / 60:5.1f} min] {msg}", flush=True)

    def run(self, job: Job) -> bool:
        name, done = job.name, self.logs / f"{job.name}.done"
        if done.exists():
            self.say(f"{name}: done before, skipped")
            return True
        self.say(f"{name}: start")
        t = time.monotonic()
        with open(self.logs / f"{name}.log", "w") as log:
            log.write("$ " + " ".join(job.argv) + (f" > {job.stdout}" if job.stdout else "") + "\n")
            log.flush()
            if job.stdout is None:
                rc = subprocess.call(job.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
            else:
                job.stdout.parent.mkdir(parents=True, exist_ok=True)
                with open(job.stdout, "w") as result:
                    rc = subprocess.call(job.argv, stdout=result, stderr=log, env=self.env, cwd=ROOT)
        if rc != 0:
            with self.lock:
                self.failed.append(f"{name} (exit {rc}, log {self.logs / f'{name}.log'})")
            self.say(f"{name}: FAILED (exit {rc}) after {time.monotonic() - t:.0f} s")
            return False
        done.write_text(f"{time.monotonic() - t:.0f} s\n")
        self.say(f"{name}: done in {time.monotonic() - t:.0f} s")
        return True

    def lane(self, jobs: list[Job]) -> None:
        for job in jobs:
            if not self.run(job):
                return


def paradigm_list(text: str) -> str:
    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in PARADIGMS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma list of {' and '.join(PARADIGMS)}")
    return ",".join(names)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (logs, runs, sections); a second run resumes there")
    ap.add_argument("--ar", default=str(REF / "ar"), help="the AR model to measure (default: the shipped reference)")
    ap.add_argument("--dit", default=str(REF / "dit"), help="the diffusion model to measure (default: the shipped reference)")
    ap.add_argument("--paradigms", type=paradigm_list, default="ar,diffusion",
                    help="whose figures to measure: ar, diffusion or both (default); benches that run both at once "
                         "read both models either way")
    ap.add_argument("--data", default=None, help="a shapes world (`duogen data make shapes`); default: made under OUT")
    ap.add_argument("--edits", default=None, help="edit pairs (`duogen data make edits --n 4000`); default: made under OUT")
    ap.add_argument("--lanes", type=int, default=5, help="jobs at once (default 5: what 2 cores carried in session 33)")
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
            for job in jobs:
                print(f"  {job.name}: {' '.join(job.argv)}" + (f" > {job.stdout}" if job.stdout else ""))
        return
    r = Runner(out, a.threads)
    r.say(f"measuring {a.paradigms}: AR {a.ar}, DiT {a.dit}, in {len(lanes)} lanes; logs in {r.logs}")
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
