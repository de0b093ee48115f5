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


def test_half_precision_copy_loads_and_matches(tmp_path):
    import torch

    from duogen.io import half_precision_copy, load_model_dir, save_model_dir

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.LayerNorm(64), torch.nn.Linear(64, 4))
    save_model_dir(tmp_path / "m", {"kind": "test"}, net.state_dict())
    save_model_dir(tmp_path / "m" / "codec", {"kind": "codec"}, {"latent_scale": torch.tensor([0.6538, 0.3528])})
    size = half_precision_copy(tmp_path / "m", tmp_path / "h")
    full = sum(f.stat().st_size for f in (tmp_path / "m").rglob("*") if f.is_file())
    assert size < 0.6 * full
    _, state = load_model_dir(tmp_path / "h")
    assert state["0.weight"].dtype == torch.float16 and state["0.bias"].dtype == torch.float32
    _, codec_state = load_model_dir(tmp_path / "h" / "codec")  # 1-D statistics stay exact
    assert torch.equal(codec_state["latent_scale"], torch.tensor([0.6538, 0.3528]))
    copy = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.LayerNorm(64), torch.nn.Linear(64, 4))
    copy.load_state_dict(state)  # casts back to float32
    x = torch.randn(5, 32)
    assert copy[0].weight.dtype == torch.float32
    torch.testing.assert_close(copy(x), net(x), atol=2e-3, rtol=2e-3)
    with pytest.raises(CheckpointError, match="not a model directory"):
        half_precision_copy(tmp_path / "nothing", tmp_path / "x")
