"""Personalization: concept data, LoRA and Textual Inversion on both paradigms, `duogen personalize`."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from duogen.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def cli(*argv: str) -> tuple[int, dict, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([*argv, "--json"])
    return rc, (json.loads(out.getvalue()) if rc == 0 else {}), err.getvalue()


# ----------------------------------------------------------------------------- concept data


@pytest.mark.parametrize("kind", ["star", "heart", "sprite", "digit-style"])
def test_concept_clips_have_the_placeholder_and_a_class_word(kind):
    from duogen.data.concepts import concept_clips, concept_mask
    from duogen.data.shapes import sprite

    c = concept_clips(kind, n=5, token="<v9>", seed=1)
    assert c.videos.shape == (5, 9, 32, 32, 3) and c.videos.dtype == np.uint8
    assert len(c.captions) == 5 and all("<v9>" in cap for cap in c.captions)
    assert len({a[0]["color"] for a in c.attributes}) == 3 and len({a[0]["motion"] for a in c.attributes}) == 5
    assert c.class_word and all(c.class_word in p and "<v9>" not in p for p in c.class_prompts())
    # the object is drawn: each frame holds the caption's color, and nothing else
    for v, a in zip(c.videos, c.attributes):
        assert (v.reshape(9, -1, 3).max(1) > 0).any(1).all()
    # a new shape: not one of the world's masks at the same size
    m = concept_mask(kind, 14)
    for shape in ("circle", "square", "triangle", "7"):
        w = sprite(shape, 14)
        assert w.shape != m.shape or not np.array_equal(w, m)


def test_make_concept_cli_and_bad_input(tmp_path):
    from duogen.data.concepts import load_concept

    rc, s, err = cli("data", "make", "concept", "--kind", "star", "--out", str(tmp_path / "c"), "--n", "4")
    assert rc == 0, err
    assert s["clips"] == 4 and s["class_word"] == "triangle"
    info = json.loads((tmp_path / "c" / "source.json").read_text())
    assert info["token"] == "<v1>" and len(info["class_prompts"]) == 4
    c = load_concept(tmp_path / "c", size=32, frames=9, token="<v2>")
    assert c.videos.shape == (4, 9, 32, 32, 3) and all("<v2>" in cap and "<v1>" not in cap for cap in c.captions)
    with pytest.warns(UserWarning, match="fitted"):  # wrong size: fitted with a warning
        assert load_concept(tmp_path / "c", size=16, frames=5).videos.shape == (4, 5, 16, 16, 3)
    for bad in (["--kind", "moon"], ["--n", "2", "--kind", "star"], []):
        rc, _, err = cli("data", "make", "concept", "--out", str(tmp_path / "bad"), *bad)
        assert rc == 2 and err.count("\n") == 1, err


def test_user_folder_concept(tmp_path):
    from duogen.data.concepts import load_concept
    from duogen.data.media import write_image
    from duogen.errors import DataError

    folder = tmp_path / "mine"
    folder.mkdir()
    img = np.zeros((48, 40, 3), np.uint8)
    img[10:30, 10:20] = (255, 0, 0)
    write_image(folder / "a.png", img)
    lines = [{"file_name": "a.png", "caption": "a red <v1> stays still"}, {"file_name": "a.png", "caption": "no token"}]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.warns(UserWarning):
        c = load_concept(folder, size=32, frames=9)
    assert c.videos.shape == (1, 9, 32, 32, 3) and c.captions == ["a red <v1> stays still"] and c.class_word is None
    (folder / "metadata.jsonl").write_text(json.dumps(lines[1]) + "\n")
    with pytest.raises(DataError, match="no usable clip"):
        load_concept(folder, size=32, frames=9)
