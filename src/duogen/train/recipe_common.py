"""The steps the AR and diffusion recipes share before their models differ.

Opening the training split, the text tokenizer (given, or trained on the
split's captions), and the on-disk cache of what the codec makes of every
clip (keyed by the codec's weights, the data set and the split), with the one
video encode both paradigms read (`encode_videos`: ids for the AR recipe,
latents for the diffusion recipe, from one encoder pass). Each recipe still
reads top to bottom in its own `train_*`; this module does not own the
models, the engine, or the other recipes' encode functions (audio, control,
instruction pairs).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

from ..errors import ConfigError, DataError


def file_hash(path: Path) -> str:
    """First 16 hex digits of the file's SHA-256 (a short key for caches)."""
    from ..io import file_sha256

    return file_sha256(path)[:16]


def load_split(data: Path, split: str, max_clips: int = 0) -> Any:
    """Split `split` of the data set at `data` (an HF `Dataset`), cut to its first `max_clips` rows (0 = all)."""
    from ..data import load_dataset

    ds = load_dataset(data)
    if split not in ds:
        raise DataError(f"data set '{data}' has no split {split!r}; it has: {', '.join(ds)}")
    rows = ds[split]
    if max_clips:
        rows = rows.select(range(min(max_clips, len(rows))))
    return rows


def text_tokenizer(text: str | Path | None, captions: list[str], out: Path, vocab_size: int) -> Any:
    """The SentencePiece model saved at `text`, or one of `vocab_size` pieces trained on `captions` into `out`."""
    from ..tokenizers.text import TEXT_MODEL_NAME, TextTokenizer, train_text_tokenizer
    from .backends import rank_zero_first

    if text is not None:
        return TextTokenizer.load(text)
    with rank_zero_first() as first:  # under torchrun every rank reads the one rank 0 trained
        if not first:
            return TextTokenizer.load(out / TEXT_MODEL_NAME)
        return train_text_tokenizer(captions, out, vocab_size=vocab_size)


def resolve_cache_dir(configured: str, out: Path) -> Path:
    """The encode cache's folder: the configured one, else OUT/../.cache (shared by runs under one folder)."""
    return Path(configured) if configured else out.parent / ".cache"


@contextlib.contextmanager
def codec_on_accelerator(codec: Any) -> Iterator[Any]:
    """The codec on the GPU (when torch sees one) for the one-off encode, back on the CPU afterwards."""
    from ..utils import resolve_device

    device = resolve_device("auto")
    codec.to(device)
    try:
        yield codec
    finally:
        codec.cpu()


def encode_clips(split: Any, fn: Callable[[dict[str, list[Any]]], dict[str, Any]], codec_dir: Path, data: Path,
                 split_name: str, cache: Path, *, batch_size: int, desc: str, column: str = "video", **key: Any) -> Any:
    """`fn` mapped over batches of `split`'s `column` (clips, or `audio` waveforms) as numpy, once: cached under `cache`.

    The cache key covers the codec's path and weights, the data set, the split
    and `key` (the recipe's cache version and whatever else its output depends on).
    """
    from .backends import rank_zero_first
    from .data import pretokenize

    key = {**key, "codec": str(codec_dir.resolve()), "weights": file_hash(codec_dir / "model.safetensors"),
           "data": str(data.resolve()), "split": split_name}
    # numpy format without a dtype: `pretokenize` saves the mapped set, and a dtype in the format is not JSON
    with rank_zero_first():  # under torchrun rank 0 encodes, the other ranks load its cache
        return pretokenize(split.with_format("numpy", columns=[column], output_all_columns=True), fn, cache, key=key,
                           batch_size=batch_size, remove_columns=list(split.column_names), desc=desc)


VIDEO_CACHE_VERSION = 1


def encode_videos(split: Any, codec: Any, codec_dir: Path, data: Path, split_name: str, cache: Path, *,
                  masked: Sequence[str] = (), mask_clip: Callable[[Any, str], Any] | None = None,
                  batch_size: int = 32) -> Any:
    """Every clip's continuous codec latents and codec ids from ONE encoder pass, cached under `cache`.

    Columns: `latents` float32 (C, f, h, w), un-normalized (what the diffusion recipe trains on) and
    `video_ids` int32 (f, h, w) = `codec.latents_to_ids(latents)`, the same ids `codec.encode` gives (what
    the AR recipe trains on). One cache serves both, so a diffusion run beside an AR run on the same codec,
    data and split encodes nothing (`duogen demo` trains both). `masked` names AR tasks whose masked clips
    (`mask_clip(clip, task)`) are encoded too, as `masked_ids` (inpaint) / `outpaint_ids`; they key the cache.
    """
    import numpy as np
    import torch

    masked = sorted(masked)
    if masked and mask_clip is None:
        raise ValueError("encode_videos: masked tasks need mask_clip")

    def fn(batch: dict[str, list[Any]]) -> dict[str, Any]:
        video = np.stack([np.asarray(v, dtype=np.uint8) for v in batch["video"]])  # (B, F, H, W, 3)
        with torch.inference_mode():
            z = codec.encode_latents(video).float()  # (B, C, f, h, w)
            out = {"latents": z.cpu().numpy(), "video_ids": codec.latents_to_ids(z).to(torch.int32).cpu().numpy()}
            for t in masked:
                m = np.stack([mask_clip(v, t) for v in video])
                out[f"{'masked' if t == 'inpaint' else 'outpaint'}_ids"] = codec.encode(m).to(torch.int32).cpu().numpy()
        return out

    return encode_clips(split, fn, codec_dir, data, split_name, cache, batch_size=batch_size,
                        desc="encoding clips with the codec", v=VIDEO_CACHE_VERSION, what="video", masked=masked)


def base_model_config(base_cfg: Any, run_cfg: Any, overrides: Sequence[str], keep: Sequence[str],
                      init_from: Path) -> Any:
    """The model config a fine-tune (`--init-from`) trains: the base model's.

    Only the `keep` keys (training behaviour such as `cond_dropout`) are taken from the `model.*`
    overrides; an override of any other key that differs from the base model is a ConfigError,
    and the preset's model values are ignored (the base model's config decides the architecture).
    """
    import dataclasses

    from .. import config as cfglib
    from ..errors import ConfigError

    given = cfglib.parse_overrides(list(overrides)).get("model", {})
    base_d, run_d = cfglib.to_dict(base_cfg), cfglib.to_dict(run_cfg)

    def leaves(tree: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
        if isinstance(tree, dict):
            for k, v in tree.items():
                yield from leaves(v, (*path, k))
        else:
            yield path

    def at(d: Any, path: tuple[str, ...]) -> Any:
        for k in path:
            d = d.get(k) if isinstance(d, dict) else None
        return d

    for path in leaves(given):
        b, r = at(base_d, path), at(run_d, path)
        if path[0] not in keep and b != r:
            raise ConfigError(f"model.{'.'.join(path)}={r} conflicts with --init-from {init_from} ({b}): the base"
                              " model's config decides the architecture; drop the override")
    return dataclasses.replace(base_cfg, **{k: getattr(run_cfg, k) for k in keep if k in given})


def check_same_codec(codec_dir: Path, base_codec: Path | None, init_from: Path) -> None:
    """A fine-tune keeps the codec its base model was trained on: `--tokenizer` must hold the same weights."""
    from ..errors import ConfigError

    if base_codec is None or not (base_codec / "model.safetensors").is_file():
        return  # the base's codec is not on this machine: the recipe compares latent shapes instead
    if file_hash(codec_dir / "model.safetensors") != file_hash(base_codec / "model.safetensors"):
        raise ConfigError(f"--tokenizer {codec_dir} is not the codec --init-from {init_from} was trained on"
                          f" ({base_codec}); pass --tokenizer {base_codec} or leave --tokenizer out")


def fine_tune_codec(tokenizer: str | Path | None, base_codec: Path | None, init_from: Path) -> Path:
    """The codec a fine-tune encodes with: `tokenizer` when given, else the base model's; checked to be the base's."""
    from ..errors import ConfigError

    if tokenizer is None and base_codec is None:
        raise ConfigError(f"--init-from {init_from} names no codec; pass --tokenizer DIR")
    codec = Path(tokenizer) if tokenizer is not None else base_codec
    check_same_codec(codec, base_codec, init_from)
    return codec


def model_saver(delta_of: Path | None) -> Callable[[Any, Path], None]:
    """The engine's `save_model`: the model's own directory, turned into a delta over `delta_of` when given
    (a partial fine-tune: only the changed tensors; `duogen.io.write_delta`)."""
    from ..io import write_delta

    def save(m: Any, p: Path) -> None:
        m.save_pretrained(p)
        if delta_of is not None:
            write_delta(p, delta_of)

    return save


def check_same_text(text: str | Path | None, base_tok: Any, init_from: Path) -> None:
    """A fine-tune keeps its base model's text tokenizer: a different `--text` is an error naming both."""
    from ..errors import ConfigError
    from ..tokenizers.text import TextTokenizer

    if text is None:
        return
    given = TextTokenizer.load(text)
    if base_tok is None or given.to_bytes() != base_tok.to_bytes():
        have = f"{base_tok.vocab_size} ids" if base_tok is not None else "none"
        raise ConfigError(f"--text {text} ({given.vocab_size} ids) is not the text tokenizer of --init-from {init_from}"
                          f" ({have}); leave --text out: a fine-tune keeps its model's text tokenizer")


def parse_new_tokens(entries: Sequence[str], what: str) -> dict[str, str]:
    """`["<v1>=circle"]` -> `{"<v1>": "circle"}` (a new token and the word or token its embedding starts from)."""
    from ..errors import ConfigError

    out: dict[str, str] = {}
    for e in entries:
        tok, sep, init = str(e).partition("=")
        if not sep or not tok.strip() or not init.strip():
            raise ConfigError(f"{what} entry {e!r} must look like TOKEN=WORD, e.g. <v1>=circle")
        out[tok.strip()] = init.strip()
    return out


class ARBase(NamedTuple):
    model: Any  # the base `MultimodalLM`
    codec: Any  # the video codec it was trained on
    codec_dir: Path


def load_ar_base(model_dir: Path, method: str) -> ARBase:
    """The base of an AR control: a t2v `MultimodalLM` and its codec (ConfigError when it is not one)."""
    from ..ar_models.model import MultimodalLM
    from ..io import read_json
    from ..tokenizers import load as load_codec

    conf = read_json(model_dir / "config.json")
    if not isinstance(conf, dict) or conf.get("kind") != "ar":
        raise ConfigError(f"{model_dir}: not an AR model directory (method {method} trains AR controls)")
    base = MultimodalLM.from_pretrained(model_dir)
    if "t2v" not in base.spec.tasks:
        raise ConfigError(f"{model_dir}: a control steers text-to-video; this model was trained for {base.spec.tasks}")
    codec_dir = base.codec_path(model_dir)
    if codec_dir is None or not Path(codec_dir).exists():
        raise ConfigError(f"{model_dir}: the codec it was trained on ({base.codec_ref}) is not there")
    return ARBase(base, load_codec(codec_dir), Path(codec_dir))
