"""Every training recipe under torchrun with 2 CPU processes, through the CLI a user types.

One launch (tests/cli_worker.py runs several `duogen` commands in it, paying the imports once) runs
every recipe with train.engine=ddp, then every recipe with DeepSpeed (ZeRO-3 for the AR model,
ZeRO-2 for diffusion and the audio codec, ZeRO-1 for the video codec, ZeRO-1/2/3 for the image
codec, the cheapest). Each run must end with the same weights on both ranks (the ranks train on different
halves of every batch, so only a working gradient all-reduce keeps them equal), a finite loss, a
record of its 2 processes, and a final/ model that duogen loads. A DeepSpeed run converts to a model
directory `duogen generate` loads. Launch mistakes are one line and exit status 2.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from duogen import cli

pytestmark = [pytest.mark.dist, pytest.mark.usefixtures("one_thread")]
HAS_SPEECH = importlib.util.find_spec("espeakng_loader") is not None
WORKER = str(Path(__file__).parent / "cli_worker.py")
RECIPES = ["video", "image", "audio", "ar", "diffusion"]
DEEPSPEED = [("video", 1), ("image", 1), ("image", 2), ("image", 3), ("audio", 2), ("ar", 3), ("diffusion", 2)]
FIT = ("audio", "ar", "diffusion")  # the recipes on the engine's fit(): checkpoints record the launch
TRAIN = ["--json", "train.steps=2", "train.batch_size=4", "train.precision=fp32", "train.log_every=1"]
CODEC = [*TRAIN, "train.max_minutes=0", "train.eval_items=2", "train.stats_items=4", "train.eval_every_s=1000"]


def recipe_argv(recipe: str, root: Path, out: Path, *engine: str) -> list[str]:
    data, codec = str(root / "data"), str(root / "codec")
    if recipe in ("video", "image"):
        return ["train", "tokenizer", "--modality", recipe, "--data", data, "--out", str(out), "model.widths=[16]", "model.patch=4",
                *CODEC, *engine]
    if recipe == "audio":
        return ["train", "tokenizer", "--modality", "audio", "--data", data, "--out", str(out), *TRAIN,
                "train.max_minutes=0", "eval_utterances=1", "train_utterances=8", "channels=8", "dilations=[1]",
                "quantizer.codebook_size=16", *engine]
    if recipe == "ar":
        return ["train", "ar", "--data", data, "--tokenizer", codec, "--out", str(out), "model.hidden=32",
                "model.layers=1", "model.heads=2", "model.kv_heads=2", "model.mlp=64", "max_text=16", "text_vocab=300",
                *TRAIN, *engine]
    return ["train", "diffusion", "--data", data, "--tokenizer", codec, "--out", str(out), "denoiser=dit",
            "dit.hidden=32", "dit.depth=1", "dit.heads=2", "text.width=32", "text.layers=1", *TRAIN,
            *engine]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """12 tiny shapes clips (spoken captions when espeak-ng is there) and an untrained tiny video codec."""
    from duogen.data import make_dataset
    from duogen.tokenizers.video_codec import build_video_codec

    root = tmp_path_factory.mktemp("cli_dist")
    make_dataset("shapes", root / "data", n=12, preset="tiny", seed=0, audio=HAS_SPEECH)
    torch.manual_seed(0)
    codec = build_video_codec("tiny", ["patch=4", "widths=[16]"]).eval()
    with torch.no_grad():
        codec.set_latent_stats(codec.encode_latents(torch.rand(2, 3, 9, 32, 32) * 2 - 1))
    codec.save_pretrained(root / "codec")
    return root


def _launch(root: Path, name: str, commands: list[dict]) -> dict[str, list[dict]]:
    """Run `commands` in one 2-process torchrun launch; {name: [rank 0 record, rank 1 record]}."""
    results = root / f"{name}_results"
    results.mkdir()
    (root / f"{name}.json").write_text(json.dumps(commands))
    env = dict(os.environ, DUOGEN_QUIET="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", WORKER,
           str(root / f"{name}.json"), str(results)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {c["name"]: [json.loads((results / f"{c['name']}.rank{r}.json").read_text()) for r in (0, 1)]
            for c in commands}


def _recipes_here(pairs):
    return [p for p in pairs if HAS_SPEECH or (p[0] if isinstance(p, tuple) else p) != "audio"]


@pytest.fixture(scope="module")
def runs(root):
    """One launch for everything: the imports (torch, DeepSpeed, the codecs' libraries) are paid once."""
    cmds = [{"name": f"ddp_{r}", "argv": recipe_argv(r, root, root / f"ddp_{r}", "train.engine=ddp")}
            for r in _recipes_here(RECIPES)]
    # launch mistakes under torchrun: a global batch of 3 over 2 processes; 2 processes with engine=single
    cmds.append({"name": "odd_batch", "argv": [*recipe_argv("ar", root, root / "odd", "train.engine=ddp"),
                                               "train.batch_size=3"]})
    cmds.append({"name": "single_engine", "argv": recipe_argv("video", root, root / "single", "train.engine=single")})
    cmds += [{"name": f"ds_{r}{z}", "argv": recipe_argv(r, root, root / f"ds_{r}{z}", "train.engine=deepspeed",
                                                         f"train.zero_stage={z}")}
             for r, z in _recipes_here(DEEPSPEED)]
    return _launch(root, "runs", cmds)


def _check_run(records: list[dict], recipe: str, run: Path, engine: str) -> None:
    """Both ranks succeeded with the same weights; finite loss; 2 processes recorded; final/ loads."""
    from duogen.tokenizers import load as load_codec

    assert [r["rc"] for r in records] == [0, 0], records[0]["stderr"][-2000:] + records[1]["stderr"][-2000:]
    w0, w1 = records[0]["weights"], records[1]["weights"]
    assert w0 and w0 == w1, "the ranks ended with different weights: gradients were not synchronised"
    assert records[1]["stdout"] == "", "only rank 0 prints the summary"
    summary = json.loads(records[0]["stdout"])
    assert summary["steps"] == 2
    if recipe in FIT:
        from duogen.train.checkpoint import latest_checkpoint

        state = json.loads((latest_checkpoint(run) / "trainer_state.json").read_text())
        assert (state["world_size"], state["engine"]) == (2, engine)
    else:
        assert summary["world_size"] == 2 and summary["items_seen"] == 8
    losses = [json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    if recipe in ("video", "image", "audio"):
        codec = load_codec(run / "final")
        assert all(torch.isfinite(p).all() for p in codec.parameters())
    else:
        from duogen.bridges.generate import load_generator

        load_generator(run / "final")


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_under_ddp(recipe, root, runs):
    if recipe == "audio" and not HAS_SPEECH:
        pytest.skip("needs espeak-ng (espeakng_loader) for the audio column")
    _check_run(runs[f"ddp_{recipe}"], recipe, root / f"ddp_{recipe}", "ddp")


@pytest.mark.parametrize("recipe,stage", DEEPSPEED)
def test_recipe_trains_under_deepspeed(recipe, stage, root, runs):
    if recipe == "audio" and not HAS_SPEECH:
        pytest.skip("needs espeak-ng (espeakng_loader) for the audio column")
    _check_run(runs[f"ds_{recipe}{stage}"], recipe, root / f"ds_{recipe}{stage}", "deepspeed")


@pytest.mark.parametrize("recipe,stage", [("ar", 3), ("diffusion", 2)])
def test_convert_deepspeed_writes_a_whole_model_dir_and_refuses_to_overwrite(recipe, stage, root, runs, tmp_path, capsys):
    from duogen.bridges.generate import load_generator
    from duogen.io import load_state_dict

    run, out = root / f"ds_{recipe}{stage}", tmp_path / "model"
    assert runs[f"ds_{recipe}{stage}"][0]["rc"] == 0
    assert cli.main(["train", "convert-deepspeed", str(run), "--out", str(out)]) == 0
    final = run / "final"
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == sorted(p.relative_to(final) for p in final.rglob("*"))
    assert json.loads((out / "config.json").read_text()) == json.loads((final / "config.json").read_text())
    converted, trained = load_state_dict(out / "model.safetensors"), load_state_dict(final / "model.safetensors")
    assert converted.keys() == trained.keys() and all(torch.equal(converted[k], trained[k]) for k in trained)
    load_generator(out)  # what `duogen generate --model OUT` opens
    capsys.readouterr()
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert cli.main(["train", "convert-deepspeed", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and (out / "model.safetensors").stat().st_mtime_ns == before
    assert cli.main(["train", "convert-deepspeed", str(run), "--out", str(out), "--overwrite"]) == 0


def test_launch_mistakes_under_torchrun_are_one_line(runs):
    for name, needle in [("odd_batch", "multiple of grad_accum x processes = 1 x 2"),
                         ("single_engine", "2 processes were launched but train.engine=single")]:
        r0, r1 = runs[name]
        assert (r0["rc"], r1["rc"]) == (2, 2)
        lines = r0["stderr"].strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], r0["stderr"]
        assert r1["stderr"].strip() == "", "a config mistake is told once, by rank 0"


LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("engine", ["ddp", "deepspeed"])
def test_a_distributed_engine_without_torchrun_is_one_line(recipe, engine, root, tmp_path, monkeypatch, capsys):
    for v in LAUNCH_VARS:
        monkeypatch.delenv(v, raising=False)
    argv = recipe_argv(recipe, root, tmp_path / "run", f"train.engine={engine}")
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"train.engine={engine} needs torchrun's environment" in err[0], err
    assert not (tmp_path / "run").exists(), "nothing is prepared before the launch is checked"


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_batch_the_processes_do_not_divide_is_one_line(recipe, root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")  # checked before the process group starts: no other process needed
    capsys.readouterr()
    assert cli.main(recipe_argv(recipe, root, tmp_path / "run", "train.engine=ddp")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.batch_size=4 is the global batch" in err[0] and "train.batch_size=3" in err[0], err


def test_a_setting_deepspeed_cannot_run_is_one_line_before_any_work(root, tmp_path, monkeypatch, capsys):
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    argv = recipe_argv("diffusion", root, tmp_path / "run", "train.engine=deepspeed", "train.zero_stage=3")
    assert cli.main(argv) == 2  # the diffusion recipe's EMA needs every parameter on every rank
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.ema=0" in err[0] and not (tmp_path / "run").exists(), err


def test_more_processes_than_gpus_is_one_line(root, tmp_path, monkeypatch, capsys):
    for k, v in {"RANK": "3", "LOCAL_RANK": "3", "WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with 2 GPUs, as torch sees it
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    capsys.readouterr()
    assert cli.main(recipe_argv("ar", root, tmp_path / "run", "train.engine=ddp")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "(rank 3)" in err[0] and "--nproc_per_node 2" in err[0], err
