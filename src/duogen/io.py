"""Model directories and atomic writes.

A duogen model directory is HF-style: `config.json` + `model.safetensors`, plus
whatever else the model needs to run (`vocab.json`, `text.model`, ...). Every
write goes to a temporary path first and is renamed into place, so a crash
never leaves a half-written file under the final name. Loading never unpickles:
weights come from safetensors, configs from JSON.

A delta directory (a partial fine-tune saved small) is a model directory
whose `config.json` carries `"delta_of": {"path": BASE, "sha256": ...}` and
whose `model.safetensors` holds only the tensors that differ from BASE's.
`load_model_dir` reads BASE's weights (itself possibly a delta), checks its
checksum, and lays the delta's tensors over them, so every `from_pretrained`
loads a delta as if it were the full model. A missing or changed base is a
one-line CheckpointError.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import CheckpointError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DELTA_KEY = "delta_of"


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_state_dict(state: Mapping[str, Any], path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Save tensors as safetensors, atomically (shared storage is copied apart)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    tmp = _tmp_sibling(path, ".safetensors")
    try:
        save_file(tensors, str(tmp), metadata=dict(metadata or {}))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """Load a safetensors file; a missing or corrupt file is a one-line CheckpointError."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for truncated/corrupt files
        raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def save_model_dir(
    directory: str | Path,
    config: Mapping[str, Any],
    state_dict: Mapping[str, Any],
    files: Mapping[str, bytes | str | Mapping[str, Any]] | None = None,
) -> Path:
    """Write `config.json`, `model.safetensors` and extra files into `directory`, atomically.

    `files` maps a file name to bytes, text, or a JSON-able mapping. The whole
    directory appears at once; an existing one is replaced.
    """
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(dict(config), indent=2) + "\n")
        save_state_dict(state_dict, tmp / WEIGHTS_NAME)
        for name, content in (files or {}).items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            elif isinstance(content, str):
                target.write_text(content)
            else:
                target.write_text(json.dumps(dict(content), indent=2) + "\n")
    return directory


def load_model_dir(directory: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read `(config, state_dict)` from a model directory, without unpickling anything.

    A delta directory gives its base's weights with the delta's tensors laid over them.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a model directory (it does not exist)")
    config = read_json(directory / CONFIG_NAME)
    if not isinstance(config, dict):
        raise CheckpointError(f"{directory / CONFIG_NAME}: expected a JSON object")
    state = load_state_dict(directory / WEIGHTS_NAME)
    if DELTA_KEY in config:
        base = delta_base(directory, config)
        _, full = load_model_dir(base)
        full.update(state)
        state = full
    return config, state


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def delta_base(directory: str | Path, config: Mapping[str, Any] | None = None) -> Path:
    """The base model directory of a delta, checked: it exists and its weights have the recorded checksum."""
    directory = Path(directory)
    config = read_json(directory / CONFIG_NAME) if config is None else config
    ref = config.get(DELTA_KEY) or {}
    if not isinstance(ref, Mapping) or "path" not in ref or "sha256" not in ref:
        raise CheckpointError(f"{directory / CONFIG_NAME}: '{DELTA_KEY}' needs a path and a sha256")
    base = Path(ref["path"])
    if not base.is_absolute():
        base = directory / base
    if not (base / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{directory}: a delta over the base model {base}, which is missing;"
                              " put the base model back at that path (or rewrite delta_of.path in its config.json)")
    got = file_sha256(base / WEIGHTS_NAME)
    if got != ref["sha256"]:
        raise CheckpointError(f"{directory}: its base model {base} changed since the delta was saved (sha256"
                              f" {got[:12]}.., expected {str(ref['sha256'])[:12]}..); restore the base it was trained from")
    return base


def write_delta(directory: str | Path, base: str | Path) -> int:
    """Turn the full model directory `directory` into a delta over `base`: keep only the tensors that differ
    from the base's (or that it lacks), record the base's path and checksum; returns the tensors kept."""
    import torch

    directory, base = Path(directory), Path(base).resolve()
    if (directory / WEIGHTS_NAME).resolve() == (base / WEIGHTS_NAME).resolve():
        raise CheckpointError(f"{directory}: cannot be a delta over itself")
    _, base_state = load_model_dir(base)
    config = read_json(directory / CONFIG_NAME)
    state = load_state_dict(directory / WEIGHTS_NAME)
    changed = {k: v for k, v in state.items()
               if k not in base_state or base_state[k].shape != v.shape
               or not torch.equal(base_state[k].to(v.dtype), v)}
    save_state_dict(changed, directory / WEIGHTS_NAME, metadata={DELTA_KEY: str(base)})
    config[DELTA_KEY] = {"path": str(base), "sha256": file_sha256(base / WEIGHTS_NAME)}
    atomic_write_json(directory / CONFIG_NAME, config)
    return len(changed)


def load_model_of_kind(directory: str | Path, kind: str, what: str, newest: int
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
    """`load_model_dir` for a model of one config.json `kind` (`what` names it in the error) whose format_version
    is at most `newest`: another kind, or a newer format, is a `CheckpointError` that says which."""
    directory = Path(directory)
    conf, state = load_model_dir(directory)
    if conf.get("kind") != kind:
        raise CheckpointError(f"{directory}: not {what} (config.json kind is {conf.get('kind')!r})")
    version = conf.get("format_version", newest)
    if not isinstance(version, int) or version > newest:
        raise CheckpointError(f"{directory / 'config.json'}: format_version {version!r} is newer than this duogen"
                              f" reads ({newest}); upgrade duogen to load it")
    return conf, state


def resolve_ref(ref: str | None, directory: str | Path | None = None) -> Path | None:
    """A model's reference to another directory (the codec it was trained on) as a path: a relative one resolves
    against the model dir when it exists there; None for no reference."""
    if not ref:
        return None
    p = Path(ref)
    if not p.is_absolute() and directory is not None and (Path(directory) / p).exists():
        return Path(directory) / p
    return p


def load_weights_into(module: Any, state: Mapping[str, Any], source: str | Path) -> None:
    """`module.load_state_dict(state)` that names the file and the mismatch on failure."""
    try:
        missing, unexpected = module.load_state_dict(dict(state), strict=False)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = next((ln.strip() for ln in first if "size mismatch" in ln), first[0] if first else "")
        raise CheckpointError(f"{source}: weights do not fit this model ({detail})") from None
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{source}: weights do not fit this model ({what})")


def half_precision_copy(src: str | Path, dst: str | Path) -> int:
    """Copy a model directory with its float32 weight matrices stored as float16; return its size in bytes.

    Every `model.safetensors` under `src` (a diffusion model carries its codec in `codec/`) is
    rewritten; tensors of one dimension (biases, norms, a codec's latent statistics, which
    loaders compare exactly) stay float32. Loading casts back to float32, so the copy loads
    wherever the original does, at half the size (how the reference checkpoints ship).
    """
    import torch

    src, dst = Path(src), Path(dst)
    if not (src / CONFIG_NAME).is_file():
        raise CheckpointError(f"{src}: not a model directory (no {CONFIG_NAME})")
    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        for weights in sorted(Path(tmp).rglob(WEIGHTS_NAME)):
            state = load_state_dict(weights)
            half = {k: v.half() if v.dtype == torch.float32 and v.ndim >= 2 else v for k, v in state.items()}
            save_state_dict(half, weights, metadata={"stored_as": "float16 matrices"})
    return sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
