"""`duogen demo`: the whole pipeline on the embedded default, in one time budget.

Stages, in order, each writing one output under `--out` and skipped when that
output is already complete (unless `fresh`):

  data      the tiny shapes world                          OUT/data/dataset_dict.json
  text      SentencePiece on the world's captions          OUT/text/text.model
  codec     the video codec (duogen train tokenizer)       OUT/codec/summary.json
  ar        the next-token model, to its planned FLOPs     OUT/ar/summary.json
  dit       the DiT, to the AR run's training FLOPs        OUT/dit/summary.json
  compare   both (plus shipped reference models) -> report OUT/report/report.html

An interrupted AR or DiT run (a kill, Ctrl-C) resumes from its last checkpoint
(`resume=auto`); its time budget counts the wall time already spent.

Compute matching: the AR model trains first, to the FLOPs the plan gives it (its
share of the time budget when there is no plan); its total training FLOPs (the engine's summary.json) become the DiT's
`max_flops`, and the report shows each run's wall time beside its FLOPs. The
DiT also gets a time cap (its share plus whatever earlier stages left unused)
so the demo ends even where a DiT FLOP costs more wall time than an AR FLOP;
when that cap binds, the report says so (its FLOPs fall short of the AR's).

The machine first: before the codec trains, the demo times a few training steps of
each stage's model at the precision `train.precision=auto` picks (seconds), writes
OUT/machine.json, and splits the codec + AR + DiT part of the budget by the rule in
`duogen.demo_budget` (the codec gets the steps its colors need, up to a cap, and on a
fast machine the steps that sharpen it while the AR model keeps enough FLOPs; AR and
DiT share the rest at equal FLOPs). The report and demo_summary.json state the
machine, each stage's precision, the measured speeds and the shares.

This module owns the orchestration only; every stage is a call into the
library (data, tokenizers, train recipes, eval.compare).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .demo_budget import CODEC_BOUND_WORDS, LOOP_HEADROOM, PLAN_FILE, PLANNED, BudgetPlan, Measurement
from .errors import ConfigError

# Share of the time budget per stage (sums to 1). The DiT's share is a cap: it normally
# stops at the AR's FLOPs first.
SHARES = {"data": 0.03, "text": 0.01, "codec": 0.26, "ar": 0.25, "dit": 0.35, "compare": 0.10}
REFERENCE_DIR = Path(__file__).parent / "assets" / "reference"
# Guidance in the demo's report, one scale per paradigm. The DiT's (and at first the AR model's) was set on the
# demo's own models (`duogen compare --per-split 16 --n 4 --guidance G`, 128 clips each): the fresh DiT's color
# 49% at 3 -> 61% at 5 (61% at 8), the reference DiT's 100% -> 100% (direction 73% -> 76%). The AR model's scale
# was 5 too while it made about 200 steps (color 65% at 3 -> 75% at 5); with the 280-2,000 steps it makes now, 3
# reads at least as well in each of eight paired runs (same prompts and seeds; color 3.9 points higher on average,
# e.g. 87.9 / 79.7% at 3 / 5 at about 9e12 FLOPs, 85.9 / 82.0% at 4.5e12, 81.2 / 77.7% at 2.8e13; count 57% against
# 47%, direction 41% against 35%), while a stronger pull breaks its objects into pieces of other colors (74.6% at
# 8). The reference AR reads 92.2 / 93.8% color at 3 / 5, direction 68.8 / 62.5%, shape 53.5 / 44.5% (README).
DEMO_AR_GUIDANCE = 3.0
DEMO_DIT_GUIDANCE = 5.0
# The demo's AR model draws each clip's first latent frame (its layout) 4 times and keeps the one its own prompt-vs-
# no-prompt likelihood ratio ranks highest (`PatchAR.sample(layout_candidates=)`): where the AR model fails, a
# two-object prompt, its first frame already lacks the second object. On the eight batch-16 models of the note
# below, the same draws kept plain or by that choice (`python bench/bench_layout_candidates.py --model M --data D`,
# 128 clips) read color 90.2% -> 92.7% on average, higher on every seed (two-object prompts 77.9 -> 83.7%, direction
# 48.3 -> 44.9%); on six demo runs' own AR models (1.05-1.37e13 FLOPs) 91.9% -> 93.0% (+1.4 at K = 2). It costs 2x
# the AR's sampled ids per clip and still samples faster than the DiT (docs/demo_runs/record.md, "Layout candidates"). The reference
# AR, a flat model, samples as before: on four flat models it gained 0.1 points on average.
DEMO_AR_LAYOUT_CANDIDATES = 4
# The demo's DiT learning rate: its ~300 steps learn more at 4e-3 than at the preset's 2e-3 (set at 874 steps):
# the same 278-step run (demo codec, data and FLOPs, EMA with warm-up) drew the prompt's color 93% vs 88% and its
# direction 25% vs 5% (128 clips, guidance 5).
DEMO_DIT_LR = 4e-3
# The demo's AR model: the patch-level model (`ar_models/patch.py`, `model.patch=2`): a 4-layer global Llama of the
# `tiny` width steps once per 2x2 block of codec ids and a 64-wide local Llama draws the block's four ids, at learning
# rate 3e-3 and batch 16 (twice the steps of the preset's 32 for the same FLOPs; a step of 16 takes 0.55-0.59x the
# time of one of 32 on an AVX2 machine at two threads, `python bench/bench_ar_batch_speed.py`, so the same wall time
# buys batch 32 up to 1.19x the FLOPs, and at that budget it read 89.6% on seeds 0-3 against batch 16's 90.4%). At the
# slow machine's 6.87e12 FLOPs on the ninth demo run's codec and data (`python bench/bench_patch_ar.py --run RUN --out
# OUT --seed S --batch-size 16`, seeds 0-7; 128 clips, guidance 3) it drew the prompt's color 91.0% on average
# (88.3-94.1%, five of eight seeds at 90% or more) where batch 32 read 88.2% (85.2-90.2%, seeds 0-5) and the flat
# one-layer model below 84.6% (82.4-88.3%); batch 8 and learning rate 2e-3 read no better (docs/demo_runs/record.md, "A patch-level AR
# model"); at batch 32, three demo runs on an AMD EPYC run as AVX2 (1.3-1.5e13 FLOPs) read 90.2, 92.6 and 93.4%.
# Before the patch model: the `tiny` preset with one decoder layer instead of four, at learning rate 4e-3. At the
# demo's budget (about 4-5 minutes of AR training on 2 cores) more steps beat more layers for the flat model, as 128
# wide beat 256 wide at 10 minutes. Same codec, data and wall time (`duogen train ar ... train.max_minutes=5.05
# model.layers=L train.lr=LR`, one core each, two runs side by side), the prompt's color by the probes (`duogen
# compare --per-split 16 --n 4 --guidance 5`, 128 clips): 4 layers at 1e-3 (the preset) 175 steps 50%; 2 layers 300
# steps 65% (80% at 2e-3); 1 layer 420-440 steps 74% at 1e-3, 81% at 2e-3, 84% at 4e-3 (direction 26%), 82% at 8e-3.
# The measurement times this model too, so the plan's FLOP rates and the DiT's matched FLOPs are its own.
DEMO_AR_MODEL = {"patch": 2, "layers": 4}
DEMO_AR_LR = 3e-3
DEMO_AR_BATCH = 16


@dataclass
class Stage:
    """One demo stage: the file that marks it done and the function that produces it."""

    name: str
    done_file: str
    run: Callable[["Demo", float], dict[str, Any]]
    what: str

    def done(self, out: Path) -> bool:
        f = out / self.done_file
        if not f.is_file():
            return False
        if f.name == "summary.json" and (f.parent / "checkpoints").is_dir():
            # an engine run: finished only with final/ written and not stopped by a signal
            # (a SIGTERM still writes summary.json, with "stopped": "signal")
            try:
                stopped = json.loads(f.read_text()).get("stopped")
            except json.JSONDecodeError:
                return False
            return stopped != "signal" and (f.parent / "final" / "config.json").is_file()
        return True


class Demo:
    """Runs the stages with a shared clock, printing which stage runs and how long is left."""

    def __init__(self, out: str | Path, minutes: float = 15.0, seed: int = 0, fresh: bool = False,
                 stream: Any = None, n_clips: int | None = None, n_samples: int = 3, prompts_per_split: int = 6,
                 stages: list[Stage] | None = None, shares: dict[str, float] | None = None,
                 measure: Callable[["Demo"], Measurement] | None = None):
        if minutes <= 0:
            raise ConfigError(f"--minutes must be positive, got {minutes}")
        self.out = Path(out)
        self.minutes = float(minutes)
        self.seed = seed
        self.fresh = fresh
        self.stream = stream or sys.stderr
        self.n_clips = n_clips
        self.n_samples = n_samples
        self.prompts_per_split = prompts_per_split
        self.stages = stages if stages is not None else STAGES
        self.shares = shares if shares is not None else SHARES
        if set(self.shares) != {st.name for st in self.stages}:
            raise ConfigError(f"stage shares {sorted(self.shares)} do not match the stages {[st.name for st in self.stages]}")
        # the machine is measured (and the planned stages' shares set from it) only for the real pipeline,
        # or when a test injects `measure`
        self.measure = measure if measure is not None or stages is not None else measure_stages
        self.plan: BudgetPlan | None = None
        self.plan_precision: str | None = None  # what the plan's speeds were measured in; the planned stages train in it
        self.t0 = time.monotonic()
        self.summary: dict[str, Any] = {"out": str(self.out), "minutes": self.minutes, "stages": {}}

    # -- paths
    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def text(self) -> Path:
        return self.out / "text"

    @property
    def report(self) -> Path:
        return self.out / "report"

    def run_dir(self, name: str) -> Path:
        return self.out / name

    # -- clock
    def elapsed_min(self) -> float:
        return (time.monotonic() - self.t0) / 60

    def left_min(self) -> float:
        return max(0.0, self.minutes - self.elapsed_min())

    def say(self, msg: str) -> None:
        print(f"[demo {self.elapsed_min():5.1f}/{self.minutes:g} min] {msg}", file=self.stream, flush=True)

    def budget(self, name: str, names: list[str]) -> float:
        """Minutes for stage `name`: its share of the time left, among the stages still to run."""
        rest = sum(self.shares[n] for n in names)
        return max(0.05, self.left_min() * self.shares[name] / rest) if rest else 0.05

    def run(self) -> dict[str, Any]:
        if self.fresh:  # only what the stages write: --out may hold the user's other files
            for st in self.stages:
                top = self.out / Path(st.done_file).parts[0]
                if top.is_dir():
                    shutil.rmtree(top)
            for f in ("demo_summary.json", PLAN_FILE, "precision_check.json", "machine_section.json"):
                (self.out / f).unlink(missing_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        names = [s.name for s in self.stages]
        for i, st in enumerate(self.stages):
            pending = names[i:]
            if st.done(self.out):
                self.say(f"stage {i + 1}/{len(self.stages)} {st.name}: already done ({self.out / st.done_file}), reusing it")
                self.summary["stages"][st.name] = {"reused": True}
                continue
            if self.measure is not None and self.plan is None and st.name in PLANNED:
                self.make_plan(pending)
            minutes = self.budget(st.name, pending)
            self.say(f"stage {i + 1}/{len(self.stages)} {st.name}: {st.what} (budget {minutes:.1f} min, {self.left_min():.1f} min left)")
            t = time.monotonic()
            info = st.run(self, minutes) or {}
            info["wall_s"] = round(time.monotonic() - t, 1)
            pace = loop_pace(self, st.name) if self.plan is not None and st.name in PLANNED else {}
            info.update(pace)
            self.summary["stages"][st.name] = info
            self.say(f"stage {st.name} finished in {info['wall_s']:.0f} s"
                     + (f"; its training loop ran {pace['loop_factor']:.2f}x its timed steps" if pace else ""))
        from .demo_budget import stage_precisions
        from .eval.compare import headline

        if self.measure is not None and self.plan is None:
            self.make_plan([], measure=False)  # every planned stage was reused: the summary still states them
        if self.plan is not None:
            self.summary["precision"] = stage_precisions(self.out, self.summary.get("precision"))
        self.summary.update(headline(self.report))
        self.summary["elapsed_min"] = round(self.elapsed_min(), 2)
        self.say(f"report: {self.summary.get('report')}")
        for name, h in self.summary.get("models", {}).items():
            self.say(headline_line(name, h))
        from .io import atomic_write_json

        atomic_write_json(self.out / "demo_summary.json", self.summary)
        return self.summary

    def make_plan(self, pending: list[str], measure: bool = True) -> None:
        """Measure the machine (or reuse OUT/machine.json), split the planned stages' time by `demo_budget.allocate`,
        and set their shares; the fixed stages (data, text, compare) keep theirs. With `measure` False, only a
        plan already in OUT/machine.json is read (nothing is measured when no stage will use it)."""
        from .demo_budget import allocate, read_plan, write_plan

        got = read_plan(self.out)
        if got is not None:
            doc, self.plan = got
            self.say(f"machine: reusing the measurement and plan in {self.out / PLAN_FILE}")
        elif not measure:
            return
        else:
            self.say("measuring the machine: a few training steps of the codec, AR model and DiT")
            m = self.measure(self)
            planned = [n for n in self.shares if n in PLANNED]
            rest = [n for n in pending if n not in PLANNED]
            pool = sum(self.shares[n] for n in planned)
            pool_minutes = max(0.1, self.left_min() * pool / (pool + sum(self.shares[n] for n in rest)))
            self.plan = allocate(m.speeds, pool_minutes, m.fixed_s())
            write_plan(self.out, m, self.plan)
            doc = m.to_dict()
        self.plan_precision = doc["precision"]
        pool = sum(self.shares[n] for n in PLANNED if n in self.shares)
        self.shares = {**self.shares, **{k: pool * v for k, v in self.plan.shares().items() if k in self.shares}}
        self.summary.update({"machine": doc["machine"], "precision": {k: doc["precision"] for k in PLANNED},
                             "precision_reason": doc["precision_reason"], "speeds": doc["speeds"],
                             "shares": {k: round(v, 4) for k, v in self.shares.items()}, "plan": self.plan.to_dict()})
        from .speed import Machine

        self.say(f"machine: {Machine(**doc['machine']).line()}; precision {doc['precision']}")
        self.say("measured s/step: " + ", ".join(f"{k} {v['step_s']:.3f}" for k, v in doc["speeds"].items())
                 + "; plan: " + ", ".join(f"{k} {self.plan.minutes[k]:.1f} min" for k in PLANNED)
                 + f" (codec to {self.plan.codec_steps} steps, set by {self.plan.codec_bound}:"
                 f" {CODEC_BOUND_WORDS.get(self.plan.codec_bound, '?')})")
        for note in self.plan.notes:
            self.say(f"note: {note}")


# ----------------------------------------------------------------------------- stages


def _stage_data(d: Demo, minutes: float) -> dict[str, Any]:
    from .data import make_dataset

    return make_dataset("shapes", d.data, n=d.n_clips, preset="tiny", seed=d.seed, overwrite=True)


def _stage_text(d: Demo, minutes: float) -> dict[str, Any]:
    from .data import load_dataset
    from .tokenizers.text import train_text_tokenizer
    from .train.ar_recipe import AR_RECIPE_PRESETS

    # one SentencePiece model for both paradigms, at the size the AR recipe uses
    captions = load_dataset(d.data)["train"]["caption"]
    tok = train_text_tokenizer(captions, d.text, vocab_size=AR_RECIPE_PRESETS["tiny"].text_vocab)
    return {"path": str(d.text / "text.model"), "vocab_size": tok.vocab_size}


def _stage_codec(d: Demo, minutes: float) -> dict[str, Any]:
    from .train.tokenizer_recipe import main as train_tokenizer

    steps = [f"train.steps={d.plan.codec_steps}"] if d.plan is not None else []  # whichever ends first
    minutes = _train_minutes(d, "codec", minutes)
    info = train_tokenizer("video", d.data, d.run_dir("codec"), preset="tiny", seed=d.seed,
                           overrides=[f"train.max_minutes={minutes:.3f}", *steps, *_planned_precision(d)])
    return {k: info.get(k) for k in ("final", "steps", "parameters", "precision", "heldout") if k in info}


def _planned_precision(d: Demo) -> list[str]:
    """`train.precision=P` for a planned stage: the precision its speed was measured in, so the plan's step times
    hold (the engine's own `auto` reads a cache the plan's check does not, which may hold another answer)."""
    return [f"train.precision={d.plan_precision}"] if d.plan is not None and d.plan_precision else []


def _train_minutes(d: Demo, stage: str, minutes: float) -> float:
    """The training loop's time cap: the budget less its planned fixed cost (encoding, evaluation); with a
    plan, times LOOP_HEADROOM, since another target ends each stage (the codec's steps, the AR model's planned
    FLOPs, the DiT's matched FLOPs); the AR model's has none, so that the DiT keeps the time to match it."""
    if d.plan is None:
        return minutes
    return d.plan.train_minutes(stage, minutes) * LOOP_HEADROOM.get(stage, 1.0)


def demo_ar_overrides() -> list[str]:
    """The demo's AR model and learning rate as `duogen train ar` overrides on the `tiny` preset."""
    return [*(f"model.{k}={v}" for k, v in DEMO_AR_MODEL.items()), f"train.lr={DEMO_AR_LR:g}",
            f"train.batch_size={DEMO_AR_BATCH}"]


def _stage_ar(d: Demo, minutes: float) -> dict[str, Any]:
    from .train.ar_recipe import train_ar

    replan = _replan_ar(d, minutes)
    minutes = _train_minutes(d, "ar", minutes)
    target = replan.get("flops", d.plan.ar_flops if d.plan is not None else 0.0)
    flops = [f"train.max_flops={target:.6g}"] if target > 0 else []
    info = train_ar(d.data, d.run_dir("codec") / "final", d.run_dir("ar"), preset="tiny", seed=d.seed,
                    text=d.text / "text.model", resume="auto",
                    overrides=[*demo_ar_overrides(), *flops, f"train.max_minutes={minutes:.3f}", *_planned_precision(d)])
    out = {k: info.get(k) for k in ("final", "steps", "flops", "wall_s", "final_loss", "stopped", "parameters", "precision")}
    return {**out, **({"replan": replan} if replan else {})}


def _replan_ar(d: Demo, minutes: float) -> dict[str, Any]:
    """The AR model's FLOP target planned again after the codec (`demo_budget.replan_ar_flops`), over the AR's and
    the DiT's wall minutes as the clock now gives them: {"flops", "planned_flops", "minutes"}, and the codec loop's
    pace for the record ("codec_loop_factor", when its run has one); {} without a plan."""
    from .demo_budget import read_plan, replan_ar_flops
    from .speed import StepSpeed

    got = read_plan(d.out)
    if d.plan is None or d.plan.ar_flops <= 0 or got is None:
        return {}
    speeds = {k: StepSpeed.from_dict(v) for k, v in got[0]["speeds"].items()}
    names = [s.name for s in d.stages]
    both = minutes + d.budget("dit", names[names.index("ar"):])
    flops = replan_ar_flops(d.plan, speeds, both)
    d.say(f"AR model's FLOPs planned again after the codec: {flops:.3g} (planned {d.plan.ar_flops:.3g}) for the"
          f" {both:.1f} min AR and DiT have, at their timed speeds")
    info = {"flops": flops, "planned_flops": d.plan.ar_flops, "minutes": round(both, 2)}
    pace = loop_pace(d, "codec")
    if pace:
        info["codec_loop_factor"] = round(pace["loop_factor"], 3)
    return info


def loop_pace(d: Demo, stage: str) -> dict[str, float]:
    """How a planned stage's training loop kept the pace of the step the machine measure timed:
    {"loop_s_per_step", "loop_factor"} (the loop's seconds per step, and that over the timed step's); {} without
    a measurement or the stage's records. The codec's loop from its summary.json (train_seconds, its periodic
    evaluations included); the AR's and the DiT's from the engine's metrics.jsonl, the last line's cumulative
    wall_s over its step, so that a resumed run counts every session."""
    from .demo_budget import read_plan

    got = read_plan(d.out)
    if got is None:
        return {}
    try:
        timed = float(got[0]["speeds"][stage]["step_s"])
        run = d.run_dir(stage)
        if stage == "codec":
            summary = json.loads((run / "summary.json").read_text())
            seconds, steps = float(summary["train_seconds"]), int(summary["steps"])
        else:
            rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
            last = [r for r in rows if "wall_s" in r and r.get("step")][-1]
            seconds, steps = float(last["wall_s"]), int(last["step"])
        per_step = seconds / steps
        return {"loop_s_per_step": round(per_step, 4), "loop_factor": round(per_step / timed, 4)}
    except (OSError, ValueError, KeyError, TypeError, IndexError, ZeroDivisionError):
        return {}


def _stage_dit(d: Demo, minutes: float) -> dict[str, Any]:
    from .eval.compare import training_info
    from .train.diffusion_recipe import train_diffusion

    minutes = _train_minutes(d, "dit", minutes)
    ar_flops = training_info(d.run_dir("ar") / "final").get("flops")
    if not ar_flops:
        raise ConfigError(f"{d.run_dir('ar')}: no training FLOPs in summary.json; cannot compute-match the DiT (rerun with --fresh)")
    res = train_diffusion(
        d.data, d.run_dir("codec") / "final", d.run_dir("dit"), preset="tiny", seed=d.seed, text=d.text / "text.model", resume="auto",
        overrides=["denoiser=dit", f"train.lr={DEMO_DIT_LR:g}", f"train.max_flops={float(ar_flops):.6g}",
                   f"train.max_minutes={minutes:.3f}", *_planned_precision(d)],
    )
    info = {k: res.get(k) for k in ("final", "steps", "flops", "wall_s", "final_loss", "stopped", "parameters", "precision")}
    dit_flops = training_info(d.run_dir("dit") / "final").get("flops")
    info["matched_flops"] = float(ar_flops)
    info["flops_ratio_dit_to_ar"] = float(dit_flops) / float(ar_flops) if dit_flops else None
    return info


def headline_line(name: str, h: Mapping[str, Any]) -> str:
    """One model's line at the end of the demo: `compare.headline`'s accuracies, each with its standard error."""
    err = h.get("accuracy_stderr") or {}
    acc = ", ".join(f"{k} {100 * v:.0f}%" + (f" ± {100 * err[k]:.0f}" if err.get(k) is not None else "")
                    for k, v in h["accuracy"].items() if k in ("color", "direction", "shape"))
    by = sorted(((int(n), g["color"]) for n, g in (h.get("accuracy_by_objects") or {}).items() if "color" in g))
    if len(by) > 1:  # where the prompts name one object or two, the color of each (the AR model's misses are the twos)
        acc += f"; color with {' / '.join(str(n) for n, _ in by)} objects {' / '.join(f'{100 * c:.0f}' for _, c in by)}%"
    flops = f"{h['train_flops']:.3g}" if h.get("train_flops") else "?"
    return f"{name} [{h['sampling']}]: {acc}; training {flops} FLOPs in {h.get('train_wall_s') or 0:.0f} s"


def reference_models() -> dict[str, Path]:
    """The shipped reference checkpoints that exist: {"ar": dir, "dit": dir}."""
    return {k: REFERENCE_DIR / k for k in ("ar", "dit") if (REFERENCE_DIR / k / "config.json").is_file()}


def demo_diffusion_settings(guidance: float = DEMO_DIT_GUIDANCE) -> list[Any]:
    """The demo's diffusion sweep, sized to its time: DPM-Solver++ 20 (headline) and 10, DDIM 20.

    `duogen compare` sweeps wider (DDIM 10/20/50 as well); on 2 shared cores a DDIM-50 pass over the
    demo's prompts alone costs minutes.
    """
    from .eval.compare import Setting

    g = {"guidance": guidance}
    return [Setting("dpm++-20", {"sampler": "dpm_solver", "steps": 20, **g}),
            Setting("dpm++-10", {"sampler": "dpm_solver", "steps": 10, **g}),
            Setting("ddim-20", {"sampler": "ddim", "steps": 20, **g})]


def _stage_compare(d: Demo, minutes: float) -> dict[str, Any]:
    from .demo_budget import report_section
    from .eval.compare import ar_settings, compare, dataset_prompts, load_model, real_clips
    from .io import atomic_write_json

    ar, dit = ar_settings(DEMO_AR_GUIDANCE), demo_diffusion_settings()
    demo_ar = ar_settings(DEMO_AR_GUIDANCE, layout_candidates=DEMO_AR_LAYOUT_CANDIDATES)
    models = [load_model("AR (demo)", d.run_dir("ar") / "final", demo_ar),
              load_model("DiT (demo)", d.run_dir("dit") / "final", dit)]
    refs = reference_models()
    if "ar" in refs:
        models.append(load_model("AR (reference, GPU-trained)", refs["ar"], ar))
    if "dit" in refs:
        models.append(load_model("DiT (reference, GPU-trained)", refs["dit"], dit))
    prompts = dataset_prompts(d.data, per_split=d.prompts_per_split)
    sections = []
    section = report_section(d.out, f"duogen demo --out {d.out} --minutes {d.minutes:g} --seed {d.seed}")
    if section is not None:  # the machine, the precision, the measured speeds and the shares
        sections.append(atomic_write_json(d.out / "machine_section.json", section))
    res = compare(models, prompts, d.report, n=d.n_samples, seed=d.seed, real=real_clips(d.data, max_clips=128),
                  data_dir=d.data, per_call=len(prompts), log=d.say, sections=sections)
    return {"report": res.get("report"), "models": [m["name"] for m in res["models"]]}


STAGES = [
    Stage("data", "data/dataset_dict.json", _stage_data, "render the tiny shapes world"),
    Stage("text", "text/text.model", _stage_text, "train the SentencePiece text tokenizer on the captions"),
    Stage("codec", "codec/summary.json", _stage_codec, "train the video codec"),
    Stage("ar", "ar/summary.json", _stage_ar, "train the next-token (AR) model to its planned FLOPs (its time share without a plan)"),
    Stage("dit", "dit/summary.json", _stage_dit, "train the DiT to the AR model's training FLOPs"),
    Stage("compare", "report/report.html", _stage_compare, "sample both, score with the probes, write the report"),
]


def measure_stages(d: Demo) -> Measurement:
    """The real pipeline's measurement: its data set and text tokenizer, timed at `auto`'s precision."""
    from .demo_budget import measure_machine

    return measure_machine(d.out, d.data, d.text / "text.model", log=d.say, ar_model=DEMO_AR_MODEL,
                          ar_batch=DEMO_AR_BATCH)


def run_demo(out: str | Path = "runs/demo", minutes: float = 15.0, seed: int = 0, fresh: bool = False, **kw: Any) -> dict[str, Any]:
    """Run (or resume) the demo; return its summary (also written to OUT/demo_summary.json)."""
    return Demo(out, minutes=minutes, seed=seed, fresh=fresh, **kw).run()
