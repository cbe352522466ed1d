"""Export a trained run's vectors for serving elsewhere: score(user, item) = users[u] . items[i].

items.npy holds the scoring vectors of the whole catalogue, users.npy each user's vector after their
whole history (exactly what `pixelrec recommend` scores), both float32, rows in the order of
items.txt / users.txt (the dataset's tokens). `recommend` also masks the items a user has already
seen; a server does the same with its own copy of the history. export.json is written last: a
directory without it is not a complete export. New items' vectors (from `pixelrec embed`) are
appended after the catalogue's rows, and export.json says where they start.

`export_tower` writes a pixel run's image tower instead: timm weights that `items.image.encoder_weights`
and `pixelrec extract --encoder-weights` take (see `pixelrec.towers.tower_file`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelrec.data.views import whole_history_batch
from pixelrec.errors import UserError
from pixelrec.items import ITEM_ENCODERS
from pixelrec.jobs.new_items import new_items_for_run, refuse_kind
from pixelrec.models.base import Backbone
from pixelrec.runs.directory import config_of_run
from pixelrec.runs.loading import open_run
from pixelrec.storage.atomic import atomic_json, atomic_write, write_error
from pixelrec.storage.feature_files import file_sha256
from pixelrec.towers.names import timm_name
from pixelrec.towers.tower_file import tower_settings, write_tower


def _save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    atomic_write(path, buffer.getvalue())


def _save_tokens(path: Path, tokens: np.ndarray) -> None:
    atomic_write(path, ("\n".join(str(t) for t in tokens) + "\n").encode())


@torch.no_grad()
def user_vectors(model, data, lookup, users: np.ndarray, max_len: int, batch_size: int) -> tuple[np.ndarray, Any]:
    """[len(users), d] float32 vectors after each user's whole history, and the first block's batch."""
    blocks, first = [], None
    for begin in range(0, len(users), batch_size):
        chunk = users[begin : begin + batch_size]
        batch, _, _ = whole_history_batch(data, chunk, max_len)
        batch = batch.to(model.device)
        if first is None:
            first = batch
        blocks.append(model.backbone.user_vectors(batch, lookup).float().cpu().numpy())
    return np.concatenate(blocks), first


def check_dot_product(model, lookup, scoring: torch.Tensor, batch, vectors: np.ndarray) -> None:
    """Refuse a backbone whose catalogue scores are not user . item (e.g. VisRank's maximum)."""
    if type(model.backbone).score_catalogue is Backbone.score_catalogue:
        return
    scores = model.backbone.score_catalogue(batch, lookup, scoring).float().cpu()
    dots = torch.from_numpy(vectors[: len(scores)]) @ scoring.float().cpu().T
    if not torch.allclose(scores, dots, rtol=1e-4, atol=1e-5):
        name = model.backbone.registered_name
        raise UserError(f"model {name} does not score items by a dot product of user and item vectors "
                        f"(its own score_catalogue, e.g. VisRank's maximum over the history); its vectors "
                        f"cannot be served as user . item")


#: What `export_vectors` writes into its folder; nothing else there is touched.
VECTOR_FILES = ("items.npy", "users.npy", "items.txt", "users.txt", "export.json")


def refuse_replacing(paths: list[Path], overwrite: bool) -> None:
    """Outputs are never replaced silently: an existing one is one line unless `overwrite`."""
    found = [path for path in paths if path.exists() or path.is_symlink()]
    if found and not overwrite:
        raise UserError(f"{found[0]}: already exists; use overwrite=True to replace "
                        f"{'it' if len(found) == 1 else f'it and {len(found) - 1} more'}, or another path")


def export_vectors(run: str | Path, out: str | Path, checkpoint: str = "best",
                   batch_size: int = 1024, data_path: str | Path | None = None,
                   new_items: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write items.npy, items.txt, users.npy, users.txt and export.json for a run; returns export.json,
    which names the checkpoint the vectors come from (and its epoch). `data_path`: the run's dataset
    where it is now, if it moved. `new_items`: vectors from `pixelrec embed` for this run, appended
    after the catalogue's rows. Files of an earlier export in `out` are replaced only with `overwrite`."""
    run, out = Path(run), Path(out)
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size}: must be at least 1")
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out}: is a file; give a folder for the vectors")
    refuse_replacing([out / name for name in VECTOR_FILES], overwrite)
    if new_items is not None and run.is_dir():
        refuse_kind(run, config_of_run(run).items.kind)  # before the model is loaded
    loaded = open_run(run, checkpoint, data_path)
    config, data, model = loaded.config, loaded.data, loaded.model
    new = None
    if new_items is not None:
        new = new_items_for_run(new_items, run, config.items.kind, model, loaded.checkpoint, data.item_tokens)
    lookup, scoring = model.catalogue_vectors()
    users = np.arange(1, data.n_users + 1, dtype=np.int64)
    vectors, first = user_vectors(model, data, lookup, users, config.data.max_len, batch_size)
    check_dot_product(model, lookup, scoring, first, vectors)
    items = scoring[1:].float().cpu().numpy()  # row 0 is padding
    tokens = [str(t) for t in data.item_tokens[1:]]
    if new is not None:
        items = np.concatenate([items, new.vectors.numpy()])
        tokens += new.tokens
    if vectors.shape[1] != items.shape[1]:
        raise UserError(f"{run}: user vectors have {vectors.shape[1]} dimensions but item vectors "
                        f"{items.shape[1]}; this backbone does not score by a dot product")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(out, err) from None
    (out / "export.json").unlink(missing_ok=True)  # an old marker must not vouch for new, partial files
    _save_npy(out / "items.npy", items)
    _save_npy(out / "users.npy", vectors)
    _save_tokens(out / "items.txt", np.asarray(tokens))
    _save_tokens(out / "users.txt", data.user_tokens[1:])
    manifest = {"run": str(run.resolve()), "checkpoint": loaded.checkpoint.name, "epoch": loaded.epoch,
                "run_finished": loaded.finished, "model": config.model_name, "items": config.items.kind,
                "encoder": config.items.encoder, "dataset": data.name, "n_items": int(items.shape[0]),
                "n_users": int(vectors.shape[0]), "dim": int(items.shape[1]), "score": "dot",
                "users_after": "whole history (the last data.max_len items as context)",
                "mask": "exclude each user's history items, as `pixelrec recommend` does"}
    if new is not None:
        manifest["n_catalogue_items"] = data.n_items
        manifest["new_items"] = {"file": str(new.path.resolve()), "count": len(new), "first_row": data.n_items,
                                 "note": f"rows {data.n_items} .. {len(tokens) - 1} of items.npy (0-based) are "
                                         "new items, embedded from their covers by `pixelrec embed`"}
    if loaded.fallback:
        manifest["note"] = loaded.fallback
    atomic_json(out / "export.json", manifest)
    return manifest


def export_tower(run: str | Path, tower: str | Path, checkpoint: str = "best",
                 data_path: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write a pixel (or multimodal) run's image tower to `tower` (.safetensors) and its description
    to the .json beside it; returns the description: timm name and arguments, input size,
    pre-processing, pooling, final norm, tuned layers, and the run and checkpoint it came from."""
    run, tower = Path(run), Path(tower)
    if tower.suffix != ".safetensors":
        raise UserError(f"tower={tower}: the tower file must end in .safetensors")
    refuse_replacing([tower, tower.with_suffix(".json")], overwrite)
    if not run.is_dir():
        raise UserError(f"{run}: no such run directory")
    kind = config_of_run(run).items.kind
    reach = ITEM_ENCODERS.get(kind).image_tower  # where the item encoder keeps its image tower
    if reach is None:
        having = " or ".join(ITEM_ENCODERS.names_where(lambda cls: cls.image_tower is not None))
        raise UserError(f"{run}: a run with items.kind={kind} has no image tower to export (runs with items.kind "
                        f"{having} have)")
    loaded = open_run(run, checkpoint, data_path)
    given = loaded.config.items.image  # the image tower's settings
    image = loaded.model.item_encoder.get_submodule(reach)
    # the settings the run's tower was built with (a run may itself start from an exported tower)
    settings = tower_settings(given.encoder_weights, encoder=given.encoder, image_size=given.image_size,
                              pooling=given.pooling, preprocess=given.preprocess, timm_args=given.timm_args)
    description = {
        "encoder": settings.encoder, "timm_name": timm_name(settings.encoder), "timm_args": image.timm_args,
        "image_size": image.preprocess.size, "preprocess": settings.preprocess,
        "preprocessing": image.preprocess.describe(), "pooling": image.pooling,
        "final_norm": not getattr(image.tower, "final_norm_removed", False), "tune_last": given.tune_last,
        "tune_head": given.tune_head, "features": int(image.tower.num_features),
        "source": {"run": str(run.resolve()), "checkpoint": loaded.checkpoint.name,
                   "checkpoint_sha256": file_sha256(loaded.checkpoint), "epoch": loaded.epoch,
                   "run_finished": loaded.finished, "model": loaded.config.model_name, "items": kind,
                   "dataset": loaded.data.name, "encoder_weights": given.encoder_weights,
                   "pretrained": given.pretrained},
        "note": "the run's image tower only; its projection to the recommender's vectors stays with the run "
                "(`pixelrec embed` uses the run)",
    }
    return write_tower(tower, image.tower, description)
