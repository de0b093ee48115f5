"""Small runtime helpers shared by every subpackage: seeding, progress bars, autocast."""

from __future__ import annotations

import contextlib
import os
import random
import sys
from typing import Any, Iterable, Iterator


def launch_rank() -> int:
    """This process's rank among those torchrun started (0 without torchrun)."""
    rank = os.environ.get("RANK", "0")
    return int(rank) if rank.isdigit() else 0


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from one integer."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """A tqdm bar on stderr; silent when DUOGEN_QUIET=1 or stderr is not a terminal in tests."""
    from tqdm.auto import tqdm

    disable = kwargs.pop("disable", None)
    if disable is None:
        disable = os.environ.get("DUOGEN_QUIET") == "1"
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("file", sys.stderr)
    return tqdm(iterable, disable=disable, **kwargs)


def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; anything else is returned as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError(f"device {device!r} asked for, but torch sees no GPU (use device=cpu or auto)")
    return device


@contextlib.contextmanager
def autocast(precision: str, device: str = "cpu") -> Iterator[None]:
    """bf16 autocast when asked for, else nothing; `auto` is resolved first (`duogen.precision.resolve_precision`)."""
    import torch

    if precision == "bf16":
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            yield
    elif precision in ("fp32", "float32"):
        yield
    else:
        hint = "; resolve 'auto' with duogen.precision.resolve_precision first" if precision == "auto" else ""
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}{hint}")


def count_parameters(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())
