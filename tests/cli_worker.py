"""Several `duogen` commands in one torchrun launch, as a user types them (the CLI tests' multi-process driver).

    torchrun --standalone --nproc_per_node 2 tests/cli_worker.py COMMANDS.json RESULTS_DIR

COMMANDS.json is a list of {"name": NAME, "argv": [...]}: every rank runs them in order through
`duogen.cli.main(argv)`, so torch, DeepSpeed and duogen are imported once per launch, not once per
command (on 2 shared cores the imports cost more than the tiny trainings). The process group stays
up between commands and is closed at the end. After each command every rank writes
RESULTS_DIR/NAME.rank{r}.json: its exit status, what it printed, and a SHA-256 of the weights of each
model it trained, read from the backend after training (gathered under ZeRO-3), so a test can check
that gradient sync left every rank with the same weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import time
import traceback
from pathlib import Path


def weights_digest(backend) -> str:
    """SHA-256 over the module's parameters (names and float32 bytes), gathered under ZeRO-3.

    Parameters only: buffers such as a codec's latent statistics are computed by rank 0 alone when it saves.
    """
    import torch

    h = hashlib.sha256()
    with torch.no_grad(), backend.full_params() as m:
        for name, t in sorted(m.named_parameters()):
            h.update(name.encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(commands_file: str, results: str) -> None:
    import torch.distributed as dist

    from duogen import cli
    from duogen.train import backends

    made: list = []
    make = backends.make_backend
    backends.make_backend = lambda cfg: made.append(make(cfg)) or made[-1]
    cli._close_process_group = lambda: None  # one process group for the whole launch
    out_dir = Path(results)
    for cmd in json.loads(Path(commands_file).read_text()):
        made.clear()
        t0 = time.perf_counter()
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = cli.main(cmd["argv"])
            except BaseException:  # recorded for the test; the next command still runs
                rc, err = -1, io.StringIO(err.getvalue() + traceback.format_exc())
        rank = int(os.environ.get("RANK", "0"))
        digests = [weights_digest(b) for b in made] if rc == 0 else []
        rec = {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue(), "weights": digests,
               "wall_s": round(time.perf_counter() - t0, 2)}
        (out_dir / f"{cmd['name']}.rank{rank}.json").write_text(json.dumps(rec))
    if dist.is_initialized():
        # tear the group down before exit: a gloo thread alive at interpreter exit can abort the process
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
