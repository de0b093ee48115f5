"""Training checkpoints: directory layout, atomic multi-rank writes, pickle-free state files.

A checkpoint is `run_dir/checkpoints/step_NNNNNNN/`:

    trainer_state.json        step, data position, flops, wall time (written last)
    config.yaml               resolved TrainConfig + the recipe's run config
    model_config.json         what `convert_deepspeed` writes as the model's config.json
    model.safetensors         model weights (single / DDP); with `train.trainable` only the trained ones
    trainable.json            with `train.trainable`: the trained names and a checksum of the frozen tensors
    ema.safetensors           EMA weights (when EMA is on; only the trained ones with `train.trainable`)
    optimizer.safetensors     optimizer tensors; optimizer.json holds the rest (single / DDP)
    scheduler.json            LR scheduler state (single / DDP)
    rng_rank{r}.json          python + numpy generator states of rank r
    rng_rank{r}.safetensors   torch CPU (and CUDA) generator states of rank r
    deepspeed/                DeepSpeed's own files (ZeRO-partitioned model + optimizer + scheduler)
    model_files/              engine=deepspeed: the model directory's files besides its weights (vocab.json,
                              text.model, codec/, config.json ...), so that `convert_deepspeed` writes a whole one

Everything duogen writes is safetensors or JSON. The one exception is the
`deepspeed/` folder: its partitioned optimizer states are DeepSpeed's torch.save
files, and DeepSpeed loads them itself when a run resumes; use
`convert_deepspeed` to get a plain safetensors model directory out of it. Both read
them with `weights_only=True`, allowing only three small DeepSpeed state classes;
a file needing more is refused unless the user passes `--trust-checkpoint`.

Partial training (`train.trainable=PATTERNS`, globs over parameter names):
`select_trainable` freezes every other parameter before the engine builds its
optimizer, so the optimizer, the EMA and the checkpoint hold only what
trains. Resuming rebuilds the frozen part the way the run did (the recipe's
`--init-from`) and checks it against the checksum in `trainable.json`.

Every rank writes into `.step_NNNNNNN.tmp/`; rank 0 renames it into place after
a barrier, so a checkpoint directory either exists complete or not at all.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ..errors import CheckpointError, ConfigError
from ..io import atomic_write_json, load_state_dict, read_json, save_model_dir, save_state_dict

_STEP_RE = re.compile(r"^step_(\d+)$")
STATE_FILE = "trainer_state.json"
TRAINABLE_FILE = "trainable.json"


# ----------------------------------------------------------------------------- partial training


def select_trainable(model: Any, patterns: str) -> list[str]:
    """Freeze every parameter whose name matches none of the comma-separated globs; return the trained names.

    `""` trains everything (nothing is frozen). A pattern that matches no parameter is a ConfigError
    that shows a few names to pick from (`*.q_proj.*` matches `lm.model.layers.0.self_attn.q_proj.weight`).
    """
    globs = [g.strip() for g in str(patterns or "").split(",") if g.strip()]
    names = [n for n, _ in model.named_parameters()]
    if not globs:
        return [n for n, p in model.named_parameters() if p.requires_grad]
    for g in globs:
        if not any(fnmatch.fnmatchcase(n, g) for n in names):
            step = max(1, len(names) // 6)
            few = ", ".join(names[::step][:6])
            raise ConfigError(f"train.trainable pattern {g!r} matches no parameter; names look like: {few}")
    trained = []
    for n, p in model.named_parameters():
        keep = any(fnmatch.fnmatchcase(n, g) for g in globs)
        p.requires_grad_(keep and p.requires_grad)
        if p.requires_grad:
            trained.append(n)
    if not trained:
        raise ConfigError(f"train.trainable={patterns!r} matches only parameters that the model keeps frozen")
    return trained


def is_partial(module: Any) -> bool:
    """True when some parameters are frozen (the checkpoint then holds only the trained ones)."""
    return any(not p.requires_grad for p in module.parameters())


def trained_state_dict(module: Any) -> dict[str, Any]:
    """What a checkpoint holds of the model: everything, or, when some parameters are frozen, the trained
    parameters and the buffers (running statistics may change while training; they are small)."""
    sd = dict(module.state_dict())
    if not is_partial(module):
        return sd
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    return {k: v for k, v in sd.items() if k not in frozen}


def load_trained_state(module: Any, state: Mapping[str, Any], source: Path) -> None:
    """Load what `trained_state_dict` wrote: the full state, or exactly the trained parameters."""
    import torch

    from ..io import load_weights_into

    if not is_partial(module):
        load_weights_into(module, state, source)
        return
    params = trained_state_dict(module)
    missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or extra:
        what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise CheckpointError(f"{source}: the trained parameters differ from this run's train.trainable ({what})")
    with torch.no_grad():
        for n, p in params.items():
            if p.shape != state[n].shape:
                raise CheckpointError(f"{source}: {n} has shape {tuple(state[n].shape)}, the model {tuple(p.shape)}")
            p.copy_(state[n])


def frozen_checksum(module: Any) -> str:
    """SHA-256 over the names and bytes of the frozen parameters (what a resume must rebuild identically)."""
    h = hashlib.sha256()
    for n, p in module.named_parameters():
        if not p.requires_grad:
            h.update(n.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def write_trainable(directory: Path, module: Any) -> None:
    if is_partial(module):
        trained = [n for n, p in module.named_parameters() if p.requires_grad]
        atomic_write_json(directory / TRAINABLE_FILE, {"trained": trained, "frozen_sha256": frozen_checksum(module)})


def check_trainable(directory: Path, module: Any) -> None:
    """A resume must freeze the same parameters to the same values as the checkpointed run."""
    path = directory / TRAINABLE_FILE
    if not path.is_file():
        if is_partial(module):
            raise CheckpointError(f"{directory}: saved with every parameter training; this run sets train.trainable")
        return
    saved = read_json(path)
    if not is_partial(module):
        raise CheckpointError(f"{directory}: saved with train.trainable (only some parameters); pass the same value")
    if saved.get("frozen_sha256") != frozen_checksum(module):
        raise CheckpointError(f"{directory}: the frozen weights differ from the checkpointed run's; resume with the"
                              " same --init-from model and train.trainable")


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def resolve_resume(resume: str, run_dir: str | Path) -> Path | None:
    """`"no"` -> None; `"auto"` -> the latest checkpoint of this run (or None); else a path.

    A path may name a checkpoint directory or a run directory (its latest checkpoint is used).
    """
    if resume in ("no", "", None):
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if (path / STATE_FILE).is_file():
        return path
    if path.is_dir() and (ckpt := latest_checkpoint(path)) is not None:
        return ckpt
    raise CheckpointError(f"{path}: no checkpoint to resume from (expected {STATE_FILE} or a run dir with checkpoints/)")


def write_checkpoint(
    run_dir: str | Path,
    step: int,
    write: Callable[[Path], None],
    *,
    rank: int = 0,
    barrier: Callable[[], None] = lambda: None,
    keep_last: int = 0,
) -> Path:
    """Call `write(tmp_dir)` on every rank, then publish `step_NNNNNNN/` atomically (rank 0 renames)."""
    root = checkpoint_root(run_dir)
    final = root / f"step_{step:07d}"
    tmp = root / f".step_{step:07d}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    write(tmp)
    barrier()
    if rank == 0:
        _fsync_tree(tmp)
        if final.exists():
            old = root / f".step_{step:07d}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        if keep_last > 0:
            for old_ckpt in list_checkpoints(run_dir)[:-keep_last]:
                shutil.rmtree(old_ckpt, ignore_errors=True)
    barrier()
    return final


def _fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


# ----------------------------------------------------------------------------- RNG states


def save_rng(directory: Path, rank: int) -> None:
    """Python, NumPy and torch (CPU, CUDA) generator states of this process."""
    import numpy as np
    import torch

    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    atomic_write_json(
        directory / f"rng_rank{rank}.json",
        {
            "python": {"version": version, "state": list(mt), "gauss": gauss},
            "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        },
    )
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda.{i}"] = s
    save_state_dict(tensors, directory / f"rng_rank{rank}.safetensors")


def load_rng(directory: Path, rank: int) -> bool:
    """Restore this process's generators; False when the checkpoint has no file for this rank."""
    import numpy as np
    import torch

    path = directory / f"rng_rank{rank}.json"
    if not path.is_file():
        return False
    js = read_json(path)
    tensors = load_state_dict(directory / f"rng_rank{rank}.safetensors")
    try:
        py, npy = js["python"], js["numpy"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
        np.random.set_state((npy["kind"], np.asarray(npy["keys"], dtype=np.uint32), npy["pos"], npy["has_gauss"], npy["cached"]))
        torch.set_rng_state(tensors["torch_cpu"])
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            torch.cuda.set_rng_state_all([tensors[f"torch_cuda.{i}"] for i in range(n) if f"torch_cuda.{i}" in tensors])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: bad generator state ({type(e).__name__}: {e})") from None
    return True


# ----------------------------------------------------------------------------- optimizer / scheduler


def save_optimizer(optimizer: Any, directory: Path) -> None:
    """`optimizer.state_dict()` split into tensors (safetensors) and everything else (JSON)."""
    import torch

    sd = optimizer.state_dict()
    tensors: dict[str, Any] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    save_state_dict(tensors, directory / "optimizer.safetensors")
    atomic_write_json(directory / "optimizer.json", {"param_groups": sd["param_groups"], "scalars": scalars})


def load_optimizer(optimizer: Any, directory: Path) -> None:
    js = read_json(directory / "optimizer.json")
    tensors = load_state_dict(directory / "optimizer.safetensors")
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for pid, st in js.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(st)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": js["param_groups"]})
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{directory / 'optimizer.json'}: optimizer state does not fit this model ({e})") from None


def save_scheduler(scheduler: Any, directory: Path) -> None:
    sd = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    atomic_write_json(directory / "scheduler.json", sd)


def load_scheduler(scheduler: Any, directory: Path) -> None:
    sd = read_json(directory / "scheduler.json")
    sd["lr_lambdas"] = [None] * len(scheduler.lr_lambdas)
    scheduler.load_state_dict(sd)


# ----------------------------------------------------------------------------- DeepSpeed -> plain model


MODEL_FILES = "model_files"


def model_dir_files(model: Any, save_model: Callable[[Any, Path], None]) -> dict[str, bytes]:
    """What `save_model(model, dir)` writes besides the top-level weights, as {relative path: bytes}.

    Called on the whole model before DeepSpeed partitions it; the model's buffers and the random
    generators are left as they were (a `save_model` may compute statistics on the way).
    """
    import tempfile

    import torch

    buffers = {n: b.clone() for n, b in model.named_buffers()}
    training = model.training
    with tempfile.TemporaryDirectory() as tmp, torch.random.fork_rng(devices=[]), torch.no_grad():
        save_model(model, Path(tmp) / "m")
        root = Path(tmp) / "m"
        files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                 if p.is_file() and p.relative_to(root) != Path("model.safetensors")}
        for n, b in model.named_buffers():
            b.copy_(buffers[n])
    model.train(training)
    return files


def write_model_files(directory: Path, files: Mapping[str, bytes]) -> None:
    for name, content in files.items():
        target = directory / MODEL_FILES / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


@contextlib.contextmanager
def weights_only_deepspeed_loads(trust: bool = False) -> Iterator[None]:
    """DeepSpeed reads its torch.save files (consolidation, and `load_checkpoint` on a resume) with
    `weights_only=True` (issue #18), allowing only its own ZeroStageEnum, LossScaler and fragment_address:
    anything else fails to unpickle instead of running. `trust=True` (--trust-checkpoint) lets DeepSpeed
    unpickle as it would by itself."""
    import torch

    if trust:
        yield
        return
    from deepspeed.runtime.checkpoint_engine import torch_checkpoint_engine
    from deepspeed.utils import zero_to_fp32

    allowed = []
    for module, name in (("deepspeed.runtime.zero.config", "ZeroStageEnum"),
                         ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
                         ("deepspeed.utils.tensor_fragment", "fragment_address")):
        try:
            allowed.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass

    class _Torch:  # torch, but `load` never unpickles arbitrary objects
        def __getattr__(self, name: str) -> Any:
            return getattr(torch, name)

        @staticmethod
        def load(*args: Any, **kwargs: Any) -> Any:
            kwargs["weights_only"] = True
            return torch.load(*args, **kwargs)

    modules = (zero_to_fp32, torch_checkpoint_engine)
    saved = [m.torch for m in modules]
    for m in modules:
        m.torch = _Torch()
    try:
        with torch.serialization.safe_globals(allowed):
            yield
    finally:
        for m, t in zip(modules, saved):
            m.torch = t


UNTRUSTED = ("holds pickled objects beyond tensors and DeepSpeed's own state classes, which could run code when"
             " read; refused. Pass --trust-checkpoint only for a checkpoint you made yourself or trust")


def deepspeed_state_dict(checkpoint: str | Path, *, ema: bool | None = None, trust: bool = False) -> dict[str, Any]:
    """Consolidated fp32 weights of a duogen DeepSpeed checkpoint (all ZeRO stages), on CPU.

    `ema=None` returns the EMA weights when the checkpoint has them (what `final/` holds), else the model's.
    DeepSpeed's files are read without unpickling anything but tensors and its state classes; a file that
    needs more is a CheckpointError unless `trust` (then DeepSpeed unpickles it: it may run code).
    """
    checkpoint = Path(checkpoint)
    ema_file = checkpoint / "ema.safetensors"
    if ema is not False and ema_file.is_file():
        if (checkpoint / TRAINABLE_FILE).is_file():  # EMA of the trained parameters only: over the model's weights
            return {**deepspeed_state_dict(checkpoint, ema=False, trust=trust), **load_state_dict(ema_file)}
        return load_state_dict(ema_file)
    if ema:
        raise CheckpointError(f"{ema_file}: file not found (the run had no EMA)")
    ds_dir = checkpoint / "deepspeed"
    if not ds_dir.is_dir():
        raise CheckpointError(f"{ds_dir}: not a DeepSpeed checkpoint (folder missing)")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:  # DeepSpeed prints its progress on stdout, where `duogen ... --json` writes its summary
        with weights_only_deepspeed_loads(trust), contextlib.redirect_stdout(io.StringIO()):
            sd = get_fp32_state_dict_from_zero_checkpoint(str(ds_dir), tag="state")
    except pickle.UnpicklingError:
        raise CheckpointError(f"{ds_dir}: {UNTRUSTED}") from None
    except Exception as e:  # DeepSpeed raises ValueError / FileNotFoundError / pickle errors
        raise CheckpointError(f"{ds_dir}: cannot consolidate DeepSpeed checkpoint ({type(e).__name__}: {e})") from None
    return {k: v.contiguous() for k, v in sd.items()}


def convert_deepspeed(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    model: Any = None,
    save_model: Callable[[Any, Path], None] | None = None,
    ema: bool | None = None,
    overwrite: bool = False,
    trust: bool = False,
) -> Path:
    """Turn a DeepSpeed checkpoint into a whole duogen model directory, the kind `duogen generate` loads.

    The directory is the checkpoint's `model_files/` (everything the recipe's model directory holds
    besides its weights: config.json with its kind, vocab.json, text.model, codec/ ...) plus the
    consolidated `model.safetensors`. A checkpoint without `model_files/` (written before it existed)
    takes those files from the run's `final/` when there is one, else config.json is the checkpoint's
    `model_config.json`. With `model` and `save_model` (the recipe's), the weights are loaded into
    `model` and `save_model(model, out_dir)` writes the directory instead.

    An existing non-empty `out_dir` is refused unless `overwrite`. `trust`: see `deepspeed_state_dict`.
    """
    from ..io import load_weights_into

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise CheckpointError(f"{out_dir}: exists and is not empty; choose another --out, or pass --overwrite to replace it")
    if not (checkpoint / STATE_FILE).is_file() and (latest := latest_checkpoint(checkpoint)) is not None:
        checkpoint = latest  # a run directory: take its latest checkpoint
    state = deepspeed_state_dict(checkpoint, ema=ema, trust=trust)
    if model is not None and save_model is not None:
        load_weights_into(model, state, checkpoint / "deepspeed")
        save_model(model, out_dir)
        return out_dir
    source = checkpoint / MODEL_FILES
    if not source.is_dir() and (checkpoint.parent.parent / "final" / "config.json").is_file():
        source = checkpoint.parent.parent / "final"
    if source.is_dir():
        files = {str(p.relative_to(source)): p.read_bytes() for p in sorted(source.rglob("*"))
                 if p.is_file() and p.relative_to(source) not in (Path("model.safetensors"), Path("config.json"))}
        config = read_json(source / "config.json")
    else:
        files, config = {}, read_json(checkpoint / "model_config.json")
    return save_model_dir(out_dir, config, state, files)


def model_config_of(model: Any, run_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Best description of the model for a plain model dir's config.json."""
    import dataclasses

    if run_config and isinstance(run_config.get("model"), Mapping):
        return dict(run_config["model"])
    cfg = getattr(model, "config", None)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    return {"class": f"{type(model).__module__}.{type(model).__qualname__}"}
