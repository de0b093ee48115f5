"""bench/bench_codec_seeds.py: a codec change judged by the models on top, the codec seed as the unit."""

import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("bench_codec_seeds", Path(__file__).parents[1] / "bench" / "bench_codec_seeds.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _compare_json(path: Path, color: float, count: float, two_color: float) -> str:
    acc = {"color": color, "count": count, "direction": 0.5, "shape": 0.1, "all": 0.4}
    path.write_text(json.dumps({"headline": {"m": {"sampling": "ddim-20", "accuracy": acc,
                                                   "accuracy_by_objects": {"2": {"color": two_color}}}}}))
    return str(path)


def _patch_ar_json(path: Path, color: float) -> str:
    acc = {"color": color, "count": 0.6, "direction": 0.4, "shape": 0.1, "all": 0.4}
    path.write_text(json.dumps({"steps": 10, "models": {"patch": {
        "accuracy": {"all": acc, "heldout": acc}, "accuracy_by_objects": {"2": {"accuracy": {"color": color - 0.1}}}}}}))
    return str(path)


def test_codec_is_the_unit_and_variants_pair_codec_by_codec(tmp_path, capsys):
    # baseline: codec c0's two models average 0.90, c1's 0.80; the variant: 0.85 and 0.79 -> differences -0.05, -0.01
    runs = [("base", "c0", 0.88), ("base", "c0", 0.92), ("base", "c1", 0.80),
            ("new", "c0", 0.85), ("new", "c1", 0.78), ("new", "c1", 0.80)]
    args = []
    for i, (v, c, color) in enumerate(runs):
        args += ["--run", f"{v}:{c}=" + _compare_json(tmp_path / f"{i}.json", color, 0.7, color - 0.1)]
    out = tmp_path / "s.json"
    bench.main(args + ["--baseline", "base", "--json", str(out)])
    s = json.loads(out.read_text())
    base, new = s["variants"]["base"], s["variants"]["new"]
    assert base["codecs"]["c0"]["color"] == pytest.approx(0.90) and base["models"] == {"c0": 2, "c1": 1}
    assert base["mean"]["color"] == pytest.approx(0.85)  # the mean of the codecs, not of the three models (0.8667)
    assert base["codec_sd"]["color"] == pytest.approx(0.0707, abs=1e-4)
    assert new["paired"]["codecs"] == ["c0", "c1"]
    assert new["paired"]["color"]["mean"] == pytest.approx(-0.03)
    assert new["paired"]["color"]["stderr"] == pytest.approx(0.02)  # sd of (-0.05, -0.01) over sqrt(2)
    assert new["paired"]["two-object color"]["mean"] == pytest.approx(-0.03)
    table = capsys.readouterr().out
    assert table.splitlines()[2].startswith("| base | c0: 2 | 90.0")  # the baseline's rows come first
    assert "| new - base | paired over codecs c0 c1 | -3.0 +- 2.0 |" in table


def test_reads_bench_patch_ar_results_too(tmp_path):
    acc = bench.read_accuracy(_patch_ar_json(tmp_path / "r.json", 0.875))
    assert acc["color"] == 0.875 and acc["two-object color"] == pytest.approx(0.775) and acc["count"] == 0.6


def test_bad_input_is_a_clear_error(tmp_path):
    good = _compare_json(tmp_path / "a.json", 0.9, 0.7, 0.8)
    with pytest.raises(ValueError, match="VARIANT:CODEC=PATH"):
        bench.parse_run(f"base={good}")
    (tmp_path / "x.json").write_text(json.dumps({"results": []}))
    with pytest.raises(ValueError, match="neither"):
        bench.read_accuracy(tmp_path / "x.json")
    runs = {"base": {"c0": [bench.read_accuracy(good)]}, "new": {"c9": [bench.read_accuracy(good)]}}
    with pytest.raises(ValueError, match="shares no codec seed"):
        bench.summarize(runs, "base")
    with pytest.raises(ValueError, match="baseline 'old' has no runs"):
        bench.summarize(runs, "old")
    with pytest.raises(SystemExit, match="error: .*VARIANT:CODEC=PATH"):
        bench.main(["--run", good, "--baseline", "base"])


def test_files_read_variant_and_codec_from_their_names(tmp_path, capsys):
    names = {"base_c0_s0.json": 0.9, "base_c1_s1.json": 0.8, "new_codec0_seed0.json": 0.8, "new_codec1_seed4.json": 0.8}
    files = [_compare_json(tmp_path / n, c, 0.7, c) for n, c in names.items()]
    bench.main(["--files", *files, "--baseline", "base"])
    assert "| new - base | paired over codecs c0 c1 | -5.0 +- 5.0 |" in capsys.readouterr().out
    assert bench.parse_file("/x/entropy0.01_c12_s3.json") == ("entropy0.01", "c12", "/x/entropy0.01_c12_s3.json")
    with pytest.raises(ValueError, match="VARIANT_cC_sS.json"):
        bench.parse_file("preset_s0.json")
    with pytest.raises(SystemExit):
        bench.main(["--baseline", "base"])  # no runs at all


def test_codecs_in_seed_order(tmp_path):
    files = [_compare_json(tmp_path / f"base_c{c}_s0.json", 0.9, 0.7, 0.8) for c in (10, 2, 1)]
    runs = {"base": {}}
    for f in files:
        v, c, p = bench.parse_file(f)
        runs[v].setdefault(c, []).append(bench.read_accuracy(p))
    assert list(bench.summarize(runs, "base")["variants"]["base"]["codecs"]) == ["c1", "c2", "c10"]


def test_spearman_ranks_ties_and_reads_a_permutation_p():
    rho, p = bench.spearman([1, 2, 3, 4, 5, 6, 7, 8], [10, 20, 30, 40, 50, 60, 70, 80])
    assert rho == pytest.approx(1.0) and p < 0.001  # one ordering of 8! (and its reverse) reaches |rho| = 1
    rho, _ = bench.spearman([1, 2, 3, 4], [4, 3, 2, 1])
    assert rho == pytest.approx(-1.0)
    assert bench._ranks([5.0, 1.0, 5.0, 3.0]) == [3.5, 1.0, 3.5, 2.0]
    rho, p = bench.spearman([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5])  # rho = 1 - 6 * 6 / 210
    assert rho == pytest.approx(1 - 36 / 210) and 0.0 < p < 0.2
    with pytest.raises(ValueError, match="three or more"):
        bench.spearman([1, 2], [1, 2])


def test_codec_stats_correlate_each_codecs_mean_with_its_properties(tmp_path, capsys):
    # four codecs; color falls as perplexity rises, contrast is unrelated to the order
    files, stats = [], {}
    for i, (v, c, color, ppl, contrast) in enumerate([("base", "c0", 0.95, 100, 1.3), ("base", "c1", 0.90, 200, 1.9),
                                                     ("new", "c0", 0.85, 300, 1.2), ("new", "c1", 0.80, 400, 1.5)]):
        files.append(_compare_json(tmp_path / f"{v}_{c}_s0.json", color, 0.7, color - 0.1))
        codes = {r: {"usage": 0.5, "perplexity": ppl} for r in ("all", "objects", "background")}
        stats[f"{v}_{c}"] = {"object_to_background_ratio": contrast, "codes": codes}
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    out = tmp_path / "s.json"
    bench.main(["--baseline", "base", "--files", *files, "--codec-stats", str(tmp_path / "stats.json"), "--json", str(out)])
    c = json.loads(out.read_text())["codec_correlations"]
    assert c["codecs"] == 4
    assert c["attributes"]["color"]["perplexity"]["rho"] == pytest.approx(-1.0)
    assert c["attributes"]["color"]["contrast"]["rho"] == pytest.approx(0.0)  # ranks 4 3 2 1 against 2 4 1 3
    assert c["attributes"]["count"]["usage"]["rho"] != c["attributes"]["count"]["usage"]["rho"]  # constant: nan
    assert "Spearman's rho (permutation p) over 4 codecs" in capsys.readouterr().out
    (tmp_path / "few.json").write_text(json.dumps({"base_c0": stats["base_c0"]}))
    with pytest.raises(SystemExit, match="names 1 of the runs' codecs"):
        bench.main(["--baseline", "base", "--files", *files, "--codec-stats", str(tmp_path / "few.json")])
