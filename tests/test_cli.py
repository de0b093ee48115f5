"""The CLI frame: --help everywhere, one-line errors, overrides in any position."""

import argparse
import json

import pytest

from duogen import cli


def _all_commands(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _all_commands(sub, prefix + (name,))


def test_every_command_has_help(capsys):
    commands = list(_all_commands(cli.build_parser()))
    assert ("data", "make") in commands and ("train", "ar") in commands and ("demo",) in commands
    for cmd in commands:
        with pytest.raises(SystemExit) as e:
            cli.main([*cmd, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: duogen " + " ".join(cmd)), cmd


def test_overrides_after_options_and_bad_arguments(tmp_path, capsys):
    out = tmp_path / "w"
    assert cli.main(["data", "make", "shapes", "--out", str(out), "--n", "30", "speed=[1.0, 1.5]", "--json"]) == 0
    assert "speed:\n- 1.0\n- 1.5" in (out / "world.yaml").read_text()
    capsys.readouterr()
    assert cli.main(["data", "make", "shapes", "--out", str(tmp_path / "v"), "size=abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("duogen: error:") and "size" in err[0]
    with pytest.raises(SystemExit) as e:
        cli.main(["data", "make", "shapes", "--out", str(tmp_path / "u"), "--bogus"])
    assert e.value.code == 2


def test_python_dash_m_and_scripts_help():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-m", "duogen", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("usage: duogen"), res.stderr
    res = subprocess.run([sys.executable, str(root / "scripts" / "train_references.py"), "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--codec-steps" in res.stdout, res.stderr


def test_reference_script_refuses_a_codec_that_is_not_one(tmp_path):
    """`--codec DIR` (train the models on a given codec) is checked before any stage runs: nothing is written."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_references.py"
    res = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "refs"), "--codec", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode != 0 and "not a codec directory" in res.stderr, res.stderr
    assert not (tmp_path / "refs").exists()


def test_reference_script_trains_the_models_on_the_codec_it_is_given():
    """Each model's command reads the codec `--codec` names (or the set's own), its overrides last so they win."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from train_references import model_args, model_jobs

    jobs = model_jobs(["a:train.steps=3"], ["d:train.lr=2e-3"])
    assert jobs == [("ar", "a", ["train.steps=3"]), ("diffusion", "d", ["denoiser=dit", "train.lr=2e-3"])]
    shipped = Path("src/duogen/assets/reference/codec")
    args = model_args("diffusion", jobs[1][2], Path("D"), shipped, Path("T/text.model"), Path("R"), 4)
    assert args[:2] == ["train", "diffusion"] and args[args.index("--tokenizer") + 1] == str(shipped)
    assert args[args.index("--seed") + 1] == "4" and args[-2:] == ["denoiser=dit", "train.lr=2e-3"]
    assert [k for k, _, _ in model_jobs([], [])] == ["ar", "diffusion"]  # the defaults: one of each


def test_reference_script_trains_its_codec_with_the_overrides_given():
    """`--codec-set KEY=VALUE` reaches the codec's command after the preset, and is refused beside `--codec`."""
    import subprocess
    import sys
    from pathlib import Path

    scripts = Path(__file__).resolve().parents[1] / "scripts"
    sys.path.insert(0, str(scripts))
    from train_references import DEFAULT_CODEC, build_parser, codec_args

    a = build_parser().parse_args(["--seed", "3", "--codec-set", "model.latent_norm=batch", "--codec-set", "model.patch=2"])
    args = codec_args(a, Path("D"), Path("O/codec"))
    assert args[:4] == ["train", "tokenizer", "--modality", "video"] and args[args.index("--preset") + 1] == "tiny"
    assert args[args.index("--seed") + 1] == "3"
    assert args[-3 - len(DEFAULT_CODEC):] == ["train.steps=2465", *DEFAULT_CODEC, "model.latent_norm=batch", "model.patch=2"]
    # without --codec-set the script trains the shipped codec's recipe: every default override is its config's value
    shipped = Path(__file__).resolve().parents[1] / "src" / "duogen" / "assets" / "reference" / "codec"
    from duogen import config as cfglib
    from duogen.tokenizers.video_codec import VideoCodecConfig

    # the shipped file's fields, with the defaults of fields added since (what loading it builds)
    config = cfglib.to_dict(cfglib.from_dict(VideoCodecConfig, json.loads((shipped / "config.json").read_text())["config"]))
    default = codec_args(build_parser().parse_args([]), Path("D"), Path("O/codec"))
    assert DEFAULT_CODEC and default[-len(DEFAULT_CODEC):] == DEFAULT_CODEC
    for key, value in (o.split("=", 1) for o in DEFAULT_CODEC):
        assert str(config[key.removeprefix("model.")]) == value, key
    assert config["color_path"] and config["decoder_extra_levels"] == 1  # the tiny preset's of today
    for extra, says in ((["--codec", str(shipped), "--codec-set", "model.latent_norm=rms"], "no codec is trained"),
                        (["--codec-set", "model.latent_norm"], "KEY=VALUE")):
        res = subprocess.run([sys.executable, str(scripts / "train_references.py"), "--out", "/nonexistent/refs", *extra],
                             capture_output=True, text=True)
        assert res.returncode != 0 and says in res.stderr, res.stderr


def test_reference_script_parses_model_specs():
    import sys
    from pathlib import Path

    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from train_references import DEFAULT_AR, DEFAULT_DIT, parse_specs

    assert parse_specs(["dit_p1:dit.patch_size=1,train.steps=2500", "plain"]) == [
        ("dit_p1", ["dit.patch_size=1", "train.steps=2500"]), ("plain", [])]
    # the default specs rebuild the shipped references: their sizes (wider than tiny now) and step counts
    # (the DiT's time-capped GPU run stopped at 2,399 of its 2,400)
    refs = Path(__file__).resolve().parents[1] / "src" / "duogen" / "assets" / "reference"
    for spec, kind, sizes in ((DEFAULT_AR, "ar", lambda c: c["model"]), (DEFAULT_DIT, "dit", lambda c: c["config"]["dit"])):
        (_, overrides), = parse_specs([spec])
        ov = dict(o.split("=", 1) for o in overrides)
        shipped = sizes(json.loads((refs / kind / "config.json").read_text()))
        assert abs(int(ov.pop("train.steps")) - json.loads((refs / kind / "summary.json").read_text())["steps"]) <= 1
        if "train.lr" in ov:  # the learning rate the shipped run trained at (its config.yaml), not the preset's of today
            run = yaml.safe_load((refs.parents[3] / "docs" / "references" / "runs" / kind / "config.yaml").read_text())
            assert float(ov.pop("train.lr")) == run["train"]["lr"], kind
        assert ov and all(json.loads(v) == shipped.get(k.split(".", 1)[1], False) for k, v in ov.items()), (kind, ov)


def test_the_seed_flag_is_known_to_be_given_or_not():
    """`--seed` records whether the command line gave it (seed_flag: None when not, so a config's seed decides);
    personalize's one seed is the flag, else its --set train.seed=N, else 0."""
    from duogen.cli_common import seed_flag, seed_or_override

    parser = cli.build_parser()
    given = parser.parse_args(["compare", "--out", "x", "--seed", "0"])
    absent = parser.parse_args(["compare", "--out", "x"])
    assert (given.seed, seed_flag(given)) == (0, 0)
    assert (absent.seed, seed_flag(absent)) == (0, None)
    assert seed_or_override(absent, ["train.steps=3", "train.seed=5"]) == 5
    assert seed_or_override(absent, ["train.steps=3"]) == 0
    assert seed_or_override(parser.parse_args(["compare", "--out", "x", "--seed", "2"]), ["train.seed=5"]) == 2
