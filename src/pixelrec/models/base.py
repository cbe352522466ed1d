"""The backbone interface: a user's context (and the batch's item vectors) -> user vectors."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from pixelrec.data.batch import Batch
from pixelrec.items.base import ItemLookup
from pixelrec.registry import Registry

#: Constructor arguments a backbone may take that come from the dataset, not from the config.
DATA_ARGUMENTS = frozenset(
    {"n_users", "n_items", "max_len", "item_popularity", "train_users", "train_items", "image_store",
     "item_order_sha256", "item_texts"}
)


class Backbone(nn.Module):
    """A recommender body. Subclasses set `view` and implement `forward`.

    `forward(batch, items)` returns one user vector per target: shape `batch.targets.shape + (d,)`.
    `items(idx)` gives item vectors (zeros for padding); special tokens such as BERT4Rec's mask or a
    learned padding vector belong to the backbone. `score_vectors` turns item vectors into the
    vectors users are scored against (identity unless the backbone transforms items, as DSSM does).
    """

    view: ClassVar[str] = "sequence"  # pair | prefixes | sequence | masked
    #: pair view: the context is an unordered set of the user's items (FM, DSSM, ACF), so it may be a
    #: window's other items (data.pair_context=window); a batch then counts windows, or rows if False
    set_context: ClassVar[bool] = False
    window_batches: ClassVar[bool] = True
    trainable: ClassVar[bool] = True  # False for rule-based baselines (pop): nothing to optimise
    needs_catalogue: ClassVar[bool] = False  # True when each step needs every item (LightGCN)
    #: an item's scoring vector is a function of its own vector alone, so an item unknown at training
    #: (a new cover) can be scored; False when it also depends on the catalogue (a graph, counts)
    scores_items_alone: ClassVar[bool] = True
    mask_ratio: float = 0.0  # fraction of positions hidden by the masked view
    force_mask: bool = True  # masked view: a window whose draw hid nothing hides its last item
    extra_slot: bool = False  # masked view: windows of max_len + 1 items (the mask token's own slot)
    mask_image: bool = False  # masked view: the mask token is the item encoder's vector of an all-ones image
    uses_components: ClassVar[bool] = False  # attends over items' spatial components (a spatial feature file)

    def forward(self, batch: Batch, items: ItemLookup) -> Tensor:
        raise NotImplementedError

    def initialise_items(self, encoder: Any) -> None:
        """Fit the backbone to its item encoder, once, when the recommender is built: re-draw the
        encoder's weights where the backbone's original did (MF, SR-GNN under model.init), or build the
        parts that depend on what the encoder provides (ACF's component attention); nothing by default."""

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
