import json

import pytest
import torch

from duogen import io
from duogen.errors import CheckpointError


def test_model_dir_round_trip(tmp_path):
    state = {"w": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.zeros(3)}
    d = io.save_model_dir(tmp_path / "m", {"kind": "toy", "width": 3}, state, files={"vocab.json": {"a": 1}})
    cfg, loaded = io.load_model_dir(d)
    assert cfg == {"kind": "toy", "width": 3}
    assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["b"], state["b"])
    assert json.loads((d / "vocab.json").read_text()) == {"a": 1}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_atomic_dir_keeps_old_on_failure(tmp_path):
    io.save_model_dir(tmp_path / "m", {"v": 1}, {"w": torch.ones(2)})
    with pytest.raises(RuntimeError):
        with io.atomic_dir(tmp_path / "m") as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("crash mid-write")
    assert io.load_model_dir(tmp_path / "m")[0] == {"v": 1}


def test_truncated_weights_give_one_line_error(tmp_path):
    d = io.save_model_dir(tmp_path / "m", {"v": 1}, {"w": torch.ones(100)})
    data = (d / io.WEIGHTS_NAME).read_bytes()
    (d / io.WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors: cannot read weights"):
        io.load_model_dir(d)
    with pytest.raises(CheckpointError, match="not a model directory"):
        io.load_model_dir(tmp_path / "missing")


def test_wrong_model_names_file(tmp_path):
    net = torch.nn.Linear(3, 2)
    with pytest.raises(CheckpointError, match="weights do not fit"):
        io.load_weights_into(net, {"weight": torch.zeros(5, 5), "bias": torch.zeros(2)}, "x.safetensors")
