"""The one batch structure every training view produces and every backbone reads."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor


@dataclass
class Batch:
    """A batch of training or evaluation examples. Item indices use 0 for padding.

    users:     [B] user index of each example
    context:   [B, L] items the user saw, left-padded (the most recent item is last)
    targets:   [B] (pair, prefixes, evaluation) or [B, L] (sequence, masked); 0 = no target
    negatives: same shape as targets, sampled negatives (bpr), else None
    mask:      [B, L] positions to hide behind the backbone's mask token (masked view), else None
    candidates / candidate_mask: distinct in-batch items [C] and, per flattened target [N, C],
               which candidates are the user's own other positives (in-batch softmax)
    item_ids / item_inputs: distinct items of the batch and their encoder inputs (images), when the
               item encoder needs inputs loaded by DataLoader workers
    loss_scale: this rank's share of the global batch's targets times the rank count (1.0 on one
               process): averaging gradients over ranks then gives the global batch's mean loss
    row_scale: the same with the share of the global batch's rows, for a loss averaged over rows
               (loss.reduction=windows)
    """

    users: Tensor
    context: Tensor
    targets: Tensor
    negatives: Tensor | None = None
    mask: Tensor | None = None
    candidates: Tensor | None = None
    candidate_mask: Tensor | None = None
    item_ids: Tensor | None = None
    item_inputs: Any = None
    loss_scale: float = 1.0
    row_scale: float = 1.0

    def to(self, device: torch.device | str) -> "Batch":
        """The batch's tensors on `device`; copies to a GPU do not wait for it (from pinned memory they
        overlap its work), copies back to the host do, so the values are there when read."""
        non_blocking = torch.device(device).type == "cuda"
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            moved[f.name] = value.to(device, non_blocking=non_blocking) if isinstance(value, Tensor) else value
        return replace(self, **moved)

    def pin_memory(self) -> "Batch":
        """The batch in page-locked host memory, which a GPU copies from without the host waiting
        (DataLoader(pin_memory=True) calls this on each batch)."""
        return replace(self, **{f.name: _pinned(getattr(self, f.name)) for f in fields(self)})

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def distinct_items(self) -> Tensor:
        """The sorted distinct non-padding items the batch needs encoded (context, targets, negatives)."""
        if self.item_ids is not None:
            return self.item_ids
        parts = [self.context.reshape(-1), self.targets.reshape(-1)]
        if self.negatives is not None:
            parts.append(self.negatives.reshape(-1))
        ids = torch.unique(torch.cat(parts))  # sorted: padding, if any, is the first
        return ids[1:] if len(ids) and ids[0] == 0 else ids

    def scale_for(self, reduction: str) -> float:
        """The factor of this rank's loss that makes the ranks' average the global batch's loss under
        `reduction` (targets: a mean over targets; windows: over rows)."""
        return self.row_scale if reduction == "windows" else self.loss_scale

    def real_targets(self) -> tuple[Tensor, Tensor]:
        """(targets [N], their positions [N] in the flattened targets): the real targets, in row-major
        order. A backbone's outputs, shaped as the targets plus a width, give their rows by
        `outputs.reshape(-1, width).index_select(0, positions)`."""
        positions = (self.targets.reshape(-1) > 0).nonzero().squeeze(1)
        return self.targets.reshape(-1).index_select(0, positions), positions


def _pinned(value: Any) -> Any:
    """Tensors (also inside tuples and lists, as multimodal item inputs) in pinned memory; the rest as is."""
    if isinstance(value, Tensor):
        return value.pin_memory()
    if isinstance(value, (tuple, list)):
        return type(value)(_pinned(v) for v in value)
    return value
