"""Items as their text (title, tag, ...) through a Hugging Face encoder trained end to end.

The text of every item is tokenised once per dataset into a memory-mapped array (data/text_tokens);
DataLoader workers read the token rows of a batch's distinct items, and the encoder runs on the device:
transformers model (top `tune_last` layers trainable) -> mean or first-token pooling -> the same
projection MLP as pixels -> item vector. With `cache: prefix` the frozen embeddings and lower layers
run once per item and their hidden states are read from disk instead (items/prefix_cache).

`TextSettings` is the text tower's section of the configuration, `items.text`: the settings class
declares every option of the tower once, and the configuration is checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from pixelrec.data.prepared import PREFIX_CACHE_DIR
from pixelrec.data.text_tokens import ItemTexts, TokenArray, tokenise
from pixelrec.errors import UserError
from pixelrec.items.base import ITEM_ENCODERS, ItemEncoder
from pixelrec.items.pixels import projection
from pixelrec.schema import NonNegative, NonNegativeInt, Range
from pixelrec.towers import prefix_cache
from pixelrec.towers.prefix_cache import PrefixCache
from pixelrec.towers.text_tower import TEXT_POOLINGS, pool_tokens, text_tower

DEFAULT_FIELDS = ("title", "tag")


@dataclass
class TextSettings:
    """`items.text`: the text tower (a Hugging Face model, items.kind=text, multimodal), the item text it
    reads, its freezing, pooling, frozen-prefix cache, projection and optimiser group."""

    encoder: str | None = None  # the text model: a Hugging Face model directory or a hub name in the local cache
    encoder_weights: str | None = None  # the text model's directory (wins over encoder)
    fields: list[str] = field(default_factory=lambda: list(DEFAULT_FIELDS))  # item text columns, joined by the tokenizer's separator
    max_tokens: Annotated[int, Range(3, 8192)] = 32  # token budget per item (special tokens included: at least one real token)
    tune_last: NonNegativeInt | Literal["all"] = 2  # trainable top layers of the text model (all: its embeddings too)
    pooling: Literal["mean", "cls"] = "mean"  # mean of the tokens, or the first token
    cache: Literal["none", "prefix"] | None = None  # prefix: run the frozen embeddings and lower layers once per item, cached on disk
    dnn_layers: NonNegativeInt = 0  # hidden layers of the projection MLP from the text features to embedding_size
    activation: str = "gelu"  # activation of the projection MLP: gelu | relu | tanh
    projection_group: Literal["recommender", "encoder"] = "recommender"  # optimiser group (lr, decay) of the projection
    lr: NonNegative | None = None  # the text tower's learning rate (default: train.encoder_lr)
    weight_decay: NonNegative | None = None  # the text tower's weight decay (default: train.encoder_weight_decay)


def to_device(inputs: Any, device: torch.device) -> Any:
    """Tensors, or tuples of them (cached states and tokens; a multimodal item's parts), on `device`;
    a DataLoader hands tuples back as lists, which become tuples again."""
    if isinstance(inputs, (tuple, list)):
        return tuple(to_device(part, device) for part in inputs)
    return inputs.to(device, non_blocking=True) if isinstance(inputs, Tensor) else inputs


@ITEM_ENCODERS.register("text")
class TextEncoder(ItemEncoder):
    """transformers text encoder over the item's text fields -> pooling -> projection -> item vector."""

    catalogue_each_step = False
    needs_inputs = True
    catalogue_chunk = 1024
    new_items_from = ("item info",)
    encoder_tower = "text"
    label = "text"
    table_order = 4
    #: the kind as errors name it (the multimodal encoder's text part has its own)
    KIND: ClassVar[str] = "items.kind=text"

    def __init__(
        self,
        n_items: int,
        embedding_size: int,
        item_texts: ItemTexts,
        text: TextSettings | None = None,
        cache_dir: str | None = None,
        item_order_sha256: str | None = None,
    ) -> None:
        super().__init__(n_items, embedding_size)
        text = text or TextSettings()
        encoder, encoder_weights, pooling, tune_last, cache = (
            text.encoder, text.encoder_weights, text.pooling, text.tune_last, text.cache)
        source = encoder_weights or encoder
        if source is None:
            raise UserError(f"{self.KIND} needs a text model: items.text.encoder_weights=DIR (a Hugging Face model "
                            "directory) or items.text.encoder=NAME (a model in the local Hugging Face cache)")
        if pooling not in TEXT_POOLINGS:
            raise UserError(f"items.text.pooling: {pooling!r} is not one of {', '.join(TEXT_POOLINGS)} (text)")
        if text.projection_group not in ("recommender", "encoder"):
            raise UserError(f"items.text.projection_group: {text.projection_group!r} is not one of recommender, "
                            "encoder")
        if cache not in (None, "none", "prefix"):
            raise UserError(f"items.text.cache: {cache!r} is not one of none, prefix")
        self.tower, tokenizer = text_tower(source, "items.text.encoder_weights" if encoder_weights else "items.text.encoder")
        self.tower.check_length(text.max_tokens, "items.text.max_tokens")
        self.tower.freeze(tune_last, "items.text.tune_last")
        self.cache_mode, self.cache_dir = (cache if cache != "none" else None), cache_dir
        if self.cache_mode == "prefix" and self.tower.cut == 0:
            raise UserError(f"items.text.cache=prefix: nothing of {self.tower.name} is frozen (items.text.tune_last="
                            f"{tune_last} trains its embeddings); lower items.text.tune_last or drop items.text.cache")
        self.tokens = item_texts.tokens(tokenizer, list(text.fields), text.max_tokens, cache_dir)
        self.tokenizer = tokenizer  # new items' texts are tokenised as the catalogue's were
        self.data_root = item_texts.root
        self.pooling, self.projection_group = pooling, text.projection_group
        self.projection = projection(self.tower.width, embedding_size, text.dnn_layers, text.activation,
                                     section="items.text")
        self.lr, self.weight_decay = text.lr, text.weight_decay
        self.item_order_sha256 = item_order_sha256
        self.tune_last = tune_last
        self.cache: PrefixCache | None = None
        self._frozen = self.tower.frozen_parts()

    def train(self, mode: bool = True) -> "TextEncoder":
        super().train(mode)
        for module in self._frozen:  # frozen layers keep inference behaviour (no dropout)
            module.eval()
        return self

    def load_inputs(self, item_ids: np.ndarray) -> Tensor | tuple[Tensor, Tensor]:
        """Token ids [B, L] (-1 = padding), or (fp16 prefix states [B, L, H], ids) once the cache is built."""
        tokens = self.tokens.read(np.asarray(item_ids))
        if self.cache is None:
            return tokens
        return self.cache.read(np.asarray(item_ids))[:, : tokens.shape[1]], tokens

    def new_item_inputs(self, new: Any) -> TokenArray:
        """New items' token ids: their texts joined from the fields, with the separator, that made the
        catalogue's token file, tokenised by this tokenizer to its budget (never the prefix cache)."""
        made = self.tokens.sidecar
        texts = new.texts(list(made["fields"]), str(made["separator"]))
        return NewTokens(tokenise(self.tokenizer, texts, self.tokens.max_tokens), made)

    def forward(self, item_ids: Tensor, inputs: Any = None) -> Tensor:
        if inputs is None:
            inputs = self.load_inputs(item_ids.cpu().numpy())
        inputs = to_device(inputs, item_ids.device)
        if isinstance(inputs, tuple):
            states, ids = inputs
            hidden = self.tower.suffix(states.float(), ids)
        else:
            ids = inputs
            hidden = self.tower(ids)
        return self.projection(pool_tokens(hidden, ids, self.pooling))

    def prepare(self, device: torch.device, train: Any = None, workers: int = 0, progress: bool = True) -> None:
        """Before training: gradient checkpointing (train.grad_checkpointing), then the frozen-prefix
        cache when items.text.cache=prefix (built on `device`)."""
        if getattr(train, "grad_checkpointing", False):
            self.tower.model.gradient_checkpointing_enable()
        if self.cache_mode == "prefix":
            self.cache = self.build_cache(device, workers=workers, progress=progress)

    def build_cache(self, device: torch.device, workers: int = 0, progress: bool = True) -> PrefixCache:
        """Write (or reuse, or finish) every item's hidden states after the frozen layers."""
        tower = self.tower
        identity = {
            "format": prefix_cache.FORMAT, "version": prefix_cache.VERSION,
            "timm_name": f"text-{type(tower.model).__name__}",  # build_prefix_cache names the file by it and 'cut'
            "prefix_sha256": tower.prefix_sha256(), "cut": f"layer{tower.cut}", "cut_index": tower.cut,
            "tune_last": self.tune_last, "tokens": self.tokens.path.name, "dtype": "float16",
            "shape": [self.tokens.max_tokens, tower.width], "n_items": self.n_items,
            "item_order_sha256": self.item_order_sha256,
        }
        directory = Path(self.cache_dir) if self.cache_dir else self.data_root / PREFIX_CACHE_DIR
        split = SimpleNamespace(tower=tower, prefix=tower.prefix)
        return prefix_cache.build_prefix_cache(split, nn.Identity(), self.tokens.full_width(), self.n_items, identity,
                                               directory, device=device, batch_size=self.catalogue_chunk,
                                               workers=workers, progress=progress)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The text model's trainable layers, and the projection with projection_group=encoder."""
        modules = [self.tower, self.projection] if self.projection_group == "encoder" else [self.tower]
        return [p for m in modules for p in m.parameters() if p.requires_grad]

    def encoder_groups(self) -> list[dict[str, Any]]:
        """One group at the text tower's rate and decay (items.text.lr, weight_decay; None: the encoder's)."""
        return [{"name": "encoder", "params": self.encoder_parameters(), "lr": self.lr,
                 "weight_decay": self.weight_decay}]


class NewTokens(TokenArray):
    """Token ids of items outside the catalogue, held in memory (row r = new item r + 1) and read as
    the catalogue's token file is (cut to a batch's longest item)."""

    def __init__(self, array: np.ndarray, sidecar: dict[str, Any]) -> None:
        super().__init__(Path(), sidecar)
        self._array = array

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)  # no file to map again in a DataLoader worker: the rows travel
