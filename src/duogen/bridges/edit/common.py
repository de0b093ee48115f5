"""What every editing technique returns, for both paradigms: `EditResult`.

Each technique lives in its own file of this package (`sdedit.py`, `prompt_to_prompt.py`, ...) as one function
`<method>_edit(gen, source, *, prompt, source_prompt=None, n=1, seed=0, mask=None, **settings) -> EditResult`
that works on an AR generator and on a diffusion generator alike (it branches on `gen.kind`). Techniques take the
generator duck-typed and never import `bridges.generate`, which imports this package to offer `edit`.
Does not own: reading or fitting input files, writing outputs (the `duogen edit` command), the techniques.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class EditResult:
    """n edited clips of one source clip, with what they were made from."""

    videos: np.ndarray  # (n, F, H, W, 3) uint8: the edited clips
    source: np.ndarray  # (F, H, W, 3) uint8: the input, fitted to the model's size
    reconstruction: np.ndarray  # (F, H, W, 3) uint8: the source through the model (codec round trip or inversion)
    mask: np.ndarray | None = None  # (F, H, W) bool: where the edit was allowed to change pixels; None = everywhere
    info: dict[str, Any] = field(default_factory=dict)  # method, settings, forward_passes, seconds (JSON-serialisable)
    # what produced the edits, in the model's space (CPU torch tensors, not written to edit.json): AR "ids"
    # (n, f, h, w) codec ids; diffusion "latents" (n, C, f, h, w) normalized latents; "source" the same for the input
    state: dict[str, Any] = field(default_factory=dict)
