"""Zero-shot classification with either paradigm: which of some candidate captions explains a clip best.

- AR: the log-likelihood of the clip's codec ids under each caption, log p(ids | caption) summed over the
  clip's tokens, from one teacher-forced pass per candidate (`MultimodalLM.score`, batched).
- Diffusion (Li et al. 2023, "Your Diffusion Model is Secretly a Zero-Shot Classifier", Algorithm 2): the
  denoising error E_{t,eps} ||target(x_0, eps, t) - model(x_t, t, c)||^2 under each caption c
  (`LatentDiffusionModel.loss_per_example`), with the same (t, eps) samples for every candidate, in rounds:
  each round adds `trials[r]` samples to every surviving candidate, then keeps the `keep[r]` lowest mean
  errors. The many candidates get a few samples, the last few many.

Owns: `classify(gen, clip, labels)` -> `ClassifyResult` on a loaded generator (`bridges.generate.load_generator`),
the label checks, fitting an input clip to the model's size, the adaptive pruning (`adaptive_rank`, a pure
function over an error callback) and the (t, eps) sample schedule. Does not own: the scores themselves (the
core APIs above), evaluation on a data set (`duogen.eval.zero_shot`), the `duogen classify` command
(`duogen.cli_classify`).

Shape notation: C candidates, K (t, eps) samples, B batch, (Cz, f, h, w) one clip's latent.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError, DataError


@dataclass
class ClassifyResult:
    """The candidate captions of one clip, ranked best first."""

    labels: list[str]  # best first
    # Higher is better. AR: log p(clip ids | label), summed over the clip's tokens. Diffusion: minus the mean
    # denoising error over the (t, eps) samples the label saw; a label pruned in an earlier round ranks below
    # every label that went on, whatever its score (its mean is over fewer samples).
    scores: list[float]
    samples: list[int]  # per label: diffusion (t, eps) samples behind its score; AR: 1 (the exact likelihood)
    forward_passes: int  # network evaluations of one example: AR one sequence per label; diffusion one per (label, t, eps)
    seconds: float  # wall time of the scoring, the clip's encoding included, loading not
    info: dict[str, Any] = field(default_factory=dict)  # paradigm, settings, per-round candidate counts

    def to_dict(self) -> dict[str, Any]:
        return {"labels": self.labels, "scores": self.scores, "samples": self.samples,
                "forward_passes": self.forward_passes, "seconds": round(self.seconds, 4), **self.info}


@dataclass
class DiffusionClassifyConfig:
    """The diffusion classifier's sample budget (Li et al. 2023, Algorithm 2: TrialList / KeepList)."""

    trials: tuple[int, ...] = (8, 24)  # (t, eps) samples added per round to every surviving candidate
    keep: tuple[int, ...] = (3,)  # candidates kept after each round but the last (len(trials) - 1 entries)
    t_min: float = 0.05  # timesteps are spread over [t_min, t_max] * num_train_timesteps
    t_max: float = 0.95
    batch: int = 64  # examples per denoiser call (bounds memory, not the result)

    def check(self) -> None:
        if not self.trials or any(int(n) < 1 for n in self.trials):
            raise ConfigError(f"trials must be one or more positive sample counts (e.g. 8,24), got {list(self.trials)}")
        if len(self.keep) != len(self.trials) - 1:
            raise ConfigError(f"keep needs one entry per round but the last: {len(self.trials) - 1} for trials"
                              f" {list(self.trials)}, got {list(self.keep)}")
        if any(int(k) < 1 for k in self.keep) or list(self.keep) != sorted(self.keep, reverse=True):
            raise ConfigError(f"keep must be positive and non-increasing (e.g. 5,2), got {list(self.keep)}")
        if not 0.0 <= self.t_min <= self.t_max <= 1.0:
            raise ConfigError(f"need 0 <= t_min <= t_max <= 1, got t_min={self.t_min} t_max={self.t_max}")
        if self.batch < 1:
            raise ConfigError(f"batch must be >= 1, got {self.batch}")


# ----------------------------------------------------------------------------- checks and inputs


def check_labels(labels: Any) -> list[str]:
    """Candidate captions: at least two distinct non-empty strings (compared after stripping spaces)."""
    if isinstance(labels, str) or not isinstance(labels, (list, tuple)):
        raise DataError("labels must be a list of caption strings, e.g. --labels \"a red circle\" \"a blue square\"")
    out = []
    for i, lab in enumerate(labels):
        if not isinstance(lab, str):
            raise DataError(f"label {i + 1} is a {type(lab).__name__}, not a caption string")
        if not lab.strip():
            raise DataError(f"label {i + 1} is empty; every label must be a caption such as \"a red circle\"")
        out.append(" ".join(lab.split()))
    if len(out) < 2:
        raise DataError(f"classification needs at least two labels to choose between, got {len(out)}")
    seen: dict[str, int] = {}
    for i, lab in enumerate(out):
        if lab in seen:
            raise DataError(f"labels {seen[lab] + 1} and {i + 1} are the same caption ({lab!r}); give distinct labels")
        seen[lab] = i
    return out


def load_classifier(directory: str | Path) -> Any:
    """A model directory -> its generator (`load_generator`), refused unless it is an AR or a diffusion model
    that reads captions."""
    from ..io import read_json
    from .generate import load_generator

    conf = read_json(Path(directory) / "config.json")
    kind = conf.get("kind") if isinstance(conf, dict) else None
    if kind not in ("ar", "diffusion"):
        raise CheckpointError(f"{directory}: holds a {kind!r} model; classification needs an AR or a diffusion model"
                              " trained on captions (RUN/final of `duogen train ar` or `duogen train diffusion`)")
    gen = load_generator(directory)
    check_text_condition(gen)
    return gen


def check_text_condition(gen: Any) -> None:
    """Refuse a model that cannot read a caption: it could only give every label the same score."""
    if gen.kind == "ar":
        m = gen.model
        if m.text is None:
            raise CheckpointError("this AR model has no text tokenizer (text.model): it cannot score captions")
        if "t2v" not in m.spec.tasks:
            raise CheckpointError(f"this AR model was trained on tasks {', '.join(m.spec.tasks)}, not t2v: it has no"
                                  " caption-to-clip likelihood to classify with")
    elif gen.kind == "diffusion":
        if gen.model.config.text.kind == "transformer" and gen.model.tokenizer is None:
            raise CheckpointError("this diffusion model has no text tokenizer (text.model): it cannot read captions")
    else:
        raise CheckpointError(f"classification needs an AR or a diffusion model, got kind {gen.kind!r}")


def _check_budget(gen: Any, labels: Sequence[str]) -> None:
    """A label longer than the text budget would be scored truncated (two labels could become one): refuse it."""
    if gen.kind == "ar":
        tok, budget = gen.model.text, gen.model.spec.max_text
    else:
        tok, budget = gen.model.tokenizer, gen.model.config.text.max_tokens
    if tok is None:  # a pretrained text encoder with its own tokenizer truncates with a warning
        return
    for lab in labels:
        n = len(tok.encode(lab))
        if n > budget:
            raise DataError(f"label {lab!r} is {n} text tokens, longer than the model's budget of {budget}; shorten it")


def codec_of(gen: Any) -> Any:
    return gen.codec if gen.kind == "ar" else gen.model._need_codec()


def read_clip(path: str | Path) -> np.ndarray:
    """A video or image file -> uint8 (F, H, W, 3) (an image is one frame)."""
    from ..data.media import media_kind, read_image, read_video

    kind = media_kind(path)
    if kind == "audio":
        raise DataError(f"{path}: an audio file; classification reads a video or an image")
    return read_video(path) if kind == "video" else read_image(path)[None]


def fit_clip(video: Any, codec: Any) -> np.ndarray:
    """uint8 (F, H, W, 3) (or an image (H, W, 3)) at the codec's clip size; resized or looped with a warning."""
    from ..data.media import resize_video

    v = np.asarray(video)
    if v.ndim == 3:
        v = v[None]
    if v.ndim != 4 or v.shape[-1] != 3 or v.dtype != np.uint8:
        raise DataError(f"a clip must be uint8 (F, H, W, 3) or an image (H, W, 3), got {v.dtype} {v.shape}")
    size, frames = int(codec.cfg.size), int(codec.cfg.frames)
    if v.shape[:3] != (frames, size, size):
        warnings.warn(f"input clip {v.shape[:3]} fitted to {(frames, size, size)}, the model's size (frames"
                      " trimmed or looped, frames resized)", UserWarning, stacklevel=3)
        v = resize_video(v, size, frames)
    return v


# ----------------------------------------------------------------------------- adaptive pruning


@dataclass
class Ranking:
    """What `adaptive_rank` found: candidate indices best first with their mean errors and sample counts."""

    order: list[int]
    mean_error: list[float]  # in `order`
    samples: list[int]  # in `order`
    evaluations: int  # (candidate, sample) errors computed
    rounds: list[int]  # candidates scored in each round


def adaptive_rank(errors: Callable[[list[int], list[int]], torch.Tensor], n: int, trials: Sequence[int],
                  keep: Sequence[int]) -> Ranking:
    """Li et al. 2023, Algorithm 2: rounds of more samples for fewer candidates; lowest mean error wins.

    errors(candidates, samples) -> (len(candidates), len(samples)) errors of those candidates at those sample
    indices; sample k is the same for every candidate (the caller owns what it is). Round r scores the
    surviving candidates on the next trials[r] samples and, but after the last round, keeps the keep[r]
    lowest means over all samples so far. Candidates dropped later rank above those dropped earlier.
    """
    alive = list(range(n))
    total = torch.zeros(n, dtype=torch.float64)
    count = [0] * n
    dropped: list[list[int]] = []
    k0, evaluations, rounds = 0, 0, []
    for r, n_trials in enumerate(trials):
        ks = list(range(k0, k0 + int(n_trials)))
        k0 += int(n_trials)
        e = errors(alive, ks).double()  # (len(alive), len(ks))
        evaluations += e.numel()
        rounds.append(len(alive))
        for i, c in enumerate(alive):
            total[c] += e[i].sum()
            count[c] += len(ks)
        alive.sort(key=lambda c: float(total[c]) / count[c])
        if r < len(trials) - 1 and keep[r] < len(alive):
            dropped.append(alive[keep[r]:])
            alive = alive[: keep[r]]
    order = alive + [c for group in reversed(dropped) for c in group]
    return Ranking(order, [float(total[c]) / count[c] for c in order], [count[c] for c in order], evaluations, rounds)


def van_der_corput(n: int) -> list[float]:
    """The first n points of the base-2 van der Corput sequence (0.5, 0.25, 0.75, ...): any prefix is spread
    evenly over (0, 1) and no point repeats, so each round's timesteps fill the gaps of the earlier ones."""
    out = []
    for i in range(1, n + 1):
        x, base = 0.0, 0.5
        while i:
            x += base * (i & 1)
            i >>= 1
            base /= 2
        out.append(x)
    return out


def diffusion_samples(model: Any, n: int, cfg: DiffusionClassifyConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The n shared (t, eps) samples: t (n,) int64 over [t_min, t_max] * N in van der Corput order, eps (n, Cz, f, h, w)."""
    N = model.schedule.num_train_timesteps
    lo, hi = cfg.t_min * (N - 1), cfg.t_max * (N - 1)
    t = torch.tensor([round(lo + u * (hi - lo)) for u in van_der_corput(n)], dtype=torch.long)  # (n,)
    eps = torch.randn((n, *model.config.latent), generator=torch.Generator().manual_seed(int(seed)))  # (n, Cz, f, h, w)
    return t, eps


def diffusion_errors(model: Any, z: torch.Tensor, labels: Sequence[str], t: torch.Tensor, eps: torch.Tensor,
                     batch: int = 64) -> torch.Tensor:
    """Denoising errors of one clip's latent z (1, Cz, f, h, w) under each label at each shared (t_k, eps_k):
    (C, K). Row c depends on labels[c] alone: equal labels give equal rows."""
    text_ids, mask = model.text_encoder.tokenize(list(labels), strict=False)  # (C, T)
    C, K = len(labels), len(t)
    c_idx = torch.arange(C).repeat(K)  # (K*C,): example i is candidate i % C at sample i // C
    k_idx = torch.arange(K).repeat_interleave(C)
    dev = z.device
    out = torch.empty(K * C)
    for s in range(0, K * C, batch):
        c, k = c_idx[s : s + batch], k_idx[s : s + batch]
        b = {"latents": z.expand(len(c), *z.shape[1:]), "text_ids": text_ids[c].to(dev), "text_mask": mask[c].to(dev)}
        out[s : s + batch] = model.loss_per_example(b, t=t[k].to(dev), noise=eps[k].to(dev)).float().cpu()
    return out.view(K, C).T  # (C, K)


def ar_logp(model: Any, ids: Any, labels: Sequence[str], batch: int = 32) -> torch.Tensor:
    """log p(ids | label) of one clip's codec ids (f, h, w) under each label (t2v layout), summed over the
    clip's tokens: (C,). One teacher-forced pass per label, `batch` labels per call."""
    text = [model.text.encode(lab)[: model.spec.max_text] for lab in labels]
    dev = next(model.parameters()).device
    out = []
    for s in range(0, len(labels), batch):
        exs = [model.layouts.example("t2v", tids, ids) for tids in text[s : s + batch]]
        b = {k: v.to(dev) for k, v in model.layouts.batch(exs).items()}  # ids (B, T), prefix_len (B,), loss_mask (B, T)
        out.append(model.score(b).logp_sum.float().cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------- the one call


@torch.no_grad()
def classify(gen: Any, clip: Any, labels: Sequence[str], *, seed: int = 0,
             diffusion: DiffusionClassifyConfig | None = None, batch: int = 32) -> ClassifyResult:
    """Rank `labels` (candidate captions) by how well each explains `clip` (a path, or uint8 (F, H, W, 3) /
    (H, W, 3); fitted to the model's size with a warning) under a loaded AR or diffusion generator.

    `seed` draws the diffusion classifier's shared noise (the AR score is exact and takes none); `diffusion`
    sets its sample budget; `batch`: AR sequences per call.
    """
    labels = check_labels(labels)
    check_text_condition(gen)
    _check_budget(gen, labels)
    if isinstance(clip, (str, Path)):
        clip = read_clip(clip)
    video = fit_clip(clip, codec_of(gen))
    start = time.perf_counter()
    if gen.kind == "ar":
        ids = gen.codec.encode(video)[0]  # (f, h, w)
        logp = ar_logp(gen.model, ids, labels, batch)  # (C,)
        order = sorted(range(len(labels)), key=lambda c: -float(logp[c]))
        ranking = Ranking(order, [-float(logp[c]) for c in order], [1] * len(labels), len(labels), [len(labels)])
        info: dict[str, Any] = {"paradigm": "ar", "score": "log p(clip tokens | label), summed",
                                "tokens": int(np.prod(ids.shape))}
    else:
        cfg = diffusion or DiffusionClassifyConfig()
        cfg.check()
        model = gen.model
        z = model.encode_video(video)  # (1, Cz, f, h, w)
        t, eps = diffusion_samples(model, sum(cfg.trials), cfg, seed)

        def errors(cands: list[int], ks: list[int]) -> torch.Tensor:
            return diffusion_errors(model, z, [labels[c] for c in cands], t[ks], eps[ks].to(z.device), cfg.batch)

        ranking = adaptive_rank(errors, len(labels), cfg.trials, cfg.keep)
        info = {"paradigm": "diffusion", "score": "-(mean denoising error over shared (t, eps) samples)",
                "trials": list(cfg.trials), "keep": list(cfg.keep), "candidates_per_round": ranking.rounds,
                "seed": seed}
    seconds = time.perf_counter() - start
    return ClassifyResult(
        labels=[labels[c] for c in ranking.order],
        scores=[-e for e in ranking.mean_error],
        samples=ranking.samples,
        forward_passes=ranking.evaluations,
        seconds=seconds,
        info=info,
    )
