"""Reading a recipe's encoded cache into numpy: row by row vs in bulk through Arrow, same process.

What is compared: a data set shaped like the demo's codec cache (N clips, `video_ids` int32 (3, 8, 8) and
`latents` float32 (4, 3, 8, 8), saved with `save_to_disk` and loaded back in numpy format, as `pretokenize`
returns it), read as the AR and diffusion recipes need it:
- "rows": `np.asarray(ds[name], dtype)`, what the recipes did before (datasets formats every row);
- "bulk": `duogen.train.data.column_array(ds, name, dtype)` (one Arrow column flattened and reshaped).
Both results are checked equal. Prints the seconds of each (the best of --repeats) and the ratio.

Run: .venv/bin/python bench/bench_column_array.py [--n 4500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from duogen.train.data import column_array


def best(fn, repeats: int) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4500, help="clips (the demo's training split has 4,500)")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    import datasets

    g = np.random.default_rng(0)
    cols = {"video_ids": (g.integers(0, 1000, (a.n, 3, 8, 8)).astype(np.int32), np.int64),
            "latents": (g.standard_normal((a.n, 4, 3, 8, 8)).astype(np.float32), np.float32)}
    with tempfile.TemporaryDirectory() as tmp:
        datasets.Dataset.from_dict({k: v.tolist() for k, (v, _) in cols.items()}).save_to_disk(tmp)
        ds = datasets.load_from_disk(tmp).with_format("numpy")
        print(f"{a.n} clips, best of {a.repeats}")
        for name, (ref, dtype) in cols.items():
            t_rows, rows = best(lambda: np.asarray(ds[name], dtype=dtype), a.repeats)
            t_bulk, bulk = best(lambda: column_array(ds, name, dtype), a.repeats)
            assert np.array_equal(rows, bulk) and np.array_equal(bulk, ref.astype(dtype))
            print(f"{name:10s} {str(ref.shape[1:]):14s} rows {t_rows:8.4f} s   bulk {t_bulk:8.4f} s   "
                  f"bulk / rows {t_bulk / t_rows:.4f} ({t_rows / t_bulk:.0f}x faster)")


if __name__ == "__main__":
    main()
