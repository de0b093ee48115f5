"""Editing over both paradigms: the edit-pair data, the techniques' invariants, `duogen edit`."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- data make edits


def test_edit_pairs_differ_exactly_in_the_named_attribute():
    from duogen.data.edits import make_pair
    from duogen.data.shapes import load_world_config, make_clip

    cfg = load_world_config("tiny")
    seen = set()
    for split in ("validation", "heldout"):
        for i in range(12):
            row = make_pair(cfg, split, i)
            src, tgt = row["source_attributes"][0], row["target_attributes"][0]
            kind = row["edit"]
            seen.add(kind)
            changed = {k for k in ("shape", "color", "motion") if src[k] != tgt[k]}
            assert changed == {{"direction": "motion"}.get(kind, kind)}
            assert row["source_attributes"][1:] == row["target_attributes"][1:]  # the other object is untouched
            assert np.array_equal(row["source"], make_clip(cfg, split, i).video)  # the world's own clip
            mask = row["mask"].astype(bool)  # (F, H, W)
            diff = (row["source"] != row["target"]).any(-1)
            assert not diff[~mask].any()  # nothing changes outside the mask
            if kind == "color":  # same track: the mask is exactly the object's pixels in the source
                assert np.array_equal(mask, row["source"].any(-1) & (row["source"] == row["source"][mask][0]).all(-1))
            assert row["source_caption"] != row["target_caption"] and row["instruction"].split()[0] in ("make", "turn")
    assert seen == {"color", "shape", "direction"}


def test_data_make_edits_writes_splits(tmp_path):
    from duogen.data import load_dataset, make_dataset

    info = make_dataset("edits", tmp_path / "ed", n=40)
    assert info["splits"] == {"train": 36, "validation": 2, "heldout": 2}
    ds = load_dataset(tmp_path / "ed")
    assert set(ds) == {"train", "validation", "heldout"}
    assert {"source", "target", "mask", "instruction", "source_caption", "target_caption", "edit"} <= set(ds["train"].column_names)
