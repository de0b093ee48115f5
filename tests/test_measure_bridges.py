"""scripts/measure_bridges.py: the plan it runs, that every bench accepts what it is given, resume and failure."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "measure_bridges.py"
sys.path.insert(0, str(SCRIPT.parent))

from measure_bridges import Job, Runner, build_parser, main, plan  # noqa: E402


def _plan(tmp_path, lanes=5, paradigms=None):
    """The plan for a real command line (an AR model at tmp_path/ar beside a DiT at tmp_path/dit)."""
    argv = ["--out", str(tmp_path / "out"), "--ar", str(tmp_path / "ar"), "--dit", str(tmp_path / "dit"),
            "--lanes", str(lanes)] + (["--paradigms", paradigms] if paradigms else [])
    return plan(build_parser().parse_args(argv), tmp_path / "out")


def _reads(job, model):
    return model in job.argv or any(a.endswith(f"={model}") for a in job.argv)


@pytest.mark.parametrize("paradigms", ["ar,diffusion", "diffusion", "ar"])
def test_every_job_measures_the_given_models_and_every_bench_accepts_its_options(tmp_path, paradigms):
    prep, lanes, finish = _plan(tmp_path, paradigms=paradigms)
    jobs = [j for lane in lanes for j in lane]
    names = [j.name for j in prep + jobs + finish]
    assert len(names) == len(set(names))  # one log and one .done per job
    ar, dit = str(tmp_path / "ar"), str(tmp_path / "dit")
    for job in jobs:
        # every job reads a model under test, never a shipped one by default
        assert _reads(job, ar) or _reads(job, dit), job.name
        script = next((Path(a) for a in job.argv if a.endswith(".py")), None)
        if script is not None:  # a bench: each --option given is one its parser defines
            src = script.read_text()
            for opt in (a for a in job.argv if a.startswith("--")):
                assert re.search(rf'"{re.escape(opt)}"', src), (job.name, opt)
    # a job that reads a run trained in this plan runs after that training, in the same lane
    runs = str(tmp_path / "out" / "runs")
    for lane in lanes:
        for i, job in enumerate(lane):
            for arg in job.argv:
                for part in arg.split(":")[:1]:
                    if part.startswith(runs + "/") and part.endswith("/final"):
                        trainer = Path(part).parent.name
                        before = [j.name for j in lane[:i]]
                        assert trainer in before or "personalize" in before, (job.name, trainer)
    want = set(paradigms.split(","))
    has = lambda model: any(_reads(j, model) for j in jobs)  # noqa: E731
    assert has(dit) and has(ar)  # the shared benches read both either way
    assert {"cn_boxes", "gligen", "ip2p_dit", "sampling_steps"} <= set(names) if "diffusion" in want else \
        not {"cn_boxes", "gligen", "ip2p_dit", "sampling_steps"} & set(names)
    assert {"controlar_mask", "ar_tokens_boxes", "ip2p_ar", "zero_shot_ar_binding_heldout"} <= set(names) \
        if "ar" in want else not {"controlar_mask", "ip2p_ar", "zero_shot_ar_binding_heldout"} & set(names)
    tables = [j.name for j in finish]
    assert tables == [t for t, ok in (("control_table_dit", "diffusion" in want), ("control_table_ar", "ar" in want),
                                      ("control_table_both", len(want) == 2)) if ok]
    personalize = next(j for j in jobs if j.name == "personalize")
    assert personalize.argv[personalize.argv.index("--paradigms") + 1] == ",".join(
        p for p in ("ar", "diffusion") if p in want)
    assert any(lane[0].name == "compare" for lane in lanes)  # the candidate's scores come first
    zs = [j for j in jobs if j.stdout is not None]  # the zero-shot results land as JSON files of their own
    assert zs and all(j.name.startswith("zero_shot_") and "--json" in j.argv for j in zs)


def test_fewer_lanes_keep_every_job_and_its_order(tmp_path):
    _, five, _ = _plan(tmp_path)
    _, two, _ = _plan(tmp_path, lanes=2)
    assert len(two) == 2
    assert sorted(j.name for lane in two for j in lane) == sorted(j.name for lane in five for j in lane)
    for lane in five:  # each chain (a training and its bench) stays in order inside one lane
        for first, then in zip(lane, lane[1:]):
            if then.name in (f"bench_{first.name}", f"sweep_{first.name}"):
                host = next(h for h in two if first in h)
                assert host.index(then) == host.index(first) + 1


def test_a_lane_stops_at_its_failure_and_a_second_run_skips_what_was_done(tmp_path, capsys):
    r = Runner(tmp_path, threads=1)
    ok = [sys.executable, "-c", "print('fine')"]
    bad = [sys.executable, "-c", "import sys; sys.exit(3)"]
    r.lane([Job("a", ok), Job("b", bad), Job("c", ok)])
    assert (tmp_path / "logs/a.done").exists() and not (tmp_path / "logs/b.done").exists()
    assert not (tmp_path / "logs/c.log").exists()  # the lane stopped at b
    assert len(r.failed) == 1 and r.failed[0].startswith("b (exit 3")
    assert "fine" in (tmp_path / "logs/a.log").read_text()
    r2 = Runner(tmp_path, threads=1)
    r2.lane([Job("a", bad)])  # done before: skipped, not run
    assert r2.failed == [] and "skipped" in capsys.readouterr().out


def test_a_job_with_a_result_file_keeps_stdout_apart_from_its_log(tmp_path):
    r = Runner(tmp_path, threads=1)
    argv = [sys.executable, "-c", "import sys; print(1 + 1); print('progress', file=sys.stderr)"]
    r.lane([Job("z", argv, stdout=tmp_path / "res/z.json")])
    assert (tmp_path / "res/z.json").read_text() == "2\n"
    assert "progress" in (tmp_path / "logs/z.log").read_text() and (tmp_path / "logs/z.done").exists()


def test_unknown_paradigms_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--out", str(tmp_path), "--paradigms", "ar,gan"])
    assert "comma list of ar and diffusion" in capsys.readouterr().err


def test_a_model_that_is_not_one_is_refused_before_anything_runs(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "o"), "--dit", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode != 0 and "not a duogen model directory" in res.stderr
    assert not (tmp_path / "o").exists()


def test_dry_run_lists_the_lanes(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["m", "--out", str(tmp_path / "o"), "--dry-run", "--lanes", "3"])
    main()
    out = capsys.readouterr().out
    assert "lane 3" in out and "lane 4" not in out and "after every lane" in out and "generated_data" in out
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("bench,argv", [
    ("bench_edit.py", ["--pairs", "1", "--ar"]),
    ("bench_edit.py", ["--pairs", "1", "--dit"]),
    ("bench_personalize.py", ["--paradigms", "diffusion", "--work", "{tmp}/w", "--dit"]),
    ("bench_personalize_quick.py", ["--out", "{tmp}/q", "--paradigms", "dit", "--dit"]),
])
def test_the_benches_read_the_model_they_are_given(bench, argv, tmp_path):
    """A model path the bench is given is the one it loads: a missing one stops it at once, by name (a bench that
    ignored the flag would load the shipped model and run for many minutes: the timeout fails it)."""
    missing = tmp_path / "no_such_model"
    cmd = [sys.executable, str(ROOT / "bench" / bench), *[a.format(tmp=tmp_path) for a in argv], str(missing)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")})
    assert res.returncode != 0 and str(missing) in res.stderr, res.stderr[-500:]


def test_a_data_job_cut_part_way_runs_again_over_what_it_left(tmp_path):
    """A data job has no .done marker until it finishes, so what its folder holds is a cut run's part: it is replaced."""
    prep, _, _ = _plan(tmp_path)
    job = next(j for j in prep if j.name == "data_shapes")
    out = Path(job.argv[job.argv.index("--out") + 1])
    out.mkdir(parents=True)
    (out / "partial.arrow").write_text("cut here")
    r = Runner(tmp_path / "out", threads=1)
    r.lane([Job(job.name, job.argv + ["--n", "40"])])
    assert r.failed == [] and not (out / "partial.arrow").exists() and (out / "dataset_dict.json").exists()


@pytest.mark.parametrize("flag,value,want", [(None, None, None), ("--lr", "3e-4", "0.0003"), ("--shifts", "1", "1")])
def test_the_quick_personalization_bench_passes_its_settings_to_every_method(tmp_path, monkeypatch, flag, value, want):
    """`bench_personalize_quick.py --lr` / `--shifts` reach each `duogen personalize` it runs; without them none
    gets one (each method's own default)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_personalize_quick as q

    calls = []

    def fake_duogen(*args):
        calls.append(args)
        return {"steps": 1, "wall_s": 0.0, "adapter_bytes": 1, "model_bytes": 100, "adapter_fraction": 0.01}

    monkeypatch.setattr(q, "duogen", fake_duogen)
    monkeypatch.setattr(q, "concept_losses", lambda base, concepts, run: [0.0] * len(concepts))
    monkeypatch.setattr(q, "read", lambda *a: (1.0, 1.0))
    monkeypatch.setattr(q, "grid", lambda *a, **k: tmp_path / "grid.png")
    (tmp_path / "concept_star").mkdir()
    (tmp_path / "heldout_star").mkdir()
    argv = ["q", "--out", str(tmp_path), "--paradigms", "ar,dit", "--methods", "lora,textual-inversion"]
    monkeypatch.setattr(sys, "argv", argv + ([flag, value] if flag else []))
    q.main()
    runs = [c for c in calls if c[0] == "personalize"]
    assert len(runs) == 4  # two methods on two paradigms
    for c in runs:
        for f in ("--lr", "--shifts"):
            assert (c[c.index(f) + 1] if f in c else None) == (want if f == flag else None), c


def test_the_quick_personalization_bench_holds_out_the_colors_the_concept_lacks(tmp_path):
    """The held-out concept set is drawn in the palette colors none of the training clips has."""
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_personalize_quick as q
    from duogen.data.concepts import make_concept
    from duogen.data.shapes import PALETTE

    info = make_concept("star", tmp_path / "c", n=6, seed=3)
    seen = {cap.split()[1] for cap in info["captions"]}
    unseen = q.unseen_colors(tmp_path / "c")
    assert len(seen) == 3 and set(unseen) == set(PALETTE) - seen and len(unseen) == len(PALETTE) - 3
