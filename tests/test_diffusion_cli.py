"""`duogen train diffusion` then `duogen generate` end to end through the CLI, and bad flags as one line."""

import contextlib
import io
import json

import pytest

from duogen.cli import main
from test_latent_diffusion import make_codec

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a red circle moves left"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3D-conv video U-Net trained for 2 steps by the CLI on 12 tiny clips through an untrained tiny codec."""
    from duogen.data import make_dataset

    root = tmp_path_factory.mktemp("diffusion_cli")
    make_dataset("shapes", root / "data", n=12, preset="tiny", seed=0)
    make_codec().save_pretrained(root / "codec")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(["train", "diffusion", "--data", str(root / "data"), "--tokenizer", str(root / "codec"),
                   "--out", str(root / "run"), "--json", "denoiser=unet3d", "train.steps=2", "unet.channels=16",
                   "unet.heads=2", "text.width=32", "text.layers=1", "train.batch_size=4", "train.precision=fp32"])
    assert rc == 0
    summary = json.loads(stdout.getvalue())
    assert (summary["denoiser"], summary["steps"], summary["final"]) == ("unet3d", 2, str(root / "run" / "final"))
    return root


def generate(run, *argv):
    return main(["generate", "--model", str(run / "run" / "final"), "--prompt", PROMPT, *argv])


def test_train_then_generate(run, tmp_path, capsys):
    conf = json.loads((run / "run" / "final" / "config.json").read_text())
    assert conf["kind"] == "diffusion" and conf["config"]["denoiser"] == "unet3d"
    capsys.readouterr()
    out = tmp_path / "gen"
    assert generate(run, "--n", "2", "--out", str(out), "--steps", "2", "--sampler", "dpm", "--guidance", "2",
                    "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in out.glob("clip_*")) == [f"clip_000_{j:02d}.{ext}" for j in range(2)
                                                          for ext in ("gif", "mp4")]
    assert summary == {**json.loads((out / "generation.json").read_text()), "warnings": []}
    assert summary["kind"] == "diffusion" and summary["prompts"] == [PROMPT] * 2 and summary["seeds"] == [0, 0]
    s = summary["settings"]
    assert (s["sampler"], s["steps"], s["guidance"], s["ddpm_variance"]) == ("dpm", 2, 2.0, None)


def test_ddpm_variance_flag(run, tmp_path, capsys):
    out = tmp_path / "gen"
    assert generate(run, "--out", str(out), "--steps", "2", "--sampler", "ddpm", "--ddpm-variance", "beta") == 0
    settings = json.loads((out / "generation.json").read_text())["settings"]
    assert (settings["sampler"], settings["ddpm_variance"]) == ("ddpm", "beta")


@pytest.mark.parametrize("argv,msg", [
    (["--steps", "0"], "number of sampling steps must be an integer in [1, 1000], got 0"),
    (["--guidance", "-1"], "guidance scale must be in [0, 100]"),
    (["--sampler", "ddim", "--ddpm-variance", "beta"], "ddpm_variance sets the DDPM sampler's sigma_t"),
])
def test_bad_flags_are_one_line_errors(run, tmp_path, capsys, argv, msg):
    capsys.readouterr()
    assert generate(run, "--out", str(tmp_path / "gen"), *argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("duogen: error:") and msg in err[0], err
    assert not (tmp_path / "gen" / "generation.json").exists()


def test_the_seed_is_the_flag_or_the_config_files_and_a_disagreeing_pair_is_refused(run, tmp_path, capsys):
    """Without --seed the --config file's train.seed trains the run (the flag's default 0 used to replace it);
    --seed 3 with train.seed=7 is refused before any work."""
    import yaml

    (tmp_path / "seed7.yaml").write_text("train:\n  seed: 7\n")
    args = ["train", "diffusion", "--data", str(run / "data"), "--tokenizer", str(run / "codec"), "denoiser=unet3d",
            "train.steps=1", "unet.channels=16", "unet.heads=2", "text.width=32", "text.layers=1", "train.batch_size=4",
            "train.precision=fp32"]
    assert main([*args, "--out", str(tmp_path / "f"), "--config", str(tmp_path / "seed7.yaml")]) == 0
    assert yaml.safe_load((tmp_path / "f" / "config.yaml").read_text())["train"]["seed"] == 7
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "x"), "--seed", "3", "train.seed=7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["duogen: error: --seed 3 and the override train.seed=7 disagree; give the seed once"], err
    assert not (tmp_path / "x" / "config.yaml").exists()
