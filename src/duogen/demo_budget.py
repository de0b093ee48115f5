"""How `duogen demo` splits its training time between the codec, the AR model and the DiT.

    plan = allocate({"codec": StepSpeed(...), "ar": ..., "dit": ...}, pool_minutes=12.0,
                    fixed_s={"codec": 10.0, "ar": 45.0, "dit": 45.0})
    plan.minutes  # {"codec": 4.9, "ar": 3.3, "dit": 3.8}; plan.codec_steps  # 2000

Owns: the codec's per-step color curve (how many steps make it usable), the allocation
rule (`allocate`: a pure function, measured speeds in, minutes and steps out), measuring
this machine for it (`measure_machine`, a few timed steps of each stage's model), the plan
file OUT/machine.json, and the report section that states the machine, the precision, the
measured speeds and the shares. Does not own: running the stages (`duogen.demo`), the
timing itself (`duogen.speed`) or the precision policy (`duogen.precision`).

The rule. The pool P is the minutes left for codec + AR + DiT once data, text and the report
have their fixed shares. Each planned stage also spends time outside its training loop, a
cost no split avoids (F, from the codec's measured encode time per clip): the AR stage
encodes the training clips with the codec (into the cache the DiT stage reads), the codec
stage stores its latent statistics and evaluates the held-out split. So the split is over the training time
P' = P - F_codec - F_ar - F_dit (at least FLOOR * P: where the fixed costs eat more, the demo
overruns its budget and the plan says by how much). With t_c the codec's measured seconds
per step:

1. The codec first. Every later stage inherits its color error, so it gets the steps its
   colors need before the other two get anything: N_need = the steps at which the probes
   read >= CODEC_COLOR_NEED of held-out objects' colors through it, N_use = the steps for
   >= CODEC_COLOR_USABLE (below that neither model can reach the demo's 90% color target),
   both read off CODEC_COLOR_CURVE (log-linear between its points):

       codec seconds = max(min(N_need * t_c, CAP * P'),   its needed steps, up to CAP
                           min(N_use * t_c, MAX * P'),    its usable minimum even past the cap, up to MAX
                           min(N_sharp * t_c, CAP * P',   its sharp steps, while the AR model keeps
                               P' - S_enough),            the FLOPs past which it gains little
                           MIN * P')                      on a fast machine more steps cost little

   Past its colors the codec keeps paying: its shapes sharpen, and the AR model trained on
   its ids draws the prompt more often at the same FLOPs, while the AR model's own gains
   flatten past about AR_ENOUGH_FLOPS (the measurements at CODEC_SHARP_STEPS). So where the
   machine is fast enough the codec trains to N_sharp = CODEC_SHARP_STEPS, as long as the
   AR model is still planned AR_ENOUGH_FLOPS (S_enough: the training time that gives it
   those, with the DiT's matching share).

   The codec trains to train.steps = codec seconds / t_c with its training minutes times
   LOOP_HEADROOM as the time cap (whichever ends first; its loop runs a little slower than
   the timed steps; unused time rolls over to the next stages, time taken past its share comes
   out of theirs).
2. AR and DiT split the rest R = P' - codec seconds so that their training FLOPs match at
   the measured FLOP rates r (FLOPs per second): AR seconds = R * r_dit / (r_ar + r_dit).
   Each stage's minutes are its training time plus its F (its engine's time cap is the
   training time alone, times LOOP_HEADROOM: none for the AR model, whose extra time would be the DiT's). The AR
   model trains to its planned FLOPs (AR seconds * r_ar, `train.max_flops`) or its share of the time, whichever
   ends first, so a loop that runs faster than its timed steps ends early and leaves the time to the DiT, and one
   that runs slower stops at its share and leaves the DiT the time to match it; the DiT then trains to the AR
   run's actual FLOPs.
3. Once the codec has trained, the AR model's FLOP target is planned again (`replan_ar_flops`): the same split
   over the AR's and the DiT's minutes as the demo's clock then gives them, at the measured speeds. A codec that
   ran past its share costs both models FLOPs alike instead of the DiT alone, and one that ended early gives both
   its time.

A slower machine (larger t_c) gives the codec a larger share; a machine where even N_use
does not fit in MAX of P' gets a note with the pool that would fit N_need.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .speed import Machine, StepSpeed

# The tiny video codec's color fidelity at the END of a run of N training steps (its learning-rate schedule
# spans the run, as the demo's does): the share of held-out objects whose color the probes read in its
# reconstructions, 128 held-out clips, one run per step count (`python bench/bench_codec_steps.py --data DATA
# --out DIR --config new=tiny --steps N`, docs/bench_codec_steps): 250 steps 66.1%, 500 steps 100%, 1,000 steps
# 100%. The preset before issue 19 (no standardized latent, one decoder level) needed about 1,000 steps for 95%
# (18% / 40% / 95.6% at 250 / 500 / 1,000). The preset's color path (session 19) keeps 98.9 / 99.5% at 250 steps
# (two seeds, against 65.0 / 59.0% without it), but the curve stays the one measured without it: the demo still
# gives the codec about 452 steps where the machine is slow, now a margin past its colors rather than their edge
# (one demo run lost four colors at 452 steps without the path), because the AR model's color keeps rising with
# the codec's steps past its colors (below), and a 250-step codec with the path did not pay for itself: the demo's
# AR model on it, given the FLOPs its saved time buys on the emulated AVX2 machine (1.04e13 against 6.87e12), drew
# the prompt's color 83.6 / 85.2% against 86.7 / 84.0% on the demo's 444-step codec (seeds 0 / 1, 128 clips; README).
# The preset's FSQ [5,5,5,5] (session 43) keeps 99.5 / 98.9% at 250 steps ([8,5,5,5]: 100 / 98.9%), so the curve stays.
CODEC_COLOR_CURVE: tuple[tuple[int, float], ...] = ((250, 0.661), (500, 1.0), (1000, 1.0))
CODEC_COLOR_NEED = 0.95  # issue 19's codec target
CODEC_COLOR_USABLE = 0.90  # the demo's color target for AR and DiT: a codec below it caps them below it
CODEC_CAP = 0.5  # of the training pool: the codec's needed steps, at most
CODEC_MAX = 0.75  # of the training pool: its usable minimum, at most (AR and DiT keep a quarter)
CODEC_MIN = 0.1  # of the training pool: at least, when its steps are cheap
# The codec's steps past its colors, and the AR FLOPs they may leave (the "sharp" bound). On the demo's world, the
# demo's AR model at 1.5e13 FLOPs drew the prompt's color (two AR seeds, guidance 3, 128 clips) 80.1% on average
# on a codec trained 452 steps (20.0 dB held-out), 86.7% on one of 756 (21.5 dB), 89.1 and 85.8% on two of 1,500
# (22.6, 22.8 dB; count 66-67% against 52% at 452) and 85.0% on one of 3,000 (23.9 dB): a plateau from about 750
# steps within the spread between codecs of one recipe. The DiT at those FLOPs read 91.8% color on the 1,500-step
# codec against 94.0% on the 452-step one, shape 15.0 against 10.4%. The AR model's own compute gains little past
# about 1.5e13: on the 756-step codec 82.6 / 87.1 / 86.7 / 86.9% color at 4.5e12 / 9e12 / 1.5e13 / 3.2e13 FLOPs,
# direction 18.8 / 34.8 / 42.4 / 44.2% (docs/demo_runs/record.md).
# Tried at 2e13 (session 30: fewer codec steps, more FLOPs): the DiT gained 2.3 points of color on two worlds, but the
# patch AR model at K = 4 lost 3.9 over three (90.3 against 94.2%, seven runs each; docs/demo_runs/record.md, "More FLOPs, fewer codec
# steps"), and the AR model is the one short of the demo's target: kept at 1.5e13.
CODEC_SHARP_STEPS = 1500
AR_ENOUGH_FLOPS = 1.5e13
# What each codec bound means, for the log and the report
CODEC_BOUND_WORDS = {
    "needed": "the steps its colors need",
    "cap": f"its cap, {CODEC_CAP:.0%} of the training time, short of the steps its colors need",
    "usable": "its usable minimum, past its cap",
    "max": f"its usable minimum, cut at {CODEC_MAX:.0%} of the training time",
    "sharp": f"sharper past its colors, while the AR model keeps {AR_ENOUGH_FLOPS:.2g} FLOPs",
    "min": f"its least share, {CODEC_MIN:.0%} of the training time",
}
FLOOR = 0.25  # of the pool: the training time planned for even when the fixed costs take more (then it overruns)
# A training loop runs at a different speed from the timed synthetic steps (batches, augmentation, periodic
# evaluations, and a few timed steps read a passing load). Each stage ends at its own target (the codec at its
# planned steps, the AR model at its planned FLOPs, the DiT at the AR run's FLOPs) and gets this headroom on its
# time cap so that the target, not the cap, ends it: in `duogen demo --out /tmp/s10/demo2/run` the codec ran 0.712 s
# per step against 0.654 measured (x1.09) and its cap stopped it at 416 of 452 steps; in /tmp/s11/demo/run the DiT
# ran 0.74 against 0.646 (x1.15) and its cap stopped it at 0.87x the AR's FLOPs. In /tmp/s12/demo/run the AR
# model's cap was its end: its loop ran 0.36 s per step against 0.502 measured, it made 695 steps for the plan's
# 522 (1.1e13 FLOPs), and the DiT's cap stopped it at 0.69x those. What a stage takes past its share comes out of
# the stages after it (they split the time left); what it leaves goes to them.
# The AR model's cap has none: its share is the time that leaves the DiT its match of the AR's FLOPs, so headroom
# there comes out of the DiT's FLOPs. In two emulated-AVX2 runs of session 20 (/tmp/s19/avx2cp, /tmp/s20/avx2c) both
# models' loops ran 1.15-1.33x their timed steps (`demo.loop_pace`), past what the codec's loop (1.05x, 1.01x) let
# the re-plan foresee; the AR model took past its share, the DiT's cap stopped it at 0.94x and 0.80x the AR's FLOPs,
# and the demos ended 0.5 minutes past their budget. Capped at its share, the AR model stops with fewer FLOPs where
# its loop is slow, and the DiT, as slow, still has its share to match them.
LOOP_HEADROOM = {"codec": 1.15, "ar": 1.0, "dit": 1.15}
# After the codec the AR model's FLOP target is planned again (`replan_ar_flops`) on the time the clock leaves AR and
# DiT, at their timed speeds. Until session 22 it also slowed them by the codec loop's factor, but over seven
# emulated-AVX2 demos (`demo.loop_pace`) the codec's loop did not foretell theirs: codec 1.05 / 1.02 / 1.01 / 1.15 /
# 0.98 / 0.66 / 1.19x against AR 1.16 / 1.07 / 1.25 / 1.06 / 0.87 / 1.01 / 0.84x (DiT within 0.2 of the AR's). Where
# the codec ran slow (1.15x, 1.19x), the factor cut both models' FLOPs by a further 13% and 16% (to 5.0e12 and 4.8e12
# where the clock left time for 5.7e12) and the demos ended 0.2 and 1.4 minutes early; where it ran on time, the two
# loops were the slow ones. The caps handle slow AR and DiT loops (above).
PLANNED = ("codec", "ar", "dit")
PLAN_FILE = "machine.json"


@dataclass
class BudgetPlan:
    pool_minutes: float  # codec + AR + DiT minutes the plan split
    train_pool_minutes: float  # P': the pool less the stages' fixed costs (at least FLOOR of it)
    minutes: dict[str, float]  # per planned stage: wall minutes (the AR stage includes the encode the DiT stage reuses)
    codec_steps: int  # the codec's train.steps
    codec_needed_steps: int  # N_need
    codec_usable_steps: int  # N_use
    codec_bound: str  # what set the codec's time: "needed" | "cap" | "usable" | "max" | "sharp" | "min"
    fixed_minutes: dict[str, float]  # per planned stage: minutes outside its training loop (encode, evaluation)
    expected_steps: dict[str, int]  # what the minutes buy at the measured speeds
    ar_flops: float = 0.0  # the AR model's planned training FLOPs (its train.max_flops; 0 in plans written before)
    notes: list[str] = field(default_factory=list)
    overrun: bool = False  # the fixed costs leave less than FLOOR of the pool: the planned minutes sum past it

    def shares(self) -> dict[str, float]:
        """Each planned stage's fraction of the planned minutes (sums to 1; the minutes sum to the pool unless
        the fixed costs overrun it)."""
        total = sum(self.minutes.values())
        return {k: v / total for k, v in self.minutes.items()}

    def train_minutes(self, stage: str, minutes: float) -> float:
        """A stage's training-loop time cap from its wall budget: the budget less the stage's fixed cost. In an
        overrun the shares scale every budget down below the fixed costs, so the planned training time is kept
        (the plan's note said the demo would run past its budget)."""
        fixed = self.fixed_minutes.get(stage, 0.0)
        t = minutes - fixed
        if self.overrun and stage in self.minutes:
            t = max(t, self.minutes[stage] - fixed)
        return max(0.05, t)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shares": {k: round(v, 4) for k, v in self.shares().items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BudgetPlan":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def steps_for(curve: Sequence[tuple[int, float]], target: float) -> int:
    """The fewest steps at which `curve` (steps, color fidelity) reaches `target`: log-linear between its points;
    its first point's steps when that already reaches it, its last point's when none does."""
    pts = sorted(curve)
    if not pts:
        raise ValueError("the codec curve needs at least one (steps, fidelity) point")
    if pts[0][1] >= target:
        return int(pts[0][0])
    for (s0, c0), (s1, c1) in zip(pts, pts[1:]):
        if c1 >= target:
            f = (target - c0) / (c1 - c0) if c1 > c0 else 1.0
            return int(math.ceil(math.exp(math.log(s0) + f * (math.log(s1) - math.log(s0)))))
    return int(pts[-1][0])


def allocate(speeds: Mapping[str, StepSpeed], pool_minutes: float, fixed_s: Mapping[str, float] | None = None,
             curve: Sequence[tuple[int, float]] = CODEC_COLOR_CURVE) -> BudgetPlan:
    """The rule in the module docstring: measured speeds (seconds per step and FLOPs per step of codec, ar, dit),
    the pool's minutes and each stage's fixed seconds outside its training loop -> minutes per stage, the
    codec's step target and the steps the rest buy."""
    missing = [k for k in PLANNED if k not in speeds]
    if missing:
        raise ValueError(f"speeds for {missing} missing; allocate needs codec, ar and dit")
    if pool_minutes <= 0:
        raise ValueError(f"pool_minutes must be positive, got {pool_minutes}")
    P = pool_minutes * 60.0
    fixed = {k: float((fixed_s or {}).get(k, 0.0)) for k in PLANNED}
    Pt = max(P - sum(fixed.values()), FLOOR * P)  # P': the training time to split
    t_c = max(speeds["codec"].step_s, 1e-9)
    n_need, n_use = steps_for(curve, CODEC_COLOR_NEED), steps_for(curve, CODEC_COLOR_USABLE)
    r_ar, r_dit = speeds["ar"].flops_per_s, speeds["dit"].flops_per_s
    frac_ar = ar_time_fraction(r_ar, r_dit)
    # the most the codec may take while AR (and, at its matching share, DiT) training still gets AR_ENOUGH_FLOPS
    spare = Pt - AR_ENOUGH_FLOPS / (r_ar * frac_ar) if r_ar > 0 else 0.0
    bounds = {"needed": min(n_need * t_c, CODEC_CAP * Pt), "usable": min(n_use * t_c, CODEC_MAX * Pt),
              "sharp": min(CODEC_SHARP_STEPS * t_c, CODEC_CAP * Pt, spare), "min": CODEC_MIN * Pt}
    codec_s = max(bounds.values())
    bound = max(bounds, key=bounds.get)
    if bound == "needed" and n_need * t_c > CODEC_CAP * Pt:
        bound = "cap"
    if bound == "usable" and n_use * t_c > CODEC_MAX * Pt:
        bound = "max"
    codec_steps = max(1, int(codec_s / t_c + 1e-6))  # 1e-6: 151.6 / 0.1 is 1515.99...

    rest = Pt - codec_s
    ar_train, dit_train = rest * frac_ar, rest * (1 - frac_ar)
    minutes = {"codec": (codec_s + fixed["codec"]) / 60, "ar": (ar_train + fixed["ar"]) / 60,
               "dit": (dit_train + fixed["dit"]) / 60}
    expected = {"codec": codec_steps, "ar": int(ar_train / max(speeds["ar"].step_s, 1e-9)),
                "dit": int(dit_train / max(speeds["dit"].step_s, 1e-9))}

    notes = []
    overrun = P - sum(fixed.values()) < FLOOR * P
    if overrun:
        notes.append(f"the stages' fixed costs (encoding the training clips for AR and DiT, the codec's evaluation)"
                     f" take {sum(fixed.values()) / 60:.1f} min of the {pool_minutes:.1f}-min pool; the demo will overrun"
                     f" its budget by about {sum(minutes.values()) - pool_minutes:.1f} min")
    if codec_steps < n_use:
        fit_minutes = (n_need * t_c / CODEC_CAP + sum(fixed.values())) / 60
        notes.append(f"the budget buys the codec {codec_steps} steps at {t_c:.2f} s/step, below the {n_use} its colors"
                     f" need (>= {CODEC_COLOR_USABLE:.0%} color fidelity); a pool of {fit_minutes:.0f} minutes"
                     f" would fit its {n_need} steps on this machine")
    elif codec_steps < n_need:
        notes.append(f"the codec gets {codec_steps} steps: past its usable {n_use}, short of the {n_need} for"
                     f" >= {CODEC_COLOR_NEED:.0%} color (capped at {CODEC_CAP:.0%} of the pool)")
    return BudgetPlan(pool_minutes=pool_minutes, train_pool_minutes=Pt / 60, minutes=minutes, codec_steps=codec_steps,
                      codec_needed_steps=n_need, codec_usable_steps=n_use, codec_bound=bound,
                      fixed_minutes={k: v / 60 for k, v in fixed.items()},
                      expected_steps=expected, ar_flops=ar_flops_for(speeds, rest), notes=notes, overrun=overrun)


def ar_time_fraction(r_ar: float, r_dit: float) -> float:
    """The AR model's fraction of the training time AR and DiT split so that their FLOPs match at FLOP rates r
    (a * r_ar = d * r_dit); half when a rate is unknown (0)."""
    return r_dit / (r_ar + r_dit) if r_ar > 0 and r_dit > 0 else 0.5


def ar_flops_for(speeds: Mapping[str, StepSpeed], train_s: float) -> float:
    """The AR model's training FLOPs when it and the DiT split `train_s` seconds of training so that their FLOPs
    match (`ar_time_fraction`) at the measured FLOP rates."""
    r_ar, r_dit = speeds["ar"].flops_per_s, speeds["dit"].flops_per_s
    return max(0.0, train_s) * ar_time_fraction(r_ar, r_dit) * r_ar


def replan_ar_flops(plan: BudgetPlan, speeds: Mapping[str, StepSpeed], ar_dit_minutes: float) -> float:
    """The AR model's FLOP target once the codec has trained: the same matched split as `allocate`, over the AR's and
    the DiT's wall minutes as the demo's clock now gives them (less their fixed costs), at the measured speeds. A
    codec that ran past its share costs both models FLOPs alike, and the DiT, which trains last, still has the time
    to match the AR model's; a codec that ended early gives both the time it left. Loops slower than their timed
    steps are the caps' business (`LOOP_HEADROOM`): the codec's loop does not foretell theirs."""
    fixed = plan.fixed_minutes.get("ar", 0.0) + plan.fixed_minutes.get("dit", 0.0)
    return ar_flops_for(speeds, (ar_dit_minutes - fixed) * 60.0)


# ----------------------------------------------------------------------------- measuring the machine


@dataclass
class Measurement:
    machine: Machine
    precision: str  # what `auto` resolves to on the device the stages train on
    precision_reason: str
    speeds: dict[str, StepSpeed]
    encode_s_per_clip: float
    train_clips: int
    measured_s: float  # wall seconds the measurement took
    heldout_clips: int = 0

    def fixed_s(self) -> dict[str, float]:
        """Each planned stage's seconds outside its training loop, from the codec's encode time per clip: the AR
        stage encodes the training clips into the cache the DiT stage then reads (one encoder pass gives both the
        ids and the latents, `recipe_common.encode_videos`); the codec encodes `stats_items` of them for its
        latent statistics and encodes + decodes the held-out split (a decode costs about an encode)."""
        from .train.tokenizer_recipe import VIDEO_RUN_PRESETS

        stats = min(VIDEO_RUN_PRESETS["tiny"].train.stats_items, self.train_clips)
        e = self.encode_s_per_clip
        return {"codec": e * (stats + 2 * self.heldout_clips), "ar": e * self.train_clips, "dit": 0.0}

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine.to_dict(), "precision": self.precision, "precision_reason": self.precision_reason,
                "speeds": {k: {**asdict(v), "flops_per_s": v.flops_per_s} for k, v in self.speeds.items()},
                "encode_s_per_clip": self.encode_s_per_clip, "train_clips": self.train_clips,
                "heldout_clips": self.heldout_clips, "measured_s": self.measured_s, "fixed_s": self.fixed_s()}


def measure_machine(out: Path, data: Path, text: Path, repeats: int = 3, log: Any = None,
                    ar_model: Mapping[str, Any] | None = None, ar_batch: int | None = None) -> Measurement:
    """Time `repeats` training steps (after a warm-up) of the tiny codec, AR model (`ar_model`: the changes to its
    preset's model config the demo trains with; `ar_batch`: its batch size, the preset's by default) and DiT at
    the precision `auto` picks, and the codec's encode of a clip; the precision check's cache goes under `out`,
    nothing outside it.
    Each stage's speed is the median of three timed steps: a load passing through one of them does not move it
    (the median of two did: a codec measured at 2.27 s/step that trained at 0.72 planned 103 steps). Not the
    fastest step: it under-reads the training loop, which also loads and logs (a codec measured at 0.613 s/step
    trained at 0.85 with its evaluations, and made 366 of its 452 planned steps)."""
    from .data import load_dataset
    from .precision import resolve_precision
    from .speed import ar_step, codec_step, describe_machine, dit_step, time_encode, time_training_step
    from .tokenizers.text import TextTokenizer

    t0 = time.perf_counter()
    machine = describe_machine()
    choice = resolve_precision("auto", machine.device, cache_path=out / "precision_check.json")
    ds = load_dataset(data)
    train = ds["train"]
    captions = list(train.select(range(min(64, len(train))))["caption"])
    tok = TextTokenizer.load(text)
    speeds = {}
    builders = {"codec": lambda: codec_step(machine.device),
                "ar": lambda: ar_step(tok, captions, machine.device, ar_batch, **(ar_model or {})),
                "dit": lambda: dit_step(tok, captions, machine.device)}
    for name, build in builders.items():
        sm = build()
        speeds[name] = time_training_step(sm, choice.precision, repeats=repeats)
        if log:
            log(f"measured {name}: {speeds[name].step_s:.3f} s/step, {speeds[name].flops_per_step:.3g} FLOPs/step"
                f" ({choice.precision})")
    enc = time_encode(codec_step(machine.device).model, device=machine.device)
    return Measurement(machine, choice.precision, choice.reason, speeds, enc, len(train), round(time.perf_counter() - t0, 2),
                       heldout_clips=len(ds["heldout"]) if "heldout" in ds else 0)


def write_plan(out: Path, m: Measurement, plan: BudgetPlan) -> Path:
    from .io import atomic_write_json

    return atomic_write_json(out / PLAN_FILE, {**m.to_dict(), "plan": plan.to_dict()})


def read_plan(out: Path) -> tuple[dict[str, Any], BudgetPlan] | None:
    """OUT/machine.json as (its measurement dict, the plan), or None when absent or unreadable."""
    try:
        doc = json.loads((out / PLAN_FILE).read_text())
        return doc, BudgetPlan.from_dict(doc["plan"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------- the report


def _stage_run(out: Path, stage: str) -> dict[str, Any]:
    """Steps, wall seconds and precision a finished stage recorded in its summary.json."""
    try:
        s = json.loads((out / stage / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return {"steps": s.get("steps"), "wall_s": s.get("train_seconds", s.get("wall_s")), "precision": s.get("precision")}


def stage_precisions(out: Path, planned: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """The precision each planned stage trained in (its summary.json), else what the plan measured."""
    planned = planned or {}
    return {k: _stage_run(out, k).get("precision") or planned.get(k) for k in PLANNED}


def report_section(out: Path, command: str) -> dict[str, Any] | None:
    """The report's section (`duogen.eval.report.load_section` format) on the machine, precision, speeds and shares."""
    got = read_plan(out)
    if got is None:
        return None
    doc, plan = got
    machine = Machine(**doc["machine"])
    rows = []
    for k in PLANNED:
        sp, run = doc["speeds"][k], _stage_run(out, k)
        rows.append([k, run.get("precision") or doc["precision"], round(sp["step_s"], 4), f"{sp['flops_per_step']:.3g}",
                     f"{sp['flops_per_s']:.3g}", f"{plan.shares()[k]:.0%}", round(plan.minutes[k], 2),
                     plan.expected_steps[k], run.get("steps"), round(run["wall_s"], 1) if run.get("wall_s") else None])
    rule = (f"codec: {plan.codec_steps} steps (needs {plan.codec_needed_steps} for >= {CODEC_COLOR_NEED:.0%} color,"
            f" {plan.codec_usable_steps} for >= {CODEC_COLOR_USABLE:.0%}; set by: {plan.codec_bound},"
            f" {CODEC_BOUND_WORDS.get(plan.codec_bound, '?')});"
            f" AR and DiT split the rest at equal FLOPs. Outside the training loops (encoding, evaluation): "
            + ", ".join(f"{k} {v:.1f} min" for k, v in plan.fixed_minutes.items()) + ".")
    return {
        "title": "Machine and time budget",
        "intro": (f"Trained on {machine.line()}; torch {machine.torch}, {machine.threads} threads."
                  f" Precision {doc['precision']} ({doc['precision_reason']}). Measured in {doc['measured_s']:.0f} s"
                  f" before the codec: a warm-up and {doc['speeds']['codec']['steps_timed']} timed training steps of"
                  f" each stage's model (median), and the codec's encode ({doc['encode_s_per_clip']:.4f} s per clip,"
                  f" {doc['train_clips']} training clips)."),
        "tables": [{"caption": f"Pool {plan.pool_minutes:.1f} min, {plan.train_pool_minutes:.1f} of them training. {rule}",
                    "columns": ["stage", "precision", "measured s/step", "FLOPs/step", "FLOP/s", "share of pool",
                                "planned min", "planned steps", "steps run", "train wall (s)"],
                    "rows": rows}],
        "notes": " ".join(plan.notes) or None,
        "command": command,
    }
