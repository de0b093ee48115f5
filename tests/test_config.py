from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from duogen import config
from duogen.errors import ConfigError


@dataclass
class Inner:
    width: int = 32
    kind: Literal["dit", "unet"] = "dit"


@dataclass
class Outer:
    lr: float = 1e-3
    name: str = "run"
    levels: tuple[int, ...] = (8, 5, 5, 5)
    resume: Optional[str] = None
    inner: Inner = field(default_factory=Inner)

    def check(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"config key 'lr' must be positive, got {self.lr}")


PRESETS = {"tiny": Outer(inner=Inner(width=16)), "small": Outer(inner=Inner(width=64))}


def test_layering_defaults_preset_file_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.5\ninner:\n  kind: unet\n")
    cfg = config.load(Outer, presets=PRESETS, preset="tiny", file=f, overrides=["inner.width=7", "levels=4,4"])
    assert cfg.lr == 0.5 and cfg.inner.kind == "unet" and cfg.inner.width == 7
    assert cfg.levels == (4, 4)
    assert config.load(Outer, presets=PRESETS, preset="small").inner.width == 64


def test_unknown_key_is_named_with_allowed_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.depth'.*width, kind"):
        config.load(Outer, overrides=["inner.depth=3"])


def test_literal_names_allowed_values():
    with pytest.raises(ConfigError, match=r"'inner.kind' is 'vit'; allowed values: dit, unet"):
        config.load(Outer, overrides=["inner.kind=vit"])


def test_type_errors_and_check_hook():
    with pytest.raises(ConfigError, match="'inner.width' must be an integer"):
        config.load(Outer, overrides=["inner.width=abc"])
    with pytest.raises(ConfigError, match="must be positive"):
        config.load(Outer, overrides=["lr=-1"])
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        config.load(Outer, presets=PRESETS, preset="huge")
    with pytest.raises(ConfigError, match="key=value"):
        config.load(Outer, overrides=["lr"])


def test_yaml_round_trip(tmp_path):
    cfg = config.load(Outer, overrides=["resume=auto", "name=x"])
    path = config.save_yaml(cfg, tmp_path / "config.yaml")
    assert config.load_yaml(Outer, path) == cfg


def test_seed_flag_goes_under_an_explicit_override():
    """`--seed` sets the key; a `key=value` override alone sets it; the two disagreeing are refused (appended last,
    the flag's default 0 used to replace an explicit `train.seed=N` silently)."""
    load = lambda ov: config.load(Outer, presets=PRESETS, preset="tiny", overrides=ov)  # noqa: E731
    assert config.seed_first(["lr=0.1"], 3, key="inner.width") == ["inner.width=3", "lr=0.1"]
    assert load(config.seed_first(["lr=0.1"], 3, key="inner.width")).inner.width == 3  # the flag alone
    assert load(config.seed_first(["inner.width=5"], None, key="inner.width")).inner.width == 5  # the override alone
    assert load(config.seed_first(["inner.width=5"], 5, key="inner.width")).inner.width == 5  # the two agree
    with pytest.raises(ConfigError, match="--seed 3 and the override inner.width=5 disagree"):
        config.seed_first(["inner.width=5"], 3, key="inner.width")
    with pytest.raises(ConfigError, match="disagree"):
        config.seed_first(["inner.width=0"], 3, key="inner.width")
    assert config.seed_first(["lr=0.1"], None) == ["lr=0.1"]  # no flag, nothing added
