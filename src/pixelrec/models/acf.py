"""ACF (Chen et al., SIGIR 2017): attentive collaborative filtering over the user's history.

    score(u, j) = <u + sum_l alpha(u, l) p_l, q_j>
    alpha(u, l) = softmax_l( w^T ReLU(W_u u + W_p p_l + W_x x_l + b) )      (item level)
    x_l         = sum_m beta(u, l, m) x_lm                                  (component level)
    beta(u,l,m) = softmax_m( w2^T ReLU(W2u u + W2x x_lm + b2) )

`model.score_items=encoder` (ours): p_l = q_l = v_l, the item encoder's vector; with
items.kind=id+features it is [ID vector ; projected pooled features] (concat), so with one pooled
feature vector per item W_p p_l + W_x x_l is one linear map of v_l. `score_items=id` (PixelRec's ACF):
p_l = q_l = the item's ID vector only; the features drive only the attention (items.kind=id+features
with combine=sum, whose ID part has the user's width).

Component level: with a spatial feature file (`extract --pooling none`, e.g. the 7x7 = 49 positions of
a ResNet's last stage) the encoder gives each item's components x_lm through its feature projection,
and the attention above pools them into x_l, which enters the item-level attention as W_x x_l. A pooled
file has one component per item: beta = 1, the component level is the identity and is not built (and
with score_items=encoder neither is W_x, x_l being part of v_l).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelrec.data.batch import Batch
from pixelrec.data.specs import ViewSpec
from pixelrec.errors import UserError
from pixelrec.items.base import ItemEncoder, ItemLookup
from pixelrec.models.base import BACKBONES, Backbone, init_weights
from pixelrec.schema import PositiveInt


@BACKBONES.register("acf")
class ACF(Backbone):
    """The user's own vector plus an attention-weighted sum of the history's item vectors, the weights
    computed from the user and each item (item-level attention) and, with spatial features, from the
    user and each item's components (component-level attention); an empty history leaves the user's vector."""

    view = "pair"
    label = "ACF"
    row_tables = ("user_embedding",)
    family = "non-sequential"
    table_order = 5
    item_parts = ("vectors", "ids", "components")  # ids with score_items=id; components when the items have them

    def __init__(self, n_users: int, embedding_size: PositiveInt = 64, attention_size: PositiveInt | None = None,
                 score_items: Literal["encoder", "id"] = "encoder", project_user: bool = False,
                 init: Literal["default", "kaiming"] = "default") -> None:
        super().__init__()
        self.init = init
        hidden = attention_size or embedding_size
        if project_user and hidden != embedding_size:
            raise UserError(f"model.project_user=true adds the attention's user map W_u u + b (width "
                            f"model.attention_size={hidden}) to vectors of model.embedding_size={embedding_size}; "
                            "leave attention_size unset")
        # project_user: the user's part of the final vector is W_u u + b, the attention's own user map
        # (PixelRec's ACF); else the user's vector u itself
        self.project_user = project_user
        self.embedding_size, self.hidden, self.score_items = embedding_size, hidden, score_items
        self.user_embedding = nn.Embedding(n_users + 1, embedding_size)
        self.user_key = nn.Linear(embedding_size, hidden)  # W_u and b
        self.item_key = nn.Linear(embedding_size, hidden, bias=False)  # W_p p_l (+ W_x x_l, one map of v_l)
        self.attention = nn.Linear(hidden, 1, bias=False)  # w; a constant offset would cancel in the softmax
        if init == "kaiming":  # PixelRec's ViNet/acf.py draws the user and item tables Kaiming-normal too
            nn.init.kaiming_normal_(self.user_embedding.weight, nonlinearity="relu")
        else:
            init_weights(self.user_embedding)  # the same small scale as the item encoder's ID vectors
        for layer in (self.user_key, self.item_key, self.attention):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")  # as ACF's ReLU attention network
        nn.init.zeros_(self.user_key.bias)
        self.components: nn.ModuleDict | None = None  # built by initialise_items when the items have components

    def view_spec(self, data: Any) -> ViewSpec:
        """The history is attended as a set, so it may be its window's other items (data.pair_context=window);
        a batch counts rows, as PixelRec's SampleACFTrainDataset lists every leave-one-out row."""
        return replace(super().view_spec(data), pair_context=data.pair_context, window_batches=False)

    def initialise_items(self, encoder: ItemEncoder) -> None:
        """Check that the encoder has what score_items needs; build W_x where x_l is not already in the
        item vector (spatial components, or score_items=id), and the component level for spatial components."""
        if self.score_items == "id" and encoder.id_size != self.embedding_size:
            has = f"an ID part of width {encoder.id_size}" if encoder.id_size else "no ID part"
            raise UserError(f"model.score_items=id scores items by ID vectors of model.embedding_size="
                            f"{self.embedding_size}, and these items have {has}; use items.kind=id+features "
                            "with items.combine=sum, or model.score_items=encoder")
        super().initialise_items(encoder)
        many = encoder.component_count > 1
        if many or (self.score_items == "id" and encoder.component_size):  # else x_l lies in v_l already
            self.components = nn.ModuleDict({"feature": nn.Linear(encoder.component_size, self.hidden, bias=False)})
            if many:
                self.components.update({
                    "user": nn.Linear(self.embedding_size, self.hidden),  # W2u and b2
                    "key": nn.Linear(encoder.component_size, self.hidden, bias=False),  # W2x
                    "attention": nn.Linear(self.hidden, 1, bias=False),  # w2
                })
            for layer in self.components.values():
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            if many:
                nn.init.zeros_(self.components["user"].bias)

    def item_init(self) -> tuple[str, float | None] | None:
        return ("kaiming", None) if self.init == "kaiming" else None

    def attention_weights(self, user: Tensor, keys: Tensor, real: Tensor) -> Tensor:
        """alpha [B, L] from the history's keys [B, L, h] (W_p p_l + W_x x_l): softmax over the real
        history positions; all zeros for an empty history."""
        hidden = F.relu(self.user_key(user).unsqueeze(1) + keys)
        logits = self.attention(hidden).squeeze(-1)
        logits = logits.masked_fill(~real, torch.finfo(logits.dtype).min)
        return torch.softmax(logits, dim=-1) * real

    def pool_components(self, user: Tensor, parts: Tensor) -> Tensor:
        """x_l [B, L, c] = sum_m beta(u, l, m) x_lm from the components [B, L, M, c] (component level)."""
        layers = self.components
        assert layers is not None
        hidden = F.relu(layers["user"](user)[:, None, None] + layers["key"](parts))
        beta = torch.softmax(layers["attention"](hidden), dim=2)  # [B, L, M, 1]
        return (beta * parts).sum(2)

    def forward(self, batch: Batch, items: ItemLookup) -> Tensor:
        user = self.user_embedding(batch.users)
        real = batch.context > 0
        profile = items.part("ids", batch.context) if self.score_items == "id" else items(batch.context)
        profile = profile.masked_fill(~real.unsqueeze(-1), 0.0)
        keys = self.item_key(profile)
        if self.components is not None:
            parts = items.part("components", batch.context)  # [B, L, M, c], each distinct item projected once
            pooled = self.pool_components(user, parts) if "attention" in self.components else parts[:, :, 0]
            keys = keys + self.components["feature"](pooled)
        alpha = self.attention_weights(user, keys, real)
        own = self.user_key(user) if self.project_user else user
        return own + (alpha.unsqueeze(-1) * profile).sum(1)

    def score_vectors(self, items: ItemLookup, idx: Tensor) -> Tensor:
        if self.score_items == "encoder":
            return items(idx)
        return items.part("ids", idx)  # padding scores against zeros

