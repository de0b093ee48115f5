"""The three ways the engine runs a model: one process, torchrun DDP, DeepSpeed ZeRO 1/2/3.

A backend owns process-group setup, wrapping the model, the optimizer and LR
schedule, backward with gradient accumulation, the optimizer step (with
clipping), collectives the loop needs, and saving/loading model + optimizer +
scheduler state. The training loop in `engine.py` is the same for all three.

Processes: `ddp` and `deepspeed` read RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT from the environment torchrun sets; `check_launch`
turns a launch mistake (no torchrun, several processes with engine=single, a
global batch the processes do not divide) into one ConfigError line. The
process group uses gloo on CPU and nccl on GPU.

A recipe's `loss_fn(model, batch)` may call any model method (`model.loss(batch)`):
under DDP and DeepSpeed it runs inside the wrapper's `forward` (`_through_forward`),
where DDP prepares its gradient all-reduce and ZeRO-3 gathers parameters.

DeepSpeed on a CPU machine: `DS_ACCELERATOR=cpu` is set before it is imported,
its `deepspeed_shm_comm` op (a 35-60 s JIT build on first use) is switched off by
pre-seeding `deepspeed.ops.__compatible_ops__` (the only switch DeepSpeed reads
before building it), and the optimizer is DeepSpeed's "AdamW" with
`torch_adam: true`, i.e. `torch.optim.AdamW`, so no fused Adam is compiled.
bf16 is torch autocast around the forward pass in every backend (fp32 master
weights), not DeepSpeed's bf16 mode, so the numerics match the other backends.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import ConfigError


def lr_lambda(warmup: int, total: "int | Callable[[], int]", min_ratio: float):
    """Linear warmup for `warmup` steps, then cosine decay to `min_ratio` at `total` steps.

    `total` may be a callable read at every step: the engine shortens the horizon to the
    steps a time or FLOPs budget allows, so the decay ends when the budget does.
    """

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        horizon = total() if callable(total) else total
        progress = min(1.0, (step - warmup) / max(1, horizon - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: matrices (ndim >= 2) decay, biases / norms / scalars do not."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _through_forward(wrapper: Any, module: Any, loss_fn: Callable[[Any, Any], Any], batch: Any) -> Any:
    """`loss_fn(module, batch)` run inside `wrapper(batch)`, so that DDP's and DeepSpeed's forward hooks see it.

    DDP prepares its gradient all-reduce, and ZeRO-3 gathers the root module's parameters, only in the
    wrapper's `forward`; a recipe's loss that calls a model method (`model.loss(batch)`) would bypass
    both. For the length of one call the module's `forward` is the recipe's loss (restored before the
    loss runs, so a loss that calls `model(...)` itself gets the real forward).
    """

    def forward(b: Any) -> Any:
        del module.forward  # the class's forward again, for loss_fn's own model(...) calls
        return loss_fn(module, b)

    module.forward = forward
    try:
        return wrapper(batch)
    finally:
        vars(module).pop("forward", None)


class RankLaunchError(ConfigError):
    """A launch mistake of some ranks only (too few GPUs for the local rank): each rank that has it says so."""


_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
LAUNCH_HINT = "torchrun --nproc_per_node N -m duogen train ..."


def launched_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number; launch with `{LAUNCH_HINT}`") from None


def check_launch(cfg: Any) -> int:
    """The launch mistakes a user can make, as one-line ConfigErrors before any work; returns the world size.

    `cfg` is a TrainConfig (or any object with engine, batch_size, grad_accum). A recipe calls this
    first so that a wrong launch fails before its data preparation; `make_backend` calls it again.
    """
    world = launched_world_size()
    engine = cfg.engine
    if engine in ("ddp", "deepspeed"):
        missing = [v for v in _LAUNCH_VARS if v not in os.environ]
        if missing:
            raise ConfigError(f"train.engine={engine} needs torchrun's environment ({', '.join(missing)} not set):"
                              f" launch with `{LAUNCH_HINT} train.engine={engine}`, or use train.engine=single")
        import torch

        if torch.cuda.is_available() and int(os.environ["LOCAL_RANK"]) >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise RankLaunchError(f"LOCAL_RANK={os.environ['LOCAL_RANK']} but this machine has {n} GPU(s): start at most"
                              f" one process per GPU (torchrun --nproc_per_node {n})")
        if engine == "deepspeed":
            import importlib.util

            if importlib.util.find_spec("deepspeed") is None:
                raise ConfigError("train.engine=deepspeed needs the deepspeed package: `pip install deepspeed`,"
                                  " or use train.engine=ddp")
            if getattr(cfg, "compile", False):
                raise ConfigError("train.compile=true is not supported with train.engine=deepspeed; use train.engine=ddp")
            if getattr(cfg, "ema", 0.0) > 0 and cfg.zero_stage == 3:
                raise ConfigError("train.ema>0 needs the full parameters on every rank: add train.ema=0, or use"
                                  " train.zero_stage=2 or train.engine=ddp")
    elif world > 1:
        raise ConfigError(f"{world} processes were launched but train.engine={engine}: each would train alone"
                          " into the same run directory; add train.engine=ddp or train.engine=deepspeed")
    per_step = getattr(cfg, "grad_accum", 1) * world
    if cfg.batch_size % per_step:
        raise ConfigError(f"train.batch_size={cfg.batch_size} is the global batch and must be a multiple of"
                          f" grad_accum x processes = {getattr(cfg, 'grad_accum', 1)} x {world}; e.g."
                          f" train.batch_size={max(1, round(cfg.batch_size / per_step)) * per_step}")
    return world


def _init_process_group(device: str) -> tuple[int, int, int]:
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"])


@contextlib.contextmanager
def rank_zero_first() -> Iterator[bool]:
    """Under torchrun, rank 0 runs the block before the other ranks (which then find its caches and files).

    For a recipe's one-off preparation that writes shared files (a text tokenizer, an encode cache):
    rank 0 writes them, every other rank waits and then reads them. Yields True on rank 0 (and in a
    single process). With several machines the files must be on a shared filesystem, or each machine's
    ranks make their own copy.
    """
    if launched_world_size() <= 1:
        yield True
        return
    import torch
    import torch.distributed as dist

    _init_process_group("cuda" if torch.cuda.is_available() else "cpu")
    if dist.get_rank() != 0:
        dist.barrier()
    yield dist.get_rank() == 0
    if dist.get_rank() == 0:
        dist.barrier()


class SingleBackend:
    """One process: plain module, torch AdamW, LambdaLR."""

    rank, world_size, local_rank = 0, 1, 0
    horizon = 0  # steps over which the LR decays; set by `fit` before `setup`

    def __init__(self, cfg: Any):
        import torch

        self.cfg = cfg
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda":
            torch.cuda.set_device(self.local_rank)
            self.device = f"cuda:{self.local_rank}"

    # -- setup
    def setup(self, model: Any) -> None:
        import torch

        cfg = self.cfg
        self.module = model.to(self.device)
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.warmup_steps, lambda: self.horizon or cfg.steps, cfg.min_lr_ratio)
        )
        self.forward_model = model  # `fit` compiles the recipe's loss function, model calls included
        self._wrap()

    def _wrap(self) -> None:
        pass

    # -- one micro-step
    def loss(self, loss_fn: Callable[[Any, Any], Any], batch: Any) -> Any:
        """`loss_fn(model, batch)`, through the wrapper's `forward` when there is one (see `_through_forward`)."""
        if self.forward_model is self.module:
            return loss_fn(self.module, batch)
        return _through_forward(self.forward_model, self.module, loss_fn, batch)

    def accumulating(self, last_micro: bool) -> Any:
        """Context around one micro-step's forward and backward; DDP skips the all-reduce inside it."""
        return contextlib.nullcontext()

    # -- one optimizer step
    def backward(self, loss: Any, last_micro: bool) -> None:
        (loss / self.cfg.grad_accum).backward()

    def grad_norm_and_clip(self) -> float:
        import torch

        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        return float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), max_norm))

    def step(self) -> None:
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # -- collectives (no-ops in one process)
    def all_reduce_sum(self, t: Any) -> Any:
        return t

    def barrier(self) -> None:
        pass

    @contextlib.contextmanager
    def full_params(self) -> Iterator[Any]:
        """The module with all its parameters present (ZeRO-3 gathers them)."""
        yield self.module

    # -- state
    def save(self, directory: Path) -> None:
        from ..io import save_state_dict
        from .checkpoint import save_optimizer, save_scheduler, trained_state_dict

        if self.rank == 0:
            save_state_dict(trained_state_dict(self.module), directory / "model.safetensors")
            save_optimizer(self.optimizer, directory)
            save_scheduler(self.scheduler, directory)

    def load(self, directory: Path) -> None:
        from ..io import load_state_dict
        from .checkpoint import load_optimizer, load_scheduler, load_trained_state

        load_trained_state(self.module, load_state_dict(directory / "model.safetensors"), directory / "model.safetensors")
        load_optimizer(self.optimizer, directory)
        load_scheduler(self.scheduler, directory)

    def close(self) -> None:
        pass


class DDPBackend(SingleBackend):
    """torchrun + DistributedDataParallel; every rank holds the full model and optimizer."""

    def __init__(self, cfg: Any):
        import torch

        self.cfg = cfg
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.rank, self.world_size, self.local_rank = _init_process_group(device)
        self.device = f"cuda:{self.local_rank}" if device == "cuda" else "cpu"
        if device == "cuda":
            torch.cuda.set_device(self.local_rank)

    def _wrap(self) -> None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.local_rank] if self.device.startswith("cuda") else None
        self.forward_model = DDP(self.forward_model, device_ids=ids)

    def accumulating(self, last_micro: bool) -> Any:
        # skip the gradient all-reduce on all but the last accumulation micro-step; DDP reads the flag in
        # its forward, so the context spans forward and backward
        return contextlib.nullcontext() if last_micro else self.forward_model.no_sync()

    def all_reduce_sum(self, t: Any) -> Any:
        import torch.distributed as dist

        dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()


def _import_deepspeed() -> Any:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import logging

    import deepspeed
    import deepspeed.ops

    # never JIT-build the shared-memory allreduce op (35-60 s): gloo is enough here
    vars(deepspeed.ops).setdefault("__compatible_ops__", {})["deepspeed_shm_comm"] = False
    deepspeed.utils.logger.setLevel(logging.WARNING)
    return deepspeed


class DeepSpeedBackend(DDPBackend):
    """`deepspeed.initialize` with ZeRO stage `cfg.zero_stage`; DeepSpeed does accumulation and clipping."""

    def setup(self, model: Any) -> None:
        import torch

        deepspeed = _import_deepspeed()
        import deepspeed.comm

        deepspeed.comm.init_distributed(dist_backend="nccl" if self.device.startswith("cuda") else "gloo")
        cfg = self.cfg
        micro = cfg.batch_size // (cfg.grad_accum * self.world_size)
        ds_config = {
            "train_batch_size": cfg.batch_size,
            "train_micro_batch_size_per_gpu": micro,
            "gradient_accumulation_steps": cfg.grad_accum,
            "gradient_clipping": cfg.grad_clip,
            "zero_optimization": {"stage": cfg.zero_stage},
            "optimizer": {
                "type": "AdamW",
                "params": {"lr": cfg.lr, "betas": list(cfg.betas), "eps": 1e-8, "weight_decay": cfg.weight_decay,
                           "torch_adam": True, "adam_w_mode": True},
            },
            "steps_per_print": 2**31 - 1,
            "wall_clock_breakdown": False,
        }
        f = lr_lambda(cfg.warmup_steps, lambda: self.horizon or cfg.steps, cfg.min_lr_ratio)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model.to(self.device),
            model_parameters=param_groups(model, cfg.weight_decay),
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, f),
            config=ds_config,
        )
        self.module = self.engine.module
        self.forward_model = self.engine

    def accumulating(self, last_micro: bool) -> Any:
        return contextlib.nullcontext()  # DeepSpeed reduces gradients at its own accumulation boundary

    def backward(self, loss: Any, last_micro: bool) -> None:
        self.engine.backward(loss)  # DeepSpeed divides by gradient_accumulation_steps
        if not last_micro:
            self.engine.step()  # not a boundary: only advances DeepSpeed's micro-step counter

    def grad_norm_and_clip(self) -> float:
        return float("nan")  # known only after DeepSpeed's step; see step()

    def step(self) -> None:
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        self.last_grad_norm = float(norm) if norm is not None else float("nan")

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    @contextlib.contextmanager
    def full_params(self) -> Iterator[Any]:
        if self.cfg.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
                yield self.module
        else:
            yield self.module

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory / "deepspeed"), tag="state", save_latest=False)

    def load(self, directory: Path) -> None:
        from ..errors import CheckpointError

        ds_dir = directory / "deepspeed"
        if not ds_dir.is_dir():
            raise CheckpointError(f"{ds_dir}: missing (this checkpoint was not written by engine=deepspeed)")
        import pickle

        from ..guards import trusted_checkpoints
        from .checkpoint import UNTRUSTED, weights_only_deepspeed_loads

        try:  # no unpickling beyond tensors and DeepSpeed's state classes unless --trust-checkpoint (issue #18)
            with weights_only_deepspeed_loads(trusted_checkpoints()):
                path, _ = self.engine.load_checkpoint(str(ds_dir), tag="state", load_optimizer_states=True,
                                                      load_lr_scheduler_states=True)
        except pickle.UnpicklingError:
            raise CheckpointError(f"{ds_dir}: {UNTRUSTED}") from None
        except Exception as e:
            raise CheckpointError(f"{ds_dir}: cannot load DeepSpeed checkpoint ({type(e).__name__}: {e})") from None
        if path is None:
            raise CheckpointError(f"{ds_dir}: DeepSpeed found no checkpoint with tag 'state'")

    def close(self) -> None:
        self.engine.destroy() if hasattr(self.engine, "destroy") else None


def make_backend(cfg: Any) -> SingleBackend:
    check_launch(cfg)
    return {"single": SingleBackend, "ddp": DDPBackend, "deepspeed": DeepSpeedBackend}[cfg.engine](cfg)
