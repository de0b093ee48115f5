"""scripts/measure_dit_bridges.py: the plan it runs, that every bench accepts what it is given, resume and failure."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "measure_dit_bridges.py"
sys.path.insert(0, str(SCRIPT.parent))

from measure_dit_bridges import Runner, build_parser, main, plan  # noqa: E402


def _plan(tmp_path, lanes=5):
    """The plan for a real command line (the shipped AR beside a DiT at tmp_path/dit)."""
    a = build_parser().parse_args(["--out", str(tmp_path / "out"), "--dit", str(tmp_path / "dit"),
                                   "--lanes", str(lanes)])
    return plan(a, tmp_path / "out")


def test_every_job_measures_the_given_dit_and_every_bench_accepts_its_options(tmp_path):
    prep, lanes, finish = _plan(tmp_path)
    jobs = [j for lane in lanes for j in lane]
    names = [n for n, _ in prep + jobs + finish]
    assert len(names) == len(set(names))  # one log and one .done per job
    dit = str(tmp_path / "dit")
    for name, argv in jobs:
        # every job but the AR-free data ones reads the DiT under test, never the shipped one by default
        assert dit in argv or any(a.endswith(f"={dit}") for a in argv), name
        script = next((Path(a) for a in argv if a.endswith(".py")), None)
        if script is not None:  # a bench: each --option given is one its parser defines
            src = script.read_text()
            for opt in (a for a in argv if a.startswith("--")):
                assert re.search(rf'"{re.escape(opt)}"', src), (name, opt)
    trained = {n for n, argv in jobs if argv[2:4] == ["duogen", "train"]}
    order = [n for lane in lanes for n, _ in lane]
    for n in trained - {"ip2p_dit"}:  # a control's bench runs after its training, in the same lane
        lane = next(lane for lane in lanes if n in [m for m, _ in lane])
        assert [m for m, _ in lane].index(f"bench_{n}") > [m for m, _ in lane].index(n)
    assert order.index("sweep_ip2p") > order.index("ip2p_dit")
    assert [n for n, _ in finish] == ["control_table"]


def test_fewer_lanes_keep_every_job_and_its_order(tmp_path):
    _, five, _ = _plan(tmp_path)
    _, two, _ = _plan(tmp_path, lanes=2)
    assert len(two) == 2 and sorted(j[0] for lane in two for j in lane) == sorted(j[0] for lane in five for j in lane)
    for lane in five:  # each old lane's jobs stay in their order inside one new lane
        names = [n for n, _ in lane]
        host = next(h for h in two if names[0] in [n for n, _ in h])
        idx = [[n for n, _ in host].index(n) for n in names]
        assert idx == sorted(idx)


def test_a_lane_stops_at_its_failure_and_a_second_run_skips_what_was_done(tmp_path, capsys):
    r = Runner(tmp_path, threads=1)
    ok = [sys.executable, "-c", "print('fine')"]
    bad = [sys.executable, "-c", "import sys; sys.exit(3)"]
    r.lane([("a", ok), ("b", bad), ("c", ok)])
    assert (tmp_path / "logs/a.done").exists() and not (tmp_path / "logs/b.done").exists()
    assert not (tmp_path / "logs/c.log").exists()  # the lane stopped at b
    assert len(r.failed) == 1 and r.failed[0].startswith("b (exit 3")
    assert "fine" in (tmp_path / "logs/a.log").read_text()
    r2 = Runner(tmp_path, threads=1)
    r2.lane([("a", bad)])  # done before: skipped, not run
    assert r2.failed == [] and "skipped" in capsys.readouterr().out


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
