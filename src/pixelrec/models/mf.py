"""MF (BPR-MF, Rendle et al. 2009): a learned vector per user, scored against item vectors by dot product."""

from __future__ import annotations

from torch import Tensor, nn

from pixelrec.data.batch import Batch
from pixelrec.items.base import ItemLookup
from pixelrec.models import BACKBONES
from pixelrec.models.base import Backbone, init_weights
from pixelrec.schema import PositiveInt


@BACKBONES.register("mf")
class MF(Backbone):
    """score(u, i) = <p_u, v_i>: p_u is the user's own embedding; v_i comes from the item encoder, so
    the same model is IDNet MF (ID embeddings) or PixelNet MF (image encoder). The context is ignored."""

    view = "pair"

    def __init__(self, n_users: int, embedding_size: PositiveInt = 64) -> None:
        super().__init__()
        self.user_embedding = nn.Embedding(n_users + 1, embedding_size)  # row 0: padding user, never trained
        self.apply(init_weights)

    def forward(self, batch: Batch, items: ItemLookup) -> Tensor:
        return self.user_embedding(batch.users)
