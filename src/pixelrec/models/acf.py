"""ACF (Chen et al., SIGIR 2017): attentive collaborative filtering over the user's history.

    score(u, j) = <u + sum_l alpha(u, l) p_l, v_j>
    alpha(u, l) = softmax_l( w^T ReLU(W_u u + W_p p_l + W_x x_l + b) )      (item level)
    x_l         = sum_m beta(u, l, m) x_lm                                  (component level)

Here every item has one vector v_l from the item encoder: with items.kind=id+features (concat) it is
[ID vector ; projected pooled features], so W_p p_l + W_x x_l is one linear map of v_l, and p_l = v_l
(PixelRec's ACF also shares the item table as p_l). Feature files hold ONE pooled vector per item, so
each item has a single component: beta = 1 and the component-level attention is the identity, and is
therefore not built (it would only add parameters without gradient). Spatial features (e.g. a 7x7
ResNet map, 49 components) would restore it; pixelrec's feature files do not store them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelrec.data.batch import Batch
from pixelrec.items.base import ItemLookup
from pixelrec.models import BACKBONES
from pixelrec.models.base import Backbone, init_weights
from pixelrec.schema import PositiveInt


@BACKBONES.register("acf")
class ACF(Backbone):
    """The user's own vector plus an attention-weighted sum of the history's item vectors, the weights
    computed from the user and each item (item-level attention); an empty history leaves the user's vector."""

    view = "pair"
    set_context = True
    window_batches = False  # PixelRec's SampleACFTrainDataset lists every leave-one-out row: a batch counts rows

    def __init__(self, n_users: int, embedding_size: PositiveInt = 64, attention_size: PositiveInt | None = None) -> None:
        super().__init__()
        hidden = attention_size or embedding_size
        self.user_embedding = nn.Embedding(n_users + 1, embedding_size)
        self.user_key = nn.Linear(embedding_size, hidden)  # W_u and b
        self.item_key = nn.Linear(embedding_size, hidden, bias=False)  # W_p p_l + W_x x_l, one map of v_l
        self.attention = nn.Linear(hidden, 1, bias=False)  # w; a constant offset would cancel in the softmax
        init_weights(self.user_embedding)  # the same small scale as the item encoder's ID vectors
        for layer in (self.user_key, self.item_key, self.attention):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")  # as ACF's ReLU attention network
        nn.init.zeros_(self.user_key.bias)

    def attention_weights(self, user: Tensor, history: Tensor, real: Tensor) -> Tensor:
        """alpha [B, L]: softmax over the real history positions; all zeros for an empty history."""
        hidden = F.relu(self.user_key(user).unsqueeze(1) + self.item_key(history))
        logits = self.attention(hidden).squeeze(-1)
        logits = logits.masked_fill(~real, torch.finfo(logits.dtype).min)
        return torch.softmax(logits, dim=-1) * real

    def forward(self, batch: Batch, items: ItemLookup) -> Tensor:
        user = self.user_embedding(batch.users)
        real = batch.context > 0
        history = items(batch.context).masked_fill(~real.unsqueeze(-1), 0.0)
        alpha = self.attention_weights(user, history, real)
        return user + (alpha.unsqueeze(-1) * history).sum(1)
