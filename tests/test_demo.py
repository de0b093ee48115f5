"""`duogen demo` orchestration: stage order, time shares, reuse of finished stages, --fresh.

The real stages train models (minutes); these tests drive the same `Demo` runner with
stages that write their marker file, so they check the orchestration itself.
"""

from __future__ import annotations

import io
import json

import pytest

from duogen.demo import SHARES, STAGES, Demo, Stage
from duogen.errors import ConfigError


def _stages(calls, budgets):
    def make(name):
        def run(d, minutes):
            calls.append(name)
            budgets[name] = minutes
            f = d.out / name / "done.txt"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text("ok")
            return {"stage": name}
        return Stage(name, f"{name}/done.txt", run, f"make {name}")
    return [make(n) for n in ("a", "b", "c")]


def test_demo_runs_stages_in_order_then_reuses_them(tmp_path):
    calls, budgets = [], {}
    shares = {"a": 0.2, "b": 0.3, "c": 0.5}
    log = io.StringIO()
    summary = Demo(tmp_path, minutes=10, stages=_stages(calls, budgets), shares=shares, stream=log).run()
    assert calls == ["a", "b", "c"]
    # each stage gets its share of the time left among the stages still to run, so time an
    # earlier stage did not use (these take ~0 s) rolls over: 10*0.2, 10*0.3/0.8, then all of it
    assert budgets["a"] == pytest.approx(2.0, rel=0.01)
    assert budgets["b"] == pytest.approx(3.75, rel=0.01)
    assert budgets["c"] == pytest.approx(10.0, rel=0.01)
    assert "stage 2/3 b" in log.getvalue() and "min left" in log.getvalue()
    assert json.loads((tmp_path / "demo_summary.json").read_text())["stages"]["c"]["stage"] == "c"
    assert summary["stages"]["a"]["stage"] == "a"

    (tmp_path / "c" / "done.txt").unlink()  # only the last stage is unfinished
    calls.clear()
    summary = Demo(tmp_path, minutes=10, stages=_stages(calls, budgets), shares=shares, stream=io.StringIO()).run()
    assert calls == ["c"] and summary["stages"]["a"] == {"reused": True}

    (tmp_path / "mine.txt").write_text("the user's file")
    calls.clear()
    Demo(tmp_path, minutes=10, stages=_stages(calls, budgets), shares=shares, fresh=True, stream=io.StringIO()).run()
    assert calls == ["a", "b", "c"] and (tmp_path / "mine.txt").is_file()


def test_demo_rejects_bad_budget_and_mismatched_shares(tmp_path):
    with pytest.raises(ConfigError, match="minutes"):
        Demo(tmp_path, minutes=0)
    with pytest.raises(ConfigError, match="shares"):
        Demo(tmp_path, stages=_stages([], {}), shares={"a": 1.0})


def test_default_stages_cover_the_pipeline_and_shares_sum_to_one():
    assert [s.name for s in STAGES] == ["data", "text", "codec", "ar", "dit", "compare"]
    assert sum(SHARES.values()) == pytest.approx(1.0)


def test_the_demo_trains_its_dit_at_the_demo_rate_and_samples_each_model_at_its_paradigms_guidance(tmp_path, monkeypatch):
    import duogen.demo as demo
    import duogen.demo_budget
    import duogen.eval.compare as cmp
    import duogen.train.diffusion_recipe as diffusion_recipe

    seen = {}

    def train_diffusion(*args, overrides=(), **kwargs):
        seen["overrides"] = list(overrides)
        return {"steps": 1}

    monkeypatch.setattr(diffusion_recipe, "train_diffusion", train_diffusion)
    monkeypatch.setattr(cmp, "training_info", lambda path: {"flops": 1e12})
    d = Demo(tmp_path, minutes=10)
    demo._stage_dit(d, 3.0)
    assert f"train.lr={demo.DEMO_DIT_LR:g}" in seen["overrides"] and "denoiser=dit" in seen["overrides"]

    settings = []
    monkeypatch.setattr(cmp, "load_model", lambda name, path, s: settings.append((name, s)))
    monkeypatch.setattr(cmp, "dataset_prompts", lambda data, per_split: ["a prompt"])
    monkeypatch.setattr(cmp, "real_clips", lambda data, max_clips: None)
    monkeypatch.setattr(cmp, "compare", lambda models, prompts, out, **kw: {"report": None, "models": []})
    monkeypatch.setattr(duogen.demo_budget, "report_section", lambda out, command: None)
    demo._stage_compare(d, 1.0)
    assert {name for name, _ in settings} >= {"AR (demo)", "DiT (demo)"}
    assert demo.DEMO_AR_GUIDANCE != demo.DEMO_DIT_GUIDANCE  # so that a swap of the two scales fails below
    for name, s in settings:  # the headline setting and every guided one use the scale of the model's paradigm
        scale = demo.DEMO_AR_GUIDANCE if name.startswith("AR") else demo.DEMO_DIT_GUIDANCE
        guided = [x.kwargs["guidance"] for x in s if x.kwargs.get("guidance") is not None]
        assert s[0].kwargs["guidance"] == scale and set(guided) == {scale}, name
        # the demo's patch AR model keeps the best of its layout candidates; the flat reference AR cannot
        lc = {x.kwargs.get("layout_candidates", 1) for x in s}
        assert lc == ({demo.DEMO_AR_LAYOUT_CANDIDATES} if name == "AR (demo)" else {1}), name


def test_the_demo_prints_each_headline_accuracy_with_its_standard_error():
    from duogen.demo import headline_line

    h = {"sampling": "cfg-5", "accuracy": {"color": 0.861, "count": 0.5, "direction": 0.181, "all": 0.44},
         "accuracy_stderr": {"color": 0.052, "count": 0.1, "direction": None, "all": 0.03},
         "train_flops": 8.92e12, "train_wall_s": 206.4}
    assert headline_line("AR (demo)", h) == ("AR (demo) [cfg-5]: color 86% ± 5, direction 18%; training 8.92e+12 FLOPs"
                                             " in 206 s")
    old = {k: v for k, v in h.items() if k != "accuracy_stderr"}  # a report written before the errors were kept
    assert headline_line("AR", old).startswith("AR [cfg-5]: color 86%, direction 18%;")
    by = {"1": {"color": 0.958, "count": 0.7}, "2": {"color": 0.652}}
    assert headline_line("AR", {**h, "accuracy_by_objects": by}).startswith(
        "AR [cfg-5]: color 86% ± 5, direction 18%; color with 1 / 2 objects 96 / 65%; training")
