"""The backbone interface: a user's context (and the batch's item vectors) -> user vectors.

A backbone declares what it needs and offers: its training view (`view_spec`), the item parts it
reads from the lookup (`item_parts`), the rule its original re-draws the item weights with (asked of
the encoder in `initialise_items`), and its label and family for tables and logs.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from torch import Tensor, nn

from pixelrec.data.batch import Batch
from pixelrec.data.specs import ViewSpec
from pixelrec.items.base import ItemEncoder, ItemLookup
from pixelrec.registry import Registry

#: Constructor arguments a backbone may take that come from the dataset, not from the config.
DATA_ARGUMENTS = frozenset(
    {"n_users", "n_items", "max_len", "item_popularity", "train_users", "train_items", "image_store",
     "item_order_sha256", "item_texts"}
)
#: Backbone families, in the order of the paper's table columns.
FAMILIES = ("non-sequential", "sequential")


class Backbone(nn.Module):
    """A recommender body. Subclasses set `view`, `label` and `family` and implement `forward`.

    `forward(batch, items)` returns one user vector per target: shape `batch.targets.shape + (d,)`.
    `items(idx)` gives item vectors (zeros for padding), `items.part(name, idx)` the other item parts
    declared in `item_parts`; special tokens such as BERT4Rec's mask or a learned padding vector belong
    to the backbone. `score_vectors` turns item vectors into the vectors users are scored against
    (identity unless the backbone transforms items, as DSSM does).
    """

    view: ClassVar[str] = "sequence"  # pair | prefixes | sequence | masked
    #: the name tables, figures and logs give the backbone ("SASRec"), and its family (FAMILIES)
    label: ClassVar[str] = ""
    family: ClassVar[str] = ""
    #: position among its family's columns in the paper's tables (inf: after them, as first seen)
    table_order: ClassVar[float] = math.inf
    #: what the backbone reads of an item: `vectors` (always), `ids` (the learned ID part), `components`
    #: (spatial feature vectors), `ones_image` (the vector of an all-ones image, `items.mask_vector`);
    #: the recommender puts in each lookup those that the item encoder offers
    item_parts: tuple[str, ...] = ("vectors",)
    trainable: ClassVar[bool] = True  # False for rule-based baselines (pop): nothing to optimise
    needs_catalogue: ClassVar[bool] = False  # True when each step needs every item (LightGCN)
    #: nn.Embedding attributes sized by the users whose rows a step touches few of (train.table_optimizer)
    row_tables: ClassVar[tuple[str, ...]] = ()
    #: an item's scoring vector is a function of its own vector alone, so an item unknown at training
    #: (a new cover) can be scored; False when it also depends on the catalogue (a graph, counts)
    scores_items_alone: ClassVar[bool] = True

    def forward(self, batch: Batch, items: ItemLookup) -> Tensor:
        raise NotImplementedError

    def view_spec(self, data: Any) -> ViewSpec:
        """The training examples this backbone learns from, with the options of the `data` section
        (`DataConfig`) that apply to it; pair_context applies only to backbones that override this."""
        return ViewSpec(self.view, data.max_len, data.sequences, window_remainder=data.window_remainder,
                        window_stride=data.window_stride, prefixes=data.prefixes,
                        negatives_avoid=data.negatives_avoid)

    def item_init(self) -> tuple[str, float | None] | None:
        """The rule (and bound) by which the item encoder re-draws its weights for this backbone (the
        original's initialisation of its item table, chosen by model.init); None: the encoder keeps its own."""
        return None

    def initialise_items(self, encoder: ItemEncoder) -> None:
        """Fit the backbone to its item encoder, once, when the recommender is built: ask the encoder to
        re-draw its weights by `item_init`'s rule (`reset_parameters`), or build the parts that depend on
        the sizes it declares (ACF's component attention). The backbone keeps no reference to the encoder."""
        rule = self.item_init()
        if rule is not None:
            encoder.reset_parameters(*rule)

    def user_vectors(self, batch: Batch, items: ItemLookup) -> Tensor:
        """[B, d] vectors that score the next item after each user's context (evaluation)."""
        out = self(batch, items)
        return out[:, -1] if out.dim() == 3 else out

    def score_vectors(self, items: ItemLookup, idx: Tensor) -> Tensor:
        return items(idx)

    def score_catalogue(self, batch: Batch, items: ItemLookup, scoring: Tensor) -> Tensor:
        """[B, n_items + 1] scores of every item (evaluation). A dot product of user and item vectors
        unless the backbone scores otherwise (e.g. a maximum over the user's history)."""
        return self.user_vectors(batch, items).float() @ scoring.float().T


#: Backbones by `model.name`; each module of this package registers its own (see the package).
BACKBONES: Registry[Backbone] = Registry("model")


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Truncated-normal linear and embedding weights, unit norms, zero biases (BERT-style init)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
