"""Custom Diffusion (Kumari et al. 2023) on both paradigms: train only the key and value projections that read
the text, plus the modifier token's embedding row; several concepts by joint training or by a constrained
merge of single-concept runs.

Which projections read the text:
- diffusion: the cross-attention K/V (`denoiser.*.cross.to_kv`), whose input is the text encoder's output and
  nothing else; the modifier token is a new row of the text encoder's embedding (`text_encoder.embed`).
- AR (a decoder-only Llama): there is no cross-attention; the video tokens read the prompt through
  self-attention, as the keys and values computed at the text positions. So the AR analogue is the K/V
  projections of every layer (`self_attn.k_proj`, `v_proj`), plus the new row of `embed_tokens`. Unlike the
  denoisers' cross K/V these projections also make the video tokens' own keys and values, so training them
  moves more than the text read-out: the benchmark measures the drift this costs.

Constrained merge (Sec. 3.3, Eq. 4): for each K/V matrix, with C_reg the text features of regularization
captions (rows), C the features of every concept's captions and V their target outputs W_n c under concept
n's fine-tuned weights,

    W = argmin ||W C_reg^T - W_0 C_reg^T||_F  s.t.  W C^T = V
      = W_0 + v^T d,  d = C (C_reg^T C_reg)^-1,  v^T = (V - W_0 C^T)(d C^T)^-1

(a small ridge keeps C_reg^T C_reg invertible; a pseudo-inverse of d C^T handles repeated features). For the
AR model the features of layer l are the inputs of its K/V projections, computed with layers < l already
merged (they change what layer l reads). The constraint rows are the features at the placeholder's positions
(where the concept lives; one row per caption keeps the system well posed in narrow models, which a row
per caption token would over-determine); C_reg holds every token of the regularization captions.

Owns: `custom_diffusion`, `constrained_merge`, `merge_linear`, `CUSTOM_TRAINABLE`. Does not own: the training
(train/ recipes with `new_rows_only`), class clips and concept reading (dreambooth.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ...errors import CheckpointError, ConfigError
from .dreambooth import fine_tune_on_concept

CUSTOM_TRAINABLE = {
    "diffusion": "denoiser.*.cross.to_kv.weight,text_encoder.embed.weight",
    "ar": "lm.model.layers.*.self_attn.k_proj.weight,lm.model.layers.*.self_attn.v_proj.weight,"
          "lm.model.embed_tokens.weight",
}


def custom_diffusion(base_dir: str | Path, concepts: Sequence[str | Path], out_dir: str | Path, *,
                     tokens: Sequence[str] = (), class_words: Sequence[str | None] = (), prior_weight: float = 1.0,
                     n_class: int = 32, steps: int = 150, lr: float = 1e-3, batch_size: int = 4,
                     max_minutes: float = 0.0, seed: int = 0, resume: str | None = None,
                     class_prompt: str | None = None, shifts: int | None = None, overrides: Sequence[str] = ()
                     ) -> dict[str, Any]:
    """Custom Diffusion on an AR or diffusion model: one concept, or several trained jointly (one token each,
    default <v1>, <v2>, ...; class words default to each concept's own). prior_weight: the regularization
    clips' loss weight (the paper's retrieved real images; here class clips the frozen model makes); shifts:
    `common.prepare_concept`'s (None: the paradigm's default)."""
    from .common import base_info

    tokens = list(tokens) or [f"<v{i + 1}>" for i in range(len(concepts))]
    words = list(class_words) or [None] * len(concepts)
    if len(tokens) != len(concepts) or len(words) != len(concepts):
        raise ConfigError(f"{len(concepts)} concept(s) need as many tokens and class words; got {tokens}, {words}")
    kind = base_info(base_dir).paradigm
    train = [f"train.steps={steps}", f"train.lr={lr}", f"train.batch_size={batch_size}",
             f"train.max_minutes={max_minutes}", "train.warmup_steps=0", "train.ema=0", "train.log_every=10",
             f"train.trainable={CUSTOM_TRAINABLE[kind]}", "train.weight_decay=0", "new_rows_only=true"]
    return fine_tune_on_concept(base_dir, list(zip(concepts, tokens, words)), out_dir, method="custom",
                                prior_weight=prior_weight, n_class=n_class, train=train, seed=seed,
                                class_prompt=class_prompt, resume=resume, extra=overrides,
                                shifts=shifts)


def train_custom(base_dir: Path, concept: str | Path, out_dir: Path, *, token: str, init_word: str | None = None,
                 class_prompt: str | None = None, prior_weight: float = 1.0, steps: int = 150,
                 max_minutes: float = 0.0, seed: int = 0, resume: str | None = None, lr: float = 1e-3,
                 n_class: int = 32, batch_size: int = 4, shifts: int | None = None, overrides: tuple[str, ...] = ()
                 ) -> dict[str, Any]:
    """Custom Diffusion with the METHODS signature (`duogen personalize --method custom`): one concept.
    OUT/final is a delta over the base (the K/V matrices and the grown embedding table)."""
    return custom_diffusion(base_dir, [concept], out_dir, tokens=[token], class_words=[init_word],
                            prior_weight=prior_weight, n_class=n_class, steps=steps, lr=lr, batch_size=batch_size,
                            max_minutes=max_minutes, seed=seed, resume=resume, class_prompt=class_prompt,
                            shifts=shifts, overrides=overrides)


# ----------------------------------------------------------------------------- constrained merge


def merge_linear(W0: Any, C_reg: Any, C: Any, V: Any, ridge: float = 1e-4) -> Any:
    """Eq. 4's closed form: W0 (out, in), C_reg (r, in), C (s, in), V (out, s) -> W (out, in) with W C^T = V
    (least squares when the constraints conflict) and the least change of W C_reg^T; float64 inside."""
    import torch

    W0d, R, Cd, Vd = W0.double(), C_reg.double(), C.double(), V.double()
    M = R.T @ R  # (in, in)
    M = M + ridge * float(M.diagonal().mean().clamp_min(1e-12)) * torch.eye(M.shape[0], dtype=M.dtype)
    d = torch.linalg.solve(M, Cd.T).T  # (s, in): C M^-1 (M symmetric)
    A = d @ Cd.T  # (s, s)
    vT = (Vd - W0d @ Cd.T) @ torch.linalg.pinv(A, rtol=1e-10)  # (out, s)
    return (W0d + vT @ d).to(W0.dtype)


def rel_error(W: Any, W0: Any, C: Any, V: Any) -> float:
    """||W C^T - V|| / ||W0 C^T - V||: how much of the gap to the targets the merge leaves (0 = met exactly)."""
    W, W0, C, V = W.double(), W0.double(), C.double(), V.double()
    return float((W @ C.T - V).norm() / (W0 @ C.T - V).norm().clamp_min(1e-12))


def solve_into(W: Any, C_reg: Any, C: Any, V: Any, ridge: float) -> float:
    """Replace the weight W (in place) by `merge_linear`'s solution; returns its `rel_error`."""
    new = merge_linear(W, C_reg, C, V, ridge)
    err = rel_error(new, W, C, V)
    W.copy_(new)
    return err


def _run_info(run: Path) -> dict[str, Any]:
    from ...io import read_json

    f = run / "personalize.json"
    if not f.is_file():
        raise CheckpointError(f"{run}: not a personalization run (no personalize.json)")
    return read_json(f)


def _diffusion_features(m: Any, prompts: Sequence[str], tokens: Sequence[str] = ()) -> Any:
    """Text-encoder output tokens of the prompts: (N real tokens, D) — what every cross K/V reads; with
    `tokens`, only those at these placeholders' positions (the constraint rows of the merge)."""
    import torch

    with torch.no_grad():
        ids, mask = m.text_encoder.tokenize(list(prompts), strict=False)
        sel = mask & torch.isin(ids, torch.tensor([m.tokenizer.encode(t)[0] for t in tokens])) if tokens else mask
        return m.text_encoder(ids, mask).tokens[sel]  # (N, D)


def _merge_diffusion(base: Path, runs: list[Path], infos: list[dict[str, Any]], reg: list[str], ridge: float
                     ) -> tuple[Any, dict[str, float]]:
    import torch

    from ...diffusion.latent import LatentDiffusionModel

    m = LatentDiffusionModel.from_pretrained(base)
    tuned = [LatentDiffusionModel.from_pretrained(Path(i["final"])) for i in infos]
    with torch.no_grad():
        for t, info in zip(tuned, infos):
            for tok, word in zip(info["tokens"], info["class_words"]):
                new = m.text_encoder.add_placeholder(tok, word)
                m.text_encoder.embed.weight[new] = t.text_encoder.embed.weight[t.tokenizer.encode(tok)[0]]
    C_reg = _diffusion_features(m, reg)  # (r, D): the merged encoder reads the regularization captions as the base
    caps = [[c for cs in info["captions"] for c in cs] for info in infos]
    Cs = [_diffusion_features(m, c, i["tokens"]) for c, i in zip(caps, infos)]  # (s_n, D) each
    kv = [n for n, _ in m.named_parameters() if n.endswith(".cross.to_kv.weight")]
    params = dict(m.named_parameters())
    residual = 0.0
    with torch.no_grad():
        for n in kv:
            targets = [dict(t.named_parameters())[n] @ C.T for t, C in zip(tuned, Cs)]  # (2D, s_n) each
            residual = max(residual, solve_into(params[n], C_reg, torch.cat(Cs), torch.cat(targets, 1), ridge))
    return m, {"layers": len(kv), "target_rel_error": residual}


def _ar_inputs(m: Any, prompts: Sequence[str], layers: Sequence[int], tokens: Sequence[str] = ()) -> dict[int, Any]:
    """Inputs of `self_attn.k_proj` at the text positions of each prompt's t2v prefix, per layer: (N, D).

    `tokens`: keep only the positions of these placeholders (the constraint rows of the merge)."""
    import torch

    seqs = [m.layouts.decode_plan("t2v", m.encode_prompt(p)).prefix for p in prompts]
    T = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    keep = torch.zeros(len(seqs), T, dtype=torch.bool)
    marks = {m.vocab.text_to_global(m.text.encode(t))[0] for t in tokens}
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        keep[i, : len(s)] = torch.tensor([x in marks for x in s]) if marks else True
    got: dict[int, Any] = {}
    hooks = [m.lm.model.layers[l].self_attn.k_proj.register_forward_pre_hook(
        lambda mod, args, l=l: got.__setitem__(l, args[0][keep].detach())) for l in layers]
    try:
        with torch.no_grad():
            m(ids, torch.tensor([len(s) for s in seqs]))
    finally:
        for h in hooks:
            h.remove()
    return got


def _merge_ar(base: Path, runs: list[Path], infos: list[dict[str, Any]], reg: list[str], ridge: float
              ) -> tuple[Any, dict[str, float]]:
    import torch

    from ...ar_models.model import MultimodalLM

    m = MultimodalLM.from_pretrained(base)
    tuned = [MultimodalLM.from_pretrained(Path(i["final"])) for i in infos]
    with torch.no_grad():
        for t, info in zip(tuned, infos):
            new = m.add_tokens(text=dict(zip(info["tokens"], info["class_words"])))
            for tok, i in new.items():
                j = t.vocab.text_to_global(t.text.encode(tok))[0]
                m.lm.get_input_embeddings().weight[i] = t.lm.get_input_embeddings().weight[j]
    caps = [[c for cs in info["captions"] for c in cs] for info in infos]
    toks = [info["tokens"] for info in infos]
    residual = 0.0
    for l in range(len(m.lm.model.layers)):
        C_reg = _ar_inputs(m, reg, [l])[l]  # with layers < l merged
        C_mrg = [_ar_inputs(m, c, [l], k)[l] for c, k in zip(caps, toks)]
        C_own = [_ar_inputs(t, c, [l], k)[l] for t, c, k in zip(tuned, caps, toks)]  # what run n's layer l reads
        attn = m.lm.model.layers[l].self_attn
        with torch.no_grad():
            for proj in ("k_proj", "v_proj"):
                targets = [getattr(t.lm.model.layers[l].self_attn, proj).weight @ C.T for t, C in zip(tuned, C_own)]
                residual = max(residual, solve_into(getattr(attn, proj).weight, C_reg, torch.cat(C_mrg),
                                                    torch.cat(targets, 1), ridge))
    return m, {"layers": 2 * len(m.lm.model.layers), "target_rel_error": residual}


def constrained_merge(base: str | Path, runs: Sequence[str | Path], out: str | Path, *,
                      reg_prompts: Sequence[str] = (), ridge: float = 1e-4) -> dict[str, Any]:
    """Merge single-concept Custom Diffusion runs of one base into one model directory at `out` (Eq. 4).
    `reg_prompts`: the regularization captions (default: every run's class prompts)."""
    from ...io import atomic_write_json, read_json
    from .common import base_info

    base, runs = Path(base), [Path(r) for r in runs]
    binfo = base_info(base)
    kind = binfo.paradigm
    infos = [_run_info(r) for r in runs]
    for r, info in zip(runs, infos):
        if info.get("method") != "custom":
            raise ConfigError(f"{r}: a {info.get('method')!r} run; the constrained merge takes Custom Diffusion runs")
        sha = (read_json(Path(info["final"]) / "config.json").get("delta_of") or {}).get("sha256")
        if sha != binfo.sha256:
            raise CheckpointError(f"{r} was trained from {info['base']}, not from {base}; merge runs of one base")
    tokens = [t for i in infos for t in i["tokens"]]
    if len(set(tokens)) != len(tokens):
        raise ConfigError(f"the runs share a placeholder ({tokens}); train each concept with its own --token")
    reg = list(reg_prompts) or sorted({c.replace(t, w) for i in infos for cs, t, w in
                                       zip(i["captions"], i["tokens"], i["class_words"]) for c in cs})
    merged, facts = (_merge_ar if kind == "ar" else _merge_diffusion)(base, runs, infos, reg, ridge)
    out = Path(out)
    merged.save_pretrained(out)
    summary = {"method": "custom-merge", "kind": kind, "base": str(base), "runs": [str(r) for r in runs],
               "tokens": tokens, "reg_prompts": len(reg), **facts, "final": str(out)}
    atomic_write_json(out / "merge.json", summary)
    return summary
