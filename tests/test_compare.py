"""The comparison harness: metrics against closed forms, and a small compare run whose results re-score exactly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from duogen.eval import metrics

# ----------------------------------------------------------------------------- metrics


def test_frechet_identical_sets_is_zero_and_grows_with_mean_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 6))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    d = [metrics.frechet_distance(a, a + s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert d == sorted(d) and d[-1] > d[1] > 0
    # a pure shift leaves the covariances equal, so the distance is exactly ||shift||^2 = 6 * s^2
    assert d[2] == pytest.approx(6 * 1.0**2, rel=1e-6)


def test_gaussian_frechet_closed_form_for_diagonal_covariances():
    # For diagonal covariances, Tr(S1 + S2 - 2 (S1 S2)^1/2) = sum (sqrt(s1) - sqrt(s2))^2 per dimension.
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()  # 5 + 4 + 1 + 0 = 10
    assert metrics.gaussian_frechet(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    # a full covariance, rotated: the distance is invariant to rotating both Gaussians together
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    got = metrics.gaussian_frechet(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-8)


def test_frechet_rejects_mismatched_features():
    with pytest.raises(ValueError):
        metrics.frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))


def test_diversity_zero_for_identical_samples_and_exact_for_two_points():
    same = np.tile(np.arange(5.0), (4, 1))
    assert metrics.diversity([same, same]) == 0.0
    pair = np.array([[0.0, 0.0], [3.0, 4.0]])
    assert metrics.mean_pairwise_distance(pair) == pytest.approx(5.0)
    assert metrics.diversity([same, pair]) == pytest.approx(2.5)


def test_temporal_change_counts_moving_pixels():
    still = np.zeros((2, 5, 8, 8, 3), np.uint8)
    assert metrics.temporal_change(still) == 0.0
    flip = still.copy()
    flip[:, 1::2] = 255  # every consecutive pair of frames differs everywhere by 255
    assert metrics.temporal_change(flip) == pytest.approx(1.0)


def test_mean_accuracy_averages_per_kind_and_over_kinds():
    acc = metrics.mean_accuracy([{"color": 1.0, "shape": 0.0}, {"color": 0.5}])
    assert acc == {"color": 0.75, "shape": 0.0, "all": 0.375}


def test_accuracy_stderr_takes_prompts_as_the_units():
    # three prompts x two clips: prompt means 1, 0, 0.5 (sample std 0.5); shape is read for one prompt only
    rows = [[{"color": 1.0, "shape": 1.0}, {"color": 1.0, "shape": 0.0}], [{"color": 0.0}, {"color": 0.0}],
            [{"color": 1.0}, {"color": 0.0}]]
    se = metrics.accuracy_stderr(rows)
    assert se["color"] == pytest.approx(0.5 / np.sqrt(3)) and se["shape"] is None
    # "all" is over the per-prompt means of the kinds: 0.75, 0, 0.5
    assert se["all"] == pytest.approx(np.std([0.75, 0.0, 0.5], ddof=1) / np.sqrt(3))
    # the clips of one prompt are not counted as independent: the same scores as six one-clip prompts read a smaller error
    flat = metrics.accuracy_stderr([[c] for row in rows for c in row])
    assert flat["color"] == pytest.approx(np.std([1, 1, 0, 0, 1, 0], ddof=1) / np.sqrt(6)) and flat["color"] < se["color"]
    assert metrics.accuracy_stderr([[{"color": 1.0}]]) == {"all": None, "color": None}


# ----------------------------------------------------------------------------- a small compare run

from _compare_helpers import known_models, real_world_clips, world_prompts  # noqa: E402


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from duogen.eval.compare import compare

    out = tmp_path_factory.mktemp("cmp")
    prompts = world_prompts()
    sec_dir = tmp_path_factory.mktemp("section")
    from PIL import Image  # any PNG will do as the section's plot

    png = sec_dir / "curve.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
    (sec_dir / "edit.json").write_text(json.dumps({
        "title": "Editing", "intro": "two techniques", "command": "python bench/bench_x.py",
        "tables": [{"caption": "success", "columns": ["method", "color"], "rows": [["sdedit", 0.93], ["p2p", 0.5]]}],
        "plots": [png.name]}))
    res = compare(known_models(prompts), prompts, out, n=2, seed=5, real=real_world_clips(16),
                  sections=[sec_dir / "edit.json"])
    return out, res


def _setting(res, model, label):
    m = next(m for m in res["models"] if m["name"] == model)
    return next(s for s in m["settings"] if s["label"] == label)


def test_compare_writes_report_results_and_clips(small_run):
    out, res = small_run
    assert (out / "report.html").is_file()
    on_disk = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in on_disk["models"]] == ["render", "noise"]
    assert [s["label"] for s in on_disk["models"][0]["settings"]] == ["exact", "frozen"]
    with np.load(out / _setting(on_disk, "render", "exact")["clips"]) as z:
        assert z["clips"].shape == (3, 2, 9, 32, 32, 3) and z["clips"].dtype == np.uint8
    mp4s = sorted((out / "clips").glob("*/*.mp4"))
    assert len(mp4s) == 2 * 3 * 2  # models x prompts x samples, headline setting
    assert (out / "plots" / "accuracy_vs_cost.png").stat().st_size > 1000


def test_bridge_sections_render_their_tables_plots_and_command(small_run, tmp_path):
    from duogen.errors import DataError
    from duogen.eval.report import load_section

    out, res = small_run
    page = (out / "report.html").read_text()
    assert "<h2>Editing</h2>" in page and "<td>sdedit</td><td>0.93</td>" in page and "bench_x.py" in page
    assert (out / "plots" / "section0_0.png").is_file() and 'src="plots/section0_0.png"' in page
    assert json.loads((out / "results.json").read_text())["sections"][0]["title"] == "Editing"
    (tmp_path / "ragged.json").write_text('{"title": "x", "tables": [{"columns": ["a", "b"], "rows": [[1]]}]}')
    with pytest.raises(DataError, match="rows"):
        load_section(tmp_path / "ragged.json")
    (tmp_path / "untitled.json").write_text('{"tables": []}')
    with pytest.raises(DataError, match="title"):
        load_section(tmp_path / "untitled.json")


def test_results_and_report_carry_each_accuracy_with_its_standard_error(small_run):
    from duogen.eval.compare import headline

    out, res = small_run
    s = _setting(res, "render", "frozen")
    for split, acc in s["accuracy"].items():
        rows = [row for row, p in zip(s["per_clip_accuracy"], res["prompts"]) if split == "all" or p["split"] == split]
        assert s["accuracy_stderr"][split] == metrics.accuracy_stderr(rows)
        assert set(s["accuracy_stderr"][split]) == set(acc)
    head = headline(out)["models"]["render"]
    assert set(head["accuracy_stderr"]) == set(head["accuracy"])
    # a table cell holds the headline accuracy and its error (the note under the table mentions "±" too)
    assert re.search(r"<td>\d+\.\d% ± \d+\.\d</td>", (out / "report.html").read_text())


def _objects_bench():
    """bench/bench_accuracy_by_objects.py as a module."""
    import importlib.util

    path = Path(__file__).parents[1] / "bench" / "bench_accuracy_by_objects.py"
    spec = importlib.util.spec_from_file_location("bench_accuracy_by_objects", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_accuracy_by_number_of_objects_adds_up_to_the_reported_one(small_run):
    bench = _objects_bench()
    out, _ = small_run
    res = json.loads((out / "results.json").read_text())
    rows = bench.by_objects(res, ("color",))
    s = _setting(res, "render", "frozen")
    mine = [r for r in rows if (r["model"], r["setting"]) == ("render", "frozen")]
    whole = next(r for r in mine if r["objects"] == "all")
    assert whole["accuracy"]["color"] == pytest.approx(s["accuracy"]["all"]["color"])
    assert whole["stderr"]["color"] == pytest.approx(s["accuracy_stderr"]["all"]["color"])
    parts = [r for r in mine if r["objects"] != "all"]
    assert sum(r["clips"] for r in parts) == whole["clips"] == sum(len(c) for c in s["per_clip_accuracy"])
    assert sum(sum(r["score_pairs"].values()) for r in parts) == whole["clips"]
    # results.json carries the same split for every setting, the demo's headline for the headline one
    by = s["accuracy_by_objects"]
    assert sorted(by) == ["1", "2"] and [by[n]["prompts"] for n in ("1", "2")] == [2, 1]
    for r in parts:
        assert by[str(r["objects"])]["accuracy"]["color"] == pytest.approx(r["accuracy"]["color"])
        assert by[str(r["objects"])]["stderr"]["color"] == r["stderr"]["color"]
    two = [a["color"] for a in s["per_clip_accuracy"][2]]  # the third prompt is the two-object one
    assert by["2"]["accuracy"]["color"] == pytest.approx(sum(two) / len(two))
    from duogen.eval.compare import headline

    exact = _setting(res, "render", "exact")["accuracy_by_objects"]
    assert headline(out)["models"]["render"]["accuracy_by_objects"]["2"] == {k: round(v, 4) for k, v in exact["2"]["accuracy"].items()}
    page = (out / "report.html").read_text()
    assert "By the number of objects in the prompt" in page
    table = page[page.index("By the number of objects"):]
    assert re.search(r"<td class=l>render</td><td>2</td><td>1</td><td>\d+\.\d%", table)


def test_stills_of_the_first_frame_score_as_the_frozen_clips(small_run):
    """bench_accuracy_by_objects --still: the "frozen" setting draws each "exact" clip's first frame for the whole
    clip (same seeds), so stills of the exact clips' first frames score clip for clip as the frozen clips did."""
    bench = _objects_bench()
    out, _ = small_run
    res = json.loads((out / "results.json").read_text())
    first = bench.as_stills(out, res, 0)
    assert _setting(first, "render", "exact")["per_clip_accuracy"] == _setting(res, "render", "frozen")["per_clip_accuracy"]
    last = _setting(bench.as_stills(out, res, -1), "render", "exact")["per_clip_accuracy"]
    assert all(c["direction"] == 0.0 and c["color"] == 1.0 for clips in last for c in clips)
    assert _setting(res, "render", "exact")["per_clip_accuracy"] != last  # the clips as drawn read their motion
    assert json.loads((out / "results.json").read_text()) == res  # the report itself is untouched


def test_rescoring_saved_clips_gives_the_reported_accuracies(small_run):
    from duogen.eval.compare import rescore

    out, _ = small_run
    on_disk = json.loads((out / "results.json").read_text())
    again = rescore(out)
    for m in on_disk["models"]:
        for s in m["settings"]:
            assert again[m["name"]][s["label"]] == s["accuracy"]


def test_probes_rank_known_generators(small_run):
    _, res = small_run
    exact, frozen, noise = _setting(res, "render", "exact"), _setting(res, "render", "frozen"), _setting(res, "noise", "noise")
    acc = exact["accuracy"]["all"]
    # ground-truth renders: the probes read >= 98% of attributes on real clips (issue 2); 6 clips here
    assert acc["color"] == 1.0 and acc["direction"] >= 0.8 and acc["shape"] >= 0.8
    assert set(exact["accuracy"]) == {"all", "validation", "heldout"}
    # a frozen clip keeps color and shape but loses every direction
    assert frozen["accuracy"]["all"]["color"] == 1.0 and frozen["accuracy"]["all"]["direction"] == 0.0
    assert frozen["temporal_change"] == 0.0 and frozen["temporal_change_ratio"] == 0.0
    assert noise["accuracy"]["all"]["all"] < acc["all"] - 0.3
    assert exact["frechet_probe_distance"] < noise["frechet_probe_distance"]
    assert 0.3 < exact["temporal_change_ratio"] < 3.0 < noise["temporal_change_ratio"]
    # cost per clip as reported by the generators: 4 forward passes; 192 tokens
    assert exact["cost_per_clip"] == 4 and exact["cost_unit"] == "forward passes"
    assert noise["cost_per_clip"] == 192 and noise["cost_unit"] == "tokens"


def test_seeds_policy_prompt_i_uses_seed_plus_i(small_run):
    out, res = small_run
    prompts = world_prompts()
    gen = known_models(prompts)[0].generator
    with np.load(out / _setting(res, "render", "exact")["clips"]) as z:
        clips = z["clips"]
    for i, p in enumerate(prompts):
        np.testing.assert_array_equal(clips[i], gen.generate([p.caption], n=2, seed=5 + i, mode="render").videos)


def test_seeds_policy_with_several_prompts_per_call():
    from duogen.eval.compare import sample

    prompts = world_prompts()
    entry = known_models(prompts)[0]
    clips, _, cost, _ = sample(entry, entry.settings[0], prompts, n=2, seed=5, per_call=2)
    assert clips.shape == (3, 2, 9, 32, 32, 3) and cost == 4
    first = entry.generator.generate([p.caption for p in prompts[:2]], n=2, seed=5, mode="render").videos
    np.testing.assert_array_equal(clips[:2].reshape(first.shape), first)  # call 0: prompts 0-1, seed 5
    last = entry.generator.generate([prompts[2].caption], n=2, seed=7, mode="render").videos
    np.testing.assert_array_equal(clips[2], last)  # call 1: prompt 2, seed 5 + 2


def test_prompt_files_and_bad_input(tmp_path):
    from duogen.errors import ConfigError, DataError
    from duogen.eval.compare import compare, load_prompts

    f = tmp_path / "p.jsonl"
    f.write_text('{"caption": "a red circle moves left", "attributes": [{"color": "red", "shape": "circle", "motion": "left"}], "split": "validation"}\n'
                 "a blue square moves down\n")
    ps = load_prompts(f)
    assert [p.caption for p in ps] == ["a red circle moves left", "a blue square moves down"]
    assert ps[0].attributes[0]["color"] == "red" and ps[1].attributes == [] and ps[1].split == "custom"
    (tmp_path / "bad.json").write_text('[{"text": 3}]')
    with pytest.raises(DataError, match="caption"):
        load_prompts(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="distinct"):
        models = known_models(ps)
        models[1].name = "Render"
        compare(models, ps, tmp_path / "r")


def test_training_info_reads_the_engine_run(tmp_path):
    """A real engine run: compare reads FLOPs and wall time from summary.json / metrics.jsonl of RUN/final."""
    import torch

    from duogen.eval.compare import count_weights, model_config, read_metrics, training_info
    from duogen.eval.report import loss_curve
    from duogen.io import save_model_dir
    from duogen.train.engine import LossOutput, TrainConfig, fit

    model = torch.nn.Linear(4, 1)
    data = [{"x": torch.randn(4), "y": torch.randn(1)} for _ in range(32)]

    def loss_fn(m, b):
        return LossOutput(torch.nn.functional.mse_loss(m(b["x"]), b["y"]), len(b["x"]))

    def save(m, path):
        save_model_dir(path, {"kind": "linear"}, m.state_dict())

    run = tmp_path / "run"
    summary = fit(model, loss_fn, data, TrainConfig(steps=6, batch_size=8, log_every=2, precision="fp32"), run, save_model=save)
    info = training_info(run / "final")
    assert info["run_dir"] == str(run)
    assert info["flops"] == pytest.approx(summary.flops) and info["flops"] > 0
    assert info["steps"] == 6 and info["wall_s"] > 0
    assert count_weights(run / "final") == 5
    assert model_config(run / "final")["run"]["train"]["steps"] == 6  # the engine's resolved config.yaml
    xs, ys = loss_curve(read_metrics(run))
    assert len(xs) == 3 and xs == sorted(xs)


# ----------------------------------------------------------------------------- real models, random init


@pytest.fixture(scope="module")
def tiny_model_dirs(tmp_path_factory):
    """A random-init tiny video codec and AR model saved as model dirs (accuracy is meaningless: no training)."""
    import torch

    from duogen.ar_models.layouts import LayoutSpec
    from duogen.ar_models.model import ARConfig, MultimodalLM
    from duogen.tokenizers.text import train_text_tokenizer
    from duogen.tokenizers.video_codec import build_video_codec
    from duogen.tokenizers.vocab import UnifiedVocab

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread beats two when the cores are shared
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    codec = build_video_codec("tiny", ["patch=4", "widths=[16]", "latent_blocks=1", "blocks=1"])
    codec.save_pretrained(root / "codec")
    caps = [p.caption for p in world_prompts()]
    text = train_text_tokenizer(caps * 3, None, vocab_size=300)
    spec = LayoutSpec(max_text=16, latent=(3, 8, 8), tasks=["t2v"])  # 9x32x32 -> 3x8x8 ids
    vocab = UnifiedVocab(text.vocab_size, {"video": codec.vocab_size})
    model = MultimodalLM(ARConfig(hidden=64, layers=2, heads=4, kv_heads=2, mlp=128), vocab, spec, text,
                         codec_ref=str(root / "codec"))
    model.save_pretrained(root / "ar")

    from duogen.diffusion.dit import DiTConfig
    from duogen.diffusion.latent import LatentDiffusionConfig, LatentDiffusionModel
    from duogen.diffusion.text_encoder import TextEncoderConfig

    dcfg = LatentDiffusionConfig(denoiser="dit", dit=DiTConfig(hidden=32, depth=1, heads=2, patch_size=2),
                                 text=TextEncoderConfig(vocab_size=text.vocab_size, max_tokens=16, width=32, layers=1, heads=2),
                                 latent=[4, 3, 8, 8], guidance=2.0, steps=4)
    dm = LatentDiffusionModel(dcfg, text, codec)
    dm.save_pretrained(root / "dit")
    yield {"root": root, "ar": root / "ar", "dit": root / "dit",
           "ar_params": sum(p.numel() for p in model.parameters()), "dit_params": sum(p.numel() for p in dm.parameters())}
    torch.set_num_threads(threads)


def test_compare_a_real_ar_model_dir(tiny_model_dirs):
    from duogen.eval.compare import compare, load_model, rescore

    entry = load_model("AR tiny", tiny_model_dirs["ar"])
    assert entry.kind == "ar" and [s.label for s in entry.settings] == ["cfg-3", "no-cfg"]
    prompts = world_prompts()[:2]
    out = tiny_model_dirs["root"] / "report"
    res = compare([entry], prompts, out, n=2, seed=3)
    m = res["models"][0]
    assert m["parameters"] == tiny_model_dirs["ar_params"]
    guided, plain = m["settings"]
    # 3x8x8 = 192 video tokens per clip; guidance runs a second (unconditional) stream
    assert plain["cost_per_clip"] == 192 and guided["cost_per_clip"] == 384
    with np.load(out / plain["clips"]) as z:
        clips = z["clips"]
    assert clips.shape == (2, 2, 9, 32, 32, 3)
    # the seeds policy reproduces prompt 1's clips from a fresh call with seed + 1
    again = entry.generator.generate([prompts[1].caption], n=2, seed=3 + 1, guidance=None).videos
    np.testing.assert_array_equal(clips[1], again)
    assert rescore(out)["AR tiny"]["no-cfg"] == plain["accuracy"]


def test_ar_sampling_settings_reach_the_sampler(tiny_model_dirs):
    """temperature / top-k / top-p go into every AR setting, named in the labels; greedy (temperature 0) draws
    the same clip for every seed, which plain sampling does not."""
    from duogen.eval.compare import ar_settings, compare, load_model

    assert [(s.label, s.kwargs) for s in ar_settings(5.0, temperature=0.5, top_k=20)] == [
        ("cfg-5 t0.5 k20", {"guidance": 5.0, "temperature": 0.5, "top_k": 20}),
        ("no-cfg t0.5 k20", {"guidance": None, "temperature": 0.5, "top_k": 20})]
    assert [s.label for s in ar_settings(2.0, top_p=0.9)] == ["cfg-2 p0.9", "no-cfg p0.9"]
    assert ar_settings(3.0) == ar_settings(3.0, temperature=1.0, top_k=0, top_p=1.0)  # plain sampling: no tag
    out = tiny_model_dirs["root"] / "greedy"
    for name, sampling in (("greedy", {"temperature": 0.0}), ("plain", None)):
        entry = load_model("AR", tiny_model_dirs["ar"], ar_sampling=sampling)
        res = compare([entry], world_prompts()[:1], out / name, n=2, seed=3, report=False)
        with np.load(out / name / res["models"][0]["settings"][1]["clips"]) as z:
            a, b = z["clips"][0]
        assert (a == b).all() == (name == "greedy")


def test_compare_both_paradigms_through_the_cli(tiny_model_dirs, capsys):
    """`duogen compare --ar --diffusion` on model dirs: same prompts, both sweeps, report written."""
    from duogen.cli import main

    root = tiny_model_dirs["root"]
    prompts = root / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"caption": p.caption, "attributes": p.attributes, "split": p.split})
                                 for p in world_prompts()[:2]))
    out = root / "cli_report"
    rc = main(["compare", "--ar", str(tiny_model_dirs["ar"]), "--diffusion", f"DiT tiny={tiny_model_dirs['dit']}",
               "--prompts", str(prompts), "--n", "1", "--steps-sweep", "2,4", "--out", str(out), "--json",
               "--temperature", "0.5"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["report"] == str(out / "report.html") and set(summary["headline"]) == {"AR", "DiT tiny"}
    res = json.loads((out / "results.json").read_text())
    ar, dit = res["models"]
    assert (ar["kind"], dit["kind"]) == ("ar", "diffusion")
    assert [(s["label"], s["kwargs"].get("temperature")) for s in ar["settings"]] == [("cfg-3 t0.5", 0.5), ("no-cfg t0.5", 0.5)]
    assert all("temperature" not in s["kwargs"] for s in dit["settings"])
    assert dit["parameters"] == tiny_model_dirs["dit_params"]
    # DDIM at each step count (largest first), DPM-Solver++ at those <= 20; the model's guidance 2.0: two streams
    assert [s["label"] for s in dit["settings"]] == ["ddim-4", "ddim-2", "dpm++-4", "dpm++-2"]
    assert [s["cost_per_clip"] for s in dit["settings"]] == [8, 4, 8, 4]
    assert all(s["kwargs"]["guidance"] == 2.0 for s in dit["settings"])
    assert (out / "clips" / "dit-tiny" / "p001_s00.mp4").is_file()
    # --layout-candidates reaches the AR generator: named in the labels, its candidates' tokens in the cost
    from duogen.ar_models.model import MultimodalLM

    rc = main(["compare", "--ar", str(tiny_model_dirs["ar"]), "--prompts", str(prompts), "--n", "1",
               "--out", str(root / "lc_report"), "--layout-candidates", "2"])
    assert rc == 0
    capsys.readouterr()
    lc = json.loads((root / "lc_report" / "results.json").read_text())["models"][0]["settings"]
    f, h, w = MultimodalLM.from_pretrained(tiny_model_dirs["ar"]).spec.latent
    assert [s["label"] for s in lc] == ["cfg-3 lc2", "no-cfg lc2"]
    # guided: both streams over the output and 2 candidate frames; unguided: the no-prompt stream scores them
    assert [s["cost_per_clip"] for s in lc] == [2 * (f * h * w + 2 * h * w), f * h * w + 2 * 2 * h * w]


def test_compare_cli_bad_input(tiny_model_dirs, capsys):
    from duogen.cli import main

    out = tiny_model_dirs["root"] / "bad"
    assert main(["compare", "--diffusion", str(tiny_model_dirs["ar"]), "--out", str(out)]) == 2
    assert "is an AR model; pass it with --ar" in capsys.readouterr().err
    assert main(["compare", "--ar", str(tiny_model_dirs["ar"]), "--out", str(out)]) == 2
    assert "pass --data DIR or --prompts FILE" in capsys.readouterr().err
    assert main(["compare", "--ar", str(tiny_model_dirs["root"]), "--out", str(out)]) == 2
    assert "not a model directory" in capsys.readouterr().err
    assert main(["compare", "--ar", str(tiny_model_dirs["ar"]), "--out", str(out), "--top-p", "0"]) == 2
    assert "--top-p" in capsys.readouterr().err


def test_the_token_loss_bench_splits_the_training_loss_by_frame_and_object(tiny_model_dirs):
    import importlib.util

    import torch

    from duogen.bridges.generate import ARGenerator

    path = Path(__file__).parents[1] / "bench" / "bench_ar_token_loss.py"
    spec = importlib.util.spec_from_file_location("bench_ar_token_loss", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    gen = ARGenerator.from_pretrained(tiny_model_dirs["ar"])
    gen.model.eval()
    prompts = world_prompts()[:3]
    videos = np.concatenate([real_world_clips(3), np.zeros((1, 9, 32, 32, 3), np.uint8)])
    captions = [p.caption for p in prompts] + ["a red circle moves left"]
    res = bench.token_loss(gen.model, gen.codec, videos, captions, batch=2)
    # equal tokens per latent frame, so the frames' mean is the training loss on the same examples
    exs = [gen.model.layouts.example("t2v", gen.model.encode_prompt(c), i.reshape(3, 8, 8))
           for c, i in zip(captions, gen.codec.encode(videos))]
    with torch.no_grad():
        loss = float(gen.model.loss(gen.model.layouts.batch(exs)).loss)
    assert np.mean(res["all"]) == pytest.approx(loss, abs=2e-3)
    # the empty clip is all background; the rendered ones hold objects
    alone = bench.token_loss(gen.model, gen.codec, videos[-1:], captions[-1:])
    assert alone["object_share"] == [0.0, 0.0, 0.0] and alone["background"] == alone["all"]
    assert 0 < min(res["object_share"]) and max(res["object_share"]) < 1


def test_the_report_leaves_out_the_table_by_objects_where_it_says_nothing():
    from duogen.eval.report import _objects_table

    def results(by):
        s = {"label": "a", "accuracy": {}, **({"accuracy_by_objects": by} if by is not None else {})}
        return {"models": [{"name": "m", "headline": "a", "settings": [s]}]}

    one = {"1": {"accuracy": {"color": 0.5}, "stderr": {"color": 0.1}, "prompts": 3}}
    assert _objects_table(results(None), ["color"]) == ""  # a results.json written before the split
    assert _objects_table(results(one), ["color"]) == ""  # every prompt names one object
    both = {**one, "2": {"accuracy": {"color": 0.25}, "stderr": {"color": None}, "prompts": 2}}
    page = _objects_table(results(both), ["color"])
    assert "<td>50.0% ± 10.0</td>" in page and "<td class=l>m</td><td>2</td><td>2</td><td>25.0%</td>" in page
