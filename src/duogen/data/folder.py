"""User folders -> duogen data sets (`duogen data import`), and the writer the bundled sets share.

A folder holds media files and a `metadata.jsonl` with one JSON object per line,
`{"file_name": "clips/a.mp4", "caption": "a dog runs"}` (the HF imagefolder
convention). Videos are trimmed or looped to the preset's frame count and
resized (centre crop, antialiased); an image becomes a still clip (the image
repeated for every frame, since the data set has one fixed frame count); an
audio file becomes a row with a black clip and an `audio` column at 16 kHz. A
line may also name `"audio_file_name"` to pair a clip with its sound.

The output has the shapes world's columns (`video`, `caption`, `attributes`,
`boxes`, optional `audio`; `attributes` and `boxes` are empty lists since real
files carry no ground truth) plus `source` (the original file name), with
`train` / `validation` splits. It is written into a temporary directory and
renamed into place at the end, so a failure never damages an existing output.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from ..errors import DataError
from .media import clip_preset, media_kind, read_audio, read_image, read_video, resize_video

AUDIO_RATE = 16000
VALIDATION_FRACTION = 0.1


def clip_features(frames: int, size: int, *, audio: bool = False, extra: Mapping[str, Any] | None = None) -> Any:
    """HF features of a duogen clip data set (the shapes world's columns, plus `extra`)."""
    import datasets

    feats: dict[str, Any] = {
        "video": datasets.Array4D((frames, size, size, 3), "uint8"),
        "caption": datasets.Value("string"),
        "attributes": datasets.List(
            {
                "shape": datasets.Value("string"),
                "color": datasets.Value("string"),
                "motion": datasets.Value("string"),
                "speed": datasets.Value("float64"),
                "size": datasets.Value("int32"),
            }
        ),
        "boxes": datasets.List(datasets.List(datasets.List(datasets.Value("int32"), length=4), length=frames)),
    }
    if audio:
        feats["audio"] = datasets.List(datasets.Value("float32"))
    feats.update(extra or {})
    return datasets.Features(feats)


def write_dataset(
    out: str | Path,
    splits: Mapping[str, Callable[[], Iterator[dict[str, Any]]]],
    features: Any,
    *,
    overwrite: bool = False,
    info: Mapping[str, Any] | None = None,
    check: Callable[[dict[str, int]], None] | None = None,
) -> dict[str, int]:
    """Write `{split: row generator}` as a `DatasetDict` at `out`, atomically; returns rows per split.

    A `DuogenError` raised while a generator runs surfaces as itself (not as
    `datasets`' wrapper), and leaves any existing `out` untouched; so does one
    raised by `check(rows per split)`, called before the output is renamed into place.
    """
    import datasets

    from ..errors import DuogenError
    from ..io import atomic_dir

    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"output directory '{out}' already exists; pass --overwrite to replace it")
    built = {}
    datasets.disable_progress_bars()
    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory(prefix="duogen-cache-") as cache:
        for name, gen in splits.items():
            try:
                built[name] = datasets.Dataset.from_generator(
                    _call, features=features, gen_kwargs={"gen": gen}, cache_dir=cache, split=datasets.Split(name)
                )
            except Exception as e:
                cause: BaseException | None = e
                while cause is not None and not isinstance(cause, DuogenError):
                    cause = cause.__cause__ or cause.__context__
                if cause is not None:
                    raise cause from None
                raise
        counts = {k: len(v) for k, v in built.items()}
        if check is not None:
            check(counts)
        datasets.DatasetDict(built).save_to_disk(str(tmp))
        if info is not None:
            (Path(tmp) / "source.json").write_text(json.dumps(dict(info), indent=2, default=str) + "\n")
        del built
    shutil.rmtree(out / "cache", ignore_errors=True)
    return counts


def _call(gen: Callable[[], Iterator[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    yield from gen()


def split_indices(n: int, seed: int, fraction: float = VALIDATION_FRACTION) -> tuple[list[int], list[int]]:
    """Deterministic (train, validation) index lists: a seeded shuffle, at least one validation item when n >= 2."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = 0 if n < 2 else max(1, int(round(n * fraction)))
    return sorted(order[n_val:]), sorted(order[:n_val])


def read_metadata(folder: Path) -> list[dict[str, Any]]:
    """Parse `metadata.jsonl`; a bad line is a DataError with its line number."""
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        raise DataError(f"{folder}: no metadata.jsonl; write one line per file: {{\"file_name\": \"a.mp4\", \"caption\": \"...\"}}")
    entries = []
    for lineno, line in enumerate(meta.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{meta}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("file_name"), str) or not obj["file_name"]:
            raise DataError(f"{where}: each line needs a \"file_name\" string")
        if not isinstance(obj.get("caption"), str) or not obj["caption"].strip():
            raise DataError(f"{where}: each line needs a non-empty \"caption\" string")
        for key in ("file_name", "audio_file_name"):
            name = obj.get(key)
            if name is not None and (Path(name).is_absolute() or ".." in Path(name).parts):
                raise DataError(f"{where}: {key} must be a path inside the folder, got {name!r}")
            # a symlink (the file or a folder on its way) that leads outside is refused like `../`
            if name is not None and not (folder / name).resolve().is_relative_to(folder.resolve()):
                raise DataError(f"{where}: {key} {name!r} is a symlink to {(folder / name).resolve()}, outside the"
                                " folder; copy the file into the folder instead")
        obj["_line"] = lineno
        entries.append(obj)
    if not entries:
        raise DataError(f"{meta}: no entries")
    return entries


def _load_entry(folder: Path, entry: dict[str, Any], size: int, frames: int) -> dict[str, Any]:
    """One metadata entry -> a row (raises DataError naming the file on any problem)."""
    path = folder / entry["file_name"]
    kind = media_kind(path)
    audio = None
    if kind == "video":
        video = resize_video(read_video(path), size, frames)
    elif kind == "image":
        video = resize_video(read_image(path)[None], size, frames)  # a still clip
    else:
        video = np.zeros((frames, size, size, 3), np.uint8)
        audio, _ = read_audio(path, sample_rate=AUDIO_RATE)
    if entry.get("audio_file_name"):
        audio, _ = read_audio(folder / entry["audio_file_name"], sample_rate=AUDIO_RATE)
    return {"video": video, "caption": entry["caption"].strip(), "attributes": [], "boxes": [],
            "source": entry["file_name"], "kind": kind, "audio": audio}


def import_folder(
    folder: str | Path,
    out: str | Path,
    *,
    preset: str = "tiny",
    skip_bad: bool = False,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert a folder of videos / images / audio with `metadata.jsonl` captions; return a summary."""
    import datasets

    from ..utils import progress

    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    size, frames = clip_preset(preset)
    if out.exists() and not overwrite:
        raise DataError(f"output directory '{out}' already exists; pass --overwrite to replace it")
    entries = read_metadata(folder)
    for e in entries:  # an unsupported extension is a mistake in the metadata, whatever --skip-bad says
        media_kind(e["file_name"])
    has_audio = any(media_kind(e["file_name"]) == "audio" or e.get("audio_file_name") for e in entries)
    train_idx, val_idx = split_indices(len(entries), seed)

    skipped: list[dict[str, str]] = []
    kinds = {"video": 0, "image": 0, "audio": 0}
    bar = progress(total=len(entries), desc="importing", unit="file")

    def rows(indices: list[int]) -> Callable[[], Iterator[dict[str, Any]]]:
        def gen() -> Iterator[dict[str, Any]]:
            for i in indices:
                bar.update(1)
                try:
                    row = _load_entry(folder, entries[i], size, frames)
                except DataError as err:
                    if not skip_bad:
                        raise
                    skipped.append({"file": entries[i]["file_name"], "error": str(err)})
                    continue
                kinds[row.pop("kind")] += 1
                audio = row.pop("audio")
                if has_audio:
                    row["audio"] = [] if audio is None else np.asarray(audio, np.float32)
                yield row
        return gen

    features = clip_features(frames, size, audio=has_audio, extra={"source": datasets.Value("string")})
    info = {"source": "folder", "folder": str(folder.resolve()), "preset": preset, "seed": seed}

    def check(counts: dict[str, int]) -> None:
        if sum(counts.values()) == 0:
            raise DataError(f"{folder}: every file was unreadable ({len(skipped)} skipped); nothing written")

    try:
        counts = write_dataset(out, {"train": rows(train_idx), "validation": rows(val_idx)}, features,
                               overwrite=overwrite, info=info, check=check)
    finally:
        bar.close()
    written = sum(counts.values())
    return {
        "out": str(out),
        "originals": len(entries),
        "written": written,
        "skipped": len(skipped),
        "skipped_files": skipped,
        "splits": counts,
        "videos": kinds["video"],
        "images": kinds["image"],
        "audio_files": kinds["audio"],
        "note": (f"{kinds['image']} image(s) became still clips (repeated for {frames} frames)" if kinds["image"] else "")
                + (f"; {kinds['audio']} audio file(s) got a black clip" if kinds["audio"] else ""),
        "size": size,
        "frames": frames,
        "audio_column": has_audio,
        "audio_rate": AUDIO_RATE if has_audio else None,
    }
