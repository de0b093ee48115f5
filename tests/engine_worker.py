"""A tiny training run driven by the engine tests in a subprocess (plain python or torchrun).

    python tests/engine_worker.py RUN_DIR [--engine single|ddp|deepspeed] [--zero-stages 1,2,3] ...

The model is a small MLP with optional dropout on a fixed regression set, so that
dropout RNG, data shuffling and optimizer state all matter for exact resume.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from duogen.train.engine import LossOutput, TrainConfig, fit


@pytest.fixture(autouse=True)
def one_thread():
    """Tests importing this run on one intra-op thread, like the workers (OMP_NUM_THREADS=1): the models
    are tiny, extra threads only spin on a shared 2-core machine, and float results compare bitwise."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_data(n: int = 96, d: int = 8) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n, d, generator=g)
    y = torch.sin(x @ torch.randn(d, 1, generator=g)).squeeze(-1)  # (n,)
    return torch.utils.data.TensorDataset(x, y)


class MLP(nn.Sequential):
    """The MLP with a `loss` method, as the duogen models have (`MultimodalLM.loss`): a recipe's loss_fn that
    calls it, not `forward`, must still synchronise gradients under DDP."""

    def loss(self, batch) -> torch.Tensor:
        x, y = batch
        return ((self(x).squeeze(-1) - y) ** 2).mean()


def make_model(seed: int = 0, dropout: float = 0.1) -> nn.Module:
    torch.manual_seed(seed)
    return MLP(nn.Linear(8, 32), nn.GELU(), nn.Dropout(dropout), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 1))


def make_loss(sleep: float = 0.0, nan_at: int = 0, method: bool = False):
    calls = {"n": 0}

    def loss_fn(model: nn.Module, batch) -> LossOutput:
        x, y = batch
        calls["n"] += 1
        if sleep:
            time.sleep(sleep)
        loss = model.loss(batch) if method else ((model(x).squeeze(-1) - y) ** 2).mean()
        if nan_at and calls["n"] >= nan_at:
            loss = loss * float("nan")
        return LossOutput(loss, len(x), {"mse": float(loss.detach())})

    return loss_fn


def probe_input() -> torch.Tensor:
    return torch.linspace(-2, 2, 5 * 8).reshape(5, 8)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--engine", default="single")
    p.add_argument("--zero-stages", default="2")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--ckpt-every", type=int, default=0)
    p.add_argument("--keep-last", type=int, default=0)
    p.add_argument("--resume", default="no")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--nan-at", type=int, default=0)
    p.add_argument("--ema", type=float, default=0.0)
    p.add_argument("--loss-method", action="store_true", help="loss_fn calls model.loss(batch), not model(x)")
    p.add_argument("--crash-at", type=int, default=0, help="raise after the checkpoint of this step (simulated crash)")
    a = p.parse_args(argv)
    stages = [int(s) for s in a.zero_stages.split(",")] if a.engine == "deepspeed" else [None]
    for stage in stages:
        run_dir = Path(a.run_dir) / f"zero{stage}" if stage is not None else Path(a.run_dir)
        cfg = TrainConfig(
            steps=a.steps, batch_size=a.batch_size, grad_accum=a.grad_accum, lr=3e-3, weight_decay=0.01,
            warmup_steps=2, grad_clip=1.0, engine=a.engine, zero_stage=stage or 0, ckpt_every=a.ckpt_every,
            keep_last=a.keep_last, log_every=1, resume=a.resume, ema=a.ema, seed=0, eval_every=a.crash_at, precision="fp32",
        )

        def crash(model: nn.Module, step: int) -> None:
            if step == a.crash_at:
                raise SystemExit(3)

        model = make_model(0, a.dropout)
        summary = fit(model, make_loss(a.sleep, a.nan_at, a.loss_method), make_data(), cfg, run_dir,
                      run_config={"model": {"kind": "mlp", "dropout": a.dropout}}, on_eval=crash if a.crash_at else None)
        if stage is not None:
            # outputs of the trained DeepSpeed model itself, for the conversion test
            import deepspeed
            import torch.distributed as dist

            # `model` is the engine's module; under ZeRO-3 its parameters must be gathered first
            ctx = (deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
                   if stage == 3 else torch.no_grad())
            with ctx, torch.no_grad():
                out = model.eval()(probe_input())
            if dist.get_rank() == 0:
                from duogen.io import save_state_dict

                save_state_dict({"out": out}, run_dir / "probe_outputs.safetensors")
        if _rank() == 0:
            print(json.dumps({"stage": stage, "final_loss": summary.final_loss, "steps": summary.steps}), flush=True)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


if __name__ == "__main__":
    main(sys.argv[1:])
    import torch.distributed as dist

    if dist.is_initialized():
        # Tear the group down before interpreter exit: a gloo thread still running at exit
        # aborts the process ("terminate called without an active exception") now and then.
        dist.barrier()
        dist.destroy_process_group()
