"""Issue 18: no code runs from a checkpoint, outputs never mix, every bad input is one line before any work.

Each test drives the CLI (`duogen.cli.main`) the way a user would, mostly on the shipped reference
models, and checks what a hostile but realistic input must not do.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from duogen.cli import main
from duogen.errors import CheckpointError

REF = Path(__file__).resolve().parents[1] / "src" / "duogen" / "assets" / "reference"

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(capsys, *argv: str) -> tuple[int, str]:
    """Exit status and stderr of one CLI call (stderr must be one line when it fails)."""
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("duogen: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------------------- code execution


class _Evil:
    """A pickle whose loading creates a directory: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _crafted_deepspeed_checkpoint(root: Path, marker: Path) -> Path:
    ckpt = root / "checkpoints" / "step_0000001"
    ds = ckpt / "deepspeed" / "state"
    ds.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 1}))
    (ckpt / "model_config.json").write_text(json.dumps({"kind": "mlp"}))
    payload = pickle.dumps(_Evil(marker))
    for name in ("zero_pp_rank_0_mp_rank_00_optim_states.pt", "mp_rank_00_model_states.pt"):
        (ds / name).write_bytes(payload)
    return ckpt


def test_convert_deepspeed_runs_no_code_from_a_crafted_checkpoint(tmp_path, capsys):
    pytest.importorskip("deepspeed")
    marker = tmp_path / "pwned"
    _crafted_deepspeed_checkpoint(tmp_path / "run", marker)
    code, err = _run(capsys, "train", "convert-deepspeed", str(tmp_path / "run"), "--out", str(tmp_path / "m"))
    assert code == 2 and "--trust-checkpoint" in _one_line(err)
    assert not marker.exists() and not (tmp_path / "m").exists()
    # the flag is what lets it run (the test above could fail): DeepSpeed unpickles, the payload runs
    code, err = _run(capsys, "train", "convert-deepspeed", str(tmp_path / "run"), "--out", str(tmp_path / "m"),
                     "--trust-checkpoint")
    assert marker.is_dir()
    assert "WARNING" in subprocess.run([sys.executable, "-m", "duogen", "train", "convert-deepspeed", "--help"],
                                       capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}).stdout


def test_deepspeed_resume_loads_weights_only(tmp_path):
    """What DeepSpeedBackend.load wraps DeepSpeed's `load_checkpoint` in: its checkpoint engine's torch.load."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from duogen.train.checkpoint import weights_only_deepspeed_loads

    marker, path = tmp_path / "pwned", tmp_path / "mp_rank_00_model_states.pt"
    path.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(pickle.UnpicklingError), weights_only_deepspeed_loads():
        TorchCheckpointEngine().load(str(path))
    assert not marker.exists()
    with weights_only_deepspeed_loads(trust=True):
        try:
            TorchCheckpointEngine().load(str(path))
        except Exception:
            pass
    assert marker.is_dir()


# ----------------------------------------------------------------------------- runs and outputs


def _old_run(run: Path) -> None:
    (run / "checkpoints" / "step_0000009").mkdir(parents=True)
    (run / "summary.json").write_text('{"old": true}')


def test_training_into_a_used_run_dir_needs_resume_or_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    _old_run(run)
    args = ["train", "ar", "--data", str(tmp_path / "nodata"), "--tokenizer", str(REF / "codec"), "--out", str(run)]
    code, err = _run(capsys, *args)
    line = _one_line(err)
    assert code == 2 and "--resume" in line and "--overwrite" in line
    assert json.loads((run / "summary.json").read_text()) == {"old": True}
    code, err = _run(capsys, *args, "--resume")  # allowed: it gets as far as the (missing) data
    assert code == 2 and "nodata" in _one_line(err) and (run / "summary.json").is_file()
    code, err = _run(capsys, *args, "--overwrite")  # failed before writing anything: the old run comes back
    assert code == 2 and "nodata" in _one_line(err)
    assert (run / "summary.json").is_file() and (run / "checkpoints" / "step_0000009").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # lock released, nothing set aside left


def test_overwrite_starts_clean_once_the_command_writes(tmp_path):
    from duogen.guards import claim_output

    run = tmp_path / "run"
    _old_run(run)
    with claim_output(run, overwrite=True, resumable=True):
        run.mkdir()
        (run / "metrics.jsonl").write_text("{}\n")
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_generate_refuses_a_used_out_and_overwrite_starts_clean(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip_000_00.gif").write_bytes(b"another call's clip")
    gen = ["generate", "--model", str(REF / "ar"), "--prompt", "a red circle", "--out", str(out)]
    code, err = _run(capsys, *gen)
    assert code == 2 and "--overwrite" in _one_line(err)
    assert (out / "clip_000_00.gif").read_bytes() == b"another call's clip"
    assert _run(capsys, *gen, "--overwrite")[0] == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["clip_000_00.gif", "clip_000_00.mp4", "generation.json"]
    assert (out / "clip_000_00.gif").read_bytes() != b"another call's clip"


def test_a_second_writer_is_refused_naming_the_first_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    import socket

    out = tmp_path / "data"
    lock = tmp_path / ".data.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "since": "now"}))
        code, err = _run(capsys, "data", "make", "shapes", "--out", str(out), "--n", "6")
        assert code == 2 and f"PID {holder.pid}" in _one_line(err) and not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead now (kill -9 leaves its lock behind): the next run takes the lock over
    code, err = _run(capsys, "data", "make", "shapes", "--out", str(out), "--n", "6")
    assert code == 0, err
    assert (out / "dataset_dict.json").is_file() and not lock.exists()


def test_leftover_tmp_dirs_are_cleaned_by_the_next_run_into_the_same_place(tmp_path, capsys):
    run = tmp_path / "run"
    _old_run(run)
    beside, inside = tmp_path / ".run.x1y2.tmp", run / ".final.abc.tmp"
    ckpt_tmp = run / "checkpoints" / ".step_0000010.tmp"
    for d in (beside, inside, ckpt_tmp):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"half")
    other = tmp_path / ".other.q.tmp"  # another output's: not ours to clean
    other.mkdir()
    _run(capsys, "train", "ar", "--data", str(tmp_path / "nodata"), "--tokenizer", str(REF / "codec"),
         "--out", str(run), "--resume")
    assert not beside.exists() and not inside.exists() and not ckpt_tmp.exists()
    assert other.exists() and (run / "checkpoints" / "step_0000009").is_dir()


def test_generate_makes_big_jobs_in_bounded_calls_and_refuses_what_cannot_fit(tmp_path, capsys, monkeypatch):
    from duogen.bridges import generate as G
    from duogen.bridges.result import GenerationResult

    sizes = []

    class Tiny:  # a generator that records the size of every call
        kind = "ar"

        def generate(self, prompts, n=1, seed=0, **kw):
            sizes.append(len(prompts) * n)
            B = len(prompts) * n
            return GenerationResult(videos=np.full((B, 1, 4, 4, 3), seed % 255, np.uint8),
                                    prompts=[p for p in prompts for _ in range(n)], seeds=[seed] * B,
                                    timings={"total_s": 0.0}, tokens=B, info={})

    monkeypatch.setitem(G._GENERATORS, "ar", lambda d, codec=None: Tiny())
    code, _ = _run(capsys, "generate", "--model", str(REF / "ar"), "--prompt", "a", "--prompt", "b",
                   "--n", "20", "--out", str(tmp_path / "g"))
    assert code == 0 and max(sizes) <= G.BATCH and sum(sizes) == 40
    summary = json.loads((tmp_path / "g" / "generation.json").read_text())
    assert len(summary["files"]) == 40 and len(set(summary["files"])) == 40
    assert "clip_001_19.png" in {Path(f).name for f in summary["files"]}
    sizes.clear()
    drawn = []  # the calls generate_to_dir takes from the plan: a refused huge job must not list all of them
    plan_calls = G._calls

    def counted(*a):
        for c in plan_calls(*a):
            drawn.append(c)
            yield c

    monkeypatch.setattr(G, "_calls", counted)
    monkeypatch.setattr("duogen.guards.free_bytes", lambda path: 10_000)
    code, err = _run(capsys, "generate", "--model", str(REF / "ar"), "--prompt", "a", "--n", "1000000000",
                     "--out", str(tmp_path / "big"))
    assert code == 2 and "1000000000 clips needs about" in _one_line(err)
    assert sizes == [G.BATCH] and not (tmp_path / "big").exists()  # one bounded call, then refused
    assert len(drawn) == 1  # counted (`_n_calls`), not listed: 62.5M calls took 45 s before the refusal


def test_the_call_count_is_counted_not_listed():
    """`generate_to_dir` counts its calls without building them (listing 10^9 clips' calls took 45 s before the
    refusal); the count is the number of calls made, and the calls cover every (prompt, sample) once."""
    from duogen.bridges.generate import _calls, _n_calls

    for n_prompts in (1, 2, 5, 17):
        for n in (1, 3, 7, 16, 33, 100):
            for batch in (1, 4, 16):
                calls = list(_calls(n_prompts, n, batch))
                assert _n_calls(n_prompts, n, batch) == len(calls), (n_prompts, n, batch)
                assert all(np_ * nk <= batch for _, np_, _, nk in calls)
                cells = [(p, k) for p0, np_, k0, nk in calls for p in range(p0, p0 + np_) for k in range(k0, k0 + nk)]
                assert sorted(cells) == [(p, k) for p in range(n_prompts) for k in range(n)]


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("argv, says", [
    (["data", "make", "shapes", "--seed", "-1"], "--seed must be an integer from 0 to 2**63-1"),
    (["data", "make", "shapes", "--seed", str(2**64)], "--seed must be an integer from 0 to 2**63-1"),
    (["generate", "--model", str(REF / "ar"), "--seed", "-5"], "--seed must be"),
    (["generate", "--model", str(REF / "ar"), "--guidance", "nan"], "--guidance must be a finite number"),
    (["generate", "--model", str(REF / "ar"), "--n", "0"], "--n must be >= 1"),
    (["generate", "--model", str(REF / "ar"), "--top-p", "2"], "--top-p must be in (0, 1]"),
    (["train", "ar", "--data", "d", "--tokenizer", str(REF / "codec"), "model.layers=-1"],
     "'model.layers' must be positive"),
    (["train", "ar", "--data", "d", "--tokenizer", str(REF / "codec"), "train.lr=-1"], "'train.lr' must be positive or zero"),
    (["train", "diffusion", "--data", "d", "--tokenizer", str(REF / "codec"), "train.lr=nan"],
     "'train.lr' must be a finite number"),
    (["data", "make", "shapes", "--n", "99999999999999"], "99999999999999 clips needs about"),
])
def test_out_of_range_numbers_are_one_line_before_any_work(tmp_path, capsys, argv, says):
    out = tmp_path / "out"
    code, err = _run(capsys, *argv, "--out", str(out))
    assert code == 2 and says in _one_line(err)
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing written, not even a lock


def test_a_newer_format_version_is_refused_naming_both(tmp_path, capsys):
    model = tmp_path / "ar"
    shutil.copytree(REF / "ar", model)
    conf = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**conf, "format_version": 99}))
    code, err = _run(capsys, "generate", "--model", str(model), "--codec", str(REF / "codec"),
                     "--out", str(tmp_path / "g"))
    line = _one_line(err)
    assert code == 2 and "format_version 99" in line and "(1)" in line


# ----------------------------------------------------------------------------- the file system


@pytest.mark.parametrize("command", [
    ["data", "make", "shapes", "--n", "6"],
    ["data", "import", "folder"],
    ["generate", "--model", str(REF / "ar")],
    ["train", "ar", "--data", "d", "--tokenizer", str(REF / "codec")],
    ["train", "tokenizer", "--modality", "video", "--data", "d"],
])
def test_unusable_output_paths_are_one_line_naming_the_path(tmp_path, capsys, command):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out, says in ((a_file / "sub", "is a file, not a directory"), (Path("/proc/duogen_test/out"), "/proc"),
                      (a_file, "not a directory")):
        code, err = _run(capsys, *command, "--out", str(out))
        assert code == 2 and says in _one_line(err), (out, err)


def test_an_os_error_while_writing_is_one_line_with_path_and_cause(tmp_path, capsys, monkeypatch):
    import errno

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("duogen.data.media.write_gif", full)
    code, err = _run(capsys, "generate", "--model", str(REF / "ar"), "--prompt", "x", "--out", str(tmp_path / "g"))
    assert code == 2 and _one_line(err).endswith("clip_000_00.gif: No space left on device")


def test_a_full_disk_under_safetensors_is_one_line_too(tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    def full(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28) at path \"x\"")

    monkeypatch.setattr("duogen.io.save_state_dict", full)
    code, err = _run(capsys, "generate", "--model", str(REF / "ar"), "--prompt", "x", "--save-latents",
                     "--out", str(tmp_path / "g"))
    assert code == 2 and _one_line(err).endswith("g: No space left on device (os error 28)")


def test_data_import_refuses_a_symlink_out_of_the_folder_like_dotdot(tmp_path, capsys):
    from duogen.data.media import write_gif

    folder, secret = tmp_path / "folder", tmp_path / "outside.gif"
    folder.mkdir()
    write_gif(secret, np.zeros((4, 8, 8, 3), np.uint8))
    (folder / "ok.gif").symlink_to(secret)
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "ok.gif", "caption": "a clip"}) + "\n")
    code, err = _run(capsys, "data", "import", str(folder), "--out", str(tmp_path / "out"))
    assert code == 2 and "outside the folder" in _one_line(err) and not (tmp_path / "out").exists()


def test_generate_takes_codec_when_the_models_codec_moved(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stale relative reference falls back to the working directory: keep it empty
    model = tmp_path / "ar"
    shutil.copytree(REF / "ar", model)  # its codec reference (../codec) no longer resolves
    code, err = _run(capsys, "generate", "--model", str(model), "--prompt", "x", "--out", str(tmp_path / "g"))
    assert code == 2 and "pass --codec DIR" in _one_line(err)
    assert _run(capsys, "generate", "--model", str(model), "--codec", str(REF / "codec"), "--prompt", "x",
                "--out", str(tmp_path / "g"))[0] == 0
    assert (tmp_path / "g" / "clip_000_00.gif").is_file()


def test_loaders_refuse_what_they_cannot_read_as_checkpoint_errors(tmp_path):
    from duogen.io import load_model_dir

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(pickle.dumps(_Evil(tmp_path / "pwned")))
    with pytest.raises(CheckpointError):
        load_model_dir(tmp_path)
    assert not (tmp_path / "pwned").exists()
