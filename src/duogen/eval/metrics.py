"""Set-level metrics for generated clips: Frechet distance, diversity, temporal change, accuracy tables.

These are plain NumPy functions over probe features (N, D) and uint8 clips
(N, F, H, W, 3). The probes that turn a clip into features or attribute
guesses live in `duogen.eval.probes`; this module owns only the arithmetic on
top of them, so every number in a comparison report has one definition.

Definitions used in reports:
- Frechet distance (Heusel et al. 2017, eq. for two Gaussians):
  ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2}).
  On probe features it is the Frechet *probe* distance, not FVD.
- Diversity: the mean pairwise Euclidean distance between the probe features
  of the samples of one prompt, averaged over prompts (0 when every sample of
  a prompt is the same clip).
- Temporal change: the mean absolute difference between consecutive frames,
  in [0, 1] of the pixel range. Generated clips are reported beside real ones
  and as a ratio: 1 means motion energy like the data, below 1 frozen or
  blurred motion, above 1 flicker.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np


def gaussian_frechet(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet (2-Wasserstein squared) distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    # Tr((S1 S2)^{1/2}) = sum sqrt(eig(S1^{1/2} S2 S1^{1/2})): symmetric PSD, so eigh is stable
    # where scipy's sqrtm of the non-symmetric product can return complex noise.
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross)
    return max(d, 0.0)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D) and (M, D)."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("a Frechet distance needs at least 2 samples per set")
    return gaussian_frechet(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def mean_pairwise_distance(feats: np.ndarray) -> float:
    """Mean Euclidean distance over all unordered pairs of rows of (N, D); 0 for N < 2."""
    x = np.asarray(feats, np.float64)
    if len(x) < 2:
        return 0.0
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))  # (N, N)
    iu = np.triu_indices(len(x), k=1)
    return float(d[iu].mean())


def diversity(groups: Iterable[np.ndarray]) -> float:
    """Mean over prompts of the mean pairwise feature distance among that prompt's samples."""
    vals = [mean_pairwise_distance(g) for g in groups if len(g) >= 2]
    return float(np.mean(vals)) if vals else 0.0


def temporal_change(clips: np.ndarray | Sequence[np.ndarray]) -> float:
    """Mean |frame_{f+1} - frame_f| over clips (N, F, H, W, 3) uint8, as a fraction of 255."""
    vals = []
    for clip in clips:
        c = np.asarray(clip, np.float32)
        if c.shape[0] < 2:
            continue
        vals.append(np.abs(np.diff(c, axis=0)).mean() / 255.0)
    return float(np.mean(vals)) if vals else 0.0


def mean_accuracy(per_clip: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Average per-attribute-kind accuracies over clips; a kind counts only where a clip has it.

    `per_clip` items map a kind ("color", "motion", "shape", ...) to the fraction of that
    prompt's attributes of that kind the probes recovered. The result adds "all": the mean
    over kinds.
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for acc in per_clip:
        for k, v in acc.items():
            if v is None:
                continue
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
    out = {k: sums[k] / counts[k] for k in sorted(sums)}
    if out:
        out["all"] = float(np.mean(list(out.values())))
    return out


def standard_error(values: Sequence[float]) -> float | None:
    """The standard error of the mean of `values` (sample standard deviation over sqrt(n)); None below two values."""
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None


def accuracy_stderr(per_prompt: Iterable[Sequence[Mapping[str, float]]]) -> dict[str, float | None]:
    """Standard error of `mean_accuracy` per kind (and "all"), with prompts as the units.

    The samples of one prompt share its caption and are not independent draws, so each prompt's
    clips are averaged first; the error is the sample standard deviation of those prompt means
    over the square root of their number (the prompts are a sample of the captions one could ask
    for). With the same number of clips per prompt, the mean of a kind's prompt means is its
    `mean_accuracy`; "all" is the error of the mean of each prompt's own "all" (the same number where
    every prompt is read for every kind). A kind seen in fewer than two prompts has no error (None).
    """
    means = [mean_accuracy(clips) for clips in per_prompt]
    out: dict[str, float | None] = {}
    for k in sorted({k for m in means for k in m}):
        vals = [m[k] for m in means if k in m]
        out[k] = standard_error(vals)
    return out
