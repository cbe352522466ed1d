"""Recommend: the top-k items of users after their whole history, never an item they had, among the
catalogue and, optionally, new items embedded after training. The one implementation behind
`pixelrec recommend` and `pixelrec.recommend(...)`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pixelrec.config import Config
from pixelrec.data.prepared import PreparedData
from pixelrec.errors import UserError
from pixelrec.evaluation.ranking import recommend as ranked
from pixelrec.evaluation.ranking import user_indices
from pixelrec.jobs.new_items import NewItems, new_items_for_run, refuse_kind
from pixelrec.recommender import Recommender
from pixelrec.runs.directory import config_of_run
from pixelrec.runs.loading import LoadedRun, open_run


@dataclass(frozen=True)
class Recommendations:
    """Top items per user, best first, never padding nor an item the user already had. A user who
    has fewer unseen items than k gets all of them; `note` then says so. With new items (from
    `pixelrec embed`), `new` marks which recommended items are new."""

    users: list[str]
    items: list[list[str]]  # item tokens
    scores: list[list[float]]
    indices: list[list[int]]  # item indices in the prepared dataset (1..n_items; new items n_items + 1, ...)
    titles: list[list[str]] | None  # item titles, where the dataset has them
    k: int  # as requested
    note: str | None = None
    new: list[list[bool]] | None = None  # per recommended item: a new item (None: no new items were ranked)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (user, rank): user_id, rank (from 1), item_id, score, title (and new, 1 or 0,
        when new items were ranked)."""
        return [{"user_id": user, "rank": rank + 1, "item_id": item, "score": score,
                 "title": self.titles[u][rank] if self.titles is not None else "",
                 **({"new": int(self.new[u][rank])} if self.new is not None else {})}
                for u, (user, items, scores) in enumerate(zip(self.users, self.items, self.scores))
                for rank, (item, score) in enumerate(zip(items, scores))]


def top_items(model: Recommender, data: PreparedData, users: list[str], k: int, max_len: int,
              new_items: NewItems | None = None) -> Recommendations:
    """Top-k of each user (tokens) by `model`, history masked as in evaluation, among the catalogue
    and `new_items` (indices n_items + 1, ...). k is capped at the items a user has not seen:
    padding and seen items are never returned, whatever k."""
    if k < 1:
        raise UserError(f"k must be at least 1, not {k}")
    indices = user_indices(data, users)
    seq, ptr = np.asarray(data.item_seq), np.asarray(data.user_ptr)
    seen = [np.unique(seq[ptr[u] : ptr[u + 1]]) for u in indices]
    n_new = 0 if new_items is None else len(new_items)
    unseen = np.asarray([data.n_items + n_new - np.count_nonzero(s) for s in seen], dtype=np.int64)
    wanted = int(min(k, unseen.max()))
    extra = None if new_items is None else new_items.vectors
    top, values = ranked(model, data, indices, wanted, max_len, extra=extra) if wanted else (None, None)
    titles = item_titles(data)
    tokens = [str(t) for t in data.item_tokens]
    if new_items is not None:
        tokens += new_items.tokens
        titles = new_items.extend_titles(titles, data.n_items)
    out_items, out_scores, out_indices = [], [], []
    for row, history in enumerate(seen):
        if top is None:
            chosen, scores = np.zeros(0, dtype=np.int64), np.zeros(0)
        else:
            keep = (top[row] != 0) & ~np.isin(top[row], history)
            chosen, scores = top[row][keep][:k], values[row][keep][:k]
        out_indices.append([int(i) for i in chosen])
        out_items.append([tokens[i] for i in chosen])
        out_scores.append([float(s) for s in scores])
    return Recommendations(
        users=list(users), items=out_items, scores=out_scores, indices=out_indices,
        titles=[[titles[i] for i in row] for row in out_indices] if titles is not None else None,
        k=k, note=_short_note(users, unseen, k, data.n_items + n_new),
        new=[[i > data.n_items for i in row] for row in out_indices] if new_items is not None else None,
    )


def _short_note(users: list[str], unseen: np.ndarray, k: int, n_items: int) -> str | None:
    """One line when k is more than some user's unseen items (None otherwise)."""
    short = np.flatnonzero(unseen < k)
    if not len(short):
        return None
    if len(users) == 1:
        return (f"k={k} is more than the {int(unseen[0])} items of the catalogue ({n_items}) that user "
                f"{users[0]} has not had; giving those {int(unseen[0])}")
    low, high = int(unseen[short].min()), int(unseen[short].max())
    span = f"{low}" if low == high else f"{low} to {high}"
    return (f"k={k} is more than the catalogue ({n_items} items) leaves unseen for {len(short)} of the "
            f"{len(users)} users; each of them gets all their unseen items ({span})")


def item_titles(data: PreparedData) -> list[str] | None:
    """Title of each item index (index 0: ""), or None when the dataset has no titles."""
    table = data.item_table()
    if "title" not in table.column_names:
        return None
    return [""] + [str(t or "") for t in table.column("title").to_pylist()]


def rank(run: Path, model: Recommender, data: PreparedData, config: Config, weights: Path, users: list[str], k: int,
         new_items: str | Path | None = None) -> tuple[Recommendations, NewItems | None]:
    """Top-k of `users` by a loaded run's model (its `weights` file), with the run's `new_items`
    vectors (from `pixelrec embed`) ranked beside the catalogue."""
    if not users:
        raise UserError("users=: give at least one user token")
    new = None
    if new_items is not None:
        new = new_items_for_run(new_items, run, config.items.kind, model, weights, data.item_tokens)
    return top_items(model, data, users, k, config.data.max_len, new), new


def recommend(run: str | Path, users: list[str], *, k: int = 10, checkpoint: str = "best",
              data: str | Path | None = None, new_items: str | Path | None = None,
              ) -> tuple[Recommendations, LoadedRun, NewItems | None]:
    """Load a run directory's `checkpoint` (on `data`, a moved copy of its dataset) and rank for
    `users`; a run whose items cannot take new items is refused before its model is built."""
    run = Path(run)
    if new_items is not None:
        refuse_kind(run, config_of_run(run).items.kind)
    loaded = open_run(run, checkpoint, data)
    loaded.say_fallback()
    found, new = rank(run, loaded.model, loaded.data, loaded.config, loaded.checkpoint, users, k, new_items)
    return found, loaded, new
