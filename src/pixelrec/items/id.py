"""Items as learned ID embeddings (IDNet)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pixelrec.distributed import SINGLE, Job
from pixelrec.items.base import ITEM_ENCODERS, ItemEncoder


@ITEM_ENCODERS.register("id")
class IDEncoder(ItemEncoder):
    """One trainable vector per item; index 0 (padding) is never looked up."""

    label = "ID"
    table_order = 0
    tied_to_catalogue = True
    row_tables = ("embedding",)
    new_items_refusal = "its items are ID vectors learned for the catalogue's items"

    def __init__(self, n_items: int, embedding_size: int, init_std: float = 0.02) -> None:
        super().__init__(n_items, embedding_size)
        self.id_size = embedding_size
        self.embedding = nn.Embedding(n_items + 1, embedding_size)
        nn.init.normal_(self.embedding.weight, std=init_std)

    def forward(self, item_ids: Tensor, inputs: Any = None) -> Tensor:
        return self.embedding(item_ids)

    def id_vectors(self, item_ids: Tensor) -> Tensor:
        return self.embedding(item_ids)

    def reset_parameters(self, rule: str, bound: float | None = None) -> bool:
        """The whole table, padding row included, as PixelRec's IDNet and ViNet models draw theirs:
        `xavier` Xavier-normal (mf, fm, dssm, gru4rec, vbpr), `uniform` U(+-bound) (srgnn, nextitnet),
        `kaiming` Kaiming-normal for ReLU, fan-in the width (acf)."""
        if rule == "xavier":
            nn.init.xavier_normal_(self.embedding.weight)
        elif rule == "uniform" and bound is not None:
            nn.init.uniform_(self.embedding.weight, -bound, bound)
        elif rule == "kaiming":
            nn.init.kaiming_normal_(self.embedding.weight, nonlinearity="relu")
        else:
            return False
        return True

    def padding_vector(self) -> Tensor:
        """[d] row 0 of the table, which the backbones with model.padding=encoded read at padding slots;
        never trained (PixelRec's `padding_idx=0`), so it keeps its initial draw, decayed only."""
        return self.embedding.weight[0].detach()

    @torch.no_grad()
    def catalogue(self, batch_size: int = 4096, device: torch.device | None = None, workers: int = 0,
                  job: Job = SINGLE) -> Tensor:
        """The table itself: every rank holds all of it, so there is nothing to share out."""
        table = self.embedding.weight.clone()
        table[0] = 0
        return table
