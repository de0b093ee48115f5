"""Decoding: a lean loop with a static KV cache, guidance, constrained logits and seeds.

Owns: `LlamaDecoder` (runs a `transformers` Llama's live modules through a
lean forward with a preallocated KV cache: no per-step cache objects, mask
building or output dataclasses, which is where `generate()` spends its time on
small models; weight edits, peft adapters and attention processors apply at
the next call), `sample_plans` (the loop: temperature, top-k, top-p,
classifier-free guidance with conditional and unconditional streams in one
batch, logits restricted to each output position's id range, a per-step
callback, given tokens kept in place of draws, `ControlStream`s decoded in
lockstep whose logits steer the base's), and `generate_ids` (prompts -> codec
ids through the layouts).

A `ControlStream` is a second model (or the same one on another layout) with
its own prefix and KV cache, fed the same sampled tokens: at every step
l = l_base + sum_k s_k (l_k - l_base) over the streams k (classifier-free
guidance over a condition, Ho & Salimans 2022, composed as in Liu et al. 2022,
"Compositional Visual Generation"): s_k = 1 samples from the controlled model
alone, s_k = 0 leaves the base's logits exactly as they are.

Attention processors (`duogen.attention`, installed with `attention_processor(model, p)`)
run at every decode step: `call.step` is the output token whose logits the
forward computes (0 = the prefix forward; the callback's `n`), and with guidance
the processor is called for the conditional rows ("cond") and then the
unconditional ones ("uncond").

Constraint by construction: at each output position only the logits of the
allowed range [lo, hi) are computed (`h @ W[lo:hi].T`), so a sampled id can
never leave the active segment's range, and structural tokens (<bov>, <eov>,
...) are never sampled: they sit in the fixed prefix and suffix.

Shape notation: B batch (2B with guidance), P prefix tokens, N output tokens,
R allowed-range size, Hq / Hkv query / key-value heads, Dh head width.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import attention_context, run_processor, sdpa_tensors
from ..errors import DataError
from .attention import enable_processors
from .layouts import DecodePlan, check_task

# callback(step, position, logits (B, R), tokens_so_far (B, step)) -> replacement logits or None
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


@dataclass
class SamplingConfig:
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    guidance: float | None = None  # classifier-free guidance scale; None = no unconditional stream
    # Threads for the decode loop (0 = torch's setting). Decoding a small model is a chain of tiny ops
    # where OpenMP synchronisation dominates: one thread measured 5-10x faster than two on the shared
    # 2-core box (bench/bench_ar_sampling.py --threads). Restored when sampling returns.
    threads: int = 1

    def check(self) -> None:
        if self.temperature < 0:
            raise DataError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise DataError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise DataError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.threads < 0:
            raise DataError(f"threads must be >= 0 (0 = torch's setting), got {self.threads}")


@dataclass
class ControlStream:
    """A model decoded beside the base on its own prefix; it steers the base's logits by `scale` (module docstring).

    The stream's output positions must be the base's (same ranges); its prefix may be longer (a condition in it).
    `uncond_prefix` (B, P'): its rows for the base's text guidance (the same guidance scale applies to it).
    """

    decoder: "LlamaDecoder"
    prefix: torch.Tensor  # (B, P')
    scale: float = 1.0
    uncond_prefix: torch.Tensor | None = None  # (B, P')
    prefix_lm: bool = True


class ControlRows(NamedTuple):
    """What an AR control needs to steer one sampling call (the `sampling(rows, condition, scale)` protocol)."""

    model: Any  # the base `MultimodalLM`
    decoder: "LlamaDecoder"  # the base's decoder (a control that adds to hidden states hooks it)
    text_ids: list[list[int]]  # (B,) each output row's prompt ids
    negative_ids: list[int]  # the unconditional text of text guidance
    guided: bool  # text guidance on: streams need their unconditional rows


def _plain(*mods: Any) -> bool:
    """Exactly nn.Linear, no bias, no hooks: a layer whose output is x @ weight.T and nothing else."""
    return all(type(m) is nn.Linear and m.bias is None and not m._forward_hooks and not m._forward_pre_hooks
               for m in mods)


# A projection the fast path can run as one matrix: its weight W (out, in) plus LoRA terms (A (r, in), B (out, r),
# scale), so that the projection is x W^T + sum scale * x A^T B^T = x (W + sum scale * B A)^T.
_Source = tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor, float]]]


def _source(mod: Any) -> _Source | None:
    """The weight (and unmerged LoRA terms) that make up `mod`'s output, or None: run the module itself.

    A peft LoRA `Linear` is read as the model runs it right now (active adapters, their scales, disabled or
    merged); a LoRA variant (DoRA, ...), dropout in training mode, a LoRA bias, or any hook sends it to the module.
    """
    if _plain(mod):
        return mod.weight, []
    t = type(mod)
    if t.__name__ != "Linear" or not t.__module__.startswith("peft.tuners.lora") or mod._forward_hooks \
            or mod._forward_pre_hooks or not _plain(mod.base_layer) or getattr(mod, "fan_in_fan_out", False):
        return None
    if mod.disable_adapters or mod.merged:
        return None if mod.disable_adapters and mod.merged else (mod.base_layer.weight, [])  # merged: W holds them
    terms = []
    for name in mod.active_adapters:
        if name not in mod.lora_A.keys():
            continue
        A, B, drop = mod.lora_A[name], mod.lora_B[name], mod.lora_dropout[name]
        if name in mod.lora_variant or not _plain(A, B) or (drop.training and not isinstance(drop, nn.Identity)) \
                or A.weight.dtype != mod.base_layer.weight.dtype:
            return None
        terms.append((A.weight, B.weight, float(mod.scaling[name])))
    return mod.base_layer.weight, terms


class _Fused:
    """Projections run as one matrix: their effective weights (`_Source`) concatenated, transposed and contiguous,
    (in, out), output rows `rows` only. `weight_t()` rebuilds the copy when a tensor it was built from was
    modified in place (its version counter moved)."""

    __slots__ = ("sources", "tensors", "rows", "versions", "wt")

    def __init__(self, sources: Sequence[_Source], rows: slice | None = None):
        self.sources, self.rows = list(sources), rows
        self.tensors = [t for w, terms in self.sources for t in (w, *(x for a, b, _ in terms for x in (a, b)))]
        self.versions: tuple[int, ...] = ()
        self.wt: torch.Tensor | None = None

    def weight_t(self) -> torch.Tensor:
        if self.wt is not None:
            for w, v in zip(self.tensors, self.versions):
                if w._version != v:
                    break
            else:
                return self.wt
        # built as a normal tensor even inside sampling's inference mode: matmuls with an inference-mode copy
        # measured slower here (bench/bench_ar_sampling.py --clock cpu)
        with torch.inference_mode(False), torch.no_grad():
            ws = [w if not terms else w + sum(s * (b @ a) for a, b, s in terms) for w, terms in self.sources]
            if self.rows is not None:
                ws = [w[self.rows] for w in ws]
            # one copy: cat of the transposed views writes the (in, out) layout directly
            self.wt = torch.cat([w.detach().t() for w in ws], dim=1) if len(ws) > 1 else ws[0].detach().t().contiguous()
        self.versions = tuple(t._version for t in self.tensors)
        return self.wt


class LlamaDecoder:
    """A static-KV-cache forward over a `LlamaForCausalLM`'s live modules (float32 or the weights' dtype).

    Nothing is copied for good: every sampling call reads the model's current
    modules, so a weight edit, a `peft` LoRA (q/k/v/o, the MLP, the head), a
    switched or rescaled adapter and an attention processor take effect at the
    next call without rebuilding the decoder (processors and in-place weight
    edits even at the next step).

    `reset` (the start of each sampling call) reads the modules the layers hold
    now. A projection that is a plain `nn.Linear`, or a peft LoRA `Linear` in
    its plain form (active adapters W + scale * B A; no DoRA, no dropout in
    training mode), runs from one transposed (in, out) copy of its effective
    weight: at one token per row, x @ W_t runs 1.3-1.8x faster than
    F.linear(x, W) on this CPU, and q, k, v and gate, up each become one
    matmul. The copies are dropped at every `reset` (so adapter switches and
    scales, and edits through `.data` such as an EMA swap, are seen) and
    re-checked before every step against the version counters of the tensors
    they came from (in-place edits within a call). Anything else (a LoRA
    variant, a hooked layer) runs as the module itself. A layer with a
    `processor` hands its attention to it (`duogen.attention`); without one,
    SDPA runs directly. A decoder layer's forward hooks run on its output
    (hidden states (B,t,D)) as its own forward would run them (read at `reset`).
    """

    def __init__(self, lm: Any, max_len: int | None = None, positions: Any = None, text_context: Any = None):
        """`positions`: the model's `VisualPositions` (factorized visual positions), if it has them;
        `text_context`: what the first chunk of a sequence (the prefix) goes through before the layers, the
        model's `text_prefix` (its pretrained text states and `TextContext`), or None."""
        self.lm = enable_processors(lm)
        m = lm.model
        self.positions, self._pos_state = positions, None
        self.text_context = text_context
        c = lm.config
        self.n_layers = c.num_hidden_layers
        self.hq, self.hkv = c.num_attention_heads, c.num_key_value_heads
        self.dh = getattr(c, "head_dim", None) or c.hidden_size // self.hq
        self.max_len = int(max_len or c.max_position_embeddings)
        self.silu = getattr(c, "hidden_act", "silu") == "silu"  # else the MLP's own act_fn
        self._plan: list[tuple[Any, ...]] = []  # the layers' modules, read at `reset`
        self._hooks: list[list[tuple[Any, Any, bool]]] = []  # per layer: its forward hooks, read at `reset`
        self._heads: dict[tuple[int, int | None], _Fused] = {}  # (lo, hi) -> the head's rows lo..hi-1
        pos = torch.arange(self.max_len)[None]
        probe = torch.zeros(1, 1, c.hidden_size, dtype=m.embed_tokens.weight.dtype)
        cos, sin = m.rotary_emb(probe, position_ids=pos)  # (1, T, Dh)
        self.cos, self.sin = cos[0], sin[0]  # (T, Dh)
        # The rotary embedding at one position as a (Dh, Dh) matrix: x @ rot[p] = x cos_p + rotate_half(x) sin_p.
        # A one-token step then rotates all its queries and keys with one matmul instead of six ops each.
        half = self.dh // 2
        eye = torch.eye(self.dh, dtype=self.cos.dtype)
        rotate_half = torch.cat([-eye[:, half:], eye[:, :half]], dim=1)  # x @ rotate_half = cat(-x2, x1)
        self.rot = torch.diag_embed(self.cos) + rotate_half[None] * self.sin[:, None, :]  # (T, Dh, Dh)
        self.k = self.v = None

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotary embedding (RoFormer eq. 34, in the rotate-half form Llama uses). x (B,H,t,Dh)."""
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    def _layers(self) -> list[tuple[Any, ...]]:
        """Per layer: (norm-in weight, eps, attention, [q,k,v], o, norm-post weight, eps, mlp, [gate,up], down).

        A projection group is a `_Fused` (one transposed copy of the effective weights) or, if any member
        can't be, the modules to call. Resolved once per call: module attribute lookups cost per step."""
        plan = []
        for layer in self.lm.model.layers:
            a, f = layer.self_attn, layer.mlp
            groups = [(a.q_proj, a.k_proj, a.v_proj), (a.o_proj,), (f.gate_proj, f.up_proj), (f.down_proj,)]
            srcs = [[_source(m) for m in g] for g in groups]
            qkv, o, gu, down = [_Fused(sr) if all(x is not None for x in sr) else g for g, sr in zip(groups, srcs)]
            n_in, n_post = layer.input_layernorm, layer.post_attention_layernorm
            plan.append((n_in.weight, n_in.variance_epsilon, a, qkv, o, n_post.weight, n_post.variance_epsilon, f, gu, down))
        return plan

    def reset(self, batch: int) -> None:
        """Start a sequence of `batch` rows: read the model's modules, drop the weight copies, size the KV cache."""
        self._heads.clear()
        self._plan = self._layers()
        self._hooks = [_layer_hooks(layer) for layer in self.lm.model.layers]
        dtype = self.lm.model.embed_tokens.weight.dtype
        shape = (self.n_layers, batch, self.hkv, self.max_len, self.dh)
        if self.k is None or self.k.shape != shape or self.k.dtype != dtype:
            self.k = torch.zeros(shape, dtype=dtype)
            self.v = torch.zeros(shape, dtype=dtype)

    def forward(self, ids: torch.Tensor, start: int, bidirectional: bool = False) -> torch.Tensor:
        """ids (B,t) at positions start..start+t-1 -> last hidden state (B,D); fills the cache.

        Queries attend to every cached key before them; with `bidirectional` the
        t new tokens also see each other fully (the prefix LM's prefix).
        """
        if not self._plan:
            raise RuntimeError("LlamaDecoder.forward before reset(batch): reset reads the model and sizes the cache")
        B, t = ids.shape
        end = start + t
        m = self.lm.model
        emb = m.embed_tokens
        plain_emb = type(emb) is nn.Embedding and not emb._forward_hooks
        x = F.embedding(ids, emb.weight) if plain_emb else emb(ids)  # (B,t,D)
        if self.positions is not None:
            pe, self._pos_state = self.positions(ids, None if start == 0 else self._pos_state)
            x = x + pe.to(x.dtype)
        if self.text_context is not None and start == 0:
            x = self.text_context(ids, x)
        cos, sin = self.cos[start:end], self.sin[start:end]  # (t,Dh)
        nq, nkv = self.hq * self.dh, self.hkv * self.dh
        causal = t > 1 and not bidirectional
        gqa = self.hq != self.hkv
        rot = self.rot[start] if t == 1 else None  # (Dh, Dh)
        D = x.shape[-1]
        for i, (w_in, eps_in, a, qkv_p, o_p, w_post, eps_post, f, gu_p, down_p) in enumerate(self._plan):
            h = F.rms_norm(x, (D,), w_in, eps_in)
            if type(qkv_p) is _Fused:
                qkv = torch.matmul(h, qkv_p.weight_t())  # (B,t,(Hq+2Hkv)*Dh)
            else:  # live modules (a LoRA variant such as DoRA, a hooked layer)
                qkv = torch.cat([m(h) for m in qkv_p], dim=-1)
            if rot is not None:  # one token: rotate queries and keys together
                qk = torch.matmul(qkv[..., : nq + nkv].view(B, self.hq + self.hkv, self.dh), rot)  # (B,Hq+Hkv,Dh)
                q, k = qk[:, : self.hq, None], qk[:, self.hq :, None]  # (B,H,1,Dh)
                v = qkv[..., nq + nkv :].view(B, self.hkv, 1, self.dh)
            else:
                q = qkv[..., :nq].view(B, t, self.hq, self.dh).transpose(1, 2)  # (B,Hq,t,Dh)
                k = qkv[..., nq : nq + nkv].view(B, t, self.hkv, self.dh).transpose(1, 2)  # (B,Hkv,t,Dh)
                v = qkv[..., nq + nkv :].view(B, t, self.hkv, self.dh).transpose(1, 2)
                q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            self.k[i, :, :, start:end] = k
            self.v[i, :, :, start:end] = v
            proc = a.processor
            if proc is None and start == 0:  # the kernel calls of the identity processor `sdpa`, inlined
                o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)  # (B,Hq,t,Dh)
            elif proc is None and t == 1:
                o = F.scaled_dot_product_attention(q, self.k[i, :, :, :end], self.v[i, :, :, :end], enable_gqa=gqa)
            else:
                kk, vv = (k, v) if start == 0 else (self.k[i, :, :, :end], self.v[i, :, :, :end])
                # a chunk after cached tokens: causal within the chunk, full to the past
                mask = torch.ones(t, end, dtype=torch.bool).tril(start) if causal and start > 0 else None
                if proc is None:
                    o = sdpa_tensors(q, kk, vv, mask)
                else:
                    o = run_processor(proc, a, q, kk, vv, mask, causal and start == 0)  # (B,Hq,t,Dh)
            o = o.transpose(1, 2).reshape(B, t, nq)  # (B,t,Hq*Dh)
            x = x + (torch.matmul(o, o_p.weight_t()) if type(o_p) is _Fused else o_p[0](o))
            h = F.rms_norm(x, (D,), w_post, eps_post)
            if type(gu_p) is _Fused:
                gate, up = torch.matmul(h, gu_p.weight_t()).chunk(2, dim=-1)  # (B,t,M) each
            else:
                gate, up = gu_p[0](h), gu_p[1](h)
            act = (F.silu(gate) if self.silu else f.act_fn(gate)) * up
            x = x + (torch.matmul(act, down_p.weight_t()) if type(down_p) is _Fused else down_p[0](act))
            for hook, layer, with_kwargs in self._hooks[i]:  # the layer's forward hooks see its output, as in HF
                r = hook(layer, (x,), {}, x) if with_kwargs else hook(layer, (x,), x)
                x = x if r is None else r
        return F.rms_norm(x[:, -1], (x.shape[-1],), m.norm.weight, m.norm.variance_epsilon)  # (B,D)

    def logits(self, h: torch.Tensor, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """Logits of ids lo..hi-1 only: (B,D) -> (B,R)."""
        fused = self._heads.get((lo, hi))
        if fused is None:
            head = self.lm.lm_head
            if not _plain(head):  # e.g. a LoRA on the head: the whole row, then the range
                return head(h)[:, lo:hi]
            fused = self._heads[(lo, hi)] = _Fused([(head.weight, [])], slice(lo, hi))  # until the next reset
        return h @ fused.weight_t()


def _layer_hooks(layer: nn.Module) -> list[tuple[Any, Any, bool]]:
    """A decoder layer's forward hooks, which the decoder runs on the layer's output (hidden states (B,t,D)) as
    the layer's own call would (e.g. ControlAR's control embeddings, `control_embed.py`). A forward pre-hook
    can't be honoured (the decoder never calls the layer): a RuntimeError rather than silently skipping it."""
    if layer._forward_pre_hooks:
        raise RuntimeError("a forward pre-hook on a Llama decoder layer: the KV-cached decoder runs the layer's"
                           " parts, not its forward; hook the previous layer's output (a forward hook) instead")
    return [(h, layer, k in layer._forward_hooks_with_kwargs) for k, h in layer._forward_hooks.items()]


def _filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k, then nucleus (top-p, Holtzman et al. 2020) filtering, in place on (B,R) logits."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits.masked_fill_(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_l, idx = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_l.softmax(-1).cumsum(-1)
        drop = cum - sorted_l.softmax(-1) >= top_p  # keep the smallest set whose mass reaches top_p
        logits.scatter_(-1, idx, sorted_l.masked_fill(drop, float("-inf")))
    return logits


def draw(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
         gen: torch.Generator | None) -> torch.Tensor:
    """One id per row of (B,R) (guided) logits: greedy at temperature 0, else drawn after temperature, top-k and
    top-p. The flat sampler's loop and the patch model's (`patch.py`) both draw with it."""
    if temperature == 0:
        return logits.argmax(-1)
    if top_p >= 1.0 and 0 < top_k < logits.shape[-1]:
        # top-k alone: draw among the k largest logits, the same distribution as masking the rest to
        # -inf, without a softmax and a mask over the whole range
        vals, idx = torch.topk(logits, top_k, dim=-1)  # (B,k)
        pick = torch.multinomial((vals / temperature).softmax(-1), 1, generator=gen)  # (B,1)
        return idx.gather(-1, pick)[:, 0]
    logits = _filter(logits / temperature, top_k, top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    if n > 0 and n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def sample_plans(
    decoder: LlamaDecoder,
    prefix: torch.Tensor,
    ranges: Sequence[tuple[int, int]],
    cfg: SamplingConfig,
    uncond_prefix: torch.Tensor | None = None,
    prefix_lm: bool = True,
    seed: int = 0,
    callback: StepCallback | None = None,
    forced: torch.Tensor | None = None,
    streams: Sequence[ControlStream] = (),
    gap: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode N tokens after prefix (B,P); token n is drawn from global ids ranges[n] = [lo, hi).

    With `uncond_prefix` (B,P) and `cfg.guidance`, both streams run as one batch
    of 2B and the logits are guided as l_c + (s - 1)(l_c - l_u) (Ho & Salimans
    2022, written so that s = 1 gives l_c exactly). `forced` (B,N) global ids
    replace the drawn token wherever >= 0 (-1: keep the draw); the draw still
    happens, so forcing the tokens a seed produced reproduces that seed's run.
    `streams`: `ControlStream`s steering the logits (module docstring), after text guidance in each.
    `gap` (B,) float32, with `uncond_prefix`: each row's sum over its drawn ids of log p_c - log p_u (each
    stream's own softmax over the position's range) is added to it (the layout candidates' score).
    Returns (B,N) global ids.
    """
    cfg.check()
    with _threads(cfg.threads), torch.inference_mode():
        return _sample(decoder, prefix, ranges, cfg, uncond_prefix, prefix_lm, seed, callback, forced, streams, gap)


class _Stream:
    """One decoder in the loop: its rows (B, or 2B with text guidance) and its last hidden state."""

    def __init__(self, decoder: LlamaDecoder, prefix: torch.Tensor, uncond: torch.Tensor | None, guided: bool,
                 prefix_lm: bool, roles: tuple[str, ...]):
        self.decoder, self.guided = decoder, guided and uncond is not None
        x = torch.cat([prefix, uncond]) if self.guided else prefix  # (B or 2B, P)
        self.B, self.P = prefix.shape
        decoder.reset(x.shape[0])
        with attention_context(step=0, roles=roles if self.guided else ("cond",)):
            self.h = decoder.forward(x, 0, bidirectional=prefix_lm)

    def logits(self, lo: int, hi: int, s: float) -> torch.Tensor:
        """(B, R), text-guided as l_c + (s - 1)(l_c - l_u) when the stream has unconditional rows; `raw` keeps
        both streams' own logits (B or 2B, R)."""
        logits = self.raw = self.decoder.logits(self.h, lo, hi).float()  # (B or 2B, R)
        if self.guided:
            l_c, l_u = logits[: self.B], logits[self.B :]
            logits = l_c + (s - 1.0) * (l_c - l_u)
        return logits

    def step(self, tok: torch.Tensor, n: int, roles: tuple[str, ...]) -> None:
        step = torch.cat([tok, tok]) if self.guided else tok
        with attention_context(step=n + 1, roles=roles if self.guided else ("cond",)):
            self.h = self.decoder.forward(step[:, None], self.P + n)


def _sample(decoder: LlamaDecoder, prefix: torch.Tensor, ranges: Sequence[tuple[int, int]], cfg: SamplingConfig,
            uncond_prefix: torch.Tensor | None, prefix_lm: bool, seed: int, callback: StepCallback | None,
            forced: torch.Tensor | None = None, streams: Sequence[ControlStream] = (),
            gap: torch.Tensor | None = None) -> torch.Tensor:
    guided = cfg.guidance is not None and uncond_prefix is not None
    if gap is not None and not guided:
        raise DataError("the layout score reads both streams: give uncond_prefix and a guidance scale")
    B, P = prefix.shape
    N = len(ranges)
    if P + N > decoder.max_len:
        raise DataError(f"prefix {P} + output {N} tokens exceed the model's {decoder.max_len}-token context")
    for c in streams:
        if c.prefix.shape[0] != B or c.prefix.shape[1] + N > c.decoder.max_len:
            raise DataError(f"control stream prefix {tuple(c.prefix.shape)} does not fit batch {B} and"
                            f" {c.decoder.max_len - N} prefix tokens")
    roles = ("cond", "uncond") if guided else ("cond",)  # rows [:B] conditional, [B:] unconditional
    gen = torch.Generator().manual_seed(int(seed))
    # attention processors see the step and each half's role
    base = _Stream(decoder, prefix, uncond_prefix, guided, prefix_lm, roles)
    ctl = [(_Stream(c.decoder, c.prefix, c.uncond_prefix, guided, c.prefix_lm, roles), float(c.scale)) for c in streams]
    out = torch.empty(B, N, dtype=torch.long)
    s = float(cfg.guidance) if guided else 1.0
    for n in range(N):
        lo, hi = ranges[n]
        logits = base.logits(lo, hi, s)  # (B, R)
        if ctl:
            steer = sum(k * (st.logits(lo, hi, s) - logits) for st, k in ctl)
            logits = logits + steer
        if callback is not None:
            repl = callback(n, P + n, logits, out[:, :n])
            if repl is not None:
                logits = repl
        tok = draw(logits, cfg.temperature, cfg.top_k, cfg.top_p, gen) + lo
        if gap is not None:
            lp = base.raw.log_softmax(-1)
            gap += (lp[:B] - lp[B:]).gather(1, (tok - lo)[:, None])[:, 0]
        if forced is not None:
            tok = torch.where(forced[:, n] >= 0, forced[:, n], tok)
        out[:, n] = tok
        if n + 1 < N:
            for st in [base, *(c for c, _ in ctl)]:
                st.step(tok, n, roles)
    return out


def generate_ids(
    model: Any,
    prompts: Sequence[str],
    task: str = "t2v",
    *,
    n: int = 1,
    seed: int = 0,
    sampling: SamplingConfig | None = None,
    negative_prompt: str | None = None,
    cond: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    decoder: LlamaDecoder | None = None,
    forced_ids: Any = None,
    streams: Sequence[ControlStream] = (),
    layout_candidates: int = 1,
) -> torch.Tensor:
    """Prompts -> output codec ids: (len(prompts)*n, f, h, w) for video tasks, (.., h, w) for t2i, (.., T, L) audio.

    Sample j of prompt i is row i*n + j. `cond` holds the condition codec ids
    for i2v ("first"), inpaint/outpaint ("masked") and v2a ("video"); it is shared by all prompts.
    Task "uncond" on a model that never trained it decodes the t2v layout with an empty prompt.
    `forced_ids`: output codec ids to keep instead of sampling (`forced_tokens`).
    `streams`: `ControlStream`s (e.g. from `ar_models/control.py`) steering every step.
    `layout_candidates` K > 1 (video and image tasks): the output's first latent frame is drawn K times per row
    and the one the prompt explains best is kept (`layout_first_frame`), then the rest is drawn after it.
    """
    sampling = sampling or SamplingConfig()
    check_task(task, model.spec)
    if not prompts:
        raise DataError("no prompts given")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(f"--n must be >= 1 (clips per prompt), got {n!r}")
    layout = uncond_layout(model) if task == "uncond" else task
    plans: list[DecodePlan] = []
    for p in prompts:
        ids = model.encode_prompt(p) if task != "uncond" else []
        plans += [model.layouts.decode_plan(layout, ids, cond)] * n
    if task == "uncond" and sampling.guidance is not None:
        warnings.warn("guidance has no effect on unconditional generation; ignored", UserWarning, stacklevel=2)
    uncond = None
    if sampling.guidance is not None and task != "uncond":
        neg = model.encode_prompt(negative_prompt) if negative_prompt else []
        u = model.layouts.decode_plan(task, neg, cond)
        uncond = torch.tensor([u.prefix] * len(plans))
    prefix = torch.tensor([pl.prefix for pl in plans])  # (B,P): fixed-length layouts, no padding needed
    decoder = decoder or model.decoder()
    forced = None if forced_ids is None else forced_tokens(forced_ids, plans[0].ranges, len(plans))
    if int(layout_candidates) != 1:
        if callback is not None or forced is not None or streams:
            raise DataError("layout candidates do not combine with a step callback, given ids or controls")
        neg = model.encode_prompt(negative_prompt) if negative_prompt else []
        unc = uncond if uncond is not None else torch.tensor([model.layouts.decode_plan(task, neg, cond).prefix]
                                                             * len(plans))
        forced = layout_first_frame(model, task, decoder, prefix, unc, plans[0].ranges, sampling, seed,
                                    int(layout_candidates))
    g = sample_plans(decoder, prefix, plans[0].ranges, sampling, uncond, model.cfg.prefix_lm, seed, callback, forced,
                     streams)
    return to_codec_ids(model, task, g)


def layout_first_frame(model: Any, task: str, decoder: LlamaDecoder, prefix: torch.Tensor, uncond: torch.Tensor,
                       ranges: Sequence[tuple[int, int]], sampling: SamplingConfig, seed: int, k: int) -> torch.Tensor:
    """Best of k first latent frames per row -> (B,N) `forced` global ids: that frame's, -1 after it.

    Each row's first h*w output tokens are drawn k times (rows repeated, one call, `seed`), and the draw with the
    largest sum of log p(id | prompt, ids before) - log p(id | no prompt, ids before) is kept: the patch model's
    rule (`PatchAR.sample(layout_candidates=)`). Without guidance the unconditional stream runs for the score
    only (guidance 1 draws from the conditional logits exactly)."""
    from dataclasses import replace

    from .layouts import AUDIO_TASKS

    if k < 1:
        raise DataError(f"layout_candidates must be >= 1, got {k}")
    if task in AUDIO_TASKS or task == "uncond":
        raise DataError(f"layout candidates rank a prompt's first frame; task {task} has none to rank")
    _, h, w = model.spec.latent
    first = min(h * w, len(ranges))
    B = prefix.shape[0]
    cfg = sampling if sampling.guidance is not None else replace(sampling, guidance=1.0)
    gap = torch.zeros(B * k)
    cand = sample_plans(decoder, prefix.repeat_interleave(k, 0), ranges[:first], cfg, uncond.repeat_interleave(k, 0),
                        model.cfg.prefix_lm, seed, gap=gap)
    keep = gap.view(B, k).argmax(1) + torch.arange(B) * k
    forced = torch.full((B, len(ranges)), -1, dtype=torch.long)
    forced[:, :first] = cand[keep]
    return forced


def forced_tokens(ids: Any, ranges: Sequence[tuple[int, int]], batch: int) -> torch.Tensor:
    """Output codec ids to force -> (B,N) global ids for `sample_plans(forced=...)`, -1 where the sampler draws.

    ids: (B or 1, ...) shaped like the output (e.g. a `GenerationResult.ids`, (B, f, h, w)) or flat (B or 1, k)
    with k <= N: the first k output tokens (a prefix); entries < 0 are drawn. Each id is local to its
    position's range (a codec id), so position n forces global id ranges[n][0] + id.
    """
    t = torch.as_tensor(ids).long().cpu()
    if t.ndim == 0 or t.shape[0] not in (1, batch):
        raise DataError(f"ids must hold one row per clip ({batch}) or one for all; got shape {tuple(t.shape)}")
    t = t.reshape(t.shape[0], -1).expand(batch, -1)  # (B,k)
    N, k = len(ranges), t.shape[1]
    if k > N:
        raise DataError(f"ids give {k} tokens per clip; the output has {N}")
    lo = torch.tensor([r[0] for r in ranges[:k]])
    size = torch.tensor([r[1] - r[0] for r in ranges[:k]])
    if bool((t >= size).any()):
        raise DataError(f"ids must be codec ids below the codebook size ({int(size.max())}), got {int(t.max())}")
    out = torch.full((batch, N), -1, dtype=torch.long)
    out[:, :k] = torch.where(t >= 0, t + lo, -1)
    return out


def uncond_layout(model: Any) -> str:
    """The layout that samples unconditionally: `uncond` where trained, else t2v with no text (warned).

    A model trained without the uncond task never updated its `<uncond>`
    embedding; condition dropout trained its t2v layout with an empty text
    segment, the same unconditional stream that guidance uses.
    """
    if "uncond" in model.spec.tasks:
        return "uncond"
    p = model.cfg.cond_dropout
    why = f"condition dropout (p={p:g}) trained it" if p > 0 else "it was trained without condition dropout: expect poor clips"
    warnings.warn(f"generating unconditionally with the t2v layout and an empty prompt ({why}); this model was not"
                  " trained with the uncond task", UserWarning, stacklevel=3)
    return "t2v"


def to_codec_ids(model: Any, task: str, g: torch.Tensor) -> torch.Tensor:
    """Global output ids (B,N) -> codec ids shaped like the output segment."""
    spec = model.spec
    if task in ("t2a", "v2a"):
        a = g.view(g.shape[0], spec.audio_tokens, spec.audio_levels)
        return model.vocab.global_to_codec(spec.audio_codec, a if spec.audio_levels > 1 else a[..., 0])
    local = model.vocab.global_to_codec(spec.video_codec, g)
    f, h, w = spec.latent
    return local.view(g.shape[0], -1, h, w)  # (B, f, h, w); f - cond_frames for i2v, 1 for t2i
