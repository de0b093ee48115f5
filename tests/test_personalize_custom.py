"""Custom Diffusion on both paradigms: only the text-reading K/V projections and the modifier token's row change
(every other tensor, and the old embedding rows, bit-equal); joint training of two concepts; the constrained
merge's closed form (constraints met, regularization change minimal, exact when the features are orthogonal)
and merging two single-concept runs of one base."""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_personalize_dreambooth import base  # noqa: E402,F401  (the tiny AR / DiT bases and the star concept)

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ("train.log_every=1",)


def _load(kind: str, d: Path):
    from duogen.ar_models.model import MultimodalLM
    from duogen.diffusion.latent import LatentDiffusionModel

    return (MultimodalLM if kind == "ar" else LatentDiffusionModel).from_pretrained(d)


@pytest.mark.parametrize("kind", ["ar", "diffusion"])
def test_only_text_reading_kv_and_the_new_row_change(base, tmp_path, kind):
    from duogen.bridges.personalize import personalize
    from duogen.bridges.personalize.custom_diffusion import CUSTOM_TRAINABLE

    s = personalize("custom", base / kind / "final", base / "concept", tmp_path / "cd", token="<v1>", n_class=2,
                    steps=3, batch_size=2, lr=1e-2, overrides=FAST)
    assert s["delta"] is True
    b, t = _load(kind, base / kind / "final").state_dict(), _load(kind, Path(s["final"])).state_dict()
    table = "lm.model.embed_tokens.weight" if kind == "ar" else "text_encoder.embed.weight"
    globs = CUSTOM_TRAINABLE[kind].split(",")
    changed = {k for k in b if b[k].shape != t[k].shape or not torch.equal(b[k], t[k])}
    kv = {k for k in b if any(fnmatch.fnmatchcase(k, g) for g in globs) and k != table}
    assert kv and kv <= changed and changed - kv <= {table, "lm.lm_head.weight"}
    V = b[table].shape[0]
    assert torch.equal(t[table][:V], b[table]) and t[table].shape[0] == V + 1
    if kind == "ar":  # the head grew a row (a copy of the class word's) that never trained
        assert torch.equal(t["lm.lm_head.weight"][:V], b["lm.lm_head.weight"])
    m = _load(kind, Path(s["final"]))
    init = (m.text if kind == "ar" else m.tokenizer).encode(s["class_words"][0])
    rows = m.vocab.text_to_global(init) if kind == "ar" else init
    assert not torch.equal(t[table][V], t[table][rows].mean(0))  # the modifier row moved from its init


def test_merge_linear_closed_form():
    from duogen.bridges.personalize.custom_diffusion import merge_linear

    g = torch.Generator().manual_seed(0)
    W0 = torch.randn(6, 10, generator=g, dtype=torch.float64)
    C_reg = torch.randn(40, 10, generator=g, dtype=torch.float64)
    C = torch.randn(3, 10, generator=g, dtype=torch.float64)
    V = torch.randn(6, 3, generator=g, dtype=torch.float64)
    W = merge_linear(W0, C_reg, C, V, ridge=0.0)
    assert torch.allclose(W @ C.T, V, atol=1e-9)
    obj = lambda X: float(((X - W0) @ C_reg.T).norm())  # noqa: E731
    alt = W0 + (V - W0 @ C.T) @ torch.linalg.pinv(C.T)  # another W meeting the constraints (least-norm change)
    assert torch.allclose(alt @ C.T, V, atol=1e-9) and obj(W) < obj(alt)
    for _ in range(5):  # W + E with E C^T = 0 meets them too and is never closer to the base on C_reg
        E = torch.randn(6, 10, generator=g, dtype=torch.float64) * 1e-2
        E = E - E @ C.T @ torch.linalg.pinv(C.T)
        assert obj(W + E) >= obj(W) - 1e-12
    # regularization features orthogonal to the concept's: the base outputs there are kept exactly
    Q = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64)).Q
    C, C_reg = torch.randn(3, 3, generator=g, dtype=torch.float64) @ Q[:3], torch.randn(30, 7, generator=g,
                                                                                        dtype=torch.float64) @ Q[3:]
    W = merge_linear(W0, C_reg, C, V, ridge=1e-12)
    assert torch.allclose(W @ C.T, V, atol=1e-6) and torch.allclose(W @ C_reg.T, W0 @ C_reg.T, atol=1e-6)


@pytest.mark.parametrize("kind", ["diffusion", "ar"])
def test_joint_training_and_constrained_merge_of_two_runs(base, tmp_path, kind):
    from duogen.bridges.personalize.custom_diffusion import constrained_merge, custom_diffusion
    from duogen.data.concepts import make_concept
    from duogen.errors import CheckpointError

    make_concept("heart", tmp_path / "heart", n=4)
    runs = []
    for tok, c in (("<v1>", base / "concept"), ("<v2>", tmp_path / "heart")):
        runs.append(tmp_path / tok.strip("<>"))
        custom_diffusion(base / kind / "final", [c], runs[-1], tokens=[tok], n_class=2, steps=3, batch_size=2, lr=5e-2,
                         overrides=FAST)
    joint = custom_diffusion(base / kind / "final", [base / "concept", tmp_path / "heart"], tmp_path / "joint",
                             n_class=2, steps=2, batch_size=2, overrides=FAST)
    assert joint["tokens"] == ["<v1>", "<v2>"] and len(joint["captions"]) == 2
    s = constrained_merge(base / kind / "final", runs, tmp_path / "merged")
    assert s["target_rel_error"] < 1e-2, s  # float32 weights: the gap to the targets closes to rounding
    merged = _load(kind, tmp_path / "merged")
    if kind == "diffusion":
        from duogen.bridges.personalize.custom_diffusion import _diffusion_features

        b = _load(kind, base / kind / "final")
        for run, tok in zip(runs, ("<v1>", "<v2>")):
            t = _load(kind, run / "final")
            caps = [c for c in __import__("json").loads((run / "personalize.json").read_text())["captions"][0]]
            C = _diffusion_features(t, caps, [tok])
            assert torch.allclose(_diffusion_features(merged, caps, [tok]), C, atol=1e-5)  # the modifier rows came over
            n = "denoiser.blocks.0.cross.to_kv.weight"
            want, got = dict(t.named_parameters())[n] @ C.T, dict(merged.named_parameters())[n] @ C.T
            base_out = dict(b.named_parameters())[n] @ C.T
            assert (got - want).norm() / (base_out - want).norm() < 1e-2
        reg = ["a red triangle moves left", "a blue circle moves up"]
        Cr = _diffusion_features(b, reg)
        n = "denoiser.blocks.1.cross.to_kv.weight"
        W0, Wm = dict(b.named_parameters())[n], dict(merged.named_parameters())[n]
        W1 = dict(_load(kind, runs[0] / "final").named_parameters())[n]
        assert ((Wm - W0) @ Cr.T).norm() < ((W1 - W0) @ Cr.T).norm() * 2  # close to the base on class captions
    with pytest.raises(CheckpointError, match="not from"):
        constrained_merge(base / ("ar" if kind == "diffusion" else "diffusion") / "final", runs, tmp_path / "m2")
