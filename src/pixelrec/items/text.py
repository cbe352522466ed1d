"""Items as their text (title, tag, ...) through a Hugging Face encoder trained end to end.

The text of every item is tokenised once per dataset into a memory-mapped array (data/text_tokens);
DataLoader workers read the token rows of a batch's distinct items, and the encoder runs on the device:
transformers model (top `tune_last` layers trainable) -> mean or first-token pooling -> the same
projection MLP as pixels -> item vector. With `cache: prefix` the frozen embeddings and lower layers
run once per item and their hidden states are read from disk instead (items/prefix_cache).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from pixelrec.data.text_tokens import ItemTexts, TokenArray, tokenise
from pixelrec.errors import UserError
from pixelrec.items.base import ITEM_ENCODERS, ItemEncoder
from pixelrec.items.pixels import projection
from pixelrec.towers import prefix_cache
from pixelrec.towers.prefix_cache import PrefixCache
from pixelrec.towers.text_tower import TEXT_POOLINGS, pool_tokens, text_tower

DEFAULT_FIELDS = ("title", "tag")


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
    label = "text"
    table_order = 4
    text_model_key = "encoder"
    #: the `items` keys as errors name them (the multimodal encoder's text part has its own)
    KEYS: ClassVar[dict[str, str]] = {"encoder": "items.encoder", "encoder_weights": "items.encoder_weights",
                                      "tune_last": "items.tune_last", "pooling": "items.pooling",
                                      "cache": "items.cache", "kind": "items.kind=text"}

    def __init__(
        self,
        n_items: int,
        embedding_size: int,
        item_texts: ItemTexts,
        encoder: str | None = None,
        encoder_weights: str | None = None,
        text_fields: Sequence[str] = DEFAULT_FIELDS,
        max_tokens: int = 32,
        pooling: str = "mean",
        tune_last: int | str = 2,
        dnn_layers: int = 0,
        activation: str = "gelu",
        projection_group: Literal["recommender", "encoder"] = "recommender",
        cache: str | None = None,
        cache_dir: str | None = None,
        item_order_sha256: str | None = None,
    ) -> None:
        super().__init__(n_items, embedding_size)
        keys = self.KEYS
        source = encoder_weights or encoder
        if source is None:
            raise UserError(f"{keys['kind']} needs a text model: {keys['encoder_weights']}=DIR (a Hugging Face model "
                            f"directory) or {keys['encoder']}=NAME (a model in the local Hugging Face cache)")
        pooling = "mean" if pooling == "default" else pooling
        if pooling not in TEXT_POOLINGS:
            raise UserError(f"{keys['pooling']}: {pooling!r} is not one of {', '.join(TEXT_POOLINGS)} (text)")
        if projection_group not in ("recommender", "encoder"):
            raise UserError(f"items.projection_group: {projection_group!r} is not one of recommender, encoder")
        if cache not in (None, "none", "prefix"):
            raise UserError(f"{keys['cache']}: {cache!r} is not one of none, prefix")
        self.tower, tokenizer = text_tower(source, keys["encoder_weights"] if encoder_weights else keys["encoder"])
        self.tower.check_length(max_tokens, "items.max_tokens")
        self.tower.freeze(tune_last, keys["tune_last"])
        self.cache_mode, self.cache_dir = (cache if cache != "none" else None), cache_dir
        if self.cache_mode == "prefix" and self.tower.cut == 0:
            raise UserError(f"{keys['cache']}=prefix: nothing of {self.tower.name} is frozen ({keys['tune_last']}="
                            f"{tune_last} trains its embeddings); lower {keys['tune_last']} or drop {keys['cache']}")
        self.tokens = item_texts.tokens(tokenizer, list(text_fields), max_tokens, cache_dir)
        self.tokenizer = tokenizer  # new items' texts are tokenised as the catalogue's were
        self.data_root = item_texts.root
        self.pooling, self.projection_group = pooling, projection_group
        self.projection = projection(self.tower.width, embedding_size, dnn_layers, activation)
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
        cache when items.cache=prefix (built on `device`)."""
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
        directory = Path(self.cache_dir) if self.cache_dir else self.data_root / "prefix_cache"
        split = SimpleNamespace(tower=tower, prefix=tower.prefix)
        return prefix_cache.build_prefix_cache(split, nn.Identity(), self.tokens.full_width(), self.n_items, identity,
                                               directory, device=device, batch_size=self.catalogue_chunk,
                                               workers=workers, progress=progress)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The text model's trainable layers, and the projection with projection_group=encoder."""
        modules = [self.tower, self.projection] if self.projection_group == "encoder" else [self.tower]
        return [p for m in modules for p in m.parameters() if p.requires_grad]


class NewTokens(TokenArray):
    """Token ids of items outside the catalogue, held in memory (row r = new item r + 1) and read as
    the catalogue's token file is (cut to a batch's longest item)."""

    def __init__(self, array: np.ndarray, sidecar: dict[str, Any]) -> None:
        super().__init__(Path(), sidecar)
        self._array = array

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)  # no file to map again in a DataLoader worker: the rows travel
