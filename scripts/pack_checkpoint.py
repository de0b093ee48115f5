"""Copy a model directory with its float32 weight matrices stored as float16 (`duogen.io.half_precision_copy`).

    python scripts/pack_checkpoint.py RUN/final OUT_DIR

Halves the size; loading casts back to float32. The reference checkpoints ship this way.
"""

from __future__ import annotations

import sys

from duogen.io import half_precision_copy

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(f"{sys.argv[2]}: {half_precision_copy(sys.argv[1], sys.argv[2]) / 2**20:.1f} MB")
