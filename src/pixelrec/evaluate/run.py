"""Load a saved run (config + checkpoint) and use it: re-evaluate, or recommend for users."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelrec import distributed
from pixelrec.data.prepared import PreparedData
from pixelrec.data.views import whole_history_batch
from pixelrec.errors import UserError
from pixelrec.evaluate.evaluator import evaluate, masked_scores
from pixelrec.recommender import Recommender
from pixelrec.train import rundir


def load_run(run: Path, checkpoint: str = "best", data_path: str | None = None, shared: bool = False):
    """(config, prepared data, model with the checkpoint's weights, in eval mode) of a run directory.
    With `shared`, a process started by torchrun joins the job (and takes its local rank's GPU);
    without, such a process is refused: the work would only be repeated on every rank."""
    from pixelrec.train.trainer import build_model, config_of_run

    if not shared and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("only `pixelrec train` and `pixelrec evaluate` share work between ranks; run this without torchrun")
    if not (run / "config.yaml").is_file():
        raise UserError(f"{run}: not a run directory (no config.yaml)")
    config = config_of_run(run)
    data = PreparedData(data_path or config.data.path)
    _, device = distributed.join(config.train.device, config.train.dist_timeout_minutes)
    model = build_model(config, data).to(device)
    path = run / f"{checkpoint}.pt"
    if not path.exists() and checkpoint == "best":
        path = run / "last.pt"
    model.load_state_dict(rundir.load_checkpoint(path, device)["model"])
    return config, data, model.eval()


def evaluate_run(run: Path, splits: list[str], checkpoint: str = "best", data_path: str | None = None) -> dict[str, Any]:
    config, data, model = load_run(run, checkpoint, data_path, shared=True)
    out: dict[str, Any] = {}
    for split in splits:
        out |= evaluate(model, data, split, config.data.max_len, config.eval.ks, config.eval.batch_size,
                        config.eval.score_budget_mb, workers=config.train.num_workers, job=distributed.current(),
                        mask_target=config.eval.mask_target)
    return out


def user_indices(data: PreparedData, tokens: list[str]) -> np.ndarray:
    """Indices of user tokens; an unknown token is a one-line error naming it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    known = pa.array(data.user_tokens[1:].tolist(), type=pa.string())
    found = pc.index_in(pa.array(tokens, type=pa.string()), value_set=known).to_numpy(zero_copy_only=False)
    missing = [t for t, f in zip(tokens, found) if f is None or np.isnan(f)]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"unknown user {shown} in {data.root} (tokens as in the interactions file)")
    return np.asarray(found, dtype=np.int64) + 1


@torch.no_grad()
def recommend(model: Recommender, data: PreparedData, users: np.ndarray, k: int, max_len: int,
              batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item indices and scores for each user after their whole history, which is masked."""
    lookup, scoring = model.catalogue_vectors()
    items_out, scores_out = [], []
    k = min(k, data.n_items)
    for begin in range(0, len(users), batch_size):
        chunk = users[begin : begin + batch_size]
        batch, rows, items = whole_history_batch(data, chunk, max_len)
        top = torch.topk(masked_scores(model, lookup, scoring, batch, rows, items), k, dim=1)
        items_out.append(top.indices.cpu().numpy())
        scores_out.append(top.values.cpu().numpy())
    return np.concatenate(items_out), np.concatenate(scores_out)
