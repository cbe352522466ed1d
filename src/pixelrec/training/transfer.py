"""Start a new run from another run's trained weights (`train.init_from`, `--init-from RUN_DIR`).

The parts named by `train.init_parts` are copied from the source run's best checkpoint (its last
when it has none): `items`, the item encoder's tower and projection, and optionally `backbone`, the
backbone's own parameters. Anything tied to the source's catalogue never crosses datasets: item ID
tables, user tables, item biases, catalogue-sized buffers. They are found by what they are, a
tensor of an encoder tied to its catalogue (an ID table), or an embedding table or a recommender tensor whose leading dimension is a
catalogue size (items or users) in both runs, never by a list of names. Everything else of a chosen
part must fit exactly: a shape that differs is one line naming the tensor and both shapes. Loading
draws no random numbers, so whatever is not loaded keeps the fresh initialisation of the run's seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pixelrec.config import read_saved
from pixelrec.errors import UserError
from pixelrec.items.base import ITEM_ENCODERS, ItemEncoder
from pixelrec.runs.directory import load_checkpoint, read_dataset_record
from pixelrec.storage.feature_files import file_sha256
from pixelrec.towers.names import ENCODER_NAMES

#: init_parts -> the recommender's submodule it names
PARTS = {"items": "item_encoder", "backbone": "backbone"}
TIED = "tied to the source's catalogue: ID and user tables never cross datasets"
NOT_CHOSEN = "not in train.init_parts"
NOT_IN_SOURCE = "not in the source checkpoint"


@dataclass
class Selection:
    """Which of the run's tensors take the source's values, and why each other one does not."""

    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> tensor names

    def skip(self, name: str, reason: str) -> None:
        self.skipped.setdefault(reason, []).append(name)


# --- the source run ---------------------------------------------------------------------------
def source_checkpoint(run: Path) -> Path:
    """The checkpoint a run starts from: best.pt, else last.pt; one line when the run has neither."""
    if not (run / "config.yaml").is_file():
        raise UserError(f"train.init_from: {run} is not a run directory (no config.yaml)")
    for name in ("best.pt", "last.pt"):
        if (run / name).is_file():
            return run / name
    raise UserError(f"train.init_from: {run} has no checkpoint (no best.pt or last.pt: it stopped before its first "
                    "epoch ended); train it first or start from another run")


def _saved_config(run: Path) -> dict[str, Any]:
    return read_saved(run / "config.yaml")


def check_source(config: Any) -> None:
    """Refuse, before any model is built, a source run that cannot start this configuration: no run,
    no checkpoint, another item kind or image encoder (for the item encoder), another backbone (for
    the backbone), or only ID tables to carry."""
    run = Path(config.train.init_from)
    source_checkpoint(run)
    saved = _saved_config(run)
    items = saved.get("items") or {}
    kind, encoder = items.get("kind", "id"), (items.get("image") or {}).get("encoder")
    here, parts = config.items, config.train.init_parts
    encoder_cls = ITEM_ENCODERS.get(here.kind)
    if "items" in parts and kind != here.kind:
        raise UserError(f"train.init_from: {run} was trained with items.kind={kind}, this run has items.kind={here.kind}; "
                        "its item encoder starts only a run of the same item kind (train.init_parts=[backbone] "
                        "carries the backbone alone)")
    if "items" in parts and encoder_cls.image_tower is not None \
            and ENCODER_NAMES.get(encoder, encoder) != ENCODER_NAMES.get(here.image.encoder, here.image.encoder):
        raise UserError(f"train.init_from: {run} was trained with image encoder {encoder}, this run has "
                        f"{here.image.encoder}; a tower starts only a run of the same encoder")
    if encoder_cls.tied_to_catalogue and "items" in parts:
        raise UserError(f"train.init_from: with items.kind={here.kind} the item encoder is an ID table, tied to {run}'s catalogue "
                        "(ID tables never cross datasets), so train.init_parts=[items] carries nothing; "
                        "use train.init_parts=[backbone]")
    source_model = (saved.get("model") or {}).get("name")
    if "backbone" in parts and source_model != config.model_name:
        raise UserError(f"train.init_from: {run} trained model {source_model}, this run {config.model_name}; "
                        "train.init_parts=[backbone] needs the same backbone")


def catalogue_sizes(n_items: int, n_users: int) -> set[int]:
    """Leading dimensions that mark a table of a catalogue: items or users, with or without the padding row."""
    return {n_items, n_items + 1, n_users, n_users + 1}


def source_sizes(run: Path) -> set[int] | None:
    """The source dataset's catalogue sizes (from its dataset.json), or None for a run that did not record them."""
    record = read_dataset_record(run)
    if record is None or not isinstance(record.get("n_items"), int) or not isinstance(record.get("n_users"), int):
        return None
    return catalogue_sizes(record["n_items"], record["n_users"])


# --- what is tied to a catalogue ---------------------------------------------------------------
def _owner(model: nn.Module, name: str) -> nn.Module:
    prefix = name.rpartition(".")[0]
    return model.get_submodule(prefix) if prefix else model


def _is_recommender_module(module: nn.Module) -> bool:
    """One of pixelrec's own modules (the backbones, encoders, losses), not a torch layer or an image tower's."""
    return type(module).__module__.startswith("pixelrec.")


def catalogue_tied(model: nn.Module, source: dict[str, Tensor], here: set[int], there: set[int] | None) -> set[str]:
    """Names of the model's tensors (state_dict keys) that belong to a catalogue: every tensor of an
    item encoder tied to its catalogue (an ID encoder, also as a part of another), and each embedding table or tensor held directly by a pixelrec module whose leading
    dimension is a catalogue size here and, in the source, there (a layer width that happens to equal
    one catalogue's size is not taken for a table: it would have to equal both)."""
    id_prefixes = tuple(f"{p}." for p, m in model.named_modules() if isinstance(m, ItemEncoder) and m.tied_to_catalogue)
    tied = set()
    for name, tensor in model.state_dict().items():
        if name.startswith(id_prefixes):
            tied.add(name)
            continue
        owner = _owner(model, name)
        if tensor.dim() == 0 or not (isinstance(owner, nn.Embedding) or _is_recommender_module(owner)):
            continue
        theirs = source.get(name)
        in_source = there is None or theirs is None or (theirs.dim() > 0 and theirs.shape[0] in there)
        if tensor.shape[0] in here and in_source:
            tied.add(name)
    return tied


def group_of(model: nn.Module, name: str) -> str:
    """The group a tensor is reported under: `item_encoder.tower`, `item_encoder.image.projection`, `backbone.blocks`."""
    parts = name.split(".")
    depth = 2
    while depth < len(parts) - 1 and isinstance(model.get_submodule(".".join(parts[:depth])), ItemEncoder):
        depth += 1  # a part of a composite encoder (multimodal's image and text, id+features' ids and visual)
    return ".".join(parts[:min(depth, len(parts) - 1)] or parts[:1])


def select(model: nn.Module, source: dict[str, Tensor], parts: list[str], tied: set[str],
           checkpoint: Path) -> Selection:
    """Which tensors load: those of the chosen parts that are not tied to a catalogue; a chosen tensor
    whose shape differs from the source's is one line naming it and both shapes."""
    prefixes = tuple(f"{PARTS[p]}." for p in parts)
    selection = Selection()
    for name, tensor in model.state_dict().items():
        if name in tied:
            selection.skip(name, TIED)
        elif not name.startswith(prefixes):
            selection.skip(name, NOT_CHOSEN)
        elif name not in source:
            selection.skip(name, NOT_IN_SOURCE)
        elif tuple(source[name].shape) != tuple(tensor.shape):
            raise UserError(f"train.init_from: {name} is {list(source[name].shape)} in {checkpoint} and "
                            f"{list(tensor.shape)} in this run; the parts carried ({', '.join(parts)}) need the same "
                            "architecture (embedding_size, image_size, dnn_layers, layers)")
        else:
            selection.loaded.append(name)
    for part in parts:
        prefix = f"{PARTS[part]}."
        if not any(name.startswith(prefix) for name in selection.loaded):
            why = ("all of them are tied to the source's catalogue (user or item tables), which never crosses datasets"
                   if all(name in tied for name in model.state_dict() if name.startswith(prefix))
                   else f"none of them is in {checkpoint}")
            raise UserError(f"train.init_from: nothing of this run's {part} ({PARTS[part]}) can be carried: {why}; "
                            "choose other train.init_parts")
    return selection


@torch.no_grad()
def copy_into(model: nn.Module, source: dict[str, Tensor], names: list[str]) -> None:
    """Copy `source[name]` into the model's tensor `name` (parameter or buffer) in place, on its device and dtype."""
    own = model.state_dict(keep_vars=True)
    for name in names:
        target = own[name]
        target.data.copy_(source[name].to(device=target.device, dtype=target.dtype))


# --- the whole step ----------------------------------------------------------------------------
def initialise(model: nn.Module, config: Any, n_items: int, n_users: int) -> dict[str, Any]:
    """Load the chosen parts of `config.train.init_from`'s checkpoint into `model`; returns the record
    that results.json keeps as `init_from`."""
    check_source(config)
    run = Path(os.path.abspath(config.train.init_from))
    checkpoint = source_checkpoint(run)
    before = _identity(checkpoint)
    digest = file_sha256(checkpoint)
    state = load_checkpoint(checkpoint)["model"]
    if _identity(checkpoint) != before:  # replaced by a writer: the hash might not be of what was loaded
        raise UserError(f"train.init_from: {checkpoint} changed while it was read (is that run still training?); "
                        "start again once it is finished")
    parts = list(dict.fromkeys(config.train.init_parts))
    tied = catalogue_tied(model, state, catalogue_sizes(n_items, n_users), source_sizes(run))
    selection = select(model, state, parts, tied, checkpoint)
    copy_into(model, state, selection.loaded)
    return {
        "run": str(run),
        "checkpoint": checkpoint.name,
        "sha256": digest,
        "parts": parts,
        "loaded": len(selection.loaded),
        "loaded_groups": _count(model, selection.loaded),
        "skipped": [{"group": group, "tensors": n, "reason": reason}
                    for reason, names in selection.skipped.items() for group, n in _count(model, names).items()],
    }


def _identity(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _count(model: nn.Module, names: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in names:
        group = group_of(model, name)
        counts[group] = counts.get(group, 0) + 1
    return counts


def describe(record: dict[str, Any]) -> str:
    """The one line a run logs about where it started from."""
    loaded = ", ".join(f"{group} {n}" for group, n in record["loaded_groups"].items())
    fallback = " (no best.pt)" if record["checkpoint"] == "last.pt" else ""
    line = (f"initialised from {record['run']} ({record['checkpoint']}{fallback}, sha256 {record['sha256'][:12]}): "
            f"loaded {record['loaded']} tensors ({loaded})")
    by_reason: dict[str, dict[str, int]] = {}
    for entry in record["skipped"]:
        # a part not chosen is named as a whole (`backbone 24`), the others by group
        group = entry["group"].split(".")[0] if entry["reason"] == NOT_CHOSEN else entry["group"]
        counts = by_reason.setdefault(entry["reason"], {})
        counts[group] = counts.get(group, 0) + entry["tensors"]
    if by_reason:
        line += "; kept this run's own initialisation for " + "; ".join(
            f"{', '.join(f'{g} {n}' for g, n in groups.items())} ({reason})" for reason, groups in by_reason.items())
    return line
