"""Dataclass configs: defaults <- preset <- YAML file <- `key=value` overrides.

Every config in duogen is a (possibly nested) `@dataclass` defined beside the
code it configures. This module owns only the generic machinery: building a
config from a dict with unknown keys refused, type checking and coercion
(including `Literal` choices), dot-list overrides, and writing the resolved
config as YAML. Presets are plain dicts from a name to a config instance, kept
beside each config; `PRESETS` names the sizes every family offers.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar

import yaml

from .errors import ConfigError

PRESETS = ("tiny", "small", "base")
C = TypeVar("C")

# Range rules by key name (the last part of a dotted key), applied wherever a config is built, so a bad
# override fails in the first second with one line, not after minutes of work. Floats must be finite.
POSITIVE = frozenset({
    "layers", "hidden", "heads", "kv_heads", "depth", "width", "dim", "batch_size", "grad_accum", "patch_size",
    "codebook_size", "vocab_size", "text_vocab", "num_train_timesteps", "n",
})
NON_NEGATIVE = frozenset({  # lr=0 is allowed: a run that must leave the weights as they are (a check)
    "lr", "steps", "keep_last", "ckpt_every", "eval_every", "log_every", "warmup_steps", "max_clips", "threads",
    "num_workers", "top_k", "max_minutes", "max_flops", "weight_decay", "grad_clip", "ema", "dropout",
    "attn_dropout", "cond_dropout",
})
SEED_KEYS = frozenset({"seed", "generator_seed"})


def _check_range(value: Any, key: str) -> Any:
    name = key.rsplit(".", 1)[-1]
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
    if name in POSITIVE and value <= 0:
        raise ConfigError(f"config key '{key}' must be positive, got {value!r}")
    if name in NON_NEGATIVE and value < 0:
        raise ConfigError(f"config key '{key}' must be positive or zero, got {value!r}")
    if name in SEED_KEYS and not 0 <= value <= 2**63 - 1:
        raise ConfigError(f"config key '{key}' must be an integer from 0 to 2**63-1, got {value!r}")
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting where it is lossless."""
    optional, inner = _is_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(f"config key '{key}' must not be null")
    tp = inner
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"config key '{key}' is {value!r}; allowed values: {', '.join(map(str, allowed))}"
            )
        return value
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple, Sequence, typing.Sequence):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        args = typing.get_args(tp)
        elem = args[0] if args else Any
        items = [_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        if isinstance(value, str):
            try:  # exactly, beyond float's 53 bits (a 64-bit seed)
                value = int(value)
            except ValueError:
                pass
        if isinstance(value, int):
            return _check_range(value, key)
        try:
            f = float(value)
        except (ValueError, OverflowError):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}") from None
        if not math.isfinite(f) or f != int(f):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return _check_range(int(f), key)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}") from None
        return _check_range(f, key)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[C], data: Mapping[str, Any], prefix: str = "") -> C:
    """Build `cls` from a mapping; unknown keys are refused with the allowed ones named."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config '{prefix.rstrip('.') or cls.__name__}' must be a mapping")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; allowed keys: {', '.join(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad config for {cls.__name__}: {e}") from None
    check = getattr(obj, "check", None)
    if callable(check):
        check()
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML/JSON-able data (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """`["a.b=3", "name=x"]` -> `{"a": {"b": 3}, "name": "x"}` (values parsed as YAML scalars)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. train.lr=3e-4)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{item}' has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() != "" else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with another override of '{part}'")
        node[parts[-1]] = value
    return tree


def override_seeds(overrides: Sequence[str], key: str = "train.seed") -> list[tuple[str, int | None]]:
    """Each `key=value` among the overrides with its value as an integer (None where it is not one)."""
    out: list[tuple[str, int | None]] = []
    for o in overrides:
        k, _, v = o.partition("=")
        if k.strip() == key:
            try:
                out.append((o, int(v)))
            except ValueError:
                out.append((o, None))
    return out


def seed_first(overrides: Sequence[str], seed: int | None, key: str = "train.seed") -> list[str]:
    """A command's `--seed` as the first of its overrides: defaults <- preset <- YAML file <- `--seed` <- `key=value`.

    `seed` None (the flag not given) adds nothing, so a config file's seed stands. A flag and a `key=N` override
    that disagree are refused: appended after the overrides, the flag used to replace them without a word.
    """
    if seed is None:
        return list(overrides)
    for o, value in override_seeds(overrides, key):
        if value != seed:
            raise ConfigError(f"--seed {seed} and the override {o} disagree; give the seed once")
    return [f"{key}={seed}"] + list(overrides)


def load(
    cls: type[C],
    *,
    presets: Mapping[str, C] | None = None,
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> C:
    """Resolve a config: defaults <- preset <- YAML file <- `key=value` overrides."""
    data = to_dict(cls())
    if preset is not None:
        presets = presets or {}
        if preset not in presets:
            raise ConfigError(f"unknown preset '{preset}'; allowed values: {', '.join(presets)}")
        data = to_dict(presets[preset])
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{path}' is not valid YAML: {e}") from None
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"config file '{path}' must hold a mapping at the top level")
        data = _merge(data, loaded)
    data = _merge(data, parse_overrides(overrides))
    return from_dict(cls, data)


def replace(cfg: C, **changes: Any) -> C:
    """A copy of `cfg` with changes, checked like any other config."""
    return from_dict(type(cfg), _merge(to_dict(cfg), changes))


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg, sort_keys=False)


def save_yaml(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically."""
    from .io import atomic_write_text

    return atomic_write_text(path, dump_yaml(cfg))


def load_yaml(cls: type[C], path: str | Path) -> C:
    return load(cls, file=path)
