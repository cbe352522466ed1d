"""VBPR (He & McAuley, AAAI 2016): matrix factorisation with visual factors and a visual bias.

    score(u, i) = beta_i + <gamma_u, gamma_i> + <theta_u, E f_i> + <beta', f_i>    (+ alpha + beta_u)

alpha and beta_u are the same for every candidate of a user: they cancel in ranking, BPR and softmax.
With items.kind=id+features and combine=concat the item vector is [gamma_i ; E' f_i], E' being the
projection. The user vector here is [1 ; gamma_u ; theta_u ; 1]: the 1 against the first ID coordinate
makes that coordinate the item bias beta_i, the 1 against the last projected coordinate makes that
row of E' the visual bias beta' (exactly <beta', f_i>, plus a constant that cancels). So VBPR is
MF over the hybrid with two user coordinates pinned, and the projection (E and beta') takes the
encoder learning rate and weight decay, as PixelRec's "visual" rate and decay.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from pixelrec.data.batch import Batch
from pixelrec.errors import UserError
from pixelrec.items.base import ItemLookup
from pixelrec.models.base import BACKBONES, Backbone, init_weights
from pixelrec.schema import PositiveInt


@BACKBONES.register("vbpr")
class VBPR(Backbone):
    """User vector [1 ; free factors ; 1] against item vectors [ID part ; projected features]; the pinned
    ones give the item bias (first coordinate) and the visual bias (last coordinate). With items.kind=id
    it is BPR-MF with item biases; with items.kind=features, VBPR without ID factors.

    init: `xavier` draws the user table, an ID item table and the feature projection Xavier-normal
    (PixelRec's ViNet/vbpr.py); `default` truncated normal, std 0.02."""

    view = "pair"
    label = "VBPR"
    row_tables = ("user_embedding",)
    family = "non-sequential"
    table_order = 4

    def __init__(self, n_users: int, embedding_size: PositiveInt = 64, item_bias: bool = True, visual_bias: bool = True,
                 init: Literal["default", "xavier"] = "default") -> None:
        super().__init__()
        self.init = init
        self.item_bias, self.visual_bias = item_bias, visual_bias
        free = embedding_size - int(item_bias) - int(visual_bias)
        if free < 1:
            raise UserError(f"model.embedding_size={embedding_size} leaves no user factors beside the biases")
        self.user_embedding = nn.Embedding(n_users + 1, free)  # [gamma_u ; theta_u]; row 0: padding user
        self.apply(init_weights)
        if init == "xavier":
            nn.init.xavier_normal_(self.user_embedding.weight)

    def item_init(self) -> tuple[str, float | None] | None:
        return ("xavier", None) if self.init == "xavier" else None

    def forward(self, batch: Batch, items: ItemLookup) -> Tensor:
        factors = self.user_embedding(batch.users)
        ones = factors.new_ones(factors.shape[:-1] + (1,))
        parts = [ones] * self.item_bias + [factors] + [ones] * self.visual_bias
        return torch.cat(parts, -1)
