"""`duogen demo`'s time allocation: the pure rule (synthetic speeds), the plan the Demo applies, the report section.

No test trains a real model or times one against a limit: speeds are synthetic, and the one timing test
checks FLOPs (a closed form) and the structure of the result, not how long it took.
"""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

from duogen.demo import Demo, Stage
from duogen.demo_budget import (AR_ENOUGH_FLOPS, CODEC_BOUND_WORDS, CODEC_CAP, CODEC_COLOR_NEED, CODEC_COLOR_USABLE,
                                CODEC_MAX, CODEC_MIN, CODEC_SHARP_STEPS, FLOOR, PLAN_FILE, BudgetPlan,
                                Measurement, allocate, read_plan, replan_ar_flops, report_section, steps_for, write_plan)
from duogen.eval.report import load_section
from duogen.speed import Machine, StepModel, StepSpeed, describe_machine, time_training_step

CURVE = ((250, 0.40), (500, 0.80), (1000, 0.92), (2000, 0.97))


def speeds(codec_s: float, ar_s: float, dit_s: float) -> dict[str, StepSpeed]:
    """Seconds per step of each stage; FLOPs per step fixed (AR 4e10 at batch 32, DiT 3e10 at batch 64)."""
    return {"codec": StepSpeed(codec_s, 4e10, 8, "fp32", 2), "ar": StepSpeed(ar_s, 4e10, 32, "fp32", 2),
            "dit": StepSpeed(dit_s, 3e10, 64, "fp32", 2)}


def codec_frac(plan) -> float:
    """The codec's fraction of the training time P' (the pool less the fixed costs), where CAP / MAX / MIN apply."""
    return (plan.minutes["codec"] - plan.fixed_minutes["codec"]) / plan.train_pool_minutes


FIXED = {"codec": 8.0, "ar": 18.0, "dit": 18.0}  # seconds outside each training loop: 0.004 s/clip x 4,500 clips


FAST = speeds(0.02, 0.08, 0.07)  # an idle many-core CPU
SLOW = speeds(0.30, 1.20, 1.00)  # a busy 2-core AVX2 CPU: 15x slower at everything


def test_steps_for_reads_the_curve_log_linearly():
    n_use = steps_for(CURVE, CODEC_COLOR_USABLE)
    assert 500 < n_use < 1000 < steps_for(CURVE, CODEC_COLOR_NEED) <= 2000
    # halfway in color between 500 (0.80) and 1000 (0.92) is the geometric mean of the steps
    assert steps_for(CURVE, 0.86) == math.ceil(math.sqrt(500 * 1000))
    assert steps_for(CURVE, 0.1) == 250  # already reached at the first point
    assert steps_for(CURVE, 0.999) == 2000  # never reached: the last point
    with pytest.raises(ValueError):
        steps_for((), 0.9)


@pytest.mark.parametrize("sp", [FAST, SLOW], ids=["fast", "slow"])
def test_allocation_sums_to_the_pool_and_matches_ar_and_dit_flops(sp):
    plan = allocate(sp, pool_minutes=12.0, fixed_s=FIXED, curve=CURVE)
    assert sum(plan.minutes.values()) == pytest.approx(12.0)
    assert sum(plan.shares().values()) == pytest.approx(1.0)
    ar_train = (plan.minutes["ar"] - plan.fixed_minutes["ar"]) * 60
    dit_train = (plan.minutes["dit"] - plan.fixed_minutes["dit"]) * 60
    assert ar_train * sp["ar"].flops_per_s == pytest.approx(dit_train * sp["dit"].flops_per_s)
    assert plan.ar_flops == pytest.approx(ar_train * sp["ar"].flops_per_s)  # the AR stage's train.max_flops
    assert BudgetPlan.from_dict({k: v for k, v in plan.to_dict().items() if k != "ar_flops"}).ar_flops == 0  # an old plan
    codec_train = plan.train_minutes("codec", plan.minutes["codec"]) * 60
    assert plan.codec_steps == int(codec_train / sp["codec"].step_s + 1e-6)
    assert plan.train_minutes("ar", plan.minutes["ar"]) == pytest.approx(ar_train / 60)
    assert plan.train_minutes("codec", 3.0) == pytest.approx(3.0 - 8.0 / 60)


def test_slow_machine_gives_the_codec_a_larger_share_never_below_its_usable_steps():
    fast = allocate(FAST, 12.0, FIXED, curve=CURVE)
    slow = allocate(SLOW, 12.0, FIXED, curve=CURVE)
    slower = allocate(speeds(0.5, 2.0, 1.7), 12.0, FIXED, curve=CURVE)
    n_need, n_use = steps_for(CURVE, CODEC_COLOR_NEED), steps_for(CURVE, CODEC_COLOR_USABLE)
    # fast: the needed steps cost little, so the codec gets its floor share and more steps than it needs
    assert fast.codec_bound == "min" and codec_frac(fast) == pytest.approx(CODEC_MIN)
    assert fast.codec_steps >= n_need and not fast.notes
    # slow: the needed steps would pass the cap, so the cap binds (above the usable minimum)
    Pt = slow.train_pool_minutes * 60
    assert Pt == pytest.approx(720 - sum(FIXED.values()))
    assert n_need * 0.30 > CODEC_CAP * Pt and slow.codec_bound == "cap"
    assert codec_frac(slow) == pytest.approx(CODEC_CAP) and slow.shares()["codec"] > fast.shares()["codec"]
    assert n_use <= slow.codec_steps < n_need and "short of" in slow.notes[0]
    # slower: even the usable minimum passes the cap; it still gets it (it fits under MAX)
    assert n_use * 0.5 > CODEC_CAP * Pt and n_use * 0.5 <= CODEC_MAX * Pt
    assert slower.codec_bound == "usable" and slower.codec_steps == n_use
    assert CODEC_CAP < codec_frac(slower) < CODEC_MAX and slower.shares()["codec"] > slow.shares()["codec"]
    assert slower.expected_steps["ar"] < slow.expected_steps["ar"] < fast.expected_steps["ar"]


# the sixth demo run's measurement (2-core AMD EPYC with native bf16): codec, one-layer AR model, DiT
EPYC_BF16 = {"codec": StepSpeed(0.183, 4.98e10, 8, "bf16", 3), "ar": StepSpeed(0.156, 1.61e10, 32, "bf16", 3),
             "dit": StepSpeed(0.377, 3.07e10, 64, "bf16", 3)}
EPYC_FIXED = {"codec": 9.0, "ar": 20.0, "dit": 0.0}


def test_a_fast_machine_gives_the_codec_its_sharp_steps_while_the_ar_model_keeps_enough_flops():
    plan = allocate(EPYC_BF16, 12.4, EPYC_FIXED)
    assert plan.codec_bound == "sharp" and plan.codec_steps == CODEC_SHARP_STEPS
    assert plan.codec_steps > max(plan.codec_needed_steps, int(CODEC_MIN * plan.train_pool_minutes * 60 / 0.183))
    assert plan.ar_flops > AR_ENOUGH_FLOPS
    # a smaller pool: the sharp steps would leave the AR model short, so the codec stops where it keeps exactly enough
    tight = allocate(EPYC_BF16, 8.0, EPYC_FIXED)
    assert tight.codec_bound == "sharp" and tight.codec_needed_steps < tight.codec_steps < CODEC_SHARP_STEPS
    assert tight.ar_flops == pytest.approx(AR_ENOUGH_FLOPS, rel=1e-3)
    # smaller still: the colors' steps come first, whatever the AR model is left
    tighter = allocate(EPYC_BF16, 5.0, EPYC_FIXED)
    assert tighter.codec_bound == "needed" and tighter.ar_flops < AR_ENOUGH_FLOPS
    # a slow machine never gets past its colors' steps for sharpness (the AR model would starve)
    assert allocate(SLOW, 12.0, FIXED).codec_bound in ("needed", "cap")
    assert set(CODEC_BOUND_WORDS) == {"needed", "cap", "usable", "max", "sharp", "min"}  # every bound has its words


def test_needed_steps_win_when_they_fit_under_the_cap():
    mid = speeds(0.10, 0.4, 0.35)  # 2,000 needed steps x 0.1 s = 3.3 min, under half of 12 min
    plan = allocate(mid, 12.0, FIXED, curve=CURVE)
    assert plan.codec_bound == "needed" and plan.codec_steps == steps_for(CURVE, CODEC_COLOR_NEED)


def test_a_machine_too_slow_for_a_usable_codec_is_capped_and_says_so():
    crawl = speeds(2.0, 8.0, 7.0)
    plan = allocate(crawl, 12.0, FIXED, curve=CURVE)
    assert plan.codec_bound == "max" and codec_frac(plan) == pytest.approx(CODEC_MAX)
    assert plan.codec_steps < steps_for(CURVE, CODEC_COLOR_USABLE)
    assert plan.notes and "minutes would fit" in plan.notes[0]
    assert min(plan.minutes.values()) > 0


def test_encodes_that_eat_the_pool_leave_a_floor_of_training_time_and_a_note():
    # this project's loaded 2-core machine: 0.08 s to encode a clip; 4,500 clips twice, 1,012 for the codec: 13.4 min
    plan = allocate(speeds(2.9, 6.7, 4.3), 12.15, {"codec": 81.0, "ar": 360.0, "dit": 360.0}, curve=CURVE)
    assert plan.train_pool_minutes == pytest.approx(FLOOR * 12.15)
    assert sum(plan.shares().values()) == pytest.approx(1.0)
    assert sum(plan.minutes.values()) > 12.15 and "overrun" in plan.notes[0]
    for k in ("ar", "dit"):
        assert plan.minutes[k] > plan.fixed_minutes[k] and plan.expected_steps[k] > 0
    # the Demo's shares scale each budget by pool / planned total; the training cap keeps the planned training time
    assert plan.overrun
    scaled = plan.minutes["ar"] * 12.15 / sum(plan.minutes.values())
    assert scaled < plan.fixed_minutes["ar"]
    assert plan.train_minutes("ar", scaled) == pytest.approx(plan.minutes["ar"] - plan.fixed_minutes["ar"])
    assert not allocate(SLOW, 12.0, FIXED, curve=CURVE).overrun


def test_allocate_rejects_missing_speeds_and_an_empty_pool():
    with pytest.raises(ValueError, match="missing"):
        allocate({"codec": FAST["codec"]}, 12.0)
    with pytest.raises(ValueError, match="positive"):
        allocate(FAST, 0.0)


# ----------------------------------------------------------------------------- the Demo applies the plan


def _machine() -> Machine:
    return Machine(cpu="Test CPU", cores=2, threads=2, capability="AVX2", bf16_native=False, gpu=None, device="cpu",
                   load_average=7.5, torch=torch.__version__)


def _stages(calls, budgets, precisions=None):
    from duogen.demo import _planned_precision

    def make(name):
        def run(d, minutes):
            calls.append(name)
            budgets[name] = minutes
            if precisions is not None:
                precisions[name] = _planned_precision(d)  # the overrides a planned stage trains with
            f = d.out / name / "summary.json"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps({"steps": 7, "wall_s": 1.5, "precision": "fp32"}))
            return {"stage": name}
        return Stage(name, f"{name}/summary.json", run, f"make {name}")
    return [make(n) for n in ("data", "codec", "ar", "dit", "compare")]


SHARES = {"data": 0.04, "codec": 0.26, "ar": 0.25, "dit": 0.30, "compare": 0.15}


def test_demo_measures_once_applies_the_shares_and_reports_machine_and_precision(tmp_path):
    measured = []

    def measure(d):
        measured.append(d.out)
        return Measurement(_machine(), "fp32", "auto: CPU without native bf16", SLOW, 0.004, 4500, 0.1, 250)

    calls, budgets, precisions = [], {}, {}
    summary = Demo(tmp_path, minutes=10, stages=_stages(calls, budgets, precisions), shares=SHARES, stream=io.StringIO(),
                   measure=measure).run()
    assert calls == ["data", "codec", "ar", "dit", "compare"] and len(measured) == 1
    # the planned stages train in the precision their speeds were measured in, not their own `auto`
    assert all(precisions[k] == ["train.precision=fp32"] for k in ("codec", "ar", "dit"))
    got = read_plan(tmp_path)
    assert got is not None
    doc, plan = got
    assert doc["machine"]["capability"] == "AVX2" and doc["precision"] == "fp32"
    # the codec's budget is its planned share of the pool (the stages here take ~0 s, so nothing rolls over yet)
    assert budgets["codec"] == pytest.approx(plan.minutes["codec"], rel=0.02)
    assert summary["machine"]["cpu"] == "Test CPU" and summary["precision"] == {"codec": "fp32", "ar": "fp32", "dit": "fp32"}
    assert set(summary["speeds"]) == {"codec", "ar", "dit"} and summary["speeds"]["ar"]["step_s"] == 1.2
    assert sum(summary["shares"].values()) == pytest.approx(1.0, abs=1e-3)  # rounded to 4 digits
    assert summary["shares"]["data"] == SHARES["data"] and summary["plan"]["codec_steps"] == plan.codec_steps
    assert json.loads((tmp_path / "demo_summary.json").read_text())["machine"]["cores"] == 2

    # resume: the AR stage is unfinished; the plan is read back, not measured again
    (tmp_path / "ar" / "summary.json").unlink()
    calls.clear()
    summary = Demo(tmp_path, minutes=10, stages=_stages(calls, budgets, precisions), shares=SHARES, stream=io.StringIO(),
                   measure=measure).run()
    assert calls == ["ar"] and len(measured) == 1 and summary["plan"]["codec_steps"] == plan.codec_steps
    assert precisions["ar"] == ["train.precision=fp32"]  # a plan read back keeps its precision

    # every stage done: nothing runs, nothing is measured, the summary still states the machine and the shares
    summary = Demo(tmp_path, minutes=10, stages=_stages(calls, budgets), shares=SHARES, stream=io.StringIO(),
                   measure=measure).run()
    assert calls == ["ar"] and len(measured) == 1 and summary["machine"]["capability"] == "AVX2"
    (tmp_path / PLAN_FILE).unlink()
    summary = Demo(tmp_path, minutes=10, stages=_stages(calls, budgets), shares=SHARES, stream=io.StringIO(),
                   measure=measure).run()
    assert len(measured) == 1 and "machine" not in summary

    # --fresh measures again
    Demo(tmp_path, minutes=10, stages=_stages([], {}), shares=SHARES, stream=io.StringIO(), measure=measure,
         fresh=True).run()
    assert len(measured) == 2


def test_demo_without_a_measure_keeps_its_fixed_shares(tmp_path):
    calls, budgets, precisions = [], {}, {}
    summary = Demo(tmp_path, minutes=10, stages=_stages(calls, budgets, precisions), shares=SHARES, stream=io.StringIO()).run()
    assert precisions["codec"] == []  # no plan: the stage's own `auto`
    assert budgets["data"] == pytest.approx(0.4, rel=0.01) and "machine" not in summary
    assert not (tmp_path / PLAN_FILE).exists()


def test_report_section_states_machine_precision_speeds_and_shares(tmp_path):
    def measure(d):
        return Measurement(_machine(), "fp32", "auto: CPU without native bf16", SLOW, 0.004, 4500, 0.1, 250)

    Demo(tmp_path, minutes=10, stages=_stages([], {}), shares=SHARES, stream=io.StringIO(), measure=measure).run()
    sec = report_section(tmp_path, "duogen demo --out X")
    f = tmp_path / "section.json"
    f.write_text(json.dumps(sec))
    sec = load_section(f)  # the format `duogen compare --section` reads
    assert "Test CPU, 2 cores (AVX2, no native bf16), no GPU" in sec["intro"] and "fp32" in sec["intro"]
    rows = {r[0]: dict(zip(sec["tables"][0]["columns"], r)) for r in sec["tables"][0]["rows"]}
    assert set(rows) == {"codec", "ar", "dit"}
    assert rows["ar"]["precision"] == "fp32" and rows["ar"]["measured s/step"] == 1.2 and rows["ar"]["steps run"] == 7
    assert sum(float(r["share of pool"].rstrip("%")) for r in rows.values()) == pytest.approx(100, abs=2)
    # the caption says what set the codec's steps, in words (SLOW at this pool: the steps its colors need)
    assert f"set by: needed, {CODEC_BOUND_WORDS['needed']}" in sec["tables"][0]["caption"]
    assert report_section(tmp_path / "nothing", "x") is None


# ----------------------------------------------------------------------------- measuring


def test_time_training_step_counts_the_flops_of_a_linear_step():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3, bias=False)
    x = torch.randn(5, 4)
    s = time_training_step(StepModel(model, lambda m: m(x).square().mean(), 5), "fp32", repeats=2)
    # forward x @ W^T: 2*5*4*3 = 120; backward: grad wrt W only (x needs none) = 120 -> 240
    assert s.flops_per_step == 240 and s.steps_timed == 2 and s.step_s > 0 and s.batch_size == 5
    assert s.flops_per_s == pytest.approx(240 / s.step_s)


def test_time_training_step_is_not_moved_by_a_load_through_one_of_three_steps():
    """What the demo plans with: the median of three timed steps, so one step slowed by another process does not
    move the measure (the median of two is their mean, and did)."""
    import time

    model, x = torch.nn.Linear(4, 3), torch.randn(5, 4)
    calls = []

    def loss(m):
        calls.append(1)
        if len(calls) == 3:  # call 1 is the warm-up; 2, 3, 4 are timed
            time.sleep(0.3)
        return m(x).square().mean()

    s = time_training_step(StepModel(model, loss, 5), "fp32", repeats=3, count_flops=False)
    assert s.steps_timed == 3 and s.step_s < 0.1


def test_only_the_ar_stage_plans_the_encode_the_dit_stage_reads_from_its_cache():
    """One encoder pass serves both stages (`recipe_common.encode_videos`), so the DiT plans no encode time, and
    the machine is measured over three timed steps (the median) per model."""
    import inspect

    from duogen.demo_budget import measure_machine

    m = Measurement(_machine(), "fp32", "auto: CPU without native bf16", SLOW, 0.004, 4500, 0.1, 250)
    fixed = m.fixed_s()
    assert fixed["ar"] == pytest.approx(0.004 * 4500) and fixed["dit"] == 0.0
    assert fixed["codec"] == pytest.approx(0.004 * (512 + 2 * 250))  # latent statistics + held-out encode and decode
    assert inspect.signature(measure_machine).parameters["repeats"].default == 3


def test_measure_machine_times_the_ar_model_and_batch_it_is_given(tmp_path, monkeypatch):
    """`ar_model` and `ar_batch` reach the AR step that is timed (the real `ar_step`; the timing itself stubbed)."""
    import types

    import duogen.precision as precision
    import duogen.speed as speed
    from duogen.data import load_dataset, make_dataset
    from duogen.demo_budget import measure_machine
    from duogen.precision import PrecisionChoice
    from duogen.tokenizers.text import train_text_tokenizer

    make_dataset("shapes", tmp_path / "data", n=12, preset="tiny", seed=0)
    train_text_tokenizer(list(load_dataset(tmp_path / "data")["train"]["caption"]), tmp_path / "text", vocab_size=300)
    timed = []
    monkeypatch.setattr(precision, "resolve_precision", lambda *a, **kw: PrecisionChoice("fp32", "test", 1.0))
    monkeypatch.setattr(speed, "codec_step", lambda *a, **kw: types.SimpleNamespace(model=None, batch_size=1))
    monkeypatch.setattr(speed, "dit_step", lambda *a, **kw: types.SimpleNamespace(model=None, batch_size=1))
    monkeypatch.setattr(speed, "time_encode", lambda *a, **kw: 0.01)
    monkeypatch.setattr(speed, "time_training_step",
                        lambda sm, prec, repeats=3: timed.append(sm) or StepSpeed(0.1, 1e9, sm.batch_size, prec, 3))
    m = measure_machine(tmp_path, tmp_path / "data", tmp_path / "text" / "text.model",
                        ar_model={"patch": 2, "layers": 1}, ar_batch=8)
    ar = timed[1]
    assert ar.batch_size == 8 and m.speeds["ar"].batch_size == 8
    assert type(ar.model).__name__ == "PatchAR" and ar.model.cfg.layers == 1


def test_describe_machine_reports_torch_capability_and_no_gpu_on_cpu():
    m = describe_machine("cpu")
    assert m.capability == torch.backends.cpu.get_cpu_capability() and m.cores >= 1 and m.gpu is None
    assert m.device == "cpu" and m.cpu in m.line() and "no GPU" in m.line()


def test_codec_and_dit_caps_get_headroom_and_the_ar_cap_is_its_share(tmp_path, monkeypatch):
    import duogen.demo as demo
    import duogen.eval.compare as cmp
    import duogen.train.ar_recipe as ar_recipe
    import duogen.train.diffusion_recipe as diffusion_recipe
    import duogen.train.tokenizer_recipe as tokenizer_recipe

    seen = {"codec": [], "ar": [], "dit": []}

    def record(stage):
        return lambda *a, overrides=(), **kw: seen[stage].append(list(overrides)) or {}

    monkeypatch.setattr(tokenizer_recipe, "main", record("codec"))
    monkeypatch.setattr(ar_recipe, "train_ar", record("ar"))
    monkeypatch.setattr(diffusion_recipe, "train_diffusion", record("dit"))
    monkeypatch.setattr(cmp, "training_info", lambda path: {"flops": 1e12})
    plan = allocate(SLOW, 8.0, FIXED)
    d = Demo(tmp_path, minutes=10)
    for plan_or_none in (None, plan):
        d.plan = plan_or_none
        demo._stage_codec(d, plan.minutes["codec"])
        demo._stage_ar(d, plan.minutes["ar"])
        demo._stage_dit(d, plan.minutes["dit"])
    assert seen["codec"][0] == [f"train.max_minutes={plan.minutes['codec']:.3f}"]  # no plan: the budget, no steps
    codec_cap = plan.train_minutes("codec", plan.minutes["codec"]) * demo.LOOP_HEADROOM["codec"]
    assert seen["codec"][1] == [f"train.max_minutes={codec_cap:.3f}", f"train.steps={plan.codec_steps}"]
    dit_cap = plan.train_minutes("dit", plan.minutes["dit"]) * demo.LOOP_HEADROOM["dit"]
    assert f"train.max_minutes={dit_cap:.3f}" in seen["dit"][1] and "train.max_flops=1e+12" in seen["dit"][1]
    assert seen["ar"][0] == [*demo.demo_ar_overrides(), f"train.max_minutes={plan.minutes['ar']:.3f}"]  # no plan
    ar_cap = plan.train_minutes("ar", plan.minutes["ar"])  # its share exactly: more would be the DiT's
    assert seen["ar"][1] == [*demo.demo_ar_overrides(), f"train.max_flops={plan.ar_flops:.6g}", f"train.max_minutes={ar_cap:.3f}"]
    # the loops' measured slowdowns against the timed steps: codec x1.09, DiT x1.15
    assert demo.LOOP_HEADROOM["codec"] > 1.09 and demo.LOOP_HEADROOM["dit"] >= 1.15 and demo.LOOP_HEADROOM["ar"] == 1.0


@pytest.mark.parametrize("slowdown", [1.0, 1.15, 1.33])
def test_slow_ar_and_dit_loops_still_match_flops_within_the_budget(slowdown):
    """Both loops run `slowdown` x their timed steps (1.15-1.33x in two of session 20's emulated-AVX2 demos): the AR model,
    capped at its share, stops with fewer FLOPs, and the DiT, as slow, matches them inside its own share."""
    import duogen.demo as demo

    plan = allocate(SLOW, 12.0, FIXED)
    t_ar, t_dit = SLOW["ar"].step_s * slowdown, SLOW["dit"].step_s * slowdown

    def run(ar_headroom):
        ar_s = min(plan.ar_flops / SLOW["ar"].flops_per_step * t_ar,
                   plan.train_minutes("ar", plan.minutes["ar"]) * 60 * ar_headroom)
        ar_flops = ar_s / t_ar * SLOW["ar"].flops_per_step
        left = plan.train_minutes("dit", plan.minutes["dit"]) * 60 + plan.train_minutes("ar", plan.minutes["ar"]) * 60 - ar_s
        dit_s = min(ar_flops / SLOW["dit"].flops_per_step * t_dit, left * demo.LOOP_HEADROOM["dit"])
        return ar_flops, dit_s / t_dit * SLOW["dit"].flops_per_step, ar_s + dit_s

    both_s = (plan.train_minutes("ar", plan.minutes["ar"]) + plan.train_minutes("dit", plan.minutes["dit"])) * 60
    ar_flops, dit_flops, seconds = run(demo.LOOP_HEADROOM["ar"])
    assert dit_flops / ar_flops == pytest.approx(1.0, abs=1e-6)
    assert seconds <= both_s * (1 + 1e-6)
    assert ar_flops == pytest.approx(plan.ar_flops / slowdown, rel=1e-6)
    if slowdown > 1.1:  # with 15% headroom the AR model took the DiT's time, as in those runs
        ar15, dit15, seconds15 = run(1.15)
        assert dit15 / ar15 < 0.95 and seconds15 > both_s


def test_the_ar_flops_planned_again_after_the_codec_leave_the_dit_the_time_to_match_them():
    plan = allocate(SLOW, 12.0, FIXED)
    both = plan.minutes["ar"] + plan.minutes["dit"]
    fixed_s = (plan.fixed_minutes["ar"] + plan.fixed_minutes["dit"]) * 60
    assert replan_ar_flops(plan, SLOW, both) == pytest.approx(plan.ar_flops)  # on plan: the plan's own target
    # the codec ran 1.5 min past its share (or 1.5 min short of it): both models lose (gain) FLOPs alike, and at the
    # timed speeds the AR model's target and the DiT's match of it take exactly the training time the two have
    for left in (both - 1.5, both + 1.5):
        flops = replan_ar_flops(plan, SLOW, left)
        ar_s, dit_s = flops / SLOW["ar"].flops_per_s, flops / SLOW["dit"].flops_per_s
        assert ar_s + dit_s == pytest.approx(left * 60 - fixed_s)
        assert (flops < plan.ar_flops) == (left < both)
    assert replan_ar_flops(plan, SLOW, 0.0) == 0.0  # no time left: no FLOPs (the stage's own minimum applies)


def test_the_demo_plans_the_ar_flops_again_from_the_codec_run_and_the_clock(tmp_path, monkeypatch):
    import duogen.demo as demo
    import duogen.train.ar_recipe as ar_recipe

    seen = []
    monkeypatch.setattr(ar_recipe, "train_ar", lambda *a, overrides=(), **kw: seen.append(list(overrides)) or {})
    m = Measurement(_machine(), "fp32", "auto: CPU without native bf16", SLOW, 0.004, 4500, 0.1, 250)
    plan = allocate(SLOW, 12.0, FIXED)
    write_plan(tmp_path, m, plan)
    (tmp_path / "codec").mkdir()
    steps = plan.codec_steps
    (tmp_path / "codec" / "summary.json").write_text(json.dumps({"steps": steps, "train_seconds": 1.25 * steps * 0.30}))
    d = Demo(tmp_path, minutes=20, stream=io.StringIO())
    d.plan = plan
    info = demo._stage_ar(d, plan.minutes["ar"])
    r = info["replan"]
    assert r["codec_loop_factor"] == pytest.approx(1.25) and r["planned_flops"] == plan.ar_flops  # for the record
    names = [st.name for st in d.stages]
    # the clock's minutes at the timed speeds: the codec's slow loop does not slow the plan for the AR and the DiT
    assert r["flops"] == pytest.approx(replan_ar_flops(plan, SLOW, r["minutes"]), rel=1e-3)  # minutes rounded
    assert r["minutes"] == pytest.approx(plan.minutes["ar"] + d.budget("dit", names[names.index("ar"):]), abs=0.01)
    assert f"train.max_flops={r['flops']:.6g}" in seen[0]
    (tmp_path / "codec" / "summary.json").unlink()  # no codec run to read: planned again all the same, no pace
    info = demo._stage_ar(d, plan.minutes["ar"])
    assert "codec_loop_factor" not in info["replan"] and f"train.max_flops={info['replan']['flops']:.6g}" in seen[1]
    d.plan = None  # no plan: the stage's own minutes, no FLOP target planned again
    assert "replan" not in demo._stage_ar(d, plan.minutes["ar"])


def test_codec_step_builds_the_preset_codec_with_the_given_model_changes():
    """`bench/bench_codec.py` times the preset against model changes through `codec_step(**model)`."""
    from duogen.speed import codec_step
    from duogen.train.tokenizer_recipe import VIDEO_RUN_PRESETS

    preset = VIDEO_RUN_PRESETS["tiny"].model
    base, finer = codec_step(), codec_step(decoder_extra_levels=preset.decoder_extra_levels + 1)
    assert base.model.cfg == preset and base.batch_size == VIDEO_RUN_PRESETS["tiny"].train.batch_size
    assert finer.model.cfg.decoder_extra_levels == preset.decoder_extra_levels + 1
    assert sum(p.numel() for p in finer.model.parameters()) > sum(p.numel() for p in base.model.parameters())
    assert float(finer.loss(finer.model)) > 0


def test_ar_step_builds_the_preset_ar_with_the_given_model_changes():
    """The demo times its AR model through `ar_step(**model)`: the preset without changes, the change with them."""
    from duogen.speed import ar_step
    from duogen.train.ar_recipe import AR_RECIPE_PRESETS

    preset = AR_RECIPE_PRESETS["tiny"].model
    base, one = ar_step(), ar_step(layers=1)
    assert base.model.cfg == preset and len(base.model.lm.model.layers) == preset.layers
    assert one.model.cfg.layers == 1 and len(one.model.lm.model.layers) == 1
    assert sum(p.numel() for p in one.model.parameters()) < sum(p.numel() for p in base.model.parameters())
    assert float(one.loss(one.model)) > 0


def test_the_demo_trains_and_measures_the_same_ar_model(tmp_path, monkeypatch):
    """The AR stage's overrides parse into the recipe's config, and the measurement times that model."""
    import duogen.demo as demo
    import duogen.demo_budget as demo_budget
    from duogen import config as cfglib
    from duogen.train.ar_recipe import AR_RECIPE_PRESETS, ARRecipeConfig

    cfg = cfglib.load(ARRecipeConfig, presets=AR_RECIPE_PRESETS, preset="tiny", overrides=demo.demo_ar_overrides())
    for k, v in demo.DEMO_AR_MODEL.items():
        assert getattr(cfg.model, k) == v, k
    assert cfg.train.lr == demo.DEMO_AR_LR and cfg.train.batch_size == demo.DEMO_AR_BATCH
    assert cfg.model.hidden == AR_RECIPE_PRESETS["tiny"].model.hidden
    seen = {}
    monkeypatch.setattr(demo_budget, "measure_machine", lambda *a, **kw: seen.update(kw))
    demo.measure_stages(Demo(tmp_path, minutes=10))
    assert seen["ar_model"] == demo.DEMO_AR_MODEL and seen["ar_batch"] == demo.DEMO_AR_BATCH


def test_each_planned_stage_records_how_its_loop_kept_the_timed_pace(tmp_path, monkeypatch):
    """demo_summary.json and the stage's log line carry loop seconds per step over the timed step's: the codec's
    from its summary.json, the AR's and DiT's from metrics.jsonl's last cumulative wall_s (resumed sessions too)."""
    import duogen.demo as demo
    import duogen.eval.compare as cmp

    m = Measurement(_machine(), "fp32", "auto: CPU without native bf16", SLOW, 0.004, 4500, 0.1, 250)
    write_plan(tmp_path, m, allocate(SLOW, 12.0, FIXED))
    d = Demo(tmp_path, minutes=20, stream=io.StringIO())
    assert demo.loop_pace(d, "ar") == {}  # no run yet
    (tmp_path / "codec").mkdir()
    (tmp_path / "codec" / "summary.json").write_text(json.dumps({"steps": 100, "train_seconds": 100 * 0.30 * 1.1}))
    assert demo.loop_pace(d, "codec") == {"loop_s_per_step": pytest.approx(0.33), "loop_factor": pytest.approx(1.1)}
    (tmp_path / "ar").mkdir()
    rows = [{"step": 20, "loss": 2.0, "wall_s": 20 * 1.5}, {"step": 20, "eval/psnr": 1.0},  # an eval line has no wall_s
            {"step": 40, "loss": 1.9, "wall_s": 40 * 1.5}]  # cumulative over a resume: the session alone was shorter
    (tmp_path / "ar" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert demo.loop_pace(d, "ar") == {"loop_s_per_step": pytest.approx(1.5), "loop_factor": pytest.approx(1.25)}
    (tmp_path / "ar" / "metrics.jsonl").write_text("")
    assert demo.loop_pace(d, "ar") == {}  # nothing logged: nothing claimed
    (tmp_path / PLAN_FILE).unlink()
    assert demo.loop_pace(d, "codec") == {}  # no measurement to compare with

    # the runner puts it into the summary and the log line
    (tmp_path / "ar" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_plan(tmp_path, m, allocate(SLOW, 12.0, FIXED))
    d = Demo(tmp_path, minutes=20, stream=io.StringIO())
    d.plan = read_plan(tmp_path)[1]
    d.stages = [Stage("ar", "ar/done", lambda demo_, minutes: {"steps": 40}, "train")]
    monkeypatch.setattr(cmp, "headline", lambda report: {})  # no comparison stage in this list
    summary = d.run()
    assert summary["stages"]["ar"]["loop_factor"] == pytest.approx(1.25)
    assert json.loads((tmp_path / "demo_summary.json").read_text())["stages"]["ar"]["loop_s_per_step"] == 1.5
    assert "its training loop ran 1.25x its timed steps" in d.stream.getvalue()
