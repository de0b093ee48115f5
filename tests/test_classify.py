"""Zero-shot classification: the diffusion classifier's shared (t, eps) samples and pruning, the AR classifier's exact
likelihood, `duogen classify` / `duogen eval zero-shot` and their bad-input exits, and the reference models on
rendered world clips."""

import json

import numpy as np
import pytest
import torch

from duogen.bridges.classify import (DiffusionClassifyConfig, adaptive_rank, check_labels, classify,
                                     diffusion_errors, diffusion_samples, van_der_corput)
from duogen.bridges.diffusion import DiffusionGenerator
from duogen.bridges.generate import ARGenerator
from duogen.cli import main
from duogen.data.shapes import load_world_config, make_clip
from duogen.errors import ConfigError, DataError
from duogen.eval.zero_shot import attribute_candidates, binding_candidates, canonical, objects_candidates, swapped
from test_ar_model import TINY, ar_dir, text  # noqa: F401 (fixtures: a saved tiny t2v + i2v model, its tokenizer)
from test_latent_diffusion import model  # noqa: F401 (fixture: the tiny live DiT with its codec)

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS = ["a red circle", "a blue square", "a green circle"]  # within the tiny AR model's 8-token text budget


def _clip(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- pruning (Li et al. 2023, Alg. 2)


@pytest.mark.parametrize("seed", range(5))
def test_pruning_keeps_the_best_when_its_margin_is_huge(seed):
    """12 candidates, one 5 below the rest; each sample's error moves every candidate alike (shared t, eps: a
    term common to the column, std 3) plus per-candidate noise (std 0.3). Few samples in round 1 must not drop
    it; the callback sees every survivor on the same, new sample indices each round; evaluations are counted."""
    g = torch.Generator().manual_seed(seed)
    n, best = 12, seed % 12
    base = torch.full((n,), 10.0)
    base[best] = 5.0
    common = 3.0 * torch.randn(64, generator=g)  # per sample: shared by every candidate
    calls = []

    def errors(cands, ks):
        calls.append((list(cands), list(ks)))
        return base[cands][:, None] + common[ks][None, :] + 0.3 * torch.randn(len(cands), len(ks), generator=g)

    r = adaptive_rank(errors, n, trials=(2, 4, 8), keep=(4, 2))
    assert r.order[0] == best and sorted(r.order) == list(range(n))
    assert r.rounds == [12, 4, 2] and r.evaluations == 12 * 2 + 4 * 4 + 2 * 8
    assert [ks for _, ks in calls] == [[0, 1], [2, 3, 4, 5], list(range(6, 14))]
    assert r.samples[:2] == [14, 14] and r.samples[2:4] == [6, 6] and r.samples[4:] == [2] * 8
    # survivors rank above the dropped, each group by its mean error
    assert r.mean_error[0] < r.mean_error[1]
    assert r.mean_error[2:4] == sorted(r.mean_error[2:4]) and r.mean_error[4:] == sorted(r.mean_error[4:])


def test_one_round_is_no_pruning_and_budgets_are_checked():
    r = adaptive_rank(lambda c, k: torch.tensor(c, dtype=torch.float64)[:, None].expand(-1, len(k)), 4, (3,), ())
    assert r.order == [0, 1, 2, 3] and r.samples == [3] * 4 and r.evaluations == 12
    for bad in [dict(trials=(4, 4), keep=()), dict(trials=(0,), keep=()), dict(trials=(2, 2, 2), keep=(1, 2))]:
        with pytest.raises(ConfigError):
            DiffusionClassifyConfig(**bad).check()


def test_timesteps_fill_the_range_without_repeats():
    u = van_der_corput(8)
    assert u[:3] == [0.5, 0.25, 0.75] and len(set(u)) == 8
    assert sorted(u[:7]) == [i / 8 for i in range(1, 8)]  # the first 2^k - 1 points are the grid i / 2^k


# ----------------------------------------------------------------------------- diffusion: shared noise


def test_diffusion_candidates_share_t_and_noise(model):
    """An identical candidate gets an identical error row; a label's row does not depend on which other labels
    are scored with it or on the batch split (the same (t, eps) for every candidate)."""
    z = model.encode_video(_clip())
    t, eps = diffusion_samples(model, 5, DiffusionClassifyConfig(), seed=3)
    with torch.no_grad():
        e = diffusion_errors(model, z, LABELS + [LABELS[0]], t, eps, batch=3)  # (4, 5), batches cut across rows
        alone = diffusion_errors(model, z, [LABELS[1]], t, eps, batch=64)
    assert e.shape == (4, 5)
    assert torch.equal(e[0], e[3])
    assert (e[0] - e[1]).abs().min() > 0  # the caption matters
    torch.testing.assert_close(alone[0], e[1], rtol=1e-5, atol=1e-6)
    t2, eps2 = diffusion_samples(model, 5, DiffusionClassifyConfig(), seed=3)
    assert torch.equal(t, t2) and torch.equal(eps, eps2) and len(set(t.tolist())) == 5


def test_diffusion_classify_does_not_depend_on_label_order(model):
    gen = DiffusionGenerator(model)
    budget = DiffusionClassifyConfig(trials=(2, 3), keep=(2,))
    a = classify(gen, _clip(), LABELS, seed=1, diffusion=budget)
    b = classify(gen, _clip(), LABELS[::-1], seed=1, diffusion=budget)
    assert a.labels == b.labels and a.samples == [5, 5, 2] and a.forward_passes == 3 * 2 + 2 * 3
    torch.testing.assert_close(torch.tensor(a.scores), torch.tensor(b.scores), rtol=1e-5, atol=1e-6)
    assert a.scores[0] >= a.scores[1]  # the two that went on, best first
    c = classify(gen, _clip(), LABELS, seed=2, diffusion=budget)  # another seed: other noise, other scores
    assert c.scores != a.scores


# ----------------------------------------------------------------------------- AR: the exact likelihood


def test_ar_scores_are_the_summed_token_log_probs_of_a_plain_forward(ar_dir):
    gen = ARGenerator.from_pretrained(ar_dir)
    m = gen.model
    res = classify(gen, _clip(), LABELS)
    assert res.forward_passes == 3 and sorted(res.labels) == sorted(LABELS) and res.samples == [1, 1, 1]
    assert res.scores == sorted(res.scores, reverse=True)
    ids = gen.codec.encode(_clip())[0]
    for lab, score in zip(res.labels, res.scores):
        ex = m.layouts.example("t2v", m.text.encode(lab), ids)
        seq = torch.tensor([ex.ids])
        with torch.no_grad():
            logp = m(seq, torch.tensor([ex.prefix_len])).float().log_softmax(-1)[0]  # (T, V)
        ref = sum(float(logp[i - 1, seq[0, i]]) for i in range(ex.out_start, ex.out_end))
        assert abs(score - ref) < 1e-3 * max(1.0, abs(ref)), (lab, score, ref)


# ----------------------------------------------------------------------------- candidates


def test_candidates_read_like_training_captions():
    cfg = load_world_config("tiny")
    a = {"shape": "circle", "color": "red", "motion": "left", "speed": 1.5, "size": 12}
    caps, i = attribute_candidates(a, "color", cfg)
    assert caps[i] == "a red circle moves left" and len(set(caps)) == 7
    assert all(c.replace(col, "X") == "a X circle moves left" for c, col in zip(caps, ["red", "green", "blue", "yellow", "magenta", "cyan", "white"]))
    caps, i = attribute_candidates(a, "direction", cfg)
    assert caps[i] == "a red circle moves left" and "a red circle stays still" in caps and len(caps) == 9
    assert len(attribute_candidates({**a, "shape": "7"}, "shape", cfg)[0]) == 13
    b = {"shape": "square", "color": "blue", "motion": "up", "speed": 1.0, "size": 10}
    assert binding_candidates([a, b], cfg) == ["a red circle moves left and a blue square moves up",
                                               "a blue circle moves left and a red square moves up"]
    assert binding_candidates([a, {**a, "color": "blue"}], cfg) is None  # the swap reads the same clip
    assert objects_candidates([a, b], cfg) == ["a red circle moves left and a blue square moves up",
                                               "a red circle moves left", "a blue square moves up"]
    # every two-object clip asks objects, also the ones whose color swap reads the same clip
    assert objects_candidates([a, {**a, "color": "blue"}], cfg)[1:] == ["a red circle moves left",
                                                                          "a blue circle moves left"]
    assert swapped([a, {**b, "motion": "left"}]) is not None
    # on the world's own two-object clips: both objects named in the world's order, the swap exchanges colors only
    from duogen.data.shapes import split_prompts

    pairs = [p["attributes"] for p in split_prompts(cfg, "validation", 40) if len(p["attributes"]) == 2]
    assert pairs
    for x, y in pairs:
        cap = canonical([x, y], cfg)
        assert cap.index(f"a {x['color']} {x['shape']}") < cap.index(f"a {y['color']} {y['shape']}")
        two = binding_candidates([x, y], cfg)
        if two is not None:
            assert two[1] == cap.replace(x["color"], "#").replace(y["color"], x["color"]).replace("#", y["color"])


def test_labels_are_checked():
    assert check_labels(["a  red circle ", "a blue square"]) == ["a red circle", "a blue square"]
    for bad, msg in [(["a red circle"], "at least two"), (["a", " "], "label 2 is empty"),
                     (["a b", "a  b"], "labels 1 and 2 are the same"), ("a red circle", "a list"), (["a", 3], "label 2")]:
        with pytest.raises(DataError, match=msg):
            check_labels(bad)


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def dirs(ar_dir, model, text, tmp_path_factory):
    """The tiny AR and DiT model dirs, an AR model with no t2v task, and a clip file at the models' size."""
    from duogen.ar_models.layouts import LayoutSpec
    from duogen.ar_models.model import MultimodalLM
    from duogen.data.media import write_gif

    root = tmp_path_factory.mktemp("classify")
    model.save_pretrained(root / "dit")
    m = MultimodalLM.from_pretrained(ar_dir)
    uncond = MultimodalLM(TINY, m.vocab, LayoutSpec(max_text=8, latent=m.spec.latent, tasks=["uncond"]), text,
                          codec_ref=m.codec_ref)
    uncond.save_pretrained(root / "uncond")
    write_gif(root / "clip.gif", make_clip(load_world_config("tiny"), "validation", 0).video, upscale=1)
    (root / "broken.mp4").write_bytes(b"not a video")
    return {"ar": ar_dir, "dit": root / "dit", "uncond": root / "uncond", "codec": ar_dir.parent / "codec",
            "clip": root / "clip.gif", "broken": root / "broken.mp4"}


@pytest.mark.parametrize("name", ["ar", "dit"])
def test_classify_cli_json_and_text(dirs, name, capsys):
    argv = ["classify", "--model", str(dirs[name]), "--input", str(dirs["clip"]), "--labels", *LABELS,
            "--trials", "2,2", "--keep", "1"]
    assert main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(out["labels"]) == sorted(LABELS) and len(out["scores"]) == 3
    if name == "ar":
        assert out["scores"] == sorted(out["scores"], reverse=True) and out["forward_passes"] == 3
    else:
        assert out["samples"] == [4, 2, 2] and out["forward_passes"] == 3 * 2 + 1 * 2
        assert out["scores"][1] >= out["scores"][2]  # dropped together, ranked by score
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(ln.startswith(f"{i + 1:>2}. {lab} ") for i, (lab, ln) in enumerate(zip(out["labels"], lines)))
    assert ("samples)" in lines[0]) == (name == "dit") and "forward passes" in lines[3]


@pytest.mark.parametrize("case,msg", [
    (dict(labels=["a red circle", ""]), "label 2 is empty"),
    (dict(labels=["a red circle", "a red circle"]), "are the same caption"),
    (dict(labels=["a red circle"]), "at least two labels"),
    (dict(model="codec"), "holds a 'video_codec' model"),
    (dict(model="uncond"), "not t2v"),
    (dict(input="broken"), "cannot read video"),
    (dict(input="missing"), "file not found"),
    (dict(model="dit", trials="2,2", keep="3,1"), "keep needs one entry per round"),
    (dict(labels=["a red circle " * 6, "a blue square"]), "longer than the model's budget"),
])
def test_classify_bad_input_is_one_line_and_exit_2(dirs, case, msg, capsys, tmp_path):
    model = dirs[case.get("model", "ar")]
    inp = dirs.get(case.get("input", "clip"), tmp_path / "missing.mp4")
    argv = ["classify", "--model", str(model), "--input", str(inp), "--labels", *case.get("labels", LABELS)]
    if "trials" in case:
        argv += ["--trials", case["trials"], "--keep", case["keep"]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("duogen: error:") and msg in err[0], err


# ----------------------------------------------------------------------------- the reference models


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from duogen.data import make_dataset

    data = tmp_path_factory.mktemp("zs_world") / "data"
    make_dataset("shapes", data, n=120, preset="tiny", seed=0)
    return data


def test_reference_models_classify_world_clips_by_color():
    """Trained, not random: both shipped models name the color of rendered validation clips (chance 1/7)."""
    from duogen.bridges.classify import load_classifier
    from duogen.demo import reference_models

    cfg = load_world_config("tiny")
    clips = [c for c in (make_clip(cfg, "validation", i) for i in range(12)) if len(c.attributes) == 1][:3]
    for name, path in reference_models().items():
        gen = load_classifier(path)
        for clip in clips:
            caps, truth = attribute_candidates(clip.attributes[0], "color", cfg)
            res = classify(gen, clip.video, caps, diffusion=DiffusionClassifyConfig(trials=(4,), keep=()))
            assert res.labels[0] == caps[truth], (name, clip.caption, res.labels[:2])


def test_reference_models_count_the_objects_a_caption_names():
    """Both shipped models rank a rendered two-object clip's caption above each of its objects' own captions
    (chance 1/3 per clip): the AR's likelihood knows the second object, though its samples often leave it out."""
    from duogen.bridges.classify import load_classifier
    from duogen.demo import reference_models

    cfg = load_world_config("tiny")
    clips = [c for c in (make_clip(cfg, "validation", i) for i in range(40)) if len(c.attributes) == 2][:3]
    assert len(clips) == 3
    for name, path in reference_models().items():
        gen = load_classifier(path)
        for clip in clips:
            caps = objects_candidates(clip.attributes, cfg)
            res = classify(gen, clip.video, caps, diffusion=DiffusionClassifyConfig(trials=(4,), keep=()))
            assert res.labels[0] == caps[0], (name, clip.caption, res.labels, res.scores)


def test_eval_zero_shot_cli_on_a_split(world, capsys):
    from duogen.demo import REFERENCE_DIR, reference_models

    argv = ["eval", "zero-shot", "--model", str(reference_models()["ar"]), "--data", str(world), "--n", "1", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["paradigm"] == "ar" and out["split"] == "validation"
    kinds = ("color", "shape", "direction", "binding", "objects")
    assert {k: out[k]["candidates"] for k in kinds} == {"color": 7, "shape": 13, "direction": 9, "binding": 2, "objects": 3}
    assert out["binding"]["chance"] == 0.5 and out["color"]["forward_passes_per_clip"] == 7
    assert out["objects"]["chance"] == 0.3333 and out["objects"]["forward_passes_per_clip"] == 3
    assert all(out[k]["clips"] == 1 and 0 <= out[k]["accuracy"] <= 1 for k in kinds)
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        main(argv[:-1] + ["--attribute", "size"])
    capsys.readouterr()
    assert main(["eval", "zero-shot", "--model", str(REFERENCE_DIR / "codec"), "--data", str(world)]) == 2
    assert "holds a 'video_codec' model" in capsys.readouterr().err
