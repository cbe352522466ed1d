"""MF (BPR-MF, Rendle et al. 2009): a learned vector per user, scored against item vectors by dot product."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from pixelrec.data.batch import Batch
from pixelrec.items.base import ItemLookup
from pixelrec.models.base import BACKBONES, Backbone, init_weights
from pixelrec.schema import PositiveInt


@BACKBONES.register("mf")
class MF(Backbone):
    """score(u, i) = <p_u, v_i>: p_u is the user's own embedding; v_i comes from the item encoder, so
    the same model is IDNet MF (ID embeddings) or PixelNet MF (image encoder). The context is ignored.

    init: `default` truncated normal (std 0.02) user vectors; `xavier` Xavier-normal ones, and an ID
    item table Xavier-normal too (the PixelRec code's IDNet/mf.py and PixelNet/momf.py)."""

    view = "pair"
    label = "MF"
    row_tables = ("user_embedding",)
    family = "non-sequential"
    table_order = 0

    def __init__(self, n_users: int, embedding_size: PositiveInt = 64,
                 init: Literal["default", "xavier"] = "default") -> None:
        super().__init__()
        self.init = init
        self.user_embedding = nn.Embedding(n_users + 1, embedding_size)  # row 0: padding user, never trained
        if init == "xavier":
            nn.init.xavier_normal_(self.user_embedding.weight)
        else:
            self.apply(init_weights)

    def item_init(self) -> tuple[str, float | None] | None:
        """init=xavier: the encoder re-draws what the rule covers for it (an ID table Xavier-normal, as the
        original's item embedding, a feature projection too; image towers keep their own)."""
        return ("xavier", None) if self.init == "xavier" else None

    def forward(self, batch: Batch, items: ItemLookup) -> Tensor:
        return self.user_embedding(batch.users)
