"""Rank the catalogue for given users after their whole history (the history masked as in evaluation)."""

from __future__ import annotations

import numpy as np
import torch

from pixelrec.data.prepared import PreparedData
from pixelrec.data.views import whole_history_batch
from pixelrec.errors import UserError
from pixelrec.evaluation.evaluator import masked_scores
from pixelrec.recommender import Recommender


def user_indices(data: PreparedData, tokens: list[str]) -> np.ndarray:
    """Indices of user tokens; an unknown token is a one-line error naming it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    known = pa.array(data.user_tokens[1:].tolist(), type=pa.string())
    found = pc.index_in(pa.array(tokens, type=pa.string()), value_set=known).to_numpy(zero_copy_only=False)
    missing = [t for t, f in zip(tokens, found) if f is None or np.isnan(f)]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"unknown user {shown} in {data.root} (tokens as in the interactions file; `pixelrec prepare` "
                        "keeps users with at least 3 interactions, so a user with fewer is not in the dataset)")
    return np.asarray(found, dtype=np.int64) + 1


@torch.no_grad()
def recommend(model: Recommender, data: PreparedData, users: np.ndarray, k: int, max_len: int,
              batch_size: int = 1024, extra: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item indices and scores for each user after their whole history, which is masked.
    `extra`: scoring vectors of items beyond the catalogue (new items), ranked with it as indices
    n_items + 1, n_items + 2, ..."""
    lookup, scoring = model.catalogue_vectors()
    if extra is not None:
        scoring = torch.cat([scoring, extra.to(scoring.device, scoring.dtype)])
    items_out, scores_out = [], []
    k = min(k, len(scoring) - 1)
    for begin in range(0, len(users), batch_size):
        chunk = users[begin : begin + batch_size]
        batch, rows, items = whole_history_batch(data, chunk, max_len)
        top = torch.topk(masked_scores(model, lookup, scoring, batch, rows, items), k, dim=1)
        items_out.append(top.indices.cpu().numpy())
        scores_out.append(top.values.cpu().numpy())
    return np.concatenate(items_out), np.concatenate(scores_out)
