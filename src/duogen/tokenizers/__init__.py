"""Text tokenizer, image / video / audio codecs and the unified vocabulary.

`load(path)` opens any saved codec directory by the "kind" in its config.json.
Import-light: the codec modules (and torch) are imported only when a codec is loaded.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

# kind in config.json -> (module, class) that has `from_pretrained(dir)`
CODEC_KINDS: dict[str, tuple[str, str]] = {
    "video_codec": ("duogen.tokenizers.video_codec", "VideoCodec"),
    "image_codec": ("duogen.tokenizers.image_codec", "ImageCodec"),
    "audio_codec": ("duogen.tokenizers.audio_codec", "AudioCodec"),
}


def load(path: str | Path, map_location: str = "cpu") -> Any:
    """Load the codec saved in `path` (a model directory with config.json "kind"), in eval mode."""
    from ..errors import CheckpointError

    path = Path(path)
    conf_path = path / "config.json"
    if not conf_path.is_file():
        raise CheckpointError(f"{path}: not a codec directory (no config.json); pass a run's final/ folder")
    try:
        kind = json.loads(conf_path.read_text()).get("kind")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        raise CheckpointError(f"{conf_path}: not a valid codec config (JSON object with a 'kind')") from None
    if kind not in CODEC_KINDS:
        raise CheckpointError(f"{path}: unknown codec kind {kind!r}; known kinds: {', '.join(CODEC_KINDS)}")
    module, cls = CODEC_KINDS[kind]
    codec_cls = getattr(importlib.import_module(module), cls)
    return codec_cls.from_pretrained(path, map_location=map_location)
