"""The unified vocabulary: one id space for text, structural tokens, task tokens and codec ids.

Owns: the id ranges, the conversion both ways between a modality's local ids
(SentencePiece ids, codec ids) and global ids, the check that rejects ids
outside every range, and `vocab.json`. Nothing else in duogen adds or
subtracts offsets: callers say which range they mean and this class does the
arithmetic.

Layout (in order): `special` (structural tokens, `<pad>` = 0), `task` (one
token per task), `text` (the SentencePiece model's ids), then one range per
codec. A residual codec with L levels (audio) gets one range per level,
named `audio.0`, `audio.1`, ...: each level has its own embedding rows.

Growing a trained vocabulary (`add_text_token`, `add_task_token`) appends one
id per new token after every existing range (a range `+<v1>` of size 1), so
no existing id moves and a model's old embedding rows keep their meaning. A
new text token (a placeholder the text tokenizer gives local id `text_size + k`)
converts both ways like any text id; a new task token is looked up by name
like the built-in ones. `vocab.json` lists the additions in order under
`"added"`; a vocabulary without additions writes exactly what it always did.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import CheckpointError, DataError

VOCAB_NAME = "vocab.json"
FORMAT_VERSION = 1

SPECIAL_TOKENS = (
    "<pad>", "<bos>", "<eos>", "<bov>", "<eov>", "<boi>", "<eoi>", "<boa>", "<eoa>",
    "<bot>", "<eot>", "<mask>", "<sep>",
)
TASK_TOKENS = ("<t2v>", "<t2i>", "<i2v>", "<inpaint>", "<outpaint>", "<t2a>", "<v2a>", "<uncond>")


@dataclass(frozen=True)
class IdRange:
    """Global ids `start .. stop-1` belong to range `name`."""

    name: str
    start: int
    size: int

    @property
    def stop(self) -> int:
        return self.start + self.size

    def __contains__(self, i: object) -> bool:
        return isinstance(i, int) and self.start <= i < self.stop


def _as_array(ids: Any) -> tuple[Any, str]:
    """(array-like supporting arithmetic, kind) for torch tensors, numpy arrays, ints and sequences."""
    import numpy as np

    try:
        import torch

        if isinstance(ids, torch.Tensor):
            return ids, "torch"
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if isinstance(ids, np.ndarray):
        return ids, "numpy"
    if isinstance(ids, (int, np.integer)):
        return np.asarray(int(ids), dtype=np.int64), "int"
    return np.asarray(list(ids), dtype=np.int64), "list"


def _restore(arr: Any, kind: str) -> Any:
    if kind == "int":
        return int(arr)
    if kind == "list":
        return arr.tolist()
    return arr


class UnifiedVocab:
    """Id ranges and conversions. Build with `UnifiedVocab(text_size, {"video": K, "audio": (K, L)})`."""

    def __init__(self, text_size: int, codecs: Mapping[str, int | Sequence[int]] | None = None,
                 codec_refs: Mapping[str, str] | None = None):
        if int(text_size) <= 0:
            raise DataError(f"text_size must be positive, got {text_size}")
        self.tokens: dict[str, int] = {}
        self.ranges: dict[str, IdRange] = {}
        self.codec_levels: dict[str, int] = {}
        self.codec_refs: dict[str, str] = dict(codec_refs or {})
        self.added: list[dict[str, Any]] = []  # [{"token", "kind": "text" | "task", "id"}] in order of addition
        self.text_extra: list[int] = []  # global ids of added text tokens; local text id text_size + k
        self._add("special", len(SPECIAL_TOKENS))
        for i, t in enumerate(SPECIAL_TOKENS):
            self.tokens[t] = self.ranges["special"].start + i
        self._add("task", len(TASK_TOKENS))
        for i, t in enumerate(TASK_TOKENS):
            self.tokens[t] = self.ranges["task"].start + i
        self._add("text", int(text_size))
        for name, spec in (codecs or {}).items():
            self.add_codec(name, spec)

    # ------------------------------------------------------------------ construction
    def _add(self, name: str, size: int) -> IdRange:
        if name in self.ranges:
            raise DataError(f"vocabulary range '{name}' already exists")
        if size <= 0:
            raise DataError(f"vocabulary range '{name}' must have a positive size, got {size}")
        r = IdRange(name, self.size, int(size))
        self.ranges[name] = r
        return r

    def add_codec(self, name: str, spec: int | Sequence[int]) -> None:
        """Add a codec's ids: `K` (one codebook) or `(K, L)` (L residual levels, one range each)."""
        if "." in name or name in ("special", "task", "text"):
            raise DataError(f"bad codec name {name!r}")
        if isinstance(spec, (list, tuple)):
            k, levels = int(spec[0]), int(spec[1])
        else:
            k, levels = int(spec), 1
        self.codec_levels[name] = levels
        if levels == 1:
            self._add(name, k)
        else:
            for lvl in range(levels):
                self._add(f"{name}.{lvl}", k)

    def _append_token(self, token: str, kind: str) -> int:
        if not isinstance(token, str) or not token.strip():
            raise DataError(f"a new token needs a non-empty name, got {token!r}")
        if token in self.tokens or any(a["token"] == token for a in self.added):
            raise DataError(f"token {token!r} is already in the vocabulary")
        i = self._add(f"+{token}", 1).start
        self.added.append({"token": token, "kind": kind, "id": i})
        return i

    def add_text_token(self, token: str) -> int:
        """Append a text token (a placeholder such as "<v1>"); returns its global id. Its local text id is
        `text_size + k` (k-th added), the id the text tokenizer's `add_placeholder` gives it."""
        i = self._append_token(token, "text")
        self.text_extra.append(i)
        return i

    def add_task_token(self, token: str) -> int:
        """Append a task token (e.g. "<edit>"); returns its global id, also `vocab.id(token)` from now on."""
        i = self._append_token(token, "task")
        self.tokens[token] = i
        return i

    @property
    def text_size(self) -> int:
        """Local text ids: the text range plus the text tokens added after it."""
        return self.ranges["text"].size + len(self.text_extra)

    # ------------------------------------------------------------------ lookups
    @property
    def size(self) -> int:
        return max((r.stop for r in self.ranges.values()), default=0)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, token: str) -> int:
        return self.id(token)

    def id(self, token: str) -> int:
        """Global id of a special or task token, e.g. `vocab.id("<bov>")`."""
        try:
            return self.tokens[token]
        except KeyError:
            raise DataError(f"unknown token {token!r}; known: {', '.join(self.tokens)}") from None

    def range(self, name: str) -> IdRange:
        try:
            return self.ranges[name]
        except KeyError:
            raise DataError(f"unknown vocabulary range {name!r}; known: {', '.join(self.ranges)}") from None

    def codec_range(self, name: str, level: int | None = None) -> IdRange:
        levels = self.codec_levels.get(name)
        if levels is None:
            raise DataError(f"no codec named {name!r} in this vocabulary; codecs: {', '.join(self.codec_levels) or 'none'}")
        if levels == 1:
            if level not in (None, 0):
                raise DataError(f"codec {name!r} has one level; got level {level}")
            return self.ranges[name]
        if level is None or not 0 <= level < levels:
            raise DataError(f"codec {name!r} has {levels} residual levels; pass level=0..{levels - 1}")
        return self.ranges[f"{name}.{level}"]

    def name_of(self, i: int) -> str:
        """The range a global id belongs to (DataError if none)."""
        for r in self.ranges.values():
            if i in r:
                return r.name
        raise DataError(f"id {i} is outside every vocabulary range (vocabulary size {self.size})")

    def token_name(self, i: int) -> str | None:
        for t, j in self.tokens.items():
            if j == i:
                return t
        return None

    # ------------------------------------------------------------------ checks and conversions
    def check(self, ids: Any) -> None:
        """Raise DataError if any id lies outside every range (ranges are contiguous from 0)."""
        arr, _ = _as_array(ids)
        if arr.numel() if hasattr(arr, "numel") else arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= self.size:
                bad = lo if lo < 0 else hi
                raise DataError(f"id {bad} is outside every vocabulary range (valid ids are 0..{self.size - 1})")

    def _to_global(self, r: IdRange, ids: Any, what: str) -> Any:
        arr, kind = _as_array(ids)
        if arr.numel() if hasattr(arr, "numel") else arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= r.size:
                raise DataError(f"{what} id {lo if lo < 0 else hi} is outside 0..{r.size - 1}")
        return _restore(arr + r.start, kind)

    def _from_global(self, r: IdRange, ids: Any) -> Any:
        arr, kind = _as_array(ids)
        if arr.numel() if hasattr(arr, "numel") else arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < r.start or hi >= r.stop:
                bad = lo if lo < r.start else hi
                raise DataError(f"global id {bad} is not in range '{r.name}' ({r.start}..{r.stop - 1})")
        return _restore(arr - r.start, kind)

    def text_to_global(self, ids: Any) -> Any:
        r = self.ranges["text"]
        if not self.text_extra:
            return self._to_global(r, ids, "text")
        arr, kind = _as_array(ids)
        if arr.numel() if hasattr(arr, "numel") else arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= self.text_size:
                raise DataError(f"text id {lo if lo < 0 else hi} is outside 0..{self.text_size - 1}")
        table = self._text_table(arr, kind)
        return _restore(table[arr], kind)

    def global_to_text(self, ids: Any) -> Any:
        r = self.ranges["text"]
        if not self.text_extra:
            return self._from_global(r, ids)
        arr, kind = _as_array(ids)
        table = self._text_table(arr, kind)
        if arr.numel() if hasattr(arr, "numel") else arr.size:
            ok = ((arr >= r.start) & (arr < r.stop))
            for g in self.text_extra:
                ok = ok | (arr == g)
            if not bool(ok.all()):
                bad = int(arr[~ok].reshape(-1)[0])
                raise DataError(f"global id {bad} is not a text id (range 'text' {r.start}..{r.stop - 1} or an added text token)")
        inverse = {int(g): k for k, g in enumerate(table.tolist())}
        out = arr.clone() if kind == "torch" else arr.copy()
        flat = out.reshape(-1)
        for j, g in enumerate(arr.reshape(-1).tolist()):
            flat[j] = inverse[int(g)]
        return _restore(out, kind)

    def _text_table(self, arr: Any, kind: str) -> Any:
        """Local text id -> global id, as an array of the caller's kind (for fancy indexing)."""
        import numpy as np

        r = self.ranges["text"]
        table = np.concatenate([np.arange(r.start, r.stop, dtype=np.int64), np.asarray(self.text_extra, dtype=np.int64)])
        if kind == "torch":
            import torch

            return torch.as_tensor(table, device=arr.device).to(arr.dtype)
        return table

    def codec_to_global(self, name: str, ids: Any, level: int | None = None) -> Any:
        """Codec ids -> global ids. For a residual codec with `level=None`, the last axis is the level."""
        if self.codec_levels.get(name, 1) > 1 and level is None:
            return self._per_level(name, ids, self.codec_to_global)
        return self._to_global(self.codec_range(name, level), ids, f"codec '{name}'")

    def global_to_codec(self, name: str, ids: Any, level: int | None = None) -> Any:
        if self.codec_levels.get(name, 1) > 1 and level is None:
            return self._per_level(name, ids, self.global_to_codec)
        return self._from_global(self.codec_range(name, level), ids)

    def _per_level(self, name: str, ids: Any, fn: Any) -> Any:
        arr, kind = _as_array(ids)
        levels = self.codec_levels[name]
        if arr.ndim == 0 or arr.shape[-1] != levels:
            raise DataError(f"codec {name!r} ids need a last axis of {levels} residual levels, got shape {tuple(arr.shape)}")
        out = arr.clone() if kind == "torch" else arr.copy()
        for lvl in range(levels):
            out[..., lvl] = fn(name, arr[..., lvl], level=lvl)
        return _restore(out, kind)

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        d = {
            "format_version": FORMAT_VERSION,
            "size": self.size,
            "text_size": self.ranges["text"].size,
            "codecs": {n: ([self.codec_range(n, 0 if lv > 1 else None).size, lv] if lv > 1
                           else self.ranges[n].size) for n, lv in self.codec_levels.items()},
            "codec_refs": self.codec_refs,
            "ranges": [{"name": r.name, "start": r.start, "size": r.size} for r in self.ranges.values()],
            "tokens": self.tokens,
        }
        if self.added:  # only then: a vocabulary that never grew writes what it always did
            d["added"] = [dict(a) for a in self.added]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "vocab.json") -> "UnifiedVocab":
        try:
            if d.get("format_version") != FORMAT_VERSION:
                raise CheckpointError(f"{source}: vocab format_version {d.get('format_version')!r}; this duogen"
                                      f" reads {FORMAT_VERSION} (a newer duogen wrote it? upgrade)")
            v = cls(int(d["text_size"]), dict(d["codecs"]), dict(d.get("codec_refs", {})))
            for a in d.get("added", []):
                if a["kind"] not in ("text", "task"):
                    raise DataError(f"added token {a['token']!r} has kind {a['kind']!r}, not 'text' or 'task'")
                i = v.add_text_token(a["token"]) if a["kind"] == "text" else v.add_task_token(a["token"])
                if i != a["id"]:
                    raise DataError(f"added token {a['token']!r} has id {a['id']}, expected {i}")
        except (KeyError, TypeError, ValueError, DataError) as e:
            raise CheckpointError(f"{source}: not a duogen vocabulary ({e})") from None
        saved = [(r["name"], r["start"], r["size"]) for r in d.get("ranges", [])]
        mine = [(r.name, r.start, r.size) for r in v.ranges.values()]
        if saved != mine or dict(d.get("tokens", {})) != v.tokens:
            raise CheckpointError(f"{source}: ranges or tokens differ from this version of duogen's layout")
        return v

    def save(self, path: str | Path) -> Path:
        from ..io import atomic_write_json

        path = Path(path)
        if path.is_dir():
            path = path / VOCAB_NAME
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "UnifiedVocab":
        from ..io import read_json

        path = Path(path)
        if path.is_dir():
            path = path / VOCAB_NAME
        return cls.from_dict(read_json(path), source=str(path))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnifiedVocab) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        parts = ", ".join(f"{r.name}=[{r.start},{r.stop})" for r in self.ranges.values())
        return f"UnifiedVocab(size={self.size}, {parts})"
