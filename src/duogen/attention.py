"""Attention processors shared by both paradigms: one call object, one set of tools, one sampling context.

Owns: `AttentionCall` (what a processor sees), the default `sdpa` processor,
`attention_probs` / `apply_probs` (read and replace the probabilities),
`AttentionStore` (records maps), installing processors on a model
(`set_attention_processor`, scoped `attention_processor`), and the sampling
context (`attention_context`: the sampler step and the guidance roles) that
every attention layer reads when it hands a call to a processor.

Does not own: any attention layer. The denoisers' `diffusion.blocks.Attention`
and the AR model's Llama attention (hooked through transformers' attention
interface in `ar_models/attention.py`, and run by `ar_models/sampling.py`'s
decoder) build the calls. An attention layer, for the tools here, is any module
with a `processor` attribute (None = the layer's own fast path) and a `kind`
(self | cross | temporal); `attention_layers` stamps its qualified `name`.

Step and role. A sampler says which step it is on (`call.step`): the diffusion
samplers pass the index into their timestep list (0 = the first, noisiest
step), the AR sampler the index of the output token whose logits the forward
computes (0 = the prefix forward, n = the forward of token n-1; the step
callback's `n`). Outside a sampler `step` is None. Classifier-free guidance
runs the conditional and the unconditional streams as one batch: the first
half of the rows is conditional, the second half unconditional (every reshape
in the models keeps the batch outermost, so this holds for every call). A
processor never sees both halves at once: the layer splits the call and calls
the processor once per half, with `role` "cond" then "uncond", and concatenates
the outputs. Without guidance every call has role "cond".

Shape notation: B batch, nh query heads, nkv key/value heads (nh for the
denoisers; fewer with grouped-query attention), Tq / Tk query / key tokens,
hs head size.
"""

from __future__ import annotations

import contextlib
import math
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Role = Literal["cond", "uncond"]


class AttentionCall(NamedTuple):
    """Everything a processor sees for one attention evaluation (one guidance half of one layer call)."""

    module: Any  # the layer: .name is its qualified name, .kind is self | cross | temporal
    q: Tensor  # (B, nh, Tq, hs)
    k: Tensor  # (B, nkv, Tk, hs)
    v: Tensor  # (B, nkv, Tk, hs)
    mask: Tensor | None  # bool, broadcastable to (B, nh, Tq, Tk), True = may attend; None = attend everywhere
    causal: bool = False  # with mask None: query i attends to keys 0..i only (Tq == Tk; the AR prefix / forward)
    step: int | None = None  # the sampler's step (module docstring); None outside a sampler
    role: Role = "cond"  # "uncond": the unconditional half of classifier-free guidance


Processor = Callable[[AttentionCall], Tensor]


def _expand_kv(call: AttentionCall, x: Tensor) -> Tensor:
    """k or v (B, nkv, Tk, hs) -> (B, nh, Tk, hs): each key/value head serves nh / nkv query heads (GQA)."""
    n = call.q.shape[1] // x.shape[1]
    return x if n == 1 else x.repeat_interleave(n, dim=1)


def sdpa(call: AttentionCall) -> Tensor:
    """The default processor: fused scaled dot-product attention -> (B, nh, Tq, hs).

    Grouped-query calls use SDPA's own GQA without a mask, repeated heads with
    one: what transformers' SDPA attention does, so that an identity processor
    reproduces the model's own attention bit for bit.
    """
    return sdpa_tensors(call.q, call.k, call.v, call.mask, call.causal)


def sdpa_tensors(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
    """`sdpa` on bare tensors (a layer's fast path without a processor; the same kernel call), in float32 on a
    CPU (`cpu_fp32_attention`)."""
    gqa = q.shape[1] != k.shape[1]
    if gqa and mask is not None:
        n = q.shape[1] // k.shape[1]
        k, v, gqa = k.repeat_interleave(n, dim=1), v.repeat_interleave(n, dim=1), False
    return cpu_fp32_attention(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                                       enable_gqa=gqa), q, k, v)


def cpu_fp32_attention(attend: Callable[[Tensor, Tensor, Tensor], Tensor], q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """`attend(q, k, v)` in float32 on a CPU when CPU autocast is on (turned off around it, since it would cast
    SDPA's inputs to bf16) or any of q, k, v is half-precision; the output in q's dtype. Elsewhere (float32
    without autocast, GPUs) just `attend(q, k, v)`.

    torch's CPU flash-attention kernel runs bf16 several times slower than float32, its backward most of all: at
    the `tiny` DiT's shapes (batch 64, 4 heads, 25-48 tokens, head size 32) forward + backward took 14-33 ms under
    bf16 autocast against 2.1-4.1 ms in float32 on a 2-core Intel Xeon with AMX, and the DiT's bf16 training step
    took 1.5-1.9x the float32 one (`python bench/bench_precision.py --only dit --attention`). Attention is a small
    share of the FLOPs, so the projections and MLPs around it keep bf16's gain.
    """
    if q.device.type != "cpu":
        return attend(q, k, v)
    half = any(t.dtype in (torch.bfloat16, torch.float16) for t in (q, k, v))
    if torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return attend(q.float(), k.float(), v.float()).to(q.dtype)
    return attend(q.float(), k.float(), v.float()).to(q.dtype) if half else attend(q, k, v)


def attention_probs(call: AttentionCall) -> Tensor:
    """softmax(q k^T / sqrt(hs)) with the mask (and causal triangle) applied -> (B, nh, Tq, Tk), in float32."""
    q, k = call.q.float(), _expand_kv(call, call.k).float()
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, nh, Tq, Tk)
    if call.mask is not None:
        scores = scores.masked_fill(~call.mask, float("-inf"))
    elif call.causal:
        Tq, Tk = scores.shape[-2:]
        scores = scores.masked_fill(~torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    return scores.softmax(dim=-1)


def apply_probs(call: AttentionCall, probs: Tensor) -> Tensor:
    """probs (B, nh, Tq, Tk) @ v -> (B, nh, Tq, hs) in v's dtype."""
    return (probs @ _expand_kv(call, call.v).float()).to(call.v.dtype)


class AttentionStore:
    """A processor that records attention probabilities per layer name and attends normally.

    `store.maps[name]` is a list with one (B, nh, Tq, Tk) tensor per call,
    detached and on the CPU; `store.calls[name]` the matching (step, role)
    pairs (a guided evaluation is two calls, "cond" then "uncond"). `kinds`
    limits what is recorded (default: cross-attention only, the maps
    prompt-to-prompt uses; the AR model's layers are "self").
    """

    def __init__(self, kinds: tuple[str, ...] = ("cross",)) -> None:
        self.kinds = kinds
        self.maps: dict[str, list[Tensor]] = {}
        self.calls: dict[str, list[tuple[int | None, Role]]] = {}

    def __call__(self, call: AttentionCall) -> Tensor:
        if call.module.kind not in self.kinds:
            return sdpa(call)
        probs = attention_probs(call)
        self.maps.setdefault(call.module.name, []).append(probs.detach().cpu())
        self.calls.setdefault(call.module.name, []).append((call.step, call.role))
        return apply_probs(call, probs)

    def clear(self) -> None:
        self.maps.clear()
        self.calls.clear()


# ----------------------------------------------------------------------------- the sampling context


@dataclass(frozen=True)
class AttentionContext:
    """What the running sampler tells every attention layer: its step, and the role of each batch part."""

    step: int | None = None
    roles: tuple[Role, ...] = ("cond",)  # the batch split into len(roles) equal parts, in this order


_CONTEXT: ContextVar[AttentionContext] = ContextVar("duogen_attention_context", default=AttentionContext())


_KEEP: Any = object()


class attention_context:  # noqa: N801  (used as a context manager, like contextlib's)
    """`with attention_context(step=..., roles=...)`: set the step and / or roles for the attention calls
    inside the block (what is not given is inherited). A class, not a generator: the AR sampler enters one
    per decoded token."""

    __slots__ = ("step", "roles", "token")

    def __init__(self, step: int | None = _KEEP, roles: tuple[Role, ...] = _KEEP) -> None:
        self.step, self.roles = step, roles

    def __enter__(self) -> AttentionContext:
        cur = _CONTEXT.get()
        ctx = AttentionContext(cur.step if self.step is _KEEP else self.step,
                               cur.roles if self.roles is _KEEP else self.roles)
        self.token = _CONTEXT.set(ctx)
        return ctx

    def __exit__(self, *exc: Any) -> None:
        _CONTEXT.reset(self.token)


def run_processor(processor: Processor, module: Any, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                  causal: bool = False) -> Tensor:
    """Hand one layer call to `processor`, once per guidance role (module docstring) -> (B, nh, Tq, hs)."""
    ctx = _CONTEXT.get()
    n = len(ctx.roles)
    if n == 1:
        return processor(AttentionCall(module, q, k, v, mask, causal, ctx.step, ctx.roles[0]))
    B = q.shape[0]
    if B % n:
        raise ValueError(f"an attention call of batch {B} cannot be split into the {n} guidance roles {ctx.roles}")
    b = B // n

    def part(x: Tensor | None, j: int) -> Tensor | None:
        return x if x is None or x.shape[0] == 1 else x[j * b : (j + 1) * b]

    return torch.cat([processor(AttentionCall(module, part(q, j), part(k, j), part(v, j), part(mask, j), causal,
                                              ctx.step, role)) for j, role in enumerate(ctx.roles)])


# ----------------------------------------------------------------------------- installing processors


def attention_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(qualified name, layer) for every attention layer in `model`; also stamps `layer.name`."""
    for name, m in model.named_modules():
        if hasattr(m, "processor") and hasattr(m, "kind"):
            m.name = name
            yield name, m


def set_attention_processor(model: nn.Module, processor: Processor | dict[str, Processor] | None,
                            only: Callable[[str, nn.Module], bool] | None = None) -> None:
    """Install `processor` on every attention layer (or those `only(name, layer)` accepts).

    A dict maps qualified layer names to processors; None restores the default.
    """
    for name, layer in attention_layers(model):
        if only is not None and not only(name, layer):
            continue
        layer.processor = processor.get(name) if isinstance(processor, dict) else processor


@contextlib.contextmanager
def attention_processor(model: nn.Module, processor: Processor | dict[str, Processor] | None,
                        only: Callable[[str, nn.Module], bool] | None = None) -> Iterator[None]:
    """`set_attention_processor` for the duration of a block, restoring the previous ones."""
    before = [(layer, layer.processor) for _, layer in attention_layers(model)]
    set_attention_processor(model, processor, only)
    try:
        yield
    finally:
        for layer, old in before:
            layer.processor = old
