"""Data sets on disk as HF `datasets`: the synthetic shapes world, bundled real sets, user folders.

Import-light: everything heavy is imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

BUNDLED = ("mnist", "digits", "photos", "sprites")


def load_dataset(path: str | Path) -> Any:
    """Open a duogen data set directory as a `datasets.DatasetDict` (no formatting applied)."""
    from ..errors import DataError

    path = Path(path)
    if not path.exists():
        raise DataError(f"data set '{path}' does not exist; make one with `duogen data make shapes --out {path}`")
    if not (path / "dataset_dict.json").is_file():
        raise DataError(f"'{path}' is not a duogen data set (no dataset_dict.json); make one with `duogen data make`")
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except Exception as e:  # a damaged directory: say which and how to fix it
        raise DataError(f"cannot read data set '{path}': {e}; remake it with `duogen data make --overwrite`") from None


def with_uint8_video(ds: Any) -> Any:
    """`ds` formatted so `video` comes back as a uint8 numpy array (F, H, W, 3) and the rest as Python.

    `datasets`' numpy/torch formatters widen integer arrays to int64 unless told a
    dtype, and a global dtype would also cast `attributes.speed`; this sets it for
    `video` only. Works on a `Dataset` or a `DatasetDict`.
    """
    import numpy as np

    return ds.with_format("numpy", columns=["video"], dtype=np.uint8, output_all_columns=True)


def _world_overrides(overrides: Sequence[str], seed: int | None, n: int | None) -> list[str]:
    """A world's overrides under the flags: `--seed` first (refused where a `seed=N` override disagrees), `--n`
    last (given, it wins over an `n=N` override)."""
    from ..config import seed_first

    return seed_first(overrides, seed, key="seed") + ([f"n={n}"] if n is not None else [])


def make_dataset(
    name: str,
    out: str | Path,
    *,
    n: int | None = None,
    preset: str = "tiny",
    seed: int | None = None,
    audio: bool = False,
    overwrite: bool = False,
    overrides: Sequence[str] = (),
    kind: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Render a built-in data set to `out`: "shapes", "edits" (shapes-world edit pairs), a "concept" (`kind`) or a bundled real set."""
    from ..errors import DataError

    if name == "concept":
        from .concepts import DEFAULT_TOKEN, KINDS, make_concept

        if kind is None:
            raise DataError(f"data make concept needs --kind; allowed values: {', '.join(KINDS)}")
        extra = dict(o.split("=", 1) for o in overrides)
        if set(extra) - {"digit", "colors"}:
            raise DataError("concept takes only the overrides digit=D (0-9) and colors=C1,C2,... (palette colors),"
                            f" got {sorted(set(extra) - {'digit', 'colors'})}")
        if audio:
            raise DataError("--audio is available for the shapes world only, not 'concept'")
        try:
            digit = int(extra.get("digit", 7))
        except ValueError:
            raise DataError(f"digit={extra['digit']!r} is not a digit 0-9") from None
        colors = [c.strip() for c in extra["colors"].split(",") if c.strip()] if "colors" in extra else None
        return make_concept(kind, out, n=n, preset=preset, token=token or DEFAULT_TOKEN, digit=digit, seed=seed or 0,
                            colors=colors, overwrite=overwrite)
    if kind is not None or token is not None:
        raise DataError(f"--kind and --token belong to `data make concept`, not '{name}'")

    if name == "shapes":
        from .shapes import load_world_config, make_world

        cfg = load_world_config(preset, _world_overrides(overrides, seed, n))
        return make_world(out, cfg, audio=audio, overwrite=overwrite)
    if name == "edits":
        if audio:
            raise DataError("--audio is available for the shapes world only, not 'edits'")
        from .edits import make_edits
        from .shapes import load_world_config

        return make_edits(out, load_world_config(preset, _world_overrides(overrides, seed, n)), overwrite=overwrite)
    if name in BUNDLED:
        if overrides:
            raise DataError(f"data set '{name}' takes no key=value overrides (got {list(overrides)})")
        if audio:
            raise DataError(f"--audio is available for the shapes world only, not '{name}'")
        from .bundled import make_bundled

        return make_bundled(name, out, n=n, preset=preset, seed=seed or 0, overwrite=overwrite)
    raise DataError(f"unknown data set '{name}'; allowed values: shapes, edits, concept, {', '.join(BUNDLED)}")
