"""Tiny models trained by the CLI, shared by the fine-tuning and personalization tests.

`cli(...)` runs `duogen ... --json` in process and returns (exit code, summary, stderr); `train_tiny_bases(root)`
renders 12 shapes clips, saves an untrained tiny codec and trains an AR model and a DiT on them for 2 steps
through the CLI (root/data, root/codec, root/ar, root/<dit_name>).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Sequence

from duogen.cli import main
from test_latent_diffusion import make_codec

AR_TINY = ["model.hidden=32", "model.layers=2", "model.heads=2", "model.kv_heads=2", "model.mlp=64", "max_text=16",
           "text_vocab=300", "train.batch_size=4", "train.precision=fp32"]
DIT_TINY = ["dit.hidden=32", "dit.depth=2", "dit.heads=2", "text.width=32", "text.layers=1", "text_vocab=300",
            "train.batch_size=4", "train.precision=fp32"]


def cli(*argv: str) -> tuple[int, dict, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([*argv, "--json"])
    return rc, (json.loads(out.getvalue()) if rc == 0 else {}), err.getvalue()


def train_tiny_bases(root: Path, dit_name: str = "dit", extra: Sequence[str] = ()) -> Path:
    from duogen.data import make_dataset

    make_dataset("shapes", root / "data", n=12, preset="tiny", seed=0)
    make_codec(0).save_pretrained(root / "codec")
    common = ["--data", str(root / "data"), "--tokenizer", str(root / "codec")]
    for kind, name, tiny in (("ar", "ar", AR_TINY), ("diffusion", dit_name, DIT_TINY)):
        rc, _, err = cli("train", kind, *common, "--out", str(root / name), *tiny, *extra, "train.steps=2")
        assert rc == 0, err
    return root
