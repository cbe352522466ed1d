"""The item-encoder interface: item indices (and, for pixels, their loaded inputs) -> vectors.

Each encoder declares what the rest of the package needs to know of it (labels, family, images per
item, where its image tower is, ...) as class attributes, so no caller compares `items.kind` with a
name; and offers backbones the item parts they declare (`parts`), handed to them in the `ItemLookup`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from pixelrec import distributed, progress
from pixelrec.distributed import SINGLE, Job
from pixelrec.errors import worker_errors
from pixelrec.registry import Registry


class ItemEncoder(nn.Module):
    """Maps distinct item indices (>= 1, never padding) to vectors of size `embedding_size`.

    Encoders whose inputs are heavy (images) load them on the CPU side with `load_inputs`, which runs
    in DataLoader workers; `forward` then receives those inputs beside the indices.
    """

    #: False when encoding the whole catalogue at every step is too costly (pixels).
    catalogue_each_step: ClassVar[bool] = True
    #: True when `load_inputs` returns something that DataLoader workers should prepare.
    needs_inputs: ClassVar[bool] = False
    #: Most items encoded at once when embedding the whole catalogue.
    catalogue_chunk: ClassVar[int] = 65536
    #: bf16 autocast when the catalogue is encoded on a GPU (train.amp; the paper's code runs fp32).
    amp: bool = True
    #: The tower section (`items.image`, `items.text`) whose encoder `--encoder` sets and results.json
    #: names; None for an encoder without one (ID tables).
    encoder_tower: ClassVar[str | None] = None
    #: What `pixelrec embed` reads to encode items outside the catalogue ("covers", "item info");
    #: empty where an item's vector exists only for the catalogue (a learned ID, a row of a feature file).
    new_items_from: ClassVar[tuple[str, ...]] = ()
    #: Vectors per item that `component_vectors` gives: > 1 for spatial features; `component_size` 0: none.
    component_count: int = 1
    component_size: int = 0
    #: Width of the item's learned ID part that `id_vectors` gives; 0: the encoder has none.
    id_size: int = 0

    # --- declarations read by tables, logs, transfer and jobs (never the kind's name) ---
    #: How tables and logs name the kind: a row without a named encoder, and `row_label`'s {label}.
    label: ClassVar[str] = ""
    #: A table row of this kind with a named encoder (image model, feature extractor, text model).
    row_label: ClassVar[str] = "{label}: {encoder}"
    #: Position of the kind's rows in the paper's table layout (inf: after the others, as first seen).
    table_order: ClassVar[float] = math.inf
    #: The paper's family whose packaged settings apply (configs/<family>/): pixelnet, vinet, or None.
    family: ClassVar[str | None] = None
    #: Cover images encoded per item by `forward` (0: none), so images per step = items per step x this.
    images_per_item: ClassVar[int] = 0
    #: Path of the submodule holding the trained image tower (`tower`, `preprocess`, ...): "" for the
    #: encoder itself; None when it has none (nothing to export or carry by encoder name).
    image_tower: ClassVar[str | None] = None
    #: Items are rows of a feature file (items.features) written by `pixelrec extract`.
    reads_features: ClassVar[bool] = False
    #: Why a run of this kind cannot score items outside the catalogue (when `new_items_from` is empty).
    new_items_refusal: ClassVar[str] = "its item vectors exist only for the catalogue's items"
    #: Every weight belongs to the catalogue's items (an ID table), so none crosses datasets.
    tied_to_catalogue: ClassVar[bool] = False
    #: nn.Embedding attributes sized by the catalogue whose rows a step touches few of (train.table_optimizer).
    row_tables: ClassVar[tuple[str, ...]] = ()

    def __init__(self, n_items: int, embedding_size: int) -> None:
        super().__init__()
        self.n_items = n_items
        self.embedding_size = embedding_size

    def parts(self) -> dict[str, Callable[[Tensor], Tensor]]:
        """The item parts besides the vector that this encoder offers backbones (`Backbone.item_parts`):
        `ids` (`id_vectors`) where id_size > 0, `components` (`component_vectors`) where component_size > 0."""
        offered: dict[str, Callable[[Tensor], Tensor]] = {}
        if self.id_size:
            offered["ids"] = self.id_vectors
        if self.component_size:
            offered["components"] = self.component_vectors
        return offered

    def reset_parameters(self, rule: str, bound: float | None = None) -> bool:
        """Re-draw the weights that a backbone's initialisation `rule` covers (MF's `xavier`, SR-GNN's
        `uniform` within +-bound), as each encoder reads the rule; True when something was re-drawn.
        Nothing by default: an encoder keeps its own initialisation."""
        return False

    def encode(self, item_ids: Tensor, inputs: Any = None, special: tuple[str, ...] = ()) -> tuple[Tensor, dict[str, Any]]:
        """The items' vectors, and the vectors of the special item parts named in `special` (`ones_image`,
        `padding`), each by its own forward; an encoder may encode them together (PixelEncoder)."""
        return self(item_ids, inputs), {name: self.special_vector(name) for name in special}

    def special_vector(self, name: str) -> Tensor | None:
        """The vector of special item part `name`: `padding` (`padding_vector`) unless an encoder has more."""
        if name != "padding":
            raise RuntimeError(f"{type(self).__name__} offers no {name!r} vector")
        return self.padding_vector()

    def padding_vector(self) -> Tensor | None:
        """[d] what the original puts at padding slots, for backbones with model.padding=encoded (an ID
        table's frozen row 0, a pixel tower's vector for a zero image); None: zeros, as by default."""
        return None

    def component_vectors(self, item_ids: Tensor) -> Tensor:
        """[..., component_count, component_size] the items' projected feature vectors (when component_size > 0)."""
        raise NotImplementedError(f"{type(self).__name__} has no spatial components")

    def id_vectors(self, item_ids: Tensor) -> Tensor:
        """[..., id_size] the items' learned ID vectors (when id_size > 0)."""
        raise NotImplementedError(f"{type(self).__name__} has no ID vectors")

    def load_inputs(self, item_ids: np.ndarray) -> Any:
        """CPU-side inputs for `item_ids` (run in DataLoader workers); None when not needed."""
        return None

    def forward(self, item_ids: Tensor, inputs: Any = None) -> Tensor:
        raise NotImplementedError

    def new_item_inputs(self, new: Any) -> Any:
        """Inputs for items outside the catalogue, from what `pixelrec embed` read of them (`new`, a
        `new_items.NewItemData`): a row source whose `read(rows)` (1-based rows of `new`) gives inputs
        as `forward` takes them, so a new item's vector comes from the same forward as the catalogue's."""
        raise NotImplementedError(f"{type(self).__name__} encodes only the catalogue's items")

    def prepare(self, device: torch.device, train: Any = None, workers: int = 0, progress: bool = True) -> None:
        """Set-up before training on `device` (caches, memory savers from the train config); none by default."""

    def caveats(self, carried: bool = False) -> list[dict[str, Any]]:
        """What makes this encoder's numbers incomparable with the paper's (see towers.caveats); `carried`:
        its towers' weights are loaded from another run after construction. None by default."""
        return []

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters that take the encoder learning rate and weight decay."""
        return [p for p in self.parameters() if p.requires_grad]

    def encoder_groups(self) -> list[dict[str, Any]]:
        """The encoder parameters by optimiser group, {"name", "params", "lr", "weight_decay"}; an lr or
        decay of None takes train.encoder_lr / encoder_weight_decay. One group, unless towers differ."""
        return [{"name": "encoder", "params": self.encoder_parameters(), "lr": None, "weight_decay": None}]

    @torch.no_grad()
    def catalogue(self, batch_size: int = 4096, device: torch.device | None = None, workers: int = 0,
                  job: Job = SINGLE) -> Tensor:
        """Vectors of every item, row i = item i, row 0 = zeros (padding); inputs are loaded by
        `workers` DataLoader processes while the encoder runs. Under several ranks each encodes its
        share of the items and all shares are gathered."""
        device = device or next(self.parameters()).device
        items = torch.arange(1, self.n_items + 1)[job.share(self.n_items)]
        chunks = list(items.split(min(batch_size, self.catalogue_chunk)))
        loaded: Any
        if self.needs_inputs and workers > 0:
            loaded = torch.utils.data.DataLoader(
                _CatalogueInputs(self.load_inputs, chunks), batch_size=None, num_workers=workers,
                pin_memory=device.type == "cuda",  # so move_inputs' non-blocking copy overlaps the encoder
            )
        else:
            loaded = ((chunk, self.load_inputs(chunk.numpy())) for chunk in chunks)
        out = [torch.zeros(0, self.embedding_size, device=device)]
        bar = progress.progress("encode items", len(items), "item")
        with worker_errors(), torch.autocast(device.type, dtype=torch.bfloat16,
                                             enabled=self.amp and device.type == "cuda"):
            for chunk, inputs in loaded:
                out.append(self(chunk.to(device), move_inputs(inputs, device)).float())
                bar.update(len(chunk))
        bar.close()
        vectors = distributed.gather_rows(torch.cat(out)) if job.world > 1 else torch.cat(out)
        return torch.cat([vectors.new_zeros(1, self.embedding_size), vectors])


#: Item encoders by `items.kind`; each module of this package registers its own (see the package).
ITEM_ENCODERS: Registry[ItemEncoder] = Registry("item encoder")


class _CatalogueInputs(torch.utils.data.Dataset):
    def __init__(self, load_inputs: Any, chunks: list[Tensor]) -> None:
        self.load_inputs, self.chunks = load_inputs, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> tuple[Tensor, Any]:
        return self.chunks[i], self.load_inputs(self.chunks[i].numpy())


def move_inputs(inputs: Any, device: torch.device) -> Any:
    return inputs.to(device, non_blocking=True) if isinstance(inputs, Tensor) else inputs


class ItemLookup:
    """Vectors of a set of distinct items, looked up by item index (0 -> the zeros row), and
    the other item parts the backbone declared (`part`), as the recommender bound them."""

    #: the item encoder's vector for an all-ones input image, when the backbone's mask token is that
    #: (BERT4Rec model.mask_token=encoded_ones, item part `ones_image`); set by the recommender
    mask_vector: Tensor | None = None
    #: the item encoder's padding vector (`ItemEncoder.padding_vector`), when the backbone declares the
    #: item part `padding` (model.padding=encoded); None: padding slots are zeros
    padding_vector: Tensor | None = None

    def __init__(self, item_ids: Tensor, vectors: Tensor, n_items: int,
                 parts: dict[str, Callable[[Tensor], Tensor]] | None = None) -> None:
        self.item_ids = item_ids  # sorted, distinct, no 0
        self.table = torch.cat([vectors.new_zeros(1, vectors.shape[-1]), vectors])
        self.n_items = n_items
        self.is_catalogue = len(item_ids) == n_items
        self.parts = dict(parts or {})

    @classmethod
    def catalogue(cls, table_with_padding: Tensor,
                  parts: dict[str, Callable[[Tensor], Tensor]] | None = None) -> "ItemLookup":
        n = table_with_padding.shape[0] - 1
        lookup = cls.__new__(cls)
        lookup.item_ids = torch.arange(1, n + 1, device=table_with_padding.device)
        lookup.table, lookup.n_items, lookup.is_catalogue = table_with_padding, n, True
        lookup.parts = dict(parts or {})
        return lookup

    def part(self, name: str, idx: Tensor) -> Tensor:
        """Item part `name` of `idx` of any shape, [..., *part shape], each distinct index computed once
        (with gradients) and zeros at padding. Computed on request, never as a table of the catalogue:
        an item's spatial components are many vectors each."""
        if name not in self.parts:
            raise RuntimeError(f"the item lookup carries no {name!r} part: the backbone does not declare it in "
                               "item_parts, or the item encoder does not offer it")
        distinct, where = torch.unique(idx, return_inverse=True)
        values = self.parts[name](distinct)[where]
        real = (idx > 0).reshape(idx.shape + (1,) * (values.dim() - idx.dim()))
        return values * real.to(values.dtype)

    def rows(self, idx: Tensor) -> Tensor:
        """Table rows of `idx` (each 0 or one of the lookup's items): 0 for padding."""
        if self.is_catalogue:
            return idx
        # item_ids are sorted and positive: the count of them <= an item is its row after the padding row
        return torch.searchsorted(self.item_ids, idx.contiguous(), right=True)

    def __call__(self, idx: Tensor) -> Tensor:
        """Vectors for `idx` of any shape (each 0 or one of the lookup's items): [..., d]; padding gives zeros."""
        if self.is_catalogue and idx.shape == (len(self.table),) and bool(
                (idx == torch.arange(len(self.table), device=idx.device)).all()):
            return self.table  # every row in order (scoring the catalogue): no copy of a table that may be GBs
        # a gather of flat rows: torch's indexing by a tensor costs several times more, forward and back
        return self.table.index_select(0, self.rows(idx).reshape(-1)).view(*idx.shape, self.table.shape[-1])

    def padded(self, idx: Tensor) -> Tensor:
        """Vectors for `idx` as `__call__` gives them, with the padding vector (when the lookup carries
        one) at padding slots instead of zeros."""
        vectors = self(idx)
        if self.padding_vector is None:
            return vectors
        return torch.where((idx == 0).unsqueeze(-1), self.padding_vector.to(vectors.dtype), vectors)

    def all(self) -> Tensor:
        """Every item's vector (row 0 = padding); only for a catalogue lookup."""
        if not self.is_catalogue:
            raise RuntimeError("this lookup holds only the batch's items")
        return self.table
