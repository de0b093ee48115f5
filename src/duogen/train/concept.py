"""Fine-tuning on a concept, the pieces the AR and diffusion recipes share: DreamBooth's prior preservation and
training only the rows a grown embedding table gained (Custom Diffusion's modifier token).

Prior preservation (Ruiz et al. 2023, DreamBooth, Eq. 2): every batch pairs each instance clip (the concept, its
caption with the identifier) with a class clip the frozen model generated from the class prompt, and the loss is

    L = L(x, c) + lambda * L(x_pr, c_pr)        lambda = `prior_weight`

with each term the recipe's own loss (the AR model's next-token cross-entropy over the output tokens, the
diffusion model's denoising loss) on its half of the batch.

Owns: `PairedRecords`, `paired_collate`, `prior_preservation`, `train_new_rows_only`, `load_prior_split`,
the recipe keys' checks.
Does not own: making the class clips (bridges.personalize.dreambooth), the models, the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, DataError
from .engine import LossOutput


class PairedRecords:
    """Instance records paired with prior (class) records: item i = (instance[i % n_i], prior[i % n_p]);
    the length is the larger of the two, so an epoch sees every class clip and cycles the few instance clips."""

    def __init__(self, instance: Any, prior: Any):
        if len(instance) == 0 or len(prior) == 0:
            raise DataError("prior preservation needs at least one instance clip and one class clip")
        self.instance, self.prior = instance, prior

    def __len__(self) -> int:
        return max(len(self.instance), len(self.prior))

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        return self.instance[i % len(self.instance)], self.prior[i % len(self.prior)]


def paired_collate(collate: Callable[[list[Any]], Any] | None) -> Callable[[list[tuple[Any, Any]]], dict[str, Any]]:
    """Pairs -> one batch of the recipe's kind: the instance halves first, then the class halves, and
    `prior` (2B,) bool marking the class half."""
    import torch
    from torch.utils.data import default_collate

    inner = collate or default_collate

    def fn(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
        batch = dict(inner([a for a, _ in pairs] + [b for _, b in pairs]))
        batch["prior"] = torch.tensor([False] * len(pairs) + [True] * len(pairs))
        return batch

    return fn


def split_batch(batch: dict[str, Any], rows: Any) -> dict[str, Any]:
    """The examples `rows` ((B,) bool) of a batch whose tensors all have the batch first."""
    return {k: v[rows] for k, v in batch.items() if k != "prior"}


def prior_preservation(loss_fn: Callable[[Any, dict[str, Any]], LossOutput], weight: float
                       ) -> Callable[[Any, dict[str, Any]], LossOutput]:
    """The recipe's loss -> DreamBooth's: loss_fn(instance half) + weight * loss_fn(class half) (Eq. 2)."""

    def fn(m: Any, batch: dict[str, Any]) -> LossOutput:
        prior = batch["prior"]
        inst = loss_fn(m, split_batch(batch, ~prior))
        cls = loss_fn(m, split_batch(batch, prior))
        loss = inst.loss + weight * cls.loss
        return LossOutput(loss, inst.n_items + cls.n_items,
                          {"loss": float(loss.detach()), "loss_instance": float(inst.loss.detach()),
                           "loss_prior": float(cls.loss.detach())})

    return fn


def check_prior(prior_weight: float, weight_decay: float, new_rows_only: bool) -> None:
    if prior_weight < 0:
        raise ConfigError(f"prior_weight must be >= 0 (DreamBooth's lambda; 1 is the paper's), got {prior_weight}")
    if new_rows_only and weight_decay > 0:
        raise ConfigError(f"new_rows_only keeps the old embedding rows fixed, which AdamW's weight decay"
                          f" ({weight_decay}) would shrink: set train.weight_decay=0")


def load_prior_split(prior_data: str, split: str = "train") -> Any:
    """The class clips' split (an HF data set with `video` and `caption`)."""
    from .recipe_common import load_split

    rows = load_split(Path(prior_data), split)
    if len(rows) == 0:
        raise DataError(f"prior_data={prior_data}: split {split!r} holds no clip")
    return rows


def train_new_rows_only(model: Any, tables: dict[str, int]) -> list[str]:
    """Gradient hooks so that of each named embedding table only the rows >= its start (the tokens
    `add_tokens` appended) train; the old rows get a zero gradient and so stay bit-equal under Adam
    without weight decay. Returns the hooked parameter names."""
    import torch

    params = dict(model.named_parameters())
    hooked = []
    for name, first in tables.items():
        p = params[name]
        if not p.requires_grad or first >= p.shape[0]:
            continue
        keep = torch.zeros(p.shape[0], *([1] * (p.dim() - 1)), dtype=p.dtype, device=p.device)  # (V, 1)
        keep[first:] = 1
        p.register_hook(lambda g, keep=keep: g * keep.to(g.dtype))
        hooked.append(name)
    return hooked
