"""What every command checks before it writes: its output place, its numbers, the disk.

Owns:
- `claim_output(path, ...)`: one rule for every command that writes a directory. An existing
  non-empty directory is refused unless the command resumes it (`--resume`) or starts clean
  (`--overwrite`, which empties it); the place is locked while in use (`.NAME.lock` beside it,
  holding the writer's PID and host), so a second writer gets one line naming the first's PID;
  a lock left by a dead process on this host is taken over; hidden `.NAME.*.tmp` leftovers of
  interrupted atomic writes (beside it and inside it) are removed.
- `check_args(args)`: the range rules of the CLI's numbers (seeds, counts, guidance ...), applied
  before any work.
- `check_fits(path, nbytes, what)`: refuse a job whose estimated output exceeds the free disk.
- `os_error_line(e, out)`: an OSError on a user path as one line naming the path and the cause.

Does not own: atomic writes themselves (`io.py`), checkpoints (`train/checkpoint.py`), what each
command writes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError, DuogenError
from .utils import launch_rank

SEED_MAX = 2**63 - 1  # every seed is an integer in [0, SEED_MAX]: fits torch's int64 generator seed


class OutputError(DuogenError):
    """An output place that cannot be used as given (not empty, in use, not a directory)."""


# ----------------------------------------------------------------------------- locks


def lock_path(path: str | Path) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _read_lock(lock: Path) -> dict[str, Any]:
    try:
        info = json.loads(lock.read_text())
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def check_parents(path: Path) -> None:
    """A file where a directory of `path` belongs is a one-line OutputError (before anything is created)."""
    for parent in Path(path).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{path}: {parent} is a file, not a directory; choose another --out")
            return


def acquire_lock(path: str | Path, command: str = "") -> Path:
    """Create `.NAME.lock` beside `path` (exclusively); a live holder is a one-line OutputError, a dead one
    on this host (a crashed writer) loses its lock."""
    check_parents(Path(path))
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
          "command": command}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _read_lock(lock)
            pid, host = held.get("pid"), held.get("host")
            if isinstance(pid, int) and host == me["host"] and pid != me["pid"] and not _alive(pid):
                with contextlib.suppress(FileNotFoundError):  # stale: its writer died (kill -9, power cut)
                    lock.unlink()
                continue
            if not held and time.time() - _mtime(lock) > 5:  # unreadable and not being written now: stale
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            who = f"PID {pid} on {host}" if pid else "another process"
            raise OutputError(f"{path}: in use by {who} since {held.get('since', '?')}; wait for it to finish or"
                              f" write elsewhere (if that process is gone, delete {lock})")
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return lock
    raise OutputError(f"{path}: cannot take the lock {lock}; remove it if no duogen command is writing there")


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return time.time()


def release_lock(lock: Path) -> None:
    if _read_lock(lock).get("pid") == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


# ----------------------------------------------------------------------------- leftovers


def clean_leftovers(path: str | Path) -> list[Path]:
    """Remove hidden `.X.*.tmp` / `.X.tmp` entries that interrupted atomic writes left: beside `path` (its own)
    and inside it, two levels deep (`final/`'s and `checkpoints/`'s). Call only while holding the lock."""
    path = Path(path)
    found: list[Path] = []
    if path.parent.is_dir():
        found += [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.") and p.name.endswith(".tmp")]
    if path.is_dir():
        for d in [path, *(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())]:
            found += [p for p in d.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    return found


# ----------------------------------------------------------------------------- claim


def _nonempty(path: Path) -> bool:
    return path.is_dir() and any(p for p in path.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp")))


@contextlib.contextmanager
def claim_output(path: str | Path, *, resume: bool = False, overwrite: bool = False, resumable: bool = False,
                 replaces_atomically: bool = False, command: str = "") -> Iterator[Path]:
    """Hold `path` (an output directory) for the duration of a command; see the module docstring.

    `resumable`: the command has `--resume` (the refusal names it). `overwrite` moves the old directory
    aside and deletes it when the command ends; a command that fails before writing anything gets it back
    (`replaces_atomically`: the command swaps in its new directory itself, so the old one stays in place).
    Under torchrun only rank 0 claims. A directory this call created and the command left empty is removed.
    """
    path = Path(path)
    if launch_rank() != 0:
        yield path
        return
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a directory; choose another --out")
    lock = acquire_lock(path, command)
    existed, aside = path.exists(), None
    try:
        clean_leftovers(path)
        if _nonempty(path) and not resume and not overwrite:
            how = "pass --resume to continue it or --overwrite to start clean" if resumable else \
                "pass --overwrite to start clean, or choose another --out"
            raise OutputError(f"{path}: exists and is not empty; {how}")
        if overwrite and path.is_dir() and not replaces_atomically:
            aside = path.parent / f".{path.name}.{os.getpid()}.replaced.tmp"  # a leftover .tmp if we die
            os.replace(path, aside)
            existed = False
        try:
            yield path
        except BaseException:
            if aside is not None and not _nonempty(path):  # nothing new written: the old output comes back
                with contextlib.suppress(OSError):
                    if path.is_dir():
                        path.rmdir()
                    os.replace(aside, path)
                    aside = None
            raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        with contextlib.suppress(OSError):
            if not existed and path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        release_lock(lock)


@contextlib.contextmanager
def claim_file(path: str | Path, *, overwrite: bool = False, command: str = "") -> Iterator[Path]:
    """`claim_output` for a command whose output is one file: an existing file is refused unless `overwrite`."""
    path = Path(path)
    if launch_rank() != 0:
        yield path
        return
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; --out names the file to write (e.g. {path / 'out.gif'})")
    lock = acquire_lock(path, command)
    try:
        clean_leftovers(path)
        if path.exists() and not overwrite:
            raise OutputError(f"{path}: exists; pass --overwrite to replace it, or choose another --out")
        yield path
    finally:
        release_lock(lock)


# command (as `duogen ...` words) -> what its --out is; every other command writes no directory
OUTPUTS = {  # "atomic": the command swaps its finished directory in (io.atomic_dir); "run": has --resume
    ("data", "make"): "atomic", ("data", "import"): "atomic", ("train", "convert-deepspeed"): "atomic",
    ("generate",): "dir", ("compare",): "dir", ("train", "tokenizer"): "dir",
    ("train", "ar"): "run", ("train", "diffusion"): "run", ("train", "ip2p"): "run", ("train", "control"): "run", ("personalize",): "run", ("demo",): "demo", ("tokenizer", "recon"): "file",
    ("personalize", "analyze"): "dir",
}


def command_words(args: Any) -> tuple[str, ...]:
    top = getattr(args, "command", None)
    sub = getattr(args, f"{top}_command", None) if top else None
    return tuple(w for w in (top, sub) if w)


def claim_for(args: Any) -> contextlib.AbstractContextManager[Any]:
    """The claim `main` holds around a parsed command (a no-op for commands that write no directory)."""
    words = command_words(args)
    kind, out = OUTPUTS.get(words), getattr(args, "out", None)
    if kind is None or out is None:
        return contextlib.nullcontext()
    overwrite = bool(getattr(args, "overwrite", False) or getattr(args, "fresh", False))
    name = "duogen " + " ".join(words)
    if kind == "run" and overwrite and getattr(args, "resume", None) is not None:
        raise OutputError(f"{out}: --resume continues the run there and --overwrite deletes it; pass one of them")
    if kind == "file":
        return claim_file(out, overwrite=overwrite, command=name)
    # the demo resumes its finished stages by design (--fresh starts clean)
    resume = kind == "demo" or getattr(args, "resume", None) is not None
    return claim_output(out, resume=resume, overwrite=overwrite, resumable=kind == "run",
                        replaces_atomically=kind == "atomic", command=name)


def add_resume_argument(p: Any) -> None:
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from a checkpoint: no value or 'auto' = the run's latest; or a path")


def add_overwrite_argument(p: Any, what: str = "--out") -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"start clean: replace an existing {what} (the old one is kept until this command writes;"
                        f" without this flag a non-empty {what} is refused)")


# ----------------------------------------------------------------------------- sizes


def free_bytes(path: str | Path) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"


def check_fits(path: str | Path, nbytes: float, what: str) -> None:
    """Refuse (one line) when `what`, estimated at `nbytes`, cannot fit in the free space at `path`."""
    free = free_bytes(path)
    if nbytes > free:
        raise OutputError(f"{path}: {what} needs about {human_bytes(nbytes)}, and only {human_bytes(free)} is free;"
                          " ask for less (--n) or free space")


# ----------------------------------------------------------------------------- numbers


def _bad(flag: str, rule: str, value: Any) -> ConfigError:
    return ConfigError(f"{flag} must be {rule}, got {value!r}")


def check_args(args: Any) -> None:
    """The CLI's number rules, checked before any work (a ConfigError: one line, exit 2).

    Seeds: integers in [0, 2**63-1] for every command. Counts (--n, --per-split, --per-call): >= 1. Floats: finite; --temperature >= 0, --top-p in (0, 1], --eta in [0, 1], --top-k >= 0,
    --minutes > 0, --guidance finite.
    """
    get = lambda name: getattr(args, name, None)  # noqa: E731
    seed = get("seed")
    if seed is not None and not (0 <= seed <= SEED_MAX):
        raise _bad("--seed", "an integer from 0 to 2**63-1", seed)
    for name in ("n", "per_split", "per_call"):  # --steps: each sampler checks its own range
        v = get(name)
        if v is not None and v < 1:
            raise _bad(f"--{name.replace('_', '-')}", ">= 1", v)
    for name in ("guidance", "temperature", "top_p", "eta", "minutes"):
        v = get(name)
        if v is not None and not math.isfinite(v):
            raise _bad(f"--{name.replace('_', '-')}", "a finite number", v)
    rules = {"temperature": (lambda v: v >= 0, ">= 0"), "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
             "eta": (lambda v: 0 <= v <= 1, "in [0, 1]"), "top_k": (lambda v: v >= 0, ">= 0 (0 = off)"),
             "minutes": (lambda v: v > 0, "> 0")}
    for name, (ok, rule) in rules.items():
        v = get(name)
        if v is not None and not ok(v):
            raise _bad(f"--{name.replace('_', '-')}", rule, v)


# ----------------------------------------------------------------------------- trust

TRUST_ENV = "DUOGEN_TRUST_CHECKPOINT"
TRUST_HELP = ("WARNING: lets DeepSpeed unpickle its checkpoint files, which can run any code they hold; only for"
              " checkpoints you made yourself or trust. Without it, files holding more than tensors are refused")


def trusted_checkpoints() -> bool:
    """True when the command was given --trust-checkpoint (set in the environment, so torchrun's ranks see it)."""
    return os.environ.get(TRUST_ENV, "") == "1"


def prepare(args: Any) -> None:
    """What `main` does with parsed arguments before any work: `check_args`, and --trust-checkpoint into the
    environment (DeepSpeed's loads happen deep in the engine, on every torchrun rank)."""
    check_args(args)
    if getattr(args, "trust_checkpoint", False):
        os.environ[TRUST_ENV] = "1"


def add_trust_argument(p: Any) -> None:
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)


# ----------------------------------------------------------------------------- OS errors


def os_error_line(e: BaseException, out: str | Path | None = None) -> str | None:
    """`PATH: CAUSE` for an OSError (the path it names, else the command's output place), or for an I/O
    failure that a library wraps in its own type (safetensors' writer); None for anything else (a bug)."""
    if isinstance(e, OSError):
        where = e.filename or out or "?"
        cause = e.strerror or errno.errorcode.get(e.errno or 0, "") or str(e) or type(e).__name__
        return f"{where}: {cause}"
    text = str(e)
    if type(e).__name__ == "SafetensorError" and "I/O error: " in text:
        cause = text.split("I/O error: ", 1)[1].split(" at path ", 1)[0]
        return f"{out or '?'}: {cause}"
    return None
