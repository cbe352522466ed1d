"""Train a recommender into a run directory: the one implementation behind `pixelrec train` and
`pixelrec.train(...)`.

The settings are layered (packaged defaults, `config` files, the named arguments, `set`), a new run
gets its folder (rank 0's name for the whole torchrun job), and a resumed run is checked before any
model is built: it continues as it was trained, from where its dataset is now.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pixelrec import distributed
from pixelrec.config import Config, assign, merge, read_saved, resolve
from pixelrec.errors import UserError
from pixelrec.runs.directory import default_run_dir
from pixelrec.training.trainer import train as train_run

PathLike = str | os.PathLike

#: The named arguments that set a configuration key: argument -> (section, key). `encoder` sets the
#: encoder of the item kind's primary tower (items.image or items.text), which `resolve` finds.
ARGUMENT_KEYS = {
    "data": ("data", "path"), "items": ("items", "kind"), "loss": ("loss", "name"),
    "epochs": ("train", "epochs"), "device": ("train", "device"), "seed": ("train", "seed"),
    "init_from": ("train", "init_from"),
}


def argument_layer(**arguments: Any) -> dict[str, Any]:
    """The configuration layer of the named arguments that are set (paths as strings)."""
    layer: dict[str, Any] = {}
    for name, value in arguments.items():
        if value is None:
            continue
        section, key = ARGUMENT_KEYS[name]
        layer.setdefault(section, {})[key] = os.fspath(value) if isinstance(value, os.PathLike) else value
    return layer


def override_layer(values: Mapping[str, Any] | Sequence[str] | None) -> tuple[dict[str, Any], list[str]]:
    """`set` as (nested mapping, "section.key=value" strings): a mapping {"train.lr": 1e-3},
    {"items.image.tune_last": 3} or {"train": {"lr": 1e-3}}, or strings parsed as YAML values."""
    if values is None:
        return {}, []
    if isinstance(values, str):
        return {}, [values]
    if not isinstance(values, Mapping):
        return {}, [str(v) for v in values]
    nested: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and "." not in str(key):
            nested = merge(nested, {str(key): dict(value)})
            continue
        if "." not in str(key) or "" in str(key).split("."):
            raise UserError(f"set: {key!r} is not 'section.key' (e.g. 'train.lr' or 'model.embedding_size')")
        assign(nested, str(key), value)
    return nested, []


def _paths(value: PathLike | Sequence[PathLike] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    return [os.fspath(v) for v in value]


def resumable_base(out: Path, model: str | None, data: PathLike | None) -> dict[str, Any]:
    """The saved configuration of the run in `out`, after the checks that need no model: a run is
    there, its model stays, and its dataset is where it recorded it (else `data=` must say where)."""
    if not (out / "config.yaml").is_file():
        raise UserError(f"{out}: not a run directory (no config.yaml); nothing to resume")
    base = read_saved(out / "config.yaml")
    saved_model = (base.get("model") or {}).get("name")
    if model and model != saved_model:
        raise UserError(f"{out}: cannot change on resume=True: model.name ({saved_model} -> {model}); "
                        "start a new run in another out=")
    saved_data = (base.get("data") or {}).get("path")
    if data is None and saved_data and not Path(saved_data).is_dir():
        raise UserError(f"{out}: its dataset {saved_data} is not there any more; pass data=DIR where it is now")
    return base


def resolve_training(
    *,
    data: PathLike | None = None,
    model: str | None = None,
    items: str | None = None,
    encoder: str | None = None,
    loss: str | None = None,
    epochs: int | None = None,
    device: str | None = None,
    seed: int | None = None,
    init_from: PathLike | None = None,
    config: PathLike | Sequence[PathLike] = (),
    set: Mapping[str, Any] | Sequence[str] | None = None,  # noqa: A002 - the configuration's `set` layer
    out: PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> tuple[Config, Path | None]:
    """The resolved configuration of a run and its folder (None: not chosen yet, see `run_folder`)."""
    layer = argument_layer(data=data, items=items, loss=loss, epochs=epochs, device=device, seed=seed,
                           init_from=init_from)
    nested, sets = override_layer(set)
    layer = merge(layer, nested)
    if resume:
        if out is None:
            raise UserError("resume=True needs out=: the run directory to continue")
        if overwrite:
            raise UserError("overwrite=True starts a run anew and resume=True continues it; choose one")
        path = Path(out)
        base = resumable_base(path, model, data)
        return resolve(files=_paths(config), flags=layer, sets=sets, base=base, encoder=encoder), path
    if model is None:
        raise UserError("model= is required: a backbone such as 'sasrec', 'gru4rec' or 'mf'")
    resolved = resolve(model=model, files=_paths(config), flags=layer, sets=sets, encoder=encoder)
    if resolved.data.path is None:
        raise UserError("data= is required: a dataset folder written by `pixelrec prepare`")
    return resolved, None if out is None else Path(out)


def run_folder(config: Config, out: Path | None) -> Path:
    """`out`, or a new runs/<model>-<items>-<time> folder: rank 0's name for every rank of a job."""
    if out is not None:
        return out
    job, _ = distributed.join(config.train.device, config.train.dist_timeout_minutes)
    chosen = default_run_dir(config.model_name, config.items.kind) if job.main else None
    return distributed.gather_objects(chosen)[0] if job.world > 1 else chosen


def train(*, resume: bool = False, overwrite: bool = False,
          on_epoch: Callable[[dict[str, Any]], None] | None = None, **settings: Any) -> tuple[Path, dict[str, Any]]:
    """Resolve the run's configuration (see `resolve_training` for `settings`), train it into its
    folder (or continue it there with `resume`) and evaluate it; returns (run folder, results)."""
    config, out = resolve_training(resume=resume, overwrite=overwrite, **settings)
    out = run_folder(config, out)
    return out, train_run(config, out, resume=resume, on_epoch=on_epoch, overwrite=overwrite)
