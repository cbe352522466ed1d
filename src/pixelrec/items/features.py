"""Items as frozen pre-extracted image features (ViNet): `features`, and the hybrid `id+features`.

The features are read once from a file written by `pixelrec extract` (checked against the dataset)
and held as a non-persistent buffer: they are data, not weights, so checkpoints do not carry them.
A trainable projection maps them to the recommender's vector size; it is the part that takes the
encoder learning rate and weight decay (PixelRec's "visual" rate for VBPR).

A spatial file (`extract --pooling none`: [items, M, C]) gives each item M component vectors, each
through the same projection (`component_vectors`, for backbones that attend over them: ACF); the
item's own vector is then the projection of the mean of its components.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from pixelrec.distributed import SINGLE, Job
from pixelrec.errors import UserError
from pixelrec.items.base import ITEM_ENCODERS, ItemEncoder
from pixelrec.items.id import IDEncoder
from pixelrec.items.pixels import FeatureSettings, projection
from pixelrec.storage.feature_files import CHECK_ROWS, load_features, read_sidecar
from pixelrec.towers.caveats import UPSCALED_IMAGES, imported_caveat, tower_caveats


@ITEM_ENCODERS.register("features")
class FeatureEncoder(ItemEncoder):
    """Frozen features f_i -> projection MLP -> item vector; with project=False the raw f_i (and
    `embedding_size` becomes the feature size), for models that compare features directly (VisRank)."""

    catalogue_each_step = True  # a gather and a small MLP: every backbone and loss can afford the catalogue
    encoder_tower = "image"  # items.image.encoder: the image encoder the features came from, a label for tables
    label = "features"
    table_order = 2
    family = "vinet"
    reads_features = True
    new_items_refusal = "its items are rows of the catalogue's feature file; it has no image tower"

    def __init__(
        self,
        n_items: int,
        embedding_size: int,
        item_order_sha256: str,
        features: str | None = None,
        project: bool = True,
        image: FeatureSettings | None = None,
    ) -> None:
        if features is None:
            raise UserError("items.kind=features needs a feature file in items.features (write one with "
                            "`pixelrec extract`)")
        table = load_features(features, n_items, item_order_sha256, spatial=True)
        made = read_sidecar(features) or {}
        super().__init__(n_items, embedding_size if project else table.shape[-1])
        self.source, self.made = str(features), made  # the file, and what its sidecar says made it
        self.component_count = table.shape[1] if table.dim() == 3 else 1
        self.component_table: Tensor | None
        if self.component_count > 1:
            self.register_buffer("component_table", table, persistent=False)
            table = mean_components(table)
        else:
            self.component_table = None
            table = table.reshape(table.shape[0], -1)  # a spatial file of one component is a pooled one
        self.register_buffer("features", table, persistent=False)
        self.feature_size = table.shape[1]
        self.component_size = self.embedding_size
        image = image or FeatureSettings()
        self.projection = (projection(self.feature_size, embedding_size, image.dnn_layers, image.activation,
                                      image.final_activation) if project else None)

    def caveats(self, carried: bool = False) -> list[dict[str, Any]]:
        """Those of the tower that extracted the features, from the feature file's sidecar (a projection
        carried from another run leaves them as they are); a file imported from elsewhere says so."""
        made = self.made
        upscaled = [c for c in made.get("caveats") or [] if isinstance(c, dict) and c.get("kind") == UPSCALED_IMAGES]
        sizes = upscaled[0] if upscaled else {}
        source = made.get("source")
        imported = [imported_caveat(self.source, source.get("file") if isinstance(source.get("file"), str) else None)
                    ] if isinstance(source, dict) else []
        return imported + tower_caveats(
            made.get("encoder"), weights=made.get("weights_sha256"), pretrained=made.get("pretrained"),
            stored_size=sizes.get("stored_size"), input_size=sizes.get("input_size"),
            features=self.source, hint="extract them again with `pixelrec extract --encoder-weights FILE`")

    def reset_parameters(self, rule: str, bound: float | None = None) -> bool:
        """The projection's Linear weights `xavier` (Xavier-normal, PixelRec's ViNet/vbpr.py) or `kaiming`
        (Kaiming-normal for ReLU, its ViNet/acf.py dim_reductor), biases zero; the features stay as read."""
        if self.projection is None or rule not in ("xavier", "kaiming"):
            return False
        for layer in self.projection:
            if isinstance(layer, nn.Linear):
                if rule == "xavier":
                    nn.init.xavier_normal_(layer.weight)
                else:
                    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        return True

    def raw(self, item_ids: Tensor) -> Tensor:
        """The frozen features of `item_ids` as float32 (zeros for padding)."""
        return self.features[item_ids].float()

    def forward(self, item_ids: Tensor, inputs: Any = None) -> Tensor:
        raw = self.raw(item_ids)
        return raw if self.projection is None else self.projection(raw)

    def component_vectors(self, item_ids: Tensor) -> Tensor:
        """[..., M, component_size]: each spatial component of `item_ids` through the projection (M = 1:
        the pooled features)."""
        raw = (self.component_table[item_ids] if self.component_table is not None else self.raw(item_ids)[..., None, :])
        raw = raw.float()
        return raw if self.projection is None else self.projection(raw)

    @torch.no_grad()
    def catalogue(self, batch_size: int = 4096, device: torch.device | None = None, workers: int = 0,
                  job: Job = SINGLE) -> Tensor:
        if self.projection is None:
            return self.features.float().to(device or self.features.device)
        return super().catalogue(batch_size, device or self.features.device, workers, job)


@ITEM_ENCODERS.register("id+features")
class IDFeatureEncoder(ItemEncoder):
    """A learned ID vector and projected frozen features per item, summed (`combine=sum`) or
    concatenated as [ID ; projected features] (`combine=concat`, ID part `id_size`, default half of
    `embedding_size`), so the item vector keeps `embedding_size` either way. VBPR's item is the concat."""

    encoder_tower = "image"  # items.image.encoder: the image encoder the features came from, a label for tables
    label = "id+features"
    table_order = 3
    family = "vinet"
    reads_features = True
    new_items_refusal = ("its items are learned ID vectors and rows of the catalogue's feature file; "
                         "it has no image tower")

    def __init__(
        self,
        n_items: int,
        embedding_size: int,
        item_order_sha256: str,
        features: str | None = None,
        combine: Literal["sum", "concat"] = "sum",
        id_size: int | None = None,
        image: FeatureSettings | None = None,
    ) -> None:
        super().__init__(n_items, embedding_size)
        if combine not in ("sum", "concat"):
            raise UserError(f"items.combine: {combine!r} is not one of 'sum', 'concat'")
        if combine == "concat":
            id_size = embedding_size // 2 if id_size is None else id_size
            if not 0 < id_size < embedding_size:
                raise UserError(f"items.id_size={id_size} must lie between 0 and embedding_size={embedding_size}")
        else:
            id_size = embedding_size
        self.combine, self.id_size = combine, id_size
        visual_size = embedding_size - id_size if combine == "concat" else embedding_size
        self.ids = IDEncoder(n_items, id_size)
        self.visual = FeatureEncoder(n_items, visual_size, item_order_sha256, features, True, image)
        self.component_count, self.component_size = self.visual.component_count, self.visual.component_size

    def forward(self, item_ids: Tensor, inputs: Any = None) -> Tensor:
        ids, visual = self.ids(item_ids), self.visual(item_ids)
        return torch.cat([ids, visual], -1) if self.combine == "concat" else ids + visual

    def reset_parameters(self, rule: str, bound: float | None = None) -> bool:
        """The ID table and the feature projection, each as it reads the rule (PixelRec's VBPR draws both
        Xavier-normal, its ACF both Kaiming-normal)."""
        ids = self.ids.reset_parameters(rule, bound)
        return self.visual.reset_parameters(rule, bound) or ids

    def caveats(self, carried: bool = False) -> list[dict[str, Any]]:
        """Those of the feature file (see FeatureEncoder.caveats)."""
        return self.visual.caveats(carried)

    def id_vectors(self, item_ids: Tensor) -> Tensor:
        """The ID part of the items' vectors [..., id_size]."""
        return self.ids(item_ids)

    def component_vectors(self, item_ids: Tensor) -> Tensor:
        """The projected spatial components of the visual part [..., M, component_size]."""
        return self.visual.component_vectors(item_ids)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The feature projection only: ID vectors take the recommender's rate, as in PixelRec's VBPR."""
        return [p for p in self.visual.parameters() if p.requires_grad]


def mean_components(table: Tensor) -> Tensor:
    """[n, C] means of [n, M, C] components, in float32 a block of rows at a time, stored as `table`."""
    out = table.new_empty(table.shape[0], table.shape[-1])
    step = max(1, CHECK_ROWS // table.shape[1])
    for begin in range(0, table.shape[0], step):
        out[begin : begin + step] = table[begin : begin + step].float().mean(1).to(table.dtype)
    return out
