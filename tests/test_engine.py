"""Single-process engine: exact resume after SIGKILL, signals, NaN stop, bad checkpoints, data order."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from duogen.errors import CheckpointError, DataError, TrainingError
from duogen.io import load_state_dict, load_weights_into
from duogen.train.backends import lr_lambda
from duogen.train.checkpoint import latest_checkpoint, list_checkpoints
from duogen.train.data import ShardedBatchSampler, DataPosition, pretokenize
from duogen.train.engine import LossOutput, TrainConfig, fit

sys.path.insert(0, str(Path(__file__).parent))
import engine_worker as W  # noqa: E402
from engine_worker import one_thread  # noqa: E402,F401  (autouse fixture)

WORKER = str(Path(__file__).parent / "engine_worker.py")




def _env() -> dict[str, str]:
    env = dict(os.environ, DUOGEN_QUIET="1", OMP_NUM_THREADS="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _spawn(run_dir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, WORKER, str(run_dir), *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=8, batch_size=16, lr=3e-3, warmup_steps=2, log_every=1, seed=0, precision="fp32")
    base.update(kw)
    return TrainConfig(**base)


def _losses(run_dir: Path) -> list[float]:
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


def test_exact_resume_after_sigkill(tmp_path):
    """Kill a run with SIGKILL at a random step, resume it: final weights are bitwise those of an unbroken run."""
    steps = 24
    common = ["--steps", str(steps), "--keep-last", "3", "--dropout", "0.2", "--ema", "0.9"]
    # the unbroken run saves only at the end: checkpointing must not perturb training either
    full = _spawn(tmp_path / "full", *common)
    killed = _spawn(tmp_path / "killed", *common, "--ckpt-every", "1", "--sleep", "0.05")
    kill_after = random.randint(3, steps - 8)  # a random step; printed on failure
    deadline = time.time() + 60
    while time.time() < deadline:
        ck = latest_checkpoint(tmp_path / "killed")
        if ck is not None and int(ck.name.split("_")[1]) >= kill_after:
            break
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    stopped_at = int(latest_checkpoint(tmp_path / "killed").name.split("_")[1])
    assert stopped_at < steps, f"run finished before it was killed (kill_after={kill_after})"
    assert not (tmp_path / "killed" / "final").exists()
    resumed = _spawn(tmp_path / "killed", *common, "--ckpt-every", "1", "--resume", "auto")
    for proc in (full, resumed):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
    a = load_state_dict(tmp_path / "full" / "final" / "model.safetensors")
    b = load_state_dict(tmp_path / "killed" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after kill at step {stopped_at} (kill_after={kill_after})"
    # the training weights and optimizer state match too, not only the EMA that final/ holds
    ca, cb = latest_checkpoint(tmp_path / "full"), latest_checkpoint(tmp_path / "killed")
    for name in ("model.safetensors", "optimizer.safetensors"):
        sa, sb = load_state_dict(ca / name), load_state_dict(cb / name)
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    # metrics of the resumed run continue the killed one without duplicate steps
    steps_logged = [json.loads(ln)["step"] for ln in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == list(range(1, steps + 1))
    assert _losses(tmp_path / "full") == _losses(tmp_path / "killed")
    assert [p.name for p in list_checkpoints(tmp_path / "killed")] == [f"step_{s:07d}" for s in range(steps - 2, steps + 1)]


def test_sigterm_saves_checkpoint_and_exits_cleanly(tmp_path):
    proc = _spawn(tmp_path, "--steps", "200", "--sleep", "0.05", "--ckpt-every", "0")
    deadline = time.time() + 60
    while time.time() < deadline and not (tmp_path / "metrics.jsonl").is_file():
        time.sleep(0.05)
    while time.time() < deadline and len((tmp_path / "metrics.jsonl").read_text().splitlines()) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped"] == "signal" and 3 <= summary["steps"] < 200
    ck = latest_checkpoint(tmp_path)
    assert ck.name == f"step_{summary['steps']:07d}"
    assert not (tmp_path / "final").exists()  # an interrupted run has no final model


def test_nan_loss_stops_and_last_checkpoint_loads(tmp_path):
    model = W.make_model()
    with pytest.raises(TrainingError) as e:
        # flops_per_sample given: no measuring forward, so loss call 7 is step 7
        fit(model, W.make_loss(nan_at=7), W.make_data(), _cfg(steps=20, ckpt_every=2), tmp_path, flops_per_sample=1.0)
    msg = str(e.value)
    assert "non-finite loss" in msg and "step 7" in msg and "step_0000006" in msg and "\n" not in msg
    assert [p.name for p in list_checkpoints(tmp_path)][-1] == "step_0000006"
    # the last good checkpoint resumes and finishes the run
    s = fit(W.make_model(), W.make_loss(), W.make_data(), _cfg(steps=9, ckpt_every=2, resume="auto"), tmp_path)
    assert s.steps == 9 and math.isfinite(s.final_loss)
    assert _losses(tmp_path)[:6] == _losses(tmp_path)[:6] and len(_losses(tmp_path)) == 9


def test_broken_checkpoints_give_one_line_errors(tmp_path):
    fit(W.make_model(), W.make_loss(), W.make_data(), _cfg(steps=2), tmp_path)
    ck = latest_checkpoint(tmp_path)
    # wrong model: a wider MLP
    wide = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.GELU(), torch.nn.Dropout(0.1), torch.nn.Linear(64, 32),
                               torch.nn.GELU(), torch.nn.Linear(32, 1))
    with pytest.raises(CheckpointError) as e:
        fit(wide, W.make_loss(), W.make_data(), _cfg(steps=4, resume="auto"), tmp_path)
    assert "model.safetensors" in str(e.value) and "do not fit" in str(e.value) and "\n" not in str(e.value)
    # truncated weights file
    f = ck / "optimizer.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError) as e:
        fit(W.make_model(), W.make_loss(), W.make_data(), _cfg(steps=4, resume=str(ck)), tmp_path)
    assert str(f) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        fit(W.make_model(), W.make_loss(), W.make_data(), _cfg(steps=4, resume=str(tmp_path / "nope")), tmp_path)


def test_grad_accum_matches_full_batch_and_ema_is_final(tmp_path):
    s1 = fit(W.make_model(dropout=0.0), W.make_loss(), W.make_data(), _cfg(), tmp_path / "a")
    s4 = fit(W.make_model(dropout=0.0), W.make_loss(), W.make_data(), _cfg(grad_accum=4), tmp_path / "b")
    assert _losses(tmp_path / "a") == pytest.approx(_losses(tmp_path / "b"), rel=1e-5, abs=1e-6)
    assert s1.items == s4.items == 8 * 16
    fit(W.make_model(), W.make_loss(), W.make_data(), _cfg(ema=0.8), tmp_path / "e")
    ck = latest_checkpoint(tmp_path / "e")
    final = load_state_dict(tmp_path / "e" / "final" / "model.safetensors")
    ema, raw = load_state_dict(ck / "ema.safetensors"), load_state_dict(ck / "model.safetensors")
    assert all(torch.equal(final[k], ema[k]) for k in final)
    assert not all(torch.equal(final[k], raw[k]) for k in final)
    # summary, curve, config
    summ = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summ["steps"] == 8 and summ["peak_memory_mb"] > 0 and summ["items_per_s"] > 0
    assert (tmp_path / "e" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "train" in (tmp_path / "e" / "config.yaml").read_text()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_overfit_one_batch_loss_falls(tmp_path, precision):
    data = torch.utils.data.Subset(W.make_data(), range(16))
    cfg = _cfg(steps=60, lr=1e-2, warmup_steps=0, precision=precision)
    fit(W.make_model(dropout=0.0), W.make_loss(), data, cfg, tmp_path)
    losses = _losses(tmp_path)
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_flops_measured_match_closed_form_and_stop_budget(tmp_path):
    B = 16
    fwd = 2 * B * (8 * 32 + 32 * 32 + 32 * 1)
    bwd = 2 * fwd - 2 * B * 8 * 32  # no gradient w.r.t. the input of the first layer
    s = fit(W.make_model(), W.make_loss(), W.make_data(), _cfg(steps=20, max_flops=3.5 * (fwd + bwd)), tmp_path)
    assert s.stopped == "max_flops" and s.steps == 4
    recs = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["flops"] for r in recs] == [(fwd + bwd) * k for k in range(1, 5)]
    s2 = fit(W.make_model(), W.make_loss(), W.make_data(), _cfg(steps=3), tmp_path / "b", flops_per_sample=10.0)
    assert s2.flops == 3 * 16 * 10.0


def test_lr_schedule_warmup_then_cosine():
    f = lr_lambda(warmup=4, total=20, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and f(20) == pytest.approx(0.1) and f(12) == pytest.approx(0.55)


def test_sampler_shards_are_disjoint_and_match_one_process():
    n, B = 50, 12
    one = ShardedBatchSampler(n, B, seed=3)
    for epoch, step in [(0, 0), (0, 3), (2, 1)]:
        whole = one.step_indices(epoch, step)[0]
        parts = []
        for r in range(2):
            s = ShardedBatchSampler(n, B, grad_accum=3, rank=r, world_size=2, seed=3)
            micro = s.step_indices(epoch, step)
            assert len(micro) == 3 and all(len(m) == 2 for m in micro)
            parts += [i for m in micro for i in m]
        assert parts == whole and len(set(whole)) == B
    assert one.permutation(0) != one.permutation(1) and one.permutation(1) == ShardedBatchSampler(n, B, seed=3).permutation(1)
    # iterating from a saved position continues the same stream
    it = iter(one)
    stream = [next(it) for _ in range(2 * one.steps_per_epoch)]
    later = iter(ShardedBatchSampler(n, B, seed=3, position=DataPosition(1, 2)))
    assert next(later) == stream[one.steps_per_epoch + 2]
    with pytest.raises(DataError):
        ShardedBatchSampler(n, 10, grad_accum=3)


def test_hf_dataset_and_pretokenize_cache(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"x": W.make_data().tensors[0].tolist(), "y": W.make_data().tensors[1].tolist()})
    calls = []

    def square(batch):
        calls.append(len(batch["x"]))
        return {"x2": [[v * v for v in row] for row in batch["x"]]}

    a = pretokenize(ds, square, tmp_path / "cache", key={"fn": "square", "v": 1}, batch_size=32)
    n_calls = len(calls)
    b = pretokenize(ds, square, tmp_path / "cache", key={"fn": "square", "v": 1}, batch_size=32)
    assert len(calls) == n_calls and a["x2"][:3] == b["x2"][:3] and a["x2"][0][0] == ds["x"][0][0] ** 2
    pretokenize(ds, square, tmp_path / "cache", key={"fn": "square", "v": 2})
    assert len(calls) > n_calls and len(list((tmp_path / "cache").iterdir())) == 2
    n_calls = len(calls)
    pretokenize(ds, square, tmp_path / "cache2", batch_size=32)  # default key: data fingerprint + fn bytecode
    pretokenize(ds, square, tmp_path / "cache2", batch_size=32)
    assert len(list((tmp_path / "cache2").iterdir())) == 1 and len(calls) == n_calls + 3  # 96 rows / 32, once
    # the engine trains from an HF dataset directly
    ds.set_format("torch")

    def collate(rows):
        return torch.stack([r["x"] for r in rows]), torch.stack([r["y"] for r in rows])

    s = fit(W.make_model(), W.make_loss(), ds, _cfg(steps=3), tmp_path / "run", collate=collate)
    assert s.steps == 3 and math.isfinite(s.final_loss)


class _CheckpointedMLP(torch.nn.Module):
    """The duogen convention: `set_grad_checkpointing(True)` recomputes each block in backward."""

    def __init__(self):
        super().__init__()
        self.inner = W.make_model(dropout=0.2)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, on: bool) -> None:
        self.grad_checkpointing = on

    def forward(self, x):
        if self.grad_checkpointing:
            return torch.utils.checkpoint.checkpoint(self.inner, x, use_reentrant=False)
        return self.inner(x)


def test_grad_checkpointing_hook_same_losses(tmp_path):
    from duogen.errors import ConfigError

    plain, ckpt = _CheckpointedMLP(), _CheckpointedMLP()
    fit(plain, W.make_loss(), W.make_data(), _cfg(steps=4), tmp_path / "a")
    fit(ckpt, W.make_loss(), W.make_data(), _cfg(steps=4, grad_checkpointing=True), tmp_path / "b")
    assert ckpt.grad_checkpointing and not plain.grad_checkpointing
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")  # checkpoint() replays the dropout RNG
    with pytest.raises(ConfigError, match="set_grad_checkpointing"):
        fit(W.make_model(), W.make_loss(), W.make_data(), _cfg(steps=1, grad_checkpointing=True), tmp_path / "c")


@pytest.mark.slow
def test_compile_and_bf16_train(tmp_path):
    """torch.compile (about a minute cold here) and bf16 autocast still train: the loss falls."""
    data = torch.utils.data.Subset(W.make_data(), range(16))
    fit(W.make_model(dropout=0.0), W.make_loss(), data, _cfg(steps=40, lr=1e-2, precision="bf16", compile=True), tmp_path)
    losses = _losses(tmp_path)
    assert losses[-1] < losses[0] / 5


def test_compile_reaches_a_model_method_the_loss_calls(tmp_path, monkeypatch):
    """compile=True compiles the recipe's loss_fn, so a loss that calls `model.loss(batch)` (the AR
    recipe does) runs the model's layers inside the compiled graph; compiling only the module's
    __call__ left such a method eager. A recording dynamo backend stands in for inductor (fast)."""
    graph_ops: list[str] = []

    def record(gm, example_inputs):
        graph_ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_module" or n.op == "call_function")
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend=record))

    class WithLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = W.make_model(dropout=0.0)

        def loss(self, batch):
            x, y = batch
            return ((self.net(x).squeeze(-1) - y) ** 2).mean()

    def loss_fn(m, batch):
        return LossOutput(m.loss(batch), len(batch[0]), {})

    torch._dynamo.reset()
    fit(WithLoss(), loss_fn, W.make_data(), _cfg(steps=3, compile=True), tmp_path)
    assert any("linear" in op for op in graph_ops), graph_ops
    assert len(_losses(tmp_path)) == 3


def test_on_eval_runs_every_n_steps_with_eval_weights(tmp_path):
    seen = []

    def on_eval(model, step):
        seen.append((step, model.training))
        with torch.no_grad():
            return {"probe": float(model(W.probe_input()).mean())}

    s = fit(W.make_model(), W.make_loss(), W.make_data(), _cfg(steps=5, eval_every=2), tmp_path, on_eval=on_eval)
    assert seen == [(2, False), (4, False), (5, False)]
    recs = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "eval/probe" in r] == [2, 4, 5]
    assert s.extra["eval/probe"] == recs[-1]["eval/probe"]


def test_loader_workers_give_the_same_batches(tmp_path):
    fit(W.make_model(), W.make_loss(), W.make_data(), _cfg(steps=4), tmp_path / "a")
    fit(W.make_model(), W.make_loss(), W.make_data(), _cfg(steps=4, num_workers=1), tmp_path / "b")
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")


def test_time_budget_schedule_follows_a_change_in_step_time(tmp_path):
    """With max_minutes, the horizon is re-estimated from the recent step rate: steps that become 6x slower
    after the first estimate (a machine that gets busy) still end the cosine decay with the budget. A horizon
    fixed at the fast rate would stop the run with the LR near its peak."""
    calls = {"n": 0}
    inner = W.make_loss()

    def loss_fn(model, batch):
        calls["n"] += 1
        time.sleep(0.005 if calls["n"] <= 20 else 0.03)
        return inner(model, batch)

    cfg = _cfg(steps=100000, warmup_steps=2, min_lr_ratio=0.1, log_every=1, max_minutes=0.05)
    s = fit(W.make_model(), loss_fn, W.make_data(), cfg, tmp_path)
    assert s.stopped == "max_minutes" and s.steps > 40
    lrs = [json.loads(ln)["lr"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lrs[-1] < 0.3 * cfg.lr  # the decay reached (near) its floor by the end of the budget
    assert max(lrs[20:]) > 0.5 * cfg.lr  # and did not get there right after the first estimate


def test_budget_schedule_ends_the_decay_with_the_budget(tmp_path):
    """With max_flops, the cosine horizon is the budget's step count, not `steps`."""
    fps = 10.0
    cfg = _cfg(steps=1000, warmup_steps=2, min_lr_ratio=0.1, log_every=1, max_flops=16 * fps * 8)
    s = fit(W.make_model(), W.make_loss(), W.make_data(), cfg, tmp_path / "a", flops_per_sample=fps)
    assert s.stopped == "max_flops" and s.steps == 8
    lrs = [json.loads(ln)["lr"] for ln in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    f = lr_lambda(warmup=2, total=8, min_ratio=0.1)
    assert lrs == pytest.approx([cfg.lr * f(i) for i in range(8)])
    state = json.loads((tmp_path / "a" / "checkpoints" / "step_0000008" / "trainer_state.json").read_text())
    assert state["horizon"] == 8
    cfg_off = _cfg(steps=1000, warmup_steps=2, min_lr_ratio=0.1, log_every=1, max_flops=16 * fps * 8,
                   budget_schedule=False)
    fit(W.make_model(), W.make_loss(), W.make_data(), cfg_off, tmp_path / "b", flops_per_sample=fps)
    lrs_off = [json.loads(ln)["lr"] for ln in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert lrs_off[-1] > 0.99 * cfg.lr and lrs[-1] < 0.2 * cfg.lr


def test_progress_bar_total_is_the_expected_last_step_under_a_budget(tmp_path, monkeypatch):
    """Under a time or FLOP budget the bar counts toward where the run will stop, not toward `steps`."""
    import duogen.utils

    bars = []
    real = duogen.utils.progress

    def recording(*args, **kwargs):
        bars.append(real(*args, **{**kwargs, "disable": True}))
        return bars[-1]

    monkeypatch.setattr(duogen.utils, "progress", recording)
    fps = 10.0
    fit(W.make_model(), W.make_loss(), W.make_data(), _cfg(steps=1000, max_flops=16 * fps * 8), tmp_path / "f",
        flops_per_sample=fps)
    assert bars[-1].total == 8

    def slow_loss(model, batch, inner=W.make_loss()):
        time.sleep(0.01)
        return inner(model, batch)

    s = fit(W.make_model(), slow_loss, W.make_data(), _cfg(steps=100000, max_minutes=0.02, budget_schedule=False),
            tmp_path / "t")
    assert s.stopped == "max_minutes"
    assert s.steps / 2 < bars[-1].total < 2 * s.steps  # an estimate of the stop, far below steps=100000


def test_ema_warms_up_so_a_short_run_does_not_keep_its_initialisation():
    from duogen.train.engine import EMA

    lin = torch.nn.Linear(3, 2)
    init = [p.detach().clone() for p in lin.parameters()]
    ema = EMA(lin, 0.995)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(90) == pytest.approx(0.91)
    assert ema.decay_at(1790) == pytest.approx(0.995) and ema.decay_at(10**6) == 0.995
    with torch.no_grad():
        for p in lin.parameters():
            p.add_(1.0)
    ema.update(lin, 0)  # first update: 10% initialisation, 90% the new weights
    for s, p0 in zip(ema.shadow, init):
        assert torch.allclose(s, p0 + 0.9, atol=1e-6)
    for n in range(1, 278):
        ema.update(lin, n)
    # after 278 steps the initialisation keeps prod(d_n) < 1e-15 of the weight, not 0.995**278 = 25%
    for s, p0 in zip(ema.shadow, init):
        assert torch.allclose(s, p0 + 1.0, atol=1e-5)


def test_column_array_reads_a_nested_column_in_bulk_as_the_rows_read(tmp_path):
    import datasets
    import numpy as np

    from duogen.train.data import column_array

    g = np.random.default_rng(0)
    ids, lat = g.integers(0, 1000, (6, 3, 2, 2)).astype(np.int32), g.standard_normal((6, 4, 3, 2, 2)).astype(np.float32)
    datasets.Dataset.from_dict({"video_ids": ids.tolist(), "latents": lat.tolist(),
                                "ragged": [[1, 2], [3], [4, 5, 6], [7], [8, 9], [0]]}).save_to_disk(str(tmp_path / "d"))
    ds = datasets.load_from_disk(str(tmp_path / "d")).with_format("numpy")  # as the recipes' caches are read
    got = column_array(ds, "video_ids", np.int64)
    assert got.dtype == np.int64 and got.shape == (6, 3, 2, 2) and (got == ids).all()
    assert np.array_equal(column_array(ds, "latents", np.float32), lat)
    # stored as float32 (as the caches are) and read as float32: its own memory, not a read-only view of Arrow's,
    # so torch.from_numpy takes it without a warning
    f32 = datasets.Dataset.from_dict({"latents": list(lat)})
    got = column_array(f32, "latents", np.float32)
    assert np.array_equal(got, lat) and got.flags.writeable
    sub = ds.select([4, 0, 2])  # an indices mapping: the data set's order, not the file's
    assert np.array_equal(column_array(sub, "latents", np.float32), lat[[4, 0, 2]])
    flat = column_array(ds, "ragged", object)  # unequal rows: read row by row, as before
    assert [list(r) for r in flat] == [[1, 2], [3], [4, 5, 6], [7], [8, 9], [0]]
    assert np.array_equal(column_array({"video_ids": ids}, "video_ids", np.int64), ids)  # not a data set
