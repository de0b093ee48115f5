"""bench/bench_codec_steps.py's merge: runs of one config at other schedules become one curve, each point keeping its schedule."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("bench_codec_steps", Path(__file__).parents[1] / "bench" / "bench_codec_steps.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _point(step, seconds, psnr, schedule=None):
    p = {"step": step, "train_seconds": seconds, "load_avg": 1.0, "psnr": psnr, "ssim": 0.5, "codebook_usage": 0.9,
         "color": 1.0, "color_red": 1.0}
    return p if schedule is None else {**p, "schedule": schedule}


def test_merge_joins_runs_of_one_config_and_keeps_each_points_schedule(tmp_path):
    long_run = {"steps": [250, 1000], "results": [  # an older file: no per-point schedule, one run to 1,000 steps
        {"name": "new", "spec": "tiny", "points": [_point(250, 100.0, 17.0), _point(1000, 400.0, 21.0)]},
        {"name": "shipped", "spec": "dir", "reference": True, "points": [_point(2465, 0.0, 22.5)]}]}
    short_run = {"horizon": 500, "results": [{"name": "new", "spec": "tiny",
                                              "points": [{**_point(500, 300.0, 20.0, 500), "psnr_continuous": 20.456}]}]}
    results = bench.join([long_run, short_run])
    assert [r["name"] for r in results] == ["new", "shipped"]
    assert [(p["step"], p["schedule"]) for p in results[0]["points"]] == [(250, 1000), (500, 500), (1000, 1000)]
    cols, rows = bench.table(results)
    assert cols[:3] == ["config", "step", "schedule"]
    # seconds per step within each run: 100 s over steps 1..250, 300 s over 1..500, then 300 s over 250..1000
    assert [r[1:3] + [r[cols.index("s/step")]] for r in rows[:3]] == [
        [250, 1000, round(100 / 249, 2)], [500, 500, round(300 / 499, 2)], [1000, 1000, round(300 / 750, 2)]]
    assert rows[3][:3] == ["shipped", 2465, "-"]
    # the PSNR decoded from the continuous latent where a point has it, "-" in older files
    assert [r[cols.index("latent PSNR dB")] for r in rows] == ["-", 20.46, "-", "-"]
    ccols, crows = bench.color_table(results)
    assert ccols == ["config", "step", "schedule", "red"] and crows[1][:3] == ["new", 500, 500]
    bench.plot(results, tmp_path / "steps.png")
    assert (tmp_path / "steps.png").stat().st_size > 0
