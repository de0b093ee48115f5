"""Attention processors on the transformers Llama: the AR side of `duogen.attention`.

Owns: `enable_processors(lm)`, which makes every Llama attention layer an
attention layer in `duogen.attention`'s sense (a `processor` attribute, None
by default, and `kind` "self") and routes the model's own forward (training,
scoring, any teacher-forced pass of `MultimodalLM`) through transformers'
attention interface to `duogen_attention`: SDPA exactly as transformers runs
it while a layer has no processor, the layer's processor otherwise. The
KV-cached decoder (`sampling.py`) reads the same `processor` attributes.

Does not own: the call object, the tools and the sampling context
(`duogen.attention`), the decoding loop (`sampling.py`).

Registration happens when a model is enabled (not at import): the name
`duogen` goes into transformers' `AttentionInterface` and, with transformers'
own SDPA mask builder, into its `AttentionMaskInterface`, so the masks a layer
receives are the ones SDPA would.

Shape notation: B batch, Hq / Hkv query / key-value heads, T tokens, Dh head width.
"""

from __future__ import annotations

from typing import Any

import torch

from ..attention import cpu_fp32_attention, run_processor

IMPLEMENTATION = "duogen"


def duogen_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: q (B,Hq,T,Dh), k v (B,Hkv,T,Dh) -> ((B,T,Hq,Dh), None).

    A processor owns the probabilities: attention dropout (training only, `ARConfig.attn_dropout`) is not
    applied while one is installed.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    proc = getattr(module, "processor", None)
    if proc is None:  # transformers' own SDPA call, in float32 on a CPU (`cpu_fp32_attention`)
        out = cpu_fp32_attention(lambda q, k, v: sdpa_attention_forward(
            module, q, k, v, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)[0],
            query, key, value)
        return out, None
    mask = attention_mask
    if mask is not None and mask.dtype != torch.bool:  # an additive float mask: 0 where attending
        mask = mask == 0
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    causal = causal and mask is None and query.shape[2] > 1
    out = run_processor(proc, module, query, key, value, mask, causal)  # (B,Hq,T,Dh)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if IMPLEMENTATION not in AttentionInterface._global_mapping:
        AttentionInterface.register(IMPLEMENTATION, duogen_attention)
    if IMPLEMENTATION not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)


def enable_processors(lm: Any) -> Any:
    """Make a `LlamaForCausalLM`'s attention layers take processors (idempotent); returns `lm`."""
    _register()
    if lm.config._attn_implementation != IMPLEMENTATION:
        lm.config._attn_implementation = IMPLEMENTATION
    for layer in lm.model.layers:
        a = layer.self_attn
        if not hasattr(a, "processor"):
            a.processor, a.kind, a.name = None, "self", f"layers.{a.layer_idx}.self_attn"
    return lm
