"""Multi-process engines on 2 CPU processes: torchrun DDP (gloo) and DeepSpeed ZeRO-1/2/3.

Each reaches the single-process loss curve for the same global batch (16 = 2 ranks x 8);
the tolerance, rel 1e-5 per step, allows only for a different float summation order in
the gradient all-reduce. A DeepSpeed checkpoint converts to a plain model directory whose
outputs equal the trained DeepSpeed model's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from duogen.io import load_model_dir, load_state_dict, load_weights_into
from duogen.train.checkpoint import convert_deepspeed, latest_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
import engine_worker as W  # noqa: E402
from engine_worker import one_thread  # noqa: E402,F401  (autouse fixture)

pytestmark = pytest.mark.dist
WORKER = str(Path(__file__).parent / "engine_worker.py")
COMMON = ["--steps", "12", "--batch-size", "16", "--dropout", "0", "--grad-accum", "2"]


def _torchrun(run_dir: Path, *args: str, timeout: int = 120, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, DUOGEN_QUIET="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", WORKER, str(run_dir), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> list[float]:
    run_dir = tmp_path_factory.mktemp("single")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        W.main([str(run_dir), *COMMON])
    finally:
        torch.set_num_threads(n)
    return _losses(run_dir)


def test_ddp_two_processes_match_single(tmp_path, single_run):
    # the loss calls model.loss(batch), not forward: the engine runs it inside DDP's forward, so gradients sync
    _torchrun(tmp_path, "--engine", "ddp", "--loss-method", *COMMON)
    assert _losses(tmp_path) == pytest.approx(single_run, rel=1e-5)
    ck = latest_checkpoint(tmp_path)
    assert (ck / "rng_rank0.json").is_file() and (ck / "rng_rank1.json").is_file()
    assert (tmp_path / "final" / "model.safetensors").is_file()


def test_deepspeed_zero_1_2_3_match_single_and_convert(tmp_path, single_run):
    # one torchrun runs the three stages in turn: DeepSpeed's import and process start are paid once
    _torchrun(tmp_path, "--engine", "deepspeed", "--zero-stages", "1,2,3", *COMMON, timeout=180)
    for stage in (1, 2, 3):
        run_dir = tmp_path / f"zero{stage}"
        assert _losses(run_dir) == pytest.approx(single_run, rel=1e-5), f"ZeRO-{stage}"
        ck = latest_checkpoint(run_dir)
        assert (ck / "deepspeed").is_dir() and ck.name == "step_0000012"
        if stage == 3:  # through the CLI, given the run directory
            from duogen.cli import main

            assert main(["train", "convert-deepspeed", str(run_dir), "--out", str(tmp_path / "plain3")]) == 0
            out_dir = tmp_path / "plain3"
        else:
            out_dir = convert_deepspeed(ck, tmp_path / f"plain{stage}")
        config, state = load_model_dir(out_dir)
        assert config == {"kind": "mlp", "dropout": 0.0}
        model = W.make_model(dropout=config["dropout"])
        load_weights_into(model, state, out_dir)
        with torch.no_grad():
            plain = model.eval()(W.probe_input())
        engine_out = load_state_dict(run_dir / "probe_outputs.safetensors")["out"]
        assert torch.equal(plain, engine_out), f"ZeRO-{stage}: max diff {(plain - engine_out).abs().max()}"
        final = load_state_dict(run_dir / "final" / "model.safetensors")
        assert all(torch.equal(final[k], state[k]) for k in state)


def test_deepspeed_zero3_resumes_after_crash(tmp_path, single_run):
    """A ZeRO-3 run that dies after its step-5 checkpoint resumes (resume=auto) onto the unbroken curve."""
    args = ["--engine", "deepspeed", "--zero-stages", "3", *COMMON, "--ckpt-every", "1", "--keep-last", "2"]
    assert _torchrun(tmp_path, *args, "--crash-at", "5", check=False).returncode != 0
    assert latest_checkpoint(tmp_path / "zero3").name == "step_0000005"
    assert not (tmp_path / "zero3" / "final").exists()
    _torchrun(tmp_path, *args, "--resume", "auto")
    assert _losses(tmp_path / "zero3") == pytest.approx(single_run, rel=1e-5)
