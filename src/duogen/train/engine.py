"""The training engine: one loop for every duogen model, on any backend, with exact resume.

    summary = fit(model, loss_fn, train_data, TrainConfig(steps=1000), run_dir, save_model=...)

`loss_fn(model, batch) -> LossOutput(loss, n_items, metrics)` is the only thing a
recipe writes; `n_items` (samples, tokens, ...) drives the throughput figure. It may
call any model method (`model.loss(batch)`): under DDP and DeepSpeed the backend runs
it inside the wrapper's forward, so gradients sync and ZeRO-3 gathers for every recipe.
The engine owns: backends (`backends.py`: single / torchrun DDP / DeepSpeed ZeRO),
precision (`auto` | fp32 | bf16 autocast: `duogen.precision`), gradient accumulation and clipping, AdamW with warmup + cosine,
EMA, torch.compile (of `loss_fn`, so a recipe that calls a model method such as
`model.loss(batch)` is compiled too, not only `model.__call__`), gradient checkpointing, the rank-sharded data order
(`data.py`), checkpoints (`checkpoint.py`), SIGINT/SIGTERM handling, time and
FLOP budgets, metrics.jsonl, summary.json, loss.png and `final/`.

Run directory:
    config.yaml, metrics.jsonl, summary.json, loss.png, checkpoints/step_NNNNNNN/, final/

Conventions a model can opt into:
- gradient checkpointing: `cfg.grad_checkpointing=True` calls
  `model.gradient_checkpointing_enable()` (transformers models) or
  `model.set_grad_checkpointing(True)` (duogen's own models); a model with
  neither is a ConfigError.
- `final/` is written by `save_model(model, path)`; with EMA on, the model holds
  the EMA weights during that call (and its training weights again afterwards).
- `on_eval(model, step) -> dict | None` runs on every rank (ZeRO-3 gathers
  parameters around it) every `eval_every` steps and at the end; the dict from
  rank 0 goes into metrics.jsonl as `eval/<key>`.

The random generators (python, numpy, torch, CUDA) are seeded with `seed + rank`
at the start of `fit`; the model must already be built (its init is the caller's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, NamedTuple

from ..errors import ConfigError, TrainingError
from ..precision import check_precision

__all__ = ["TrainConfig", "LossOutput", "TrainSummary", "fit", "apply_resume", "add_resume_argument"]

# With a time budget the LR horizon is estimated from the step rate: first after this many timed steps
# (a session's first step, which pays for warm-up, is not timed), then again every this many steps from
# the rate over the last `_HORIZON_WINDOW` estimates, so the decay still ends with the budget when the
# machine's load (and so the step time) changes during the run.
_HORIZON_TIMING_STEPS = 10
_HORIZON_WINDOW = 5


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32  # global: per optimizer step, over all processes and accumulation steps
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # 0 = off
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 where the device runs it fast (duogen.precision)
    ema: float = 0.0  # EMA decay (reached after a warm-up, see EMA); 0 = off
    compile: bool = False
    grad_checkpointing: bool = False
    engine: Literal["single", "ddp", "deepspeed"] = "single"
    zero_stage: int = 2
    ckpt_every: int = 0  # 0 = only at the end
    keep_last: int = 2  # 0 = keep all
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end (when on_eval is given)
    seed: int = 0
    resume: str = "no"  # "no" | "auto" | path to a checkpoint or run directory
    max_minutes: float = 0.0  # 0 = no limit
    max_flops: float = 0.0  # 0 = no limit
    # With a max_minutes / max_flops budget, end the cosine decay where the budget ends rather
    # than at `steps` (a time budget re-estimates the horizon from the recent step rate every few
    # steps; the horizon is kept in the checkpoint).
    budget_schedule: bool = True
    num_workers: int = 0
    # Comma-separated globs over parameter names (`*.q_proj.*,*.v_proj.*`): only those train; the optimizer,
    # EMA and checkpoints hold only them. "" = every parameter (checkpoint.select_trainable).
    trainable: str = ""

    def check(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("steps, batch_size and grad_accum must be >= 1")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema is a decay in [0, 1) (0 = off), got {self.ema}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.log_every < 1:
            raise ConfigError("log_every must be >= 1")
        check_precision(self.precision, "train.precision")


class LossOutput(NamedTuple):
    loss: Any  # scalar Tensor, mean over the micro-batch
    n_items: int  # samples or tokens in the micro-batch (throughput unit)
    metrics: dict[str, float] = {}


@dataclass
class TrainSummary:
    steps: int
    wall_s: float  # this session's wall time
    items: int  # items processed this session, all ranks
    items_per_s: float
    flops: float  # cumulative over the whole run (resumes included)
    peak_memory_mb: float
    final_loss: float
    stopped: str  # "steps" | "max_minutes" | "max_flops" | "signal"
    run_dir: str
    checkpoint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # the last on_eval results, as "eval/<key>"
    precision: str = ""  # what the run trained in ("fp32" | "bf16"; `auto` resolved) and why: config.yaml


def apply_resume(cfg: TrainConfig, resume: str | None) -> TrainConfig:
    """Merge a CLI `--resume` value (None = not given) into a TrainConfig."""
    return cfg if resume is None else dataclasses.replace(cfg, resume=resume)


def add_resume_argument(parser: Any) -> None:
    parser.add_argument(
        "--resume", nargs="?", const="auto", default=None,
        help="continue from a checkpoint: no value or 'auto' = the run's latest; or a checkpoint/run path",
    )


# ----------------------------------------------------------------------------- helpers


def _to_device(batch: Any, device: str) -> Any:
    import torch

    if device == "cpu":
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _enable_grad_checkpointing(model: Any) -> None:
    if hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    elif hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
    else:
        raise ConfigError(
            f"grad_checkpointing=true but {type(model).__name__} has neither gradient_checkpointing_enable() "
            "nor set_grad_checkpointing(bool)"
        )


class EMA:
    """Exponential moving average of the parameters: ema <- d_n * ema + (1 - d_n) * p at update n (0-based).

    d_n = min(decay, (1 + n) / (10 + n)): the average forgets the random initialisation within the first
    steps and averages over roughly the last tenth of a short run, reaching `decay` after (10 decay - 1) /
    (1 - decay) updates (1,790 for 0.995); the warm-up of TensorFlow's `ExponentialMovingAverage(num_updates=...)`.
    A fixed decay from step 0 would leave decay**n of the initialisation in the weights (0.995**278 = 25% after
    a 278-step run).
    """

    def __init__(self, module: Any, decay: float):
        self.decay = decay
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        self.shadow = [p.detach().float().clone() for n, p in module.named_parameters() if p.requires_grad]

    def decay_at(self, n: int) -> float:
        return min(self.decay, (1.0 + n) / (10.0 + n))

    def update(self, module: Any, n: int) -> None:
        """Fold in the parameters after optimizer step n + 1 (n updates came before: the run's step count)."""
        import torch

        params = [p.detach().float() for _, p in module.named_parameters() if p.requires_grad]
        torch._foreach_lerp_(self.shadow, params, 1.0 - self.decay_at(n))

    def state_dict(self, module: Any) -> dict[str, Any]:
        """The module's full state dict with parameters replaced by their averages (only the averages when
        some parameters are frozen: `train.trainable`)."""
        if len(self.names) < sum(1 for _ in module.parameters()):
            return dict(zip(self.names, self.shadow))
        sd = dict(module.state_dict())
        sd.update(dict(zip(self.names, self.shadow)))
        return sd

    def load(self, state: dict[str, Any], source: Path) -> None:
        from ..errors import CheckpointError

        try:
            self.shadow = [state[n].float().clone() for n in self.names]
        except KeyError as e:
            raise CheckpointError(f"{source}: EMA weights do not fit this model (missing {e})") from None

    def swap_into(self, module: Any) -> list[Any]:
        """Copy the averages into the module; returns the training weights to put back."""
        params = [p for _, p in module.named_parameters() if p.requires_grad]
        saved = [p.detach().clone() for p in params]
        for p, s in zip(params, self.shadow):
            p.data.copy_(s)
        return saved

    @staticmethod
    def restore(module: Any, saved: list[Any]) -> None:
        for p, s in zip([p for _, p in module.named_parameters() if p.requires_grad], saved):
            p.data.copy_(s)

    @contextlib.contextmanager
    def applied(self, module: Any) -> Iterator[Any]:
        """The module with the averages in it for the block (an evaluation); the training weights come back after."""
        saved = self.swap_into(module)
        try:
            yield module
        finally:
            EMA.restore(module, saved)


def _measure_flops(module: Any, loss_fn: Callable, batch: Any, precision: str, backward: bool) -> float:
    """FLOPs of one micro-batch (forward + backward) with torch's FlopCounterMode; side-effect free.

    Without `backward` (ZeRO-partitioned gradients), backward is counted as 2x forward.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..utils import autocast

    buffers = {n: b.clone() for n, b in module.named_buffers()}
    with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
        if backward:
            with autocast(precision):
                out = loss_fn(module, batch)
            out.loss.backward()
        else:
            with torch.no_grad(), autocast(precision):
                loss_fn(module, batch)
    for p in module.parameters():
        p.grad = None
    with torch.no_grad():
        for n, b in module.named_buffers():
            b.copy_(buffers[n])
    total = float(counter.get_total_flops())
    return total if backward else 3.0 * total


def _fetch(dataset: Any, indices: list[int], collate: Callable | None) -> Any:
    from torch.utils.data import default_collate

    items = dataset.__getitems__(indices) if hasattr(dataset, "__getitems__") else [dataset[i] for i in indices]
    return (collate or default_collate)(items)


def _peak_memory_mb(device: str) -> float:
    import resource

    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class _StopFlag:
    """SIGINT / SIGTERM set a flag; the loop saves a checkpoint at the end of the step and returns."""

    def __init__(self) -> None:
        self.raised = False
        self.old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                self.old[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self.old = {}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised:  # a second Ctrl-C means "now"
            raise KeyboardInterrupt
        self.raised = True

    def __exit__(self, *exc: Any) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)


def plot_loss(metrics_path: Path, out: Path) -> None:
    """loss.png from metrics.jsonl (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
    recs = [r for r in recs if "loss" in r]
    if not recs:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in recs], [r["loss"] for r in recs])
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log" if all(r["loss"] > 0 for r in recs) else "linear")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out.with_name(".loss.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)


def resolve_backend_precision(requested: str, backend: Any) -> Any:
    """`requested` (auto | fp32 | bf16) -> the `PrecisionChoice` for the backend's device (duogen.precision),
    announced by rank 0 as the run's first line; on several CPU processes `auto` picks bf16 only when every
    rank measured it fast, so all ranks agree."""
    import torch

    from ..precision import PrecisionChoice, announce, resolve_precision

    choice = resolve_precision(requested, backend.device)
    if requested == "auto" and backend.world_size > 1 and backend.device == "cpu":
        votes = backend.all_reduce_sum(torch.tensor([float(choice.precision == "bf16")], dtype=torch.float64))
        if choice.precision == "bf16" and votes.item() < backend.world_size:
            choice = PrecisionChoice("fp32", f"{choice.reason}; fp32: another rank measured bf16 slow", choice.ratio)
    if backend.rank == 0:
        announce(choice)
    return choice


def _resolve_precision(cfg: TrainConfig, backend: Any) -> tuple[TrainConfig, Any]:
    """`cfg` with its precision resolved for `backend` (which gets the resolved config too), and the choice."""
    choice = resolve_backend_precision(cfg.precision, backend)
    backend.cfg = cfg = dataclasses.replace(cfg, precision=choice.precision)
    return cfg, choice


# ----------------------------------------------------------------------------- fit


def fit(
    model: Any,
    loss_fn: Callable[[Any, Any], LossOutput],
    train_data: Any,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    collate: Callable[[list[Any]], Any] | None = None,
    flops_per_sample: float | None = None,
    save_model: Callable[[Any, Path], None] | None = None,
    run_config: dict[str, Any] | None = None,
    on_eval: Callable[[Any, int], dict[str, float] | None] | None = None,
) -> TrainSummary:
    """Train `model` for `cfg.steps` optimizer steps (or until a budget or signal stops it)."""
    import torch
    import yaml

    from ..io import atomic_write_json, atomic_write_text, load_state_dict, read_json, save_model_dir
    from ..precision import annotate_config_yaml
    from ..utils import autocast, progress, seed_everything
    from .backends import make_backend
    from .checkpoint import (check_trainable, load_rng, model_config_of, model_dir_files, resolve_resume, save_rng,
                             select_trainable, write_checkpoint, write_model_files, write_trainable)
    from .data import DataPosition, ShardedBatchSampler, make_loader

    cfg.check()
    run_dir = Path(run_dir)
    backend = make_backend(cfg)
    backend.horizon = cfg.steps
    rank, world = backend.rank, backend.world_size
    is_main = rank == 0
    cfg, precision = _resolve_precision(cfg, backend)
    seed_everything(cfg.seed + rank)
    if cfg.grad_checkpointing:
        _enable_grad_checkpointing(model)
    model.train()
    select_trainable(model, cfg.trainable)  # before the optimizer exists: it holds only what trains
    # engine=deepspeed: the model directory's other files (vocab, text model, ...) go into every checkpoint,
    # so that `convert_deepspeed` writes a whole one; taken before ZeRO partitions the model
    model_files = model_dir_files(model, save_model) if cfg.engine == "deepspeed" and save_model and is_main else {}
    backend.setup(model)
    module = backend.module
    ema = EMA(module, cfg.ema) if cfg.ema > 0 else None
    resolved = {"train": dataclasses.asdict(cfg), "run": run_config or {}}
    config_text = annotate_config_yaml(yaml.safe_dump(resolved, sort_keys=False), precision)
    model_config = model_config_of(module, run_config)

    # -- resume
    state = {"step": 0, "epoch": 0, "step_in_epoch": 0, "flops": 0.0, "flops_per_step": None, "wall_s": 0.0,
             "horizon": None}
    ckpt = resolve_resume(cfg.resume, run_dir)
    if ckpt is not None:
        saved = read_json(ckpt / "trainer_state.json")
        if saved.get("batch_size") != cfg.batch_size:
            raise ConfigError(f"{ckpt}: saved with batch_size={saved.get('batch_size')}, now {cfg.batch_size}; keep it")
        state.update({k: saved[k] for k in state if k in saved})
        check_trainable(ckpt, module)
        backend.load(ckpt)
        if ema is not None:
            ema.load(load_state_dict(ckpt / "ema.safetensors"), ckpt / "ema.safetensors")
        if not load_rng(ckpt, rank):
            seed_everything(cfg.seed + rank + 7919 * state["step"])
    metrics_path = run_dir / "metrics.jsonl"
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", config_text)
        old = metrics_path.read_text().splitlines() if (ckpt is not None and metrics_path.is_file()) else []
        keep = [ln for ln in old if ln.strip() and json.loads(ln).get("step", 0) <= state["step"]]
        atomic_write_text(metrics_path, "".join(ln + "\n" for ln in keep))

    # -- data
    sampler = ShardedBatchSampler(
        len(train_data), cfg.batch_size, grad_accum=cfg.grad_accum, rank=rank, world_size=world,
        seed=cfg.seed, position=DataPosition(state["epoch"], state["step_in_epoch"]),
    )
    if state["flops_per_step"] is None:
        if flops_per_sample is not None:
            state["flops_per_step"] = float(flops_per_sample) * cfg.batch_size
        else:
            first = _fetch(train_data, sampler.step_indices(state["epoch"], state["step_in_epoch"])[0], collate)
            per_micro = _measure_flops(module, loss_fn, _to_device(first, backend.device), cfg.precision,
                                       backward=cfg.engine != "deepspeed")
            state["flops_per_step"] = per_micro * cfg.grad_accum * world
    loader = make_loader(train_data, sampler, collate, cfg.num_workers, generator_seed=cfg.seed)
    # Compiling loss_fn rather than the module: dynamo traces whatever the recipe calls (model.loss(batch),
    # model(batch), ...); compiling the module alone would leave a method call such as model.loss eager.
    step_loss = torch.compile(loss_fn) if cfg.compile else loss_fn
    # the horizon a time estimate may not exceed: `steps`, or the steps a FLOP budget allows
    horizon_cap = cfg.steps
    if cfg.max_flops > 0 and state["flops_per_step"] > 0:
        horizon_cap = min(cfg.steps, max(1, math.ceil(cfg.max_flops / state["flops_per_step"])))
    if cfg.budget_schedule and cfg.max_flops > 0 and state["horizon"] is None:
        state["horizon"] = horizon_cap
    backend.horizon = state["horizon"] or cfg.steps
    timing: list[tuple[int, float]] = []  # (step, elapsed) marks of this session, to time steps for the horizon

    def save_checkpoint() -> Path:
        def write(tmp: Path) -> None:
            backend.save(tmp)
            save_rng(tmp, rank)
            if is_main:
                write_trainable(tmp, module)
                if ema is not None:
                    from ..io import save_state_dict

                    save_state_dict(ema.state_dict(module), tmp / "ema.safetensors")
                atomic_write_text(tmp / "config.yaml", config_text)
                atomic_write_json(tmp / "model_config.json", model_config)
                write_model_files(tmp, model_files)
                pos = sampler.position
                atomic_write_json(tmp / "trainer_state.json", {
                    **state, "epoch": pos.epoch, "step_in_epoch": pos.step_in_epoch,
                    "batch_size": cfg.batch_size, "world_size": world, "engine": cfg.engine,
                })

        return write_checkpoint(run_dir, state["step"], write, rank=rank, barrier=backend.barrier, keep_last=cfg.keep_last)

    eval_results: dict[str, Any] = {}

    def run_eval() -> None:
        if on_eval is None:
            return
        module.eval()
        with torch.no_grad(), backend.full_params() as m:
            res = on_eval(m, state["step"])
        module.train()
        eval_results.update({f"eval/{k}": v for k, v in (res or {}).items()})
        if is_main and res:
            with open(metrics_path, "a") as f:
                f.write(json.dumps({"step": state["step"], **{f"eval/{k}": v for k, v in res.items()}}) + "\n")

    # -- loop
    session_t0 = time.perf_counter()
    wall_offset = state["wall_s"]
    session_items, last_loss, stopped, last_ckpt = 0, float("nan"), "steps", None
    log_t, log_items = session_t0, 0
    # the bar's total is the step the run is expected to stop at: `steps`, the FLOP budget's last step, or
    # under a time budget an estimate from the recent step rate (updated with the LR horizon)
    bar = progress(total=horizon_cap, initial=state["step"], desc="train", disable=None if is_main else True)
    with _StopFlag() as stop:
        while state["step"] < cfg.steps:
            loss_sum, items, extra = 0.0, 0, {}
            for m in range(cfg.grad_accum):
                batch = _to_device(next(loader), backend.device)
                with backend.accumulating(last_micro=m == cfg.grad_accum - 1):
                    with autocast(cfg.precision, backend.device.split(":")[0]):
                        out = backend.loss(step_loss, batch)
                    loss = out.loss
                    bad = torch.tensor([0.0 if bool(torch.isfinite(loss.detach())) else 1.0])
                    if backend.all_reduce_sum(bad).item() > 0:
                        raise TrainingError(
                            f"non-finite loss ({loss.item()}) at step {state['step'] + 1}; the last good checkpoint "
                            f"is {last_ckpt or resolve_resume('auto', run_dir) or 'none'}; lower lr or check the data"
                        )
                    backend.backward(loss, last_micro=m == cfg.grad_accum - 1)
                loss_sum += float(loss.detach())
                items += int(out.n_items)
                for k, v in (out.metrics or {}).items():
                    extra[k] = extra.get(k, 0.0) + float(v) / cfg.grad_accum
            grad_norm = backend.grad_norm_and_clip()
            if cfg.engine != "deepspeed" and not math.isfinite(grad_norm):
                raise TrainingError(
                    f"non-finite gradient norm at step {state['step'] + 1}; the last good checkpoint is "
                    f"{last_ckpt or resolve_resume('auto', run_dir) or 'none'}; lower lr or enable grad_clip"
                )
            lr = backend.lr()
            backend.step()
            grad_norm = getattr(backend, "last_grad_norm", grad_norm)
            if ema is not None:
                ema.update(module, state["step"])
            sampler.advance()
            state["step"] += 1
            state["flops"] += state["flops_per_step"]
            elapsed = time.perf_counter() - session_t0
            # one collective per step: mean loss, items, stop request, elapsed
            vec = backend.all_reduce_sum(torch.tensor([loss_sum / cfg.grad_accum, items, float(stop.raised), elapsed],
                                                      dtype=torch.float64))
            last_loss, step_items = vec[0].item() / world, int(vec[1].item())
            state["wall_s"] = wall_offset + vec[3].item() / world
            session_items += step_items
            log_items += step_items
            if cfg.max_minutes > 0:
                if not timing or state["step"] - timing[-1][0] >= _HORIZON_TIMING_STEPS:
                    timing = [*timing[-_HORIZON_WINDOW:], (state["step"], vec[3].item() / world)]
                    if len(timing) > 1:  # re-estimate from the recent step rate
                        per_step = (timing[-1][1] - timing[0][1]) / (timing[-1][0] - timing[0][0])
                        left = 60 * cfg.max_minutes - state["wall_s"]
                        expected_end = min(horizon_cap, state["step"] + max(1, int(left / max(per_step, 1e-9))))
                        bar.total = expected_end
                        if cfg.budget_schedule:
                            state["horizon"] = backend.horizon = expected_end
            bar.update(1)
            if state["step"] % cfg.log_every == 0 or state["step"] == cfg.steps:
                now = time.perf_counter()
                ips = log_items / max(now - log_t, 1e-9)
                log_t, log_items = now, 0
                bar.set_postfix(loss=f"{last_loss:.4g}", items_s=f"{ips:.3g}")
                if is_main:
                    rec = {"step": state["step"], "loss": last_loss, "lr": lr, "grad_norm": grad_norm,
                           "items_per_s": ips, "flops": state["flops"], "wall_s": state["wall_s"], **extra}
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(rec) + "\n")
            if vec[2].item() > 0:
                stopped = "signal"
            elif cfg.max_minutes > 0 and state["wall_s"] >= 60 * cfg.max_minutes:
                stopped = "max_minutes"
            elif cfg.max_flops > 0 and state["flops"] >= cfg.max_flops:
                stopped = "max_flops"
            if stopped != "steps" or (cfg.ckpt_every > 0 and state["step"] % cfg.ckpt_every == 0):
                last_ckpt = save_checkpoint()
            if stopped != "steps":
                break
            if on_eval is not None and cfg.eval_every > 0 and state["step"] % cfg.eval_every == 0:
                run_eval()
    bar.close()
    if last_ckpt is None or last_ckpt.name != f"step_{state['step']:07d}":
        last_ckpt = save_checkpoint()

    # -- final model, summary
    if stopped != "signal":
        if on_eval is not None and (cfg.eval_every == 0 or state["step"] % cfg.eval_every != 0):
            run_eval()
        averaged = ema.applied(module) if ema is not None else contextlib.nullcontext()
        with torch.no_grad(), averaged, backend.full_params() as m:
            if is_main:
                if save_model is not None:
                    save_model(m, run_dir / "final")
                else:
                    save_model_dir(run_dir / "final", model_config, m.state_dict())
    wall = time.perf_counter() - session_t0
    summary = TrainSummary(
        steps=state["step"], wall_s=wall, items=session_items, items_per_s=session_items / max(wall, 1e-9),
        flops=state["flops"], peak_memory_mb=_peak_memory_mb(backend.device), final_loss=last_loss,
        stopped=stopped, run_dir=str(run_dir), checkpoint=str(last_ckpt), extra=eval_results,
        precision=precision.precision,
    )
    if is_main:
        atomic_write_json(run_dir / "summary.json", dataclasses.asdict(summary))
        plot_loss(metrics_path, run_dir / "loss.png")
    backend.barrier()
    return summary
