"""Editing over both paradigms: `edit(gen, source, method, ...)` and the registry of techniques `METHODS`.

Each technique is one function in its own file (`sdedit.py`, `inversion.py`, `diffedit.py`, ...) with the
signature of `common.py`, working on an AR generator and on a diffusion generator alike. A technique is added
by one entry in `METHODS` (and, for the benchmark, one line in `bench/bench_edit.py`'s `ROWS`).
Owns: the registry and the dispatch with its checks. Does not own: the techniques, reading / fitting / writing
files (`duogen edit`, `cli_edit.py`); the generators' `edit` methods delegate here.
"""

from __future__ import annotations

from typing import Any, Callable

from ...errors import ConfigError, DataError
from .common import EditResult
from .diffedit import diffedit_edit
from .imagic import imagic_edit
from .inversion import invert_edit
from .ip2p import ip2p_edit
from .prompt_to_prompt import p2p_edit
from .sdedit import sdedit_edit

METHODS: dict[str, Callable[..., EditResult]] = {
    "sdedit": sdedit_edit,
    "invert": invert_edit,
    "diffedit": diffedit_edit,
    "p2p": p2p_edit,
    "imagic": imagic_edit,
    "ip2p": ip2p_edit,  # needs a model trained for editing: `duogen train ip2p`
}


def edit(gen: Any, source: Any, method: str = "sdedit", **kw: Any) -> EditResult:
    """Edit one source clip (uint8 (F, H, W, 3), fitted to the model's size with a warning) with `method`.

    Keywords are the technique's: `prompt` (the target description), `source_prompt`, `n`, `seed`, `mask`
    ((F, H, W) or (H, W) bool), and its settings (`strength`, `guidance`, `steps`, ...).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown edit method {method!r}; allowed values: {', '.join(METHODS)}")
    if getattr(gen, "kind", None) not in ("ar", "diffusion"):
        raise DataError(f"editing works on AR and diffusion video models, not {getattr(gen, 'kind', gen)!r}")
    prompt = kw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        if method != "ip2p":
            raise ConfigError(f"edit method {method!r} needs --prompt (the target description)")
    n = kw.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n (edited clips) must be a positive integer, got {n!r}")
    return METHODS[method](gen, source, **kw)
