"""`personalize analyze`: Delta_l = ||theta' - theta|| / ||theta|| per layer, on the shipped reference models of both
paradigms: zero for identical weights, the exact ratio for a known perturbation, grown tables compared on their old
rows, deltas read through their base, and a run of another base refused."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from duogen.ar_models.model import MultimodalLM
from duogen.bridges.personalize.analyze import analyze, layer_type, weight_change
from duogen.diffusion.latent import LatentDiffusionModel
from duogen.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")
REF = Path(__file__).resolve().parents[1] / "src" / "duogen" / "assets" / "reference"


@pytest.fixture(scope="module")
def models():
    return {"ar": MultimodalLM.from_pretrained(REF / "ar"), "dit": LatentDiffusionModel.from_pretrained(REF / "dit")}


@pytest.mark.parametrize("kind", ["ar", "dit"])
def test_identical_models_give_zero_everywhere(models, kind):
    sd = models[kind].state_dict()
    wc = weight_change(sd, {k: v.clone() for k, v in sd.items()})
    assert wc.layers and all(x.delta == 0.0 for x in wc.layers if x.delta is not None)
    assert all(v["max"] == 0.0 for v in wc.by_type.values())


def test_known_perturbation_gives_the_exact_ratio(models):
    """AR k_proj of layer 1 (no bias) scaled by 1.25: Delta = 0.25; DiT cross K half of to_kv scaled by 0.5:
    Delta = 0.5 for `cross k` and 0 for `cross v` (the fused projection is split); a weight + bias module
    gets ||dW|| / sqrt(||W||^2 + ||b||^2)."""
    sd = models["ar"].state_dict()
    tuned = {k: v.clone() for k, v in sd.items()}
    key = "lm.model.layers.1.self_attn.k_proj.weight"
    tuned[key] = tuned[key] * 1.25
    wc = weight_change(sd, tuned)
    by = {x.name: x for x in wc.layers}
    assert math.isclose(by["lm.model.layers.1.self_attn.k_proj"].delta, 0.25, rel_tol=1e-5)
    assert by["lm.model.layers.1.self_attn.k_proj"].type == "attn k"
    assert sum(1 for x in wc.layers if x.delta) == 1 and wc.by_type["attn k"]["max"] == by[key[:-7]].delta

    sd = models["dit"].state_dict()
    tuned = {k: v.clone() for k, v in sd.items()}
    kv = "denoiser.blocks.2.cross.to_kv.weight"
    D = tuned[kv].shape[0] // 2
    tuned[kv][:D] *= 0.5
    w, b = sd["denoiser.blocks.0.mlp.net.0.weight"], sd["denoiser.blocks.0.mlp.net.0.bias"]
    tuned["denoiser.blocks.0.mlp.net.0.weight"] = w + 0.1 * w
    by = {x.name: x for x in weight_change(sd, tuned).layers}
    assert math.isclose(by["denoiser.blocks.2.cross.to_kv.k"].delta, 0.5, rel_tol=1e-5)
    assert by["denoiser.blocks.2.cross.to_kv.v"].delta == 0.0 and by["denoiser.blocks.2.cross.to_kv.k"].type == "cross k"
    want = 0.1 * float(w.norm()) / math.sqrt(float(w.norm()) ** 2 + float(b.norm()) ** 2)
    assert math.isclose(by["denoiser.blocks.0.mlp.net.0"].delta, want, rel_tol=1e-5)
    assert by["denoiser.blocks.0.mlp.net.0"].index == 0 and by["denoiser.blocks.0.mlp.net.0"].type == "mlp"


def test_layer_types_cover_both_paradigms():
    assert layer_type("lm.model.layers.3.mlp.down_proj") == "mlp"
    assert layer_type("lm.model.layers.0.input_layernorm") == "norm"
    assert layer_type("lm.lm_head") == "output head" and layer_type("lm.model.embed_tokens") == "embedding"
    assert layer_type("denoiser.blocks.5.ada") == "conditioning" and layer_type("denoiser.proj_out") == "output head"
    assert layer_type("text_encoder.blocks.0.attn.to_q") == "text encoder"
    assert layer_type("denoiser.backbone.mid.1.blocks.0.cross.to_kv.v") == "cross v"


def test_dirs_grown_tables_deltas_json_plot_and_another_base(models, tmp_path):
    m = LatentDiffusionModel.from_pretrained(REF / "dit")
    m.text_encoder.add_placeholder("<v1>", "circle")  # the table grows by one row: old rows unchanged
    with torch.no_grad():
        m.denoiser.blocks[0].cross.to_q.weight.mul_(2.0)
    m.save_pretrained(tmp_path / "tuned")
    from duogen.io import write_delta

    base = tmp_path / "base"
    shutil.copytree(REF / "dit", base, ignore=shutil.ignore_patterns("*.jsonl"))
    shutil.copytree(REF / "codec", tmp_path / "codec")
    write_delta(tmp_path / "tuned", base)
    s = analyze(base, tmp_path / "tuned", tmp_path / "out")
    js = json.loads((tmp_path / "out" / "analyze.json").read_text())
    by = {x["name"]: x for x in js["layers"]}
    assert math.isclose(by["denoiser.blocks.0.cross.to_q"]["delta"], 1.0, rel_tol=1e-5)
    assert by["text_encoder.embed"]["delta"] == 0.0 and by["text_encoder.embed"]["new_rows"] == 1
    assert s["most_moved"][0]["name"] == "denoiser.blocks.0.cross.to_q"
    assert (tmp_path / "out" / "delta_by_type.png").stat().st_size > 1000
    # a delta over other weights is a run of another base
    other = tmp_path / "other"
    shutil.copytree(base, other)
    o = LatentDiffusionModel.from_pretrained(other)
    with torch.no_grad():
        o.denoiser.proj_out.bias.add_(1.0)
    o.save_pretrained(other)
    with pytest.raises(CheckpointError, match="not from"):
        weight_change(other, tmp_path / "tuned")
    with pytest.raises(CheckpointError, match="'diffusion'|'ar'"):
        weight_change(REF / "ar", base)


def test_cli_analyze_writes_json_and_plot_and_bad_input_is_one_line(tmp_path):
    import contextlib
    import io

    from duogen.cli import main

    def cli(*argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main([*argv, "--json"])
        return rc, (json.loads(out.getvalue()) if rc == 0 else {}), err.getvalue()

    rc, s, err = cli("personalize", "analyze", str(REF / "dit"), str(REF / "dit"), "--out", str(tmp_path / "a"))
    assert rc == 0, err
    assert all(v["max"] == 0.0 for v in s["by_type"].values()) and (tmp_path / "a" / "analyze.json").is_file()
    rc, _, err = cli("personalize", "analyze", str(REF / "ar"), str(REF / "dit"), "--out", str(tmp_path / "b"))
    assert rc == 2 and err.count("\n") == 1 and "compare a fine-tune with its own base" in err
    rc, _, err = cli("personalize", "analyze", str(REF / "ar"), str(REF / "ar"), "--out", str(tmp_path / "a"))
    assert rc == 2 and err.count("\n") == 1 and "--overwrite" in err
