"""duogen eval paired: per-prompt differences between two compare runs on the same prompts and seeds."""

import json
import math

import pytest

from duogen import cli
from duogen.errors import ConfigError
from duogen.eval.paired import paired_differences


def _clip(color, direction=1.0, shape=1.0, count=1.0):
    return {"color": color, "direction": direction, "shape": shape, "count": count}


def _results(per_prompt_color, name="dit", prompts=("a", "b", "c"), seed=0):
    """A compare results.json with one model, one setting, two samples per prompt."""
    clips = [[_clip(c0), _clip(c1)] for c0, c1 in per_prompt_color]
    setting = {"label": "ddim-20", "per_clip_accuracy": clips, "frechet_probe_distance": 0.5}
    return {"prompts": list(prompts), "n": 2, "seed": seed, "models": [{"name": name, "settings": [setting]}]}


def test_the_difference_is_the_mean_over_prompts_with_its_standard_error():
    new = _results([(1, 1), (1, 0), (0, 0)])   # per prompt 1, 0.5, 0
    old = _results([(1, 0), (0, 0), (0, 0)])   # per prompt 0.5, 0, 0
    (row,) = paired_differences(new, old)
    d = [0.5, 0.5, 0.0]
    mean = sum(d) / 3
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / 2 / 3)
    assert row["color"]["new"] == pytest.approx(0.5) and row["color"]["old"] == pytest.approx(1 / 6)
    assert row["color"]["diff"] == pytest.approx(mean) and row["color"]["stderr"] == pytest.approx(se)
    assert row["shape"]["diff"] == 0 and row["shape"]["stderr"] == 0  # both draw every shape


def test_runs_on_other_prompts_or_seeds_are_refused_and_unknown_names_are_told():
    with pytest.raises(ConfigError, match="prompts"):
        paired_differences(_results([(1, 1)] * 3), _results([(1, 1)] * 3, prompts=("a", "b", "x")))
    with pytest.raises(ConfigError, match="seed"):
        paired_differences(_results([(1, 1)] * 3), _results([(1, 1)] * 3, seed=1))
    with pytest.raises(ConfigError, match="share no model"):
        paired_differences(_results([(1, 1)] * 3), _results([(1, 1)] * 3, name="ar"))
    other = _results([(1, 1)] * 3)
    other["models"][0]["settings"][0]["label"] = "dpm++-20"
    with pytest.raises(ConfigError, match="share no sampling setting"):
        paired_differences(_results([(1, 1)] * 3), other)
    with pytest.raises(ConfigError, match="no model named 'zz'"):
        paired_differences(_results([(1, 1)] * 3), _results([(1, 1)] * 3), [("zz", "dit")])


def test_cli_prints_a_table_and_json(tmp_path, capsys):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "results.json").write_text(json.dumps(_results([(1, 1), (1, 1), (1, 0)], name="cand")))
    (tmp_path / "old.json").write_text(json.dumps(_results([(1, 1), (0, 0), (1, 0)])))
    assert cli.main(["eval", "paired", str(tmp_path / "new"), str(tmp_path / "old.json"), "--pair", "cand=dit"]) == 0
    out = capsys.readouterr().out
    assert "| cand | dit | ddim-20 | 83.3 / 50.0 (+33.3 +- 33.3)" in out
    assert cli.main(["eval", "paired", str(tmp_path / "new"), str(tmp_path / "old.json"), "--pair", "cand=dit",
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][0]["color"]["diff"] == pytest.approx(1 / 3)
    assert cli.main(["eval", "paired", str(tmp_path / "new"), str(tmp_path / "nowhere")]) == 2
    assert "no results.json" in capsys.readouterr().err
    assert cli.main(["eval", "paired", str(tmp_path / "new"), str(tmp_path / "old.json"), "--pair", "cand"]) == 2
