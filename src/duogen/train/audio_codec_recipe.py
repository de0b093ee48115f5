"""Recipe: train the SoundStream-style audio codec on espeak-ng speech and measure it on held-out speech.

    python -m duogen.train.audio_codec_recipe --out runs/audio_codec --minutes 4

Data: captions in the shapes world's style ("a small red circle slides to the left")
and random word lists, spoken by espeak-ng (`duogen.data.speech`) at varied pitch
and rate. Training sees 0.5 s segments of the training utterances; evaluation
reconstructs whole held-out utterances whose texts never occur in training and
reports SI-SNR (dB) and mel distance (`duogen.tokenizers.audio_codec`). The run
directory holds the engine's files (`config.yaml`, `metrics.jsonl`, `loss.png`,
`final/` = the codec) and `eval.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .engine import LossOutput, TrainConfig, fit

COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "pink")
SHAPES = ("circle", "square", "triangle", "star", "seven", "three", "zero", "eight")
MOVES = ("moves left", "moves right", "moves up", "moves down", "slides to the left", "drifts upward",
         "bounces to the right", "stays still", "falls down", "rises slowly")
SIZES = ("", "small ", "big ", "tiny ", "large ")
WORDS = (
    "apple river stone quick bright window garden silver music paper orange yellow seven eleven thunder quiet "
    "morning winter summer purple candle mountain forest ocean rabbit tiger pencil number letter village market "
    "bottle castle dragon engine feather guitar hammer island jacket kettle ladder mirror needle pillow rocket "
    "saddle ticket umbrella violin wagon zipper basket button carpet doctor finger honey lemon monkey planet "
    "shadow spider tomato turtle wizard yellow zebra blanket cookie dinner puzzle sister brother friend travel"
).split()


def caption_text(rng: np.random.Generator) -> str:
    """A shapes-world-style caption (one or two objects) or a random word list, 50/50."""
    if rng.random() < 0.5:
        n = int(rng.integers(3, 9))
        return " ".join(rng.choice(WORDS, n).tolist())

    def obj() -> str:
        return f"a {rng.choice(SIZES)}{rng.choice(COLORS)} {rng.choice(SHAPES)}"

    first = f"{obj()} {rng.choice(MOVES)}"
    return first if rng.random() < 0.6 else f"{first} and {obj()} {rng.choice(MOVES)}"


def speech_corpus(n: int, seed: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[tuple[str, np.ndarray]]:
    """n distinct (text, 16 kHz float32 audio) pairs spoken at varied pitch and rate; texts in `exclude` are skipped."""
    from ..data.speech import speak
    from ..utils import progress

    rng = np.random.default_rng(seed)
    out: list[tuple[str, np.ndarray]] = []
    seen = set(exclude)
    bar = progress(total=n, desc="speaking", unit="utt")
    while len(out) < n:
        text = caption_text(rng)
        if text in seen:
            continue
        seen.add(text)
        audio = speak(text, 16000, words_per_minute=int(rng.integers(140, 200)), pitch=int(rng.integers(30, 70)))
        out.append((text, audio))
        bar.update(1)
    bar.close()
    return out


def segments(utterances: list[np.ndarray], length: int, hop: int) -> np.ndarray:
    """Cut utterances (joined with 0.1 s silences) into overlapping windows: (N, 1, length) float32."""
    gap = np.zeros(1600, np.float32)
    stream = np.concatenate([np.concatenate([u, gap]) for u in utterances])
    starts = range(0, len(stream) - length + 1, hop)
    return np.stack([stream[s : s + length] for s in starts])[:, None, :]


@dataclass
class AudioCodecRun:
    """Everything the recipe needs; the engine's part is `train`."""

    preset: str = "tiny"
    codec_overrides: list[str] = field(default_factory=list)
    train_utterances: int = 400
    eval_utterances: int = 40
    segment_s: float = 0.5
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=100_000, batch_size=8, lr=1e-3, warmup_steps=20, min_lr_ratio=1.0, grad_clip=1.0,
        precision="auto", max_minutes=4.0, log_every=10,
    ))


def dataset_utterances(data: str | Path, split: str, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    """(caption, audio) pairs from a data set's `audio` column (e.g. `duogen data make shapes --audio`);
    the first `limit` rows (None = all), empty clips left out."""
    from ..data import load_dataset
    from ..errors import DataError

    dd = load_dataset(data)
    if split not in dd or "audio" not in dd[split].column_names:
        raise DataError(f"{data}: split {split!r} has no `audio` column; make the data with --audio")
    n = len(dd[split]) if limit is None else min(limit, len(dd[split]))
    rows = dd[split].select_columns(["caption", "audio"]).select(range(n))
    out = [(r["caption"], np.asarray(r["audio"], np.float32)) for r in rows if len(r["audio"])]
    if not out:
        raise DataError(f"{data}: split {split!r} has no non-empty audio")
    return out


def main(out: str | Path, run: AudioCodecRun, data: str | Path | None = None) -> dict[str, Any]:
    """Train on espeak-ng speech (or on `data`'s audio column: train split, evaluated on validation)."""
    import torch

    from ..io import atomic_write_json
    from ..tokenizers.audio_codec import build_audio_codec, codec_loss, evaluate

    from ..utils import launch_rank
    from .backends import check_launch

    out = Path(out)
    seed = run.train.seed
    check_launch(run.train)  # a launch mistake fails here, before the speech is made
    if data is None:
        train = speech_corpus(run.train_utterances, seed)
        held = speech_corpus(run.eval_utterances, seed + 10_000, exclude={t for t, _ in train})
    else:
        train = dataset_utterances(data, "train", run.train_utterances)
        held = dataset_utterances(data, "validation", run.eval_utterances)
    seg = int(run.segment_s * 16000)
    data = torch.from_numpy(segments([a for _, a in train], seg, seg // 2))  # (N, 1, S)

    torch.manual_seed(seed)
    codec = build_audio_codec(run.preset, run.codec_overrides)

    def loss_fn(model: Any, batch: torch.Tensor) -> LossOutput:
        res = codec_loss(model, batch)
        return LossOutput(res.loss, int(batch.shape[0]), res.metrics)

    def save(model: Any, path: Path) -> None:
        with torch.no_grad():  # per-channel latent statistics for diffusion models on these latents
            model.eval()
            model.set_latent_stats(torch.cat([model.encode_latents(b) for b in data[:256].split(32)]))
        model.save_pretrained(path)

    summary = fit(codec, loss_fn, data, run.train, out, save_model=save,
                  run_config={"model": {"kind": "audio_codec", "preset": run.preset, "overrides": run.codec_overrides},
                              "recipe": dataclasses.asdict(run)})
    if launch_rank() != 0:  # under torchrun rank 0 evaluates and reports
        return {"steps": summary.steps, "stopped": summary.stopped, "final_loss": summary.final_loss}
    if (out / "final").is_dir():
        from ..tokenizers import load as load_codec_dir

        codec = load_codec_dir(out / "final")  # the saved weights (whole under ZeRO-3 too)
    codec.eval()
    result = evaluate(codec, [a for _, a in held])
    report = {
        "heldout": result,
        "heldout_seconds": round(result["seconds"], 1),
        "train_utterances": len(train),
        "train_segments": int(data.shape[0]),
        "steps": summary.steps,
        "train_wall_s": round(summary.wall_s, 1),
        "stopped": summary.stopped,
        "final_loss": summary.final_loss,
        "precision": summary.precision,
        "frame_rate_hz": codec.cfg.sample_rate / codec.hop,
        "bitrate_bps": codec.bits_per_second,
        "codec": str(out / "final"),
    }
    atomic_write_json(out / "eval.json", report)
    return report


RUN_KEYS = ("train_utterances", "eval_utterances", "segment_s")  # the recipe's own top-level keys


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """`key=value` overrides -> (the run's: `train.*` and RUN_KEYS; the codec's: the rest, a `model.` prefix dropped)."""
    run: list[str] = []
    codec: list[str] = []
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key.startswith("train.") or key in RUN_KEYS:
            run.append(item)
        else:
            codec.append(item.removeprefix("model."))
    return run, codec


def train_audio_codec(data: str | Path | None, out: str | Path, *, preset: str = "tiny", overrides: Sequence[str] = (),
                      config_file: str | Path | None = None) -> dict[str, Any]:
    """`duogen train tokenizer --modality audio`: `train.*` overrides (max_minutes, steps, seed, ...) and
    RUN_KEYS set the run, every other key the codec config; `config_file` is a YAML of `AudioCodecRun` fields."""
    from .. import config

    run_overrides, codec_overrides = split_overrides(overrides)
    run = config.load(AudioCodecRun, file=config_file, overrides=run_overrides)
    run = dataclasses.replace(run, preset=preset, codec_overrides=[*run.codec_overrides, *codec_overrides])
    return main(out, run, data)


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train the audio codec on espeak-ng speech; report held-out SI-SNR and mel distance.")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--preset", default="tiny", help="tiny | small | base")
    p.add_argument("--minutes", type=float, default=4.0, help="wall-clock training budget")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--precision", default="auto", help="auto (bf16 where this machine runs it fast, else fp32) | bf16 | fp32")
    p.add_argument("--utterances", type=int, default=400, help="training utterances")
    p.add_argument("--eval-utterances", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="a data set with an `audio` column instead of fresh espeak-ng speech")
    p.add_argument("overrides", nargs="*", help="codec config overrides, key=value")
    a = p.parse_args(argv)
    run = AudioCodecRun(preset=a.preset, codec_overrides=a.overrides, train_utterances=a.utterances,
                        eval_utterances=a.eval_utterances)
    run.train = dataclasses.replace(run.train, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                                    precision=a.precision, max_minutes=a.minutes, seed=a.seed)
    print(json.dumps(main(a.out, run, a.data), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
