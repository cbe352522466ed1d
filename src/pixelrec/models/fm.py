"""FM (Rendle 2010) as PixelRec formulates it: the fields are the user's history items and the target item."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from pixelrec.data.batch import Batch
from pixelrec.data.specs import ViewSpec
from pixelrec.items.base import ItemLookup
from pixelrec.models.base import BACKBONES, Backbone
from pixelrec.schema import PositiveInt


@BACKBONES.register("fm")
class FM(Backbone):
    """A second-order factorization machine over the fields {history items h_1..h_n, target t}, each
    one-hot with its item vector as the factor; the user vector is the sum of the real history items.

    The full FM score is
        w_0 + sum_k w(h_k) + w(t) + sum_{k<l} <h_k, h_l> + <sum_k h_k, t>.
    w_0, the history's first-order terms sum_k w(h_k) and the history's pairwise interactions
    sum_{k<l} <h_k, h_l> do not depend on the target, so they are the same for every candidate of a
    user: they cancel in ranking, in BPR (a difference of two scores of one user) and in the softmax
    losses (softmax is invariant to a per-row shift), and are not computed. What remains is
    <sum_k h_k, t> + w(t). A backbone owns no per-item table, so the target's first-order weight is a
    linear function of its vector, w(t) = <w, t>, folded into the user vector (`linear=True`; it
    acts as a learned item bias, and is all an empty history scores with). PixelRec's FM has only
    the second-order term (`linear=False`).

    init: `xavier` draws an ID item table Xavier-normal (PixelRec's IDNet/fm.py; default: the encoder's
    own N(0, 0.02)). first_row_only: each step trains only its batch's first row, as IDNet/fm.py's
    `inputs = inputs[0].unsqueeze(0)` does (a bug, off by default; for reproducing its published numbers).
    """

    view = "pair"
    label = "FM"
    family = "non-sequential"
    table_order = 1

    def __init__(self, embedding_size: PositiveInt = 64, linear: bool = True,
                 init: Literal["default", "xavier"] = "default", first_row_only: bool = False) -> None:
        super().__init__()
        self.init, self.first_row_only = init, first_row_only
        self.linear = nn.Parameter(torch.zeros(embedding_size)) if linear else None

    def item_init(self) -> tuple[str, float | None] | None:
        return ("xavier", None) if self.init == "xavier" else None

    def view_spec(self, data: Any) -> ViewSpec:
        """The context is an unordered set of items, so it may be its window's other items
        (data.pair_context=window: PixelRec's batches of windows of leave-one-out rows, SampleOneTowerTrainDataset)."""
        return replace(super().view_spec(data), pair_context=data.pair_context, first_row_only=self.first_row_only)

    def forward(self, batch: Batch, items: ItemLookup) -> Tensor:
        padding = (batch.context == 0).unsqueeze(-1)
        # masked here rather than trusting the lookup's zero padding row: FM must never depend on it
        user = items(batch.context).masked_fill(padding, 0.0).sum(1)
        return user + self.linear if self.linear is not None else user
