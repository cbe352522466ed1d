"""Typed, validated configuration: defaults -> YAML files -> command-line flags -> `--set key=value`.

The resolved configuration is a `Config` of plain dataclasses. One schema checks it
(`pixelrec.schema`): each key's type annotation, with its allowed range, in the section's dataclass or,
for the `model` section, in the chosen backbone's constructor. The `model`, `items` and `loss` sections
configure a component each (backbone, item encoder, loss): a key the user set that the chosen component
does not take is an error that lists what it does take, so no setting of theirs is silently ignored (a
packaged layer's key is left out where it does not apply). Unknown keys get a "did you
mean" hint; every problem is one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml

from pixelrec.errors import UserError
from pixelrec.items import ITEM_ENCODERS
from pixelrec.losses import LOSSES
from pixelrec.models import BACKBONES, DATA_ARGUMENTS
from pixelrec.packaged import CONFIG_DIR, PROFILE_DIR, is_profile, profile_names, read_yaml
from pixelrec.registry import constructor_parameters
from pixelrec.schema import (
    NonNegative,
    NonNegativeInt,
    Positive,
    PositiveInt,
    Range,
    SequenceLength,
    check,
    hints,
)

#: The ranking metrics evaluation reports, each at every K of eval.ks (`NDCG@10`).
METRICS = ("Recall", "NDCG", "MRR", "HR")


@dataclass
class DataConfig:
    path: str | None = None  # prepared dataset directory
    max_len: SequenceLength = 10  # sequences are cut to the last max_len items (the paper: 10)
    sequences: Literal["windows", "sliding"] = "windows"  # windows: non-overlapping, aligned to the history's end (PixelRec's, see window_remainder); sliding: every target
    window_remainder: Literal["keep", "drop"] = "keep"  # windows: a history's leading remainder is a short window, or dropped (PixelRec's)
    window_stride: PositiveInt | None = None  # windows (sequence view): items between consecutive window ends; None: max_len + 1 (non-overlapping); smaller overlaps windows, each target counted once with more context
    prefixes: Literal["history", "window"] = "history"  # SR-GNN, LightSANs: targets after up to max_len earlier items, or prefixes in windows (PixelRec's)
    pair_context: Literal["earlier", "window"] = "earlier"  # FM, DSSM, ACF: a target's earlier items, or its window's other items (PixelRec's)
    negatives_avoid: Literal["history", "window"] = "history"  # BPR negatives avoid the user's training items, or the example's window (PixelRec's)


@dataclass
class ItemsConfig:
    """The item encoder's own keys, and a nested section per tower it builds on: `image` and `text`.
    A tower section's keys are declared once, by the settings class that the chosen kind's constructor
    takes for it (items.pixels.ImageSettings, FeatureSettings; items.text.TextSettings), and checked
    against it; a kind without that tower has None there."""

    kind: str = "id"  # id | features | id+features | pixels | text | multimodal (cover and text)
    image: Any = None  # the image tower (pixels, multimodal), or the image encoder of frozen features and their projection (features, id+features)
    text: Any = None  # the text tower (text, multimodal)
    features: str | None = None  # path of extracted features (.npy, from `pixelrec extract`)
    project: bool = True  # features: project to embedding_size (false: the raw features, for VisRank)
    combine: Literal["sum", "concat"] = "sum"  # id+features: ID vector + projected features, or [ID ; features]
    id_size: PositiveInt | None = None  # id+features with combine=concat: size of the ID part (default: half)
    cache_dir: str | None = None  # where the prefix caches (and text items' token arrays) live (default: prefix_cache/ and text_tokens/ in the prepared dataset)
    fusion: Literal["sum", "concat"] = "sum"  # multimodal: sum of the towers' item vectors, or their concatenation projected to embedding_size
    with_id: bool = False  # multimodal: add a learned ID vector per item to the fusion

    @property
    def encoder(self) -> str | None:
        """The encoder of the kind's primary tower (`--encoder`; results.json's "encoder"): the image
        encoder, the text model for items.kind=text, None for ID items."""
        tower = ITEM_ENCODERS.get(self.kind).encoder_tower
        return getattr(getattr(self, tower), "encoder", None) if tower else None


@dataclass
class LossConfig:
    name: Literal["bpr", "softmax", "full-softmax"] = "bpr"  # bpr is the paper's setting
    logq: bool = False  # log-popularity correction for in-batch softmax
    across_ranks: bool = False  # softmax under several ranks: negatives from every rank's batch share
    reduction: Literal["targets", "windows"] = "targets"  # mean over the batch's targets, or each window's sum averaged over windows (the paper's code, sequence models)


@dataclass
class TrainConfig:
    batch_size: PositiveInt = 64  # global batch size (examples per optimiser step)
    lr: Positive = 1e-3  # recommender learning rate
    weight_decay: NonNegative = 0.0  # recommender weight decay (never on norms and biases)
    encoder_lr: NonNegative | None = None  # item-encoder learning rate (default: lr)
    encoder_weight_decay: NonNegative | None = None  # item-encoder weight decay (default: weight_decay)
    # 200 epochs with a patience of 20 evaluations: sequential models often sit at popularity level for
    # 10-20 epochs before they improve, and pixel models can dip after an early peak and recover; a short
    # patience stops inside such plateaus (the paper's code: 200 epochs, stop after 31 evaluations)
    epochs: PositiveInt = 200
    max_steps: PositiveInt | None = None  # stop after this many optimiser steps (smoke runs, benchmarks)
    patience: PositiveInt = 20  # evaluations without improvement of the validation metric before stopping
    ties_improve: bool = False  # a validation metric equal to the best counts as an improvement (the paper's code: >=)
    eval_every: PositiveInt = 1  # evaluate every N epochs
    clip_grad: Positive | None = None  # max gradient norm
    # learning rate over the run's planned steps (train.epochs x steps per epoch, or max_steps if fewer):
    # constant, or cosine from lr down to 0 at the last planned step (the paper's code: constant)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: NonNegativeInt = 0  # steps whose lr rises linearly from lr / warmup_steps to lr (any schedule)
    # catalogue-sized tables (item IDs, users): lazy updates only the rows a step touched (AdamW on those
    # rows; an untouched row's decay waits until it is touched: docs/scale.md), dense every row each step
    table_optimizer: Literal["lazy", "dense"] = "lazy"
    decay_all: bool = False  # weight decay on every parameter, norms and biases too (the paper's code)
    seed: Annotated[int, Range(0, 2**32 - 1)] = 0  # every random stream of the run (numpy takes 0 .. 2**32 - 1)
    num_workers: NonNegativeInt = 0  # DataLoader workers that build batches (and load images)
    threads: PositiveInt | None = None  # torch intra-op threads (null: at most the CPUs this process may use, shared among local ranks)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on a GPU, in training and when the catalogue is encoded (the paper's code: fp32)
    progress: bool = True  # progress bar (plain lines when stderr is not a terminal); false: epoch lines only
    log_every: NonNegativeInt = 0  # a line every N steps (loss, learning rate, examples and images per second) in long epochs; 0: none
    dist_timeout_minutes: Positive = 30.0  # under torchrun: a collective waiting longer fails instead of hanging
    grad_checkpointing: bool = False  # recompute the image encoder's trainable blocks in backward (less memory)
    channels_last: bool | None = None  # NHWC memory format for convolutional image encoders (null: on a GPU, where it is faster)
    compile: bool = False  # torch.compile the image encoder
    init_from: str | None = None  # run directory whose weights start a new run (its best.pt, else last.pt); not re-applied on --resume
    # what init_from carries: items (the item encoder's tower and projection), backbone (the backbone's own
    # parameters); ids is refused with the reason: ID tables and anything sized by a catalogue never cross datasets
    init_parts: list[Literal["items", "backbone", "ids"]] = field(default_factory=lambda: ["items"])


@dataclass
class EvalConfig:
    batch_size: PositiveInt = 1024  # users scored per matrix product
    ks: list[PositiveInt] = field(default_factory=lambda: [5, 10, 20])
    valid_metric: str = "NDCG@10"  # early stopping and best checkpoint
    mask_target: bool = False  # also mask the target when the user had it earlier: a re-consumed target is a miss (the paper's code)
    ties: Literal["against", "index"] = "against"  # items scoring equal to the target rank before it (against), or only those of lower index (index: a stable top-k's order)
    score_budget_mb: PositiveInt = 512  # cap on one users x catalogue score block


@dataclass
class Config:
    profile: str = "default"  # default | paper: the packaged layer set the configuration was resolved with
    model: dict[str, Any] = field(default_factory=lambda: {"name": "sasrec"})
    data: DataConfig = field(default_factory=DataConfig)
    items: ItemsConfig = field(default_factory=ItemsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def model_name(self) -> str:
        return str(self.model["name"])

    @property
    def model_args(self) -> dict[str, Any]:
        return {k: v for k, v in self.model.items() if k != "name"}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {f.name: f for f in dataclasses.fields(Config) if f.name != "profile"}


def _hint(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def parse_value(text: str) -> Any:
    """Parse a `--set` value with YAML rules (numbers, booleans, null, lists)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string; users mean a number
        try:
            return float(value)
        except ValueError:
            return value
    return value


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Section-wise merge of nested mappings (update wins)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def assign(out: dict[str, Any], path: str, value: Any) -> None:
    """Set the dotted `path` (`train.lr`, `items.image.tune_last`) of the nested mapping `out` to `value`."""
    *sections, name = path.split(".")
    for section in sections:
        if not isinstance(out.get(section), dict):
            out[section] = {}
        out = out[section]
    out[name] = value


def overrides_to_dict(pairs: list[str]) -> dict[str, Any]:
    """Turn `section.key=value` strings (`section.tower.key=value` in a tower's section) into a nested mapping."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key = pair.split("=", 1)[0]
        if "=" not in pair or "." not in key or "" in key.split("."):
            raise UserError(f"set={pair!r}: expected section.key=value, e.g. train.lr=1e-4")
        assign(out, key, parse_value(pair.split("=", 1)[1]))
    return out


#: The sections that configure one component each, and the key that chooses it.
COMPONENT_SECTIONS = {"model": "name", "items": "kind", "loss": "name"}


def component(section: str, name: str) -> type:
    """The class a component section's chosen name stands for (a backbone, item encoder or loss)."""
    return {"model": BACKBONES, "items": ITEM_ENCODERS, "loss": LOSSES}[section].get(name)


def component_keys(section: str, cls: type) -> set[str]:
    """The keys a component takes from its section: its constructor's parameters that the dataset does
    not supply, and the key that chooses it."""
    keys = set(constructor_parameters(cls)) - DATA_ARGUMENTS - {"embedding_size"}
    keys |= {COMPONENT_SECTIONS[section]}
    if section == "model":
        keys.add("embedding_size")  # the composition's vector size, which the item encoder takes too
    return keys


#: The `items` keys that are a tower's own section: each is checked against the settings class that the
#: chosen item encoder's constructor parameter of that name is annotated with (see `tower_sections`).
TOWERS = ("image", "text")


def taken_keys(section: str, cls: type) -> set[str]:
    """`component_keys`, with each tower section's keys as `tower.key` (`image.tune_last`)."""
    keys = component_keys(section, cls)
    towers = tower_sections(cls) if section == "items" else {}
    return (keys - set(towers)) | {f"{tower}.{f.name}" for tower, settings in towers.items()
                                   for f in dataclasses.fields(settings)}


def tower_sections(cls: type) -> dict[str, type]:
    """The tower sections an item encoder takes, {name: its settings class}, read from its constructor."""
    params, types = constructor_parameters(cls), hints(cls.__init__)
    return {name: next(t for t in get_args(types[name]) or (types[name],) if dataclasses.is_dataclass(t))
            for name in TOWERS if name in params}


@functools.lru_cache(maxsize=None)
def tower_defaults(tower: str) -> dict[str, Any]:
    """Every key that some item encoder's settings class declares for the section `tower`, with its default."""
    out: dict[str, Any] = {}
    for name in ITEM_ENCODERS.names():
        settings = tower_sections(ITEM_ENCODERS.get(name)).get(tower)
        out = (dataclasses.asdict(settings()) if settings else {}) | out
    return out


def build_config(raw: dict[str, Any], source: str = "configuration", explicit: set[tuple[str, str]] | None = None,
                 strict: bool = True) -> Config:
    """Validate a nested mapping into a Config; every problem names its key.

    A key the chosen item encoder or loss does not take is an error when a layer set it (`explicit`:
    (section, key) pairs, `items.image.tune_last` as ("items", "image.tune_last"); None: any) to
    something other than its default, so a whole saved configuration reads back; not `strict`
    (`bench`, whose shared settings apply to the cells that take them), such keys are dropped."""
    profile = raw.get("profile", "default")
    if profile not in profile_names():
        raise UserError(f"{source}: profile {profile!r} is not one of {', '.join(profile_names())}")
    for section in raw:
        if section != "profile" and section not in SECTIONS:
            raise UserError(f"{source}: unknown section {section!r}{_hint(section, list(SECTIONS))}")
    sections = {name: copy.deepcopy(_section(raw, name, source)) for name in SECTIONS}
    _check_item_kind(sections["model"].get("name", "sasrec"), sections["items"].get("kind", ItemsConfig.kind))
    for name in ("items", "loss"):  # the model section's keys are all the backbone's: checked below
        selector = COMPONENT_SECTIONS[name]
        chosen = sections[name].get(selector, getattr(SECTIONS[name].default_factory(), selector))  # type: ignore[misc]
        _drop_inapplicable(sections[name], name, chosen, source, explicit, strict)
    towers = tower_sections(component("items", sections["items"].get("kind", ItemsConfig.kind)))
    refuse_flat_keys(sections["items"], sections["items"].get("kind", ItemsConfig.kind), source)
    kwargs: dict[str, Any] = {"model": validate_model_section(sections["model"], source)}
    for name, f in SECTIONS.items():
        if name == "model":
            continue
        cls = f.default_factory().__class__  # type: ignore[misc]
        types = hints(cls) | (towers if name == "items" else {})
        checked = {tower: settings() for tower, settings in towers.items()} if name == "items" else {}
        for key, value in sections[name].items():
            if key not in types:
                raise UserError(f"{source}: unknown key {name}.{key}{_hint(key, list(types))}")
            checked[key] = check(value, types[key], f"{source}: {name}.{key}")
        kwargs[name] = cls(**checked)
    config = Config(profile=profile, **kwargs)
    check_combination(config)
    return config


def _check_item_kind(model: Any, kind: Any) -> None:
    """A backbone that works only with some item encoders says so (before their keys are checked)."""
    if isinstance(model, str) and isinstance(kind, str):
        kinds = getattr(component("model", model), "item_kinds", ())
        if kinds and kind not in kinds:
            raise UserError(f"model {model} needs items.kind {' or '.join(kinds)}, not {kind}")


def _section(raw: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    values = raw.get(name) or {}
    if not isinstance(values, dict):
        raise UserError(f"{source}: section {name!r} must be a mapping")
    return values


_UNSET = object()


def _drop_inapplicable(values: dict[str, Any], section: str, chosen: Any, source: str,
                       explicit: set[tuple[str, str]] | None, strict: bool) -> None:
    """Refuse (or, not strict, remove) the keys of a component section that the chosen component does
    not take, a tower's keys included (a tower the item encoder has not, or a key its settings class
    has not); such keys at their defaults are removed. Misspelt keys are left for the section's own
    check, which suggests the right one."""
    selector = COMPONENT_SECTIONS[section]
    known = hints(SECTIONS[section].default_factory().__class__)  # type: ignore[misc]
    chosen = check(chosen, known[selector], f"{source}: {section}.{selector}")
    cls = component(section, chosen)
    accepted = component_keys(section, cls)
    defaults = SECTIONS[section].default_factory()  # type: ignore[misc]
    towers = tower_sections(cls) if section == "items" else {}

    def refuse(key: str, value: Any, default: Any, tower: str | None = None) -> None:
        chosen_here = value != default and (explicit is None or (section, key) in explicit)
        if strict and chosen_here:
            if tower:
                takes = ", ".join(f"{section}.{tower}.{f.name}" for f in dataclasses.fields(towers[tower]))
            else:
                takes = ", ".join(f"{section}.{k}" + (".*" if k in towers else "")
                                  for k in sorted((accepted & set(known)) - {selector})) or "no other keys"
            raise UserError(f"{source}: {section}.{key} does not apply to {section}.{selector}={chosen} "
                            f"(it takes {takes})")

    for key in [k for k in values if k in known and k not in accepted]:
        if key in TOWERS and isinstance(values[key], dict):
            for name, value in values[key].items():
                refuse(f"{key}.{name}", value, tower_defaults(key).get(name, _UNSET))
        else:
            refuse(key, values[key], getattr(defaults, key))
        del values[key]
    for tower, settings in towers.items():
        nested = values.get(tower)
        if not isinstance(nested, dict):
            continue
        taken = {f.name for f in dataclasses.fields(settings)}
        for name in [n for n in nested if n in tower_defaults(tower) and n not in taken]:
            refuse(f"{tower}.{name}", nested[name], tower_defaults(tower)[name], tower)
            del nested[name]


# --- the flat items section of earlier versions -------------------------------------------------------
#: A multimodal run's two towers shared these keys of the flat layout (the projection MLP's).
_FLAT_SHARED = ("dnn_layers", "activation")


def _flat_places(key: str, cls: type) -> list[str] | None:
    """Where a key of the flat `items` layout (before the `image` and `text` sections) went for items of
    the class `cls`, as paths in `items` (none: the kind did not take it); None for no flat key. The
    text tower's keys were `text_*` (and max_tokens), the primary tower's unprefixed."""
    towers, primary = tower_sections(cls), cls.encoder_tower
    takes = {tower: {f.name for f in dataclasses.fields(settings)} for tower, settings in towers.items()}
    text_key = key.removeprefix("text_") if key.startswith("text_") else None
    if text_key in tower_defaults("text"):
        places = [("text", text_key)] if key == "text_fields" or primary != "text" else []
    elif key in tower_defaults("image") or key in tower_defaults("text"):
        owner = primary if key in takes.get(primary, ()) else next((t for t in takes if key in takes[t]), None)
        places = [(owner, key)] + ([("text", key)] if primary == "image" and key in _FLAT_SHARED else [])
    else:
        return None
    return [f"{tower}.{name}" for tower, name in places if name in takes.get(tower, ())]


def refuse_flat_keys(items: dict[str, Any], kind: Any, source: str) -> None:
    """A key of the flat `items` layout is one line naming its new key (items.tune_last is now items.image.tune_last)."""
    cls = component("items", kind)
    for key in items:
        places = None if key in TOWERS else _flat_places(key, cls)
        if places is None:
            continue
        if not places:  # a key this kind does not take: it is its tower's all the same
            text_key = key.removeprefix("text_")
            places = [f"text.{text_key}" if key != text_key and text_key in tower_defaults("text")
                      else f"{'image' if key in tower_defaults('image') else 'text'}.{key}"]
        raise UserError(f"{source}: items.{key} is now items.{places[0]}")


def upgrade(raw: dict[str, Any]) -> dict[str, Any]:
    """A configuration as saved by an earlier version (a run's config.yaml whose `items` section is flat)
    in today's layout: each flat key moved where it now lives for the run's item kind, those the kind
    did not take (its saved defaults) left out; a run saved before `train.table_optimizer` existed
    updated every row densely, and keeps doing so. Today's layout comes back as it is."""
    train = raw.get("train")
    if isinstance(train, dict) and train and "table_optimizer" not in train:
        raw = {**raw, "train": {**train, "table_optimizer": "dense"}}
    items = raw.get("items")
    kind = items.get("kind", ItemsConfig.kind) if isinstance(items, dict) else None
    if not isinstance(kind, str) or kind not in ITEM_ENCODERS.names():
        return raw
    cls = ITEM_ENCODERS.get(kind)
    moved = {key: _flat_places(key, cls) for key in items if key not in TOWERS}
    if all(places is None for places in moved.values()):
        return raw
    out = {key: value for key, value in items.items() if moved.get(key) is None}
    for key, places in moved.items():
        for place in places or []:
            value = "mean" if place == "text.pooling" and items[key] == "default" else items[key]  # text: default was mean
            assign(out, place, copy.deepcopy(value))
    return {**raw, "items": out}


def read_saved(path: str | Path) -> dict[str, Any]:
    """A run's saved config.yaml as a mapping in today's layout (see `upgrade`)."""
    return upgrade(read_yaml(path))


def validate_model_section(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Check model keys against the backbone constructor (its signature, ranges included, is the schema)."""
    name = values.get("name")
    if not isinstance(name, str):
        raise UserError(f"{source}: model.name is required (one of {', '.join(BACKBONES.names())})")
    cls = BACKBONES.get(name)
    accepted = component_keys("model", cls)
    types = hints(cls.__init__) | {"embedding_size": PositiveInt}
    out = {"name": name}
    for key, value in values.items():
        if key == "name":
            continue
        if key not in accepted:
            raise UserError(f"{source}: unknown key model.{key} for {name}{_hint(key, sorted(accepted - {'name'}))}")
        out[key] = check(value, types.get(key, Any), f"{source}: model.{key}")
    return out


def check_combination(config: Config) -> None:
    """Refuse combinations that cannot work, at configuration time; each component declares what it
    needs (item kinds, the whole catalogue each step), no name is special-cased here."""
    encoder_cls = component("items", config.items.kind)
    backbone_cls = component("model", config.model_name)
    cheap = getattr(encoder_cls, "catalogue_each_step", True)
    if not cheap and LOSSES.get(config.loss.name).sampling.full_catalogue:
        raise UserError(
            f"loss {config.loss.name} needs every item's vector at each step, which items.kind={config.items.kind} "
            "cannot afford; use softmax (in-batch) or bpr"
        )
    if not cheap and getattr(backbone_cls, "needs_catalogue", False):
        raise UserError(
            f"model {config.model_name} propagates over the whole catalogue at each step, which "
            f"items.kind={config.items.kind} cannot afford; use items.kind=id or features"
        )
    if config.model.get("mask_token") == "encoded_ones" and not hasattr(encoder_cls, "ones_image_vector"):
        raise UserError(f"model.mask_token=encoded_ones is the image encoder's vector for an all-ones image, which "
                        f"items.kind={config.items.kind} has not; use items.kind=pixels or model.mask_token=learned")
    name, _, k = config.eval.valid_metric.partition("@")
    if name not in METRICS or not k.isdigit():
        raise UserError(f"eval.valid_metric={config.eval.valid_metric}: not a metric; choose NAME@K with NAME one of "
                        f"{', '.join(METRICS)} and K in eval.ks {config.eval.ks} (e.g. NDCG@10)")
    if int(k) not in config.eval.ks:
        raise UserError(f"eval.valid_metric {config.eval.valid_metric} needs {k} in eval.ks {config.eval.ks}")
    check_init_parts(config.train)


def check_init_parts(train: TrainConfig) -> None:
    """train.init_parts: some part, never the ID tables, and only with train.init_from."""
    if "ids" in train.init_parts:
        raise UserError("train.init_parts: ids cannot be carried: item ID tables, user tables, item biases and other "
                        "catalogue-sized tensors belong to the source run's dataset; choose items and/or backbone")
    if not train.init_parts:
        raise UserError("train.init_parts is empty; choose items and/or backbone (or leave out train.init_from)")
    if train.init_from is None and train.init_parts != ["items"]:
        raise UserError(f"train.init_parts={train.init_parts} applies only with train.init_from=RUN_DIR")


def packaged_defaults(model: str, items_kind: str | None, encoder: str | None, profile: str = "default") -> list[Path]:
    """The packaged YAML layers for a combination, first to last: the backbone's IDNet settings, the
    item kind's own defaults (pixels: in-batch softmax), the backbone's settings for that family
    (PixelNet; the folder is the item encoder's declared `family`) and, for PixelNet, the image
    encoder's settings (the paper's tables).

    A profile adds its own files: `base.yaml` under everything, and `X/name.yaml` right after each
    default layer `X/name.yaml`, except that its family settings (the paper README's per-backbone
    PixelNet exceptions) come after the encoder's, and its encoder file comes last."""
    declared = ITEM_ENCODERS.find(items_kind)
    family = declared.family if declared is not None else None
    layers = [("models", model), ("items", items_kind), (family, model), ("encoders", encoder if family == "pixelnet" else None)]
    layers = [(folder, name) for folder, name in layers if folder and name]
    candidates = [CONFIG_DIR / folder / f"{name}.yaml" for folder, name in layers]
    if profile != "default":
        root = PROFILE_DIR / profile
        late = [(folder, name) for folder, name in layers if folder in (family, "encoders")]
        candidates = [root / "base.yaml"]
        for folder, name in layers:
            candidates.append(CONFIG_DIR / folder / f"{name}.yaml")
            if (folder, name) not in late:
                candidates.append(root / folder / f"{name}.yaml")
        candidates += [root / folder / f"{name}.yaml" for folder, name in late]
    return [path for path in candidates if path.is_file()]


def resolve(
    model: str | None = None,
    files: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    sets: list[str] | None = None,
    base: dict[str, Any] | None = None,
    strict: bool = True,
    encoder: str | None = None,
) -> Config:
    """Layer the sources in order: a run's saved config (`base`) or the packaged defaults of the
    chosen combination, the user's YAML files, command-line flags (with `encoder`, the encoder of the
    chosen item kind's primary tower), then `--set` overrides. A key that the chosen item encoder or
    loss does not take is an error (`strict`) or left out."""
    user_layers = [(str(f), read_yaml(f)) for f in files or [] if not is_profile(f)]
    # a profile is chosen by name (--config paper) or by a YAML file that records one (a run's config.yaml)
    profiles = sorted({str(f) for f in files or [] if is_profile(f)}
                      | {str(layer.pop("profile")) for _, layer in user_layers if "profile" in layer})
    if len(profiles) > 1:
        raise UserError(f"config=: choose one profile, not {' and '.join(profiles)}")
    user_layers.append(("command line", flags or {}))
    user_layers.append(("set=", overrides_to_dict(sets or [])))
    if model:
        user_layers.append(("model=", {"model": {"name": model}}))
    for source, layer in user_layers:
        for section in layer:
            if section not in SECTIONS:
                raise UserError(f"{source}: unknown section {section!r}{_hint(section, list(SECTIONS))}")
    base = None if base is None else upgrade(base)
    probe: dict[str, Any] = dict(base or {})
    for _, layer in user_layers:
        probe = merge(probe, layer)
    layers: list[tuple[str, dict[str, Any]]] = []
    chosen = probe.get("model", {}).get("name")
    if base is not None and profiles and profiles[0] != base.get("profile", "default"):
        raise UserError(f"config={profiles[0]}: the run was resolved with profile {base.get('profile', 'default')!r}; "
                        "a profile cannot change on resume=True")
    if base is None and chosen:
        items = probe.get("items", {})
        image = items.get("image") if isinstance(items.get("image"), dict) else {}
        image_encoder = image.get("encoder") or (encoder if _primary_tower(items.get("kind")) == "image" else None)
        profile = profiles[0] if profiles else "default"
        layers = [("profile", {"profile": profile})]
        layers += [(str(p), read_yaml(p)) for p in packaged_defaults(chosen, items.get("kind"), image_encoder, profile)]
    kind = (_merged(base, layers + user_layers).get("items") or {}).get("kind", ItemsConfig.kind)
    if isinstance(kind, str) and kind in ITEM_ENCODERS.names():
        for source, layer in user_layers:
            if isinstance(layer.get("items"), dict):
                refuse_flat_keys(layer["items"], kind, source)
    if encoder is not None:  # among the command line's flags, under the later layers (--set)
        tower = _primary_tower(kind)
        if tower is None:
            raise UserError(f"encoder={encoder}: items.kind={kind} has no encoder to set")
        at = [source for source, _ in user_layers].index("command line")
        user_layers[at] = ("command line", merge(user_layers[at][1], {"items": {tower: {"encoder": encoder}}}))
    # only the user's own keys are refused where they do not apply: a packaged layer speaks for every
    # item kind its backbone runs with (vbpr's items.combine for id+features), and is dropped elsewhere
    explicit = {(section, key) for _, layer in user_layers
                for section, values in layer.items() if isinstance(values, dict) for key in dotted_keys(values)}
    return build_config(_merged(base, layers + user_layers), explicit=explicit, strict=strict)


def _merged(base: dict[str, Any] | None, layers: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    raw: dict[str, Any] = dict(base or {})
    for _, layer in layers:
        raw = merge(raw, layer)
    return raw


def dotted_keys(values: dict[str, Any]) -> list[str]:
    """A section's keys, a tower section's as `tower.key`."""
    out: list[str] = []
    for key, value in values.items():
        nested = key in TOWERS and isinstance(value, dict)
        out += [f"{key}.{name}" for name in value] if nested else [key]
    return out


def _primary_tower(kind: Any) -> str | None:
    """The tower whose encoder `--encoder` sets for items of `kind` (None: none, or an unknown kind)."""
    return ITEM_ENCODERS.get(kind).encoder_tower if isinstance(kind, str) and kind in ITEM_ENCODERS.names() else None


def dump(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
