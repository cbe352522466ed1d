"""Items as raw cover pixels through an image encoder trained end to end (PixelNet).

`ImageSettings` is the image tower's section of the configuration, `items.image`: the settings class
declares every option of the tower once (type, range, default), and the configuration is checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from pixelrec.data.prepared import PREFIX_CACHE_DIR
from pixelrec.errors import UserError
from pixelrec.items.base import ITEM_ENCODERS, ItemEncoder
from pixelrec.schema import NonNegativeInt, PositiveInt
from pixelrec.towers.caveats import tower_caveats
from pixelrec.towers.freezing import frozen_modules
from pixelrec.towers.image_tower import (
    POOLINGS,
    Preprocess,
    check_pooling,
    create_tower,
    freeze_below,
    pool,
    pooled_size,
    refuse_unfit_size,
    remove_final_norm,
    tokens,
)
from pixelrec.towers.names import timm_name
from pixelrec.towers.prefix_cache import PrefixCache, TowerSplit, build_prefix_cache, cache_identity
from pixelrec.towers.tower_file import tower_settings

#: pooling values of the pixels encoder: the tower's (`pool`), and `tokens`, which projects every
#: token before averaging
PIXEL_POOLINGS = POOLINGS + ("tokens",)


@dataclass
class FeatureSettings:
    """`items.image` of frozen image features (items.kind=features, id+features): the encoder that
    extracted them, a label for tables, and the projection MLP from the features to the item vector."""

    encoder: str | None = None  # image encoder: short name (clip-vit-b32, ...) or timm name; features: the one that extracted them
    dnn_layers: NonNegativeInt = 0  # hidden layers of the projection MLP from image features to embedding_size
    activation: str = "gelu"  # activation of the projection MLP: gelu | relu | tanh
    final_activation: bool = False  # apply the activation after the projection's last Linear too (the paper's Linear -> ReLU)


@dataclass
class ImageSettings(FeatureSettings):
    """`items.image` of an image tower trained end to end (items.kind=pixels, multimodal): the timm
    model, its weights, input, freezing, pooling, frozen-prefix cache, and the projection."""

    encoder_weights: str | None = None  # local checkpoint of the image encoder (or a tower file from `pixelrec export --tower`)
    pretrained: bool = False  # timm hub weights, for users who have a hub or cache
    image_size: PositiveInt | None = None  # encoder input size; default: the encoder's own data config
    tune_last: NonNegativeInt | Literal["all"] = 2  # trainable top blocks of the image encoder (all: every block)
    pooling: str = "default"  # default (the encoder's own pooling) | cls | mean | head (its own head and output projection) | tokens (project every token, then average)
    preprocess: Literal["encoder", "paper"] = "encoder"  # encoder's data config, or resize 224 with mean = std = 0.5
    cache: Literal["none", "prefix"] | None = None  # prefix: run the frozen lower part of the encoder once per item, cached on disk
    projection_group: Literal["recommender", "encoder"] = "recommender"  # optimiser group (lr, decay) of the projection
    projection_init: Literal["default", "xavier"] = "default"  # projection init: PyTorch's Linear default, or Xavier-normal weights and zero biases
    final_norm: bool = True  # false: drop the norm after the encoder's last block (Hugging Face CLIP's last_hidden_state)
    tune_head: bool = True  # false: the encoder's layers above its blocks (final norm, attention pool) stay frozen
    tune_merging: bool = True  # false: a Swin's patch-merging layer below the lowest tuned block stays frozen (the paper's code)
    timm_args: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of timm.create_model (e.g. act_layer: quick_gelu)
    frozen_mode: Literal["eval", "train"] = "eval"  # frozen encoder layers in eval mode, or following train() as the trainable ones (BatchNorm batch statistics, drop-path)
    constant_images: Literal["separate", "in_batch"] = "separate"  # a training step's mask and padding images (BERT4Rec's all-ones, model.padding=encoded's zeros) encoded by their own forward, or inside the batch's (the paper's code: BatchNorm statistics over both)


#: The normalised value of each constant image a backbone may ask for by item part: BERT4Rec's mask
#: (`ones_image`, PixelRec's mask_image) and padding (`padding`, its pad_image).
CONSTANT_IMAGES = {"ones_image": 1.0, "padding": 0.0}


def projection(in_features: int, out_features: int, hidden_layers: int, activation: str,
               final_activation: bool = False, init: str = "default", section: str = "items.image") -> nn.Sequential:
    """An MLP from the pooled image features to the recommender's embedding size; `final_activation`
    also applies the activation after the last Linear; `init` is PyTorch's default Linear init or
    `xavier` (Xavier-normal weights, zero biases); `section` names the settings in errors."""
    act = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}
    if activation not in act:
        raise UserError(f"{section}.activation: {activation!r} is not one of {', '.join(act)}")
    _check_choice(f"{section}.projection_init", init, ("default", "xavier"))
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, out_features), act[activation]()]
        width = out_features
    layers.append(nn.Linear(width, out_features))
    if final_activation:
        layers.append(act[activation]())
    if init == "xavier":
        for layer in layers:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_normal_(layer.weight)
                nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


def convolutional(tower: nn.Module) -> bool:
    """True for towers whose body is convolutions (ResNet, ConvNeXt, EfficientNet, the CLIP ResNets,
    whose only attention is the pooling head), for which channels_last pays off on a GPU; false for
    transformers, whose one convolution is the patch embedding, and for hybrids with attention stages."""
    body = [m for name, m in tower.named_modules()
            if not any(name == part or name.startswith(part + ".") for part in ("patch_embed", "head"))]
    return any(isinstance(m, nn.Conv2d) for m in body) and not any("Attention" in type(m).__name__ for m in body)


def use_channels_last(tower: nn.Module, device: torch.device, setting: bool | None) -> bool:
    """train.channels_last: true or false as set, null (the default) on a GPU; convolutional towers only."""
    wanted = device.type == "cuda" if setting is None else setting
    return bool(wanted) and convolutional(tower)


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{key}: {value!r} is not one of {', '.join(choices)}")


@ITEM_ENCODERS.register("pixels")
class PixelEncoder(ItemEncoder):
    """timm image tower (top layers trainable) -> pooling -> projection MLP -> item vector
    (with `pooling: tokens`: tower -> projection of every token -> mean).

    Images come from the prepared image store as uint8 (loaded in DataLoader workers by
    `load_inputs`) and are resized and normalised on the device, as the encoder expects.
    """

    catalogue_each_step = False
    needs_inputs = True
    catalogue_chunk = 256
    new_items_from = ("covers",)
    encoder_tower = "image"
    label = "pixels"
    row_label = "{encoder}"  # PixelNet rows are named by their image encoder alone, as in the paper
    table_order = 1
    family = "pixelnet"
    images_per_item = 1
    image_tower = ""  # the encoder itself

    def __init__(
        self,
        n_items: int,
        embedding_size: int,
        image_store: Any,
        image: ImageSettings | None = None,
        cache_dir: str | None = None,
        item_order_sha256: str | None = None,
    ) -> None:
        super().__init__(n_items, embedding_size)
        image = image or ImageSettings()
        encoder_weights, pretrained, tune_last, cache, frozen_mode = (
            image.encoder_weights, image.pretrained, image.tune_last, image.cache, image.frozen_mode)
        # a tower exported from a run (`pixelrec export --tower`) brings its own encoder, size, pooling, ...
        encoder, image_size, pooling, preprocess, final_norm, timm_args = tower_settings(
            encoder_weights, encoder=image.encoder, image_size=image.image_size, pooling=image.pooling,
            preprocess=image.preprocess, final_norm=image.final_norm, timm_args=image.timm_args)
        if encoder is None:
            raise UserError("items.kind=pixels needs an image encoder: encoder=NAME (e.g. clip-vit-b32, test_vit)")
        _check_choice("items.image.pooling", pooling, PIXEL_POOLINGS)
        _check_choice("items.image.projection_group", image.projection_group, ("recommender", "encoder"))
        _check_choice("items.image.frozen_mode", frozen_mode, ("eval", "train"))
        if cache not in (None, "none", "prefix"):
            raise UserError(f"items.image.cache: {cache!r} is not one of none, prefix")
        if frozen_mode == "train" and cache == "prefix":
            raise UserError("items.image.frozen_mode=train runs the frozen layers in training mode (batch statistics, "
                            "drop-path), so their output is not fixed: it cannot combine with items.image.cache=prefix")
        self.image_store = image_store
        self.timm_args = dict(timm_args or {})
        self.tower = create_tower(encoder, encoder_weights, pretrained, image_size, keep_head=pooling == "head",
                                  timm_args=self.timm_args)
        if not final_norm:
            remove_final_norm(self.tower, encoder)
        if pooling != "tokens":
            check_pooling(self.tower, pooling, encoder)
        freeze_below(self.tower, tune_last, image.tune_head, image.tune_merging)
        self.pooling = pooling
        self.preprocess = Preprocess(self.tower, image_size, preprocess)
        self.projection = projection(pooled_size(self.tower, pooling), embedding_size, image.dnn_layers,
                                     image.activation, image.final_activation, image.projection_init)
        self.projection_group = image.projection_group
        self.constant_images = image.constant_images
        # frozen_mode=train: the whole tower follows train()/eval(), as the paper's code (model.train())
        self._frozen = frozen_modules(self.tower) if frozen_mode == "eval" else []
        self.cache_mode, self.cache_dir = (cache if cache != "none" else None), cache_dir
        self.item_order_sha256 = item_order_sha256
        self._encoder_args = (encoder, encoder_weights, pretrained, tune_last)
        # the cut is found now, so an unsupported family is refused before any training starts
        self.split = TowerSplit(self.tower, encoder) if self.cache_mode == "prefix" else None
        self.cache: PrefixCache | None = None
        self.channels_last = False
        self._features = self._tower_features
        refuse_unfit_size(self, lambda x: self._head(self.tower.forward_features(x)), self.preprocess.size,
                          encoder, f"{pooling} {final_norm}", key="items.image.image_size")

    def caveats(self, carried: bool = False) -> list[dict[str, Any]]:
        """A paper encoder with random weights (unless `carried` from another run); images upscaled."""
        encoder, weights, pretrained, _ = self._encoder_args
        return tower_caveats(encoder, weights=weights, pretrained=pretrained, carried=carried,
                             stored_size=getattr(self.image_store, "size", None), input_size=self.preprocess.size)

    def reset_parameters(self, rule: str, bound: float | None = None) -> bool:
        """`uniform`: the projection's weights and biases from U(+-bound) (PixelRec's PixelNet/mosrgnn.py);
        the tower keeps its weights, and other rules leave the projection as built."""
        if rule != "uniform" or bound is None:
            return False
        for weight in self.projection.parameters():
            nn.init.uniform_(weight, -bound, bound)
        return True

    def train(self, mode: bool = True) -> "PixelEncoder":
        super().train(mode)
        for module in self._frozen:  # frozen layers keep inference behaviour (BatchNorm stats, no dropout)
            module.eval()
        return self

    def load_inputs(self, item_ids: np.ndarray) -> Tensor:
        """uint8 images, or fp16 prefix activations once the prefix cache is built."""
        if self.cache is not None:
            return self.cache.read(np.asarray(item_ids))
        return self.image_store.read(np.asarray(item_ids))

    def new_item_inputs(self, new: Any) -> Any:
        """New items' covers as the image store holds them (uint8 after decoding): the tower
        pre-processes them as it does stored covers (never the prefix cache, which holds the catalogue)."""
        return new.images

    def forward(self, item_ids: Tensor, inputs: Any = None) -> Tensor:
        if inputs is None:
            inputs = self.load_inputs(item_ids.cpu().numpy())
            if item_ids.device.type == "cuda":  # pinned: the copy does not wait for the device's queued work
                inputs = inputs.pin_memory()
            inputs = inputs.to(item_ids.device, non_blocking=True)
        return self._head(self._features(inputs))

    def _head(self, features: Tensor) -> Tensor:
        """Item vectors from the tower's forward_features output: pooling, then the projection."""
        if self.pooling == "tokens":
            return self.projection(tokens(self.tower, features)).mean(1)
        return self.projection(pool(self.tower, features, self.pooling))

    def ones_image_vector(self) -> Tensor:
        """[d] the vector of an image whose normalised input is 1 everywhere (PixelRec's BERT4Rec mask
        image, torch.ones after normalisation), through the tower's trainable layers with gradients."""
        return self.constant_image_vector(1.0)

    def encode(self, item_ids: Tensor, inputs: Any = None, special: tuple[str, ...] = ()) -> tuple[Tensor, dict[str, Any]]:
        """With constant_images=in_batch, in training, the constant images of `special` go through the tower
        in one forward with the batch's covers, so BatchNorm layers in train mode see them among the batch
        (not alone, a one-image batch that would move their running statistics towards it each step)."""
        if self.constant_images != "in_batch" or not special or not self.training or inputs is None \
                or inputs.dtype != torch.uint8:
            return super().encode(item_ids, inputs, special)
        images = self.preprocess(inputs)
        constants = torch.stack([torch.full_like(images[0], CONSTANT_IMAGES[name]) for name in special])
        memory = torch.channels_last if self.channels_last else torch.contiguous_format
        vectors = self._head(self.tower.forward_features(torch.cat([images, constants]).contiguous(memory_format=memory)))
        return vectors[: len(images)], dict(zip(special, vectors[len(images):]))

    def padding_vector(self) -> Tensor:
        """[d] the vector of an image whose normalised input is 0 everywhere (PixelRec's pad_image,
        torch.zeros after normalisation), with gradients, as its PixelNet models encode padding."""
        return self.constant_image_vector(0.0)

    def special_vector(self, name: str) -> Tensor:
        return self.constant_image_vector(CONSTANT_IMAGES[name])

    def constant_image_vector(self, value: float) -> Tensor:
        """[d] the vector of one image whose normalised input is `value` everywhere."""
        size = self.preprocess.size
        image = torch.full((1, 3, size, size), value, device=self.preprocess.mean.device)
        return self._head(self.tower.forward_features(image))[0]

    def _tower_features(self, inputs: Tensor) -> Tensor:
        """forward_features from images (uint8) or from cached prefix activations (fp16)."""
        memory = torch.channels_last if self.channels_last and inputs.dim() == 4 else torch.contiguous_format
        if inputs.dtype == torch.uint8:
            return self.tower.forward_features(self.preprocess(inputs).contiguous(memory_format=memory))
        if self.split is None:
            raise RuntimeError("prefix activations given to an encoder without items.image.cache=prefix")
        return self.split.suffix(inputs.float().contiguous(memory_format=memory))

    def prepare(self, device: torch.device, train: Any = None, workers: int = 0, progress: bool = True) -> None:
        """Before training: memory savers from `train` (grad_checkpointing, channels_last, compile),
        then the frozen-prefix cache when items.image.cache=prefix (built on `device`)."""
        if getattr(train, "grad_checkpointing", False):
            self.tower.set_grad_checkpointing(True)
            if self.split is not None:
                self.split.checkpointing = True
        if use_channels_last(self.tower, torch.device(device), getattr(train, "channels_last", None)):
            self.tower.to(memory_format=torch.channels_last)
            self.channels_last = True
        if self.split is not None:
            self.cache = self.build_cache(device, workers=workers, progress=progress)
        if getattr(train, "compile", False):
            self._features = torch.compile(self._tower_features)

    def build_cache(self, device: torch.device, batch_size: int | None = None, workers: int = 0,
                    progress: bool = True) -> PrefixCache:
        """Write (or reuse, or finish) the frozen-prefix cache of every item for the tower's current weights."""
        assert self.split is not None
        encoder, weights, pretrained, tune_last = self._encoder_args
        identity = cache_identity(
            self.split, timm_name=timm_name(encoder), weights=weights, pretrained=pretrained, tune_last=tune_last,
            preprocessing=self.preprocess.describe(), shape=self.split.prefix_shape(self.preprocess, device),
            n_items=self.n_items, item_order_sha256=self.item_order_sha256, timm_args=self.timm_args,
        )
        return build_prefix_cache(self.split, self.preprocess, self.image_store, self.n_items, identity,
                                  self._cache_directory(), device=device, batch_size=batch_size or self.catalogue_chunk,
                                  workers=workers, progress=progress)

    def _cache_directory(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir)
        store = getattr(self.image_store, "path", None)
        if store is None:
            raise UserError("items.image.cache=prefix: the image store has no location; set items.cache_dir")
        return Path(store).parent / PREFIX_CACHE_DIR

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The image tower's trainable layers, and the projection with projection_group=encoder (else
        the projection takes the recommender's learning rate and weight decay)."""
        modules = [self.tower, self.projection] if self.projection_group == "encoder" else [self.tower]
        return [p for m in modules for p in m.parameters() if p.requires_grad]
