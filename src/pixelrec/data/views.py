"""Training views and evaluation batches built from the prepared CSR arrays with tensor operations.

A view enumerates examples once (a few integer arrays) and builds each batch by gathering from
`item_seq`, so nothing per sequence is materialised and no per-sample Python loop runs.
  pair      every training interaction: (user, up to max_len earlier items) -> item
  prefixes  every training interaction with a non-empty history -> item (SR-GNN, LightSANs)
  sequence  shifted next-item targets at every position of a window (SASRec, GRU4Rec, NextItNet)
  masked    cloze: random positions of a window hidden and predicted (BERT4Rec)
`windows` cuts each user's training history into non-overlapping windows aligned to its end
(PixelRec's construction); `sliding` makes one example per training target with up to max_len of
context (targets only at the last position for the sequence and masked views).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from pixelrec.data.batch import Batch
from pixelrec.data.prepared import PreparedData
from pixelrec.distributed import SINGLE, Job
from pixelrec.errors import UserError

VIEWS = ("pair", "prefixes", "sequence", "masked")


def ragged_positions(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each segment i, the positions starts[i] .. starts[i]+counts[i]-1, flattened, and the segment id."""
    counts = np.asarray(counts, dtype=np.int64)
    owner = np.repeat(np.arange(len(counts)), counts)
    first = np.cumsum(counts) - counts
    offsets = np.arange(int(counts.sum()), dtype=np.int64) - first[owner]
    return np.asarray(starts, dtype=np.int64)[owner] + offsets, owner


def gather_windows(item_seq: np.ndarray, ends: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """Rows of `width` items ending (exclusive) at `ends`, left-padded with 0 below `starts`."""
    idx = ends[:, None] - width + np.arange(width)[None, :]
    valid = idx >= starts[:, None]
    return np.where(valid, item_seq[np.maximum(idx, 0)], 0).astype(np.int64)


def sorted_distinct(values: np.ndarray) -> np.ndarray:
    """np.unique by sorting: numpy 2.4's np.unique is far slower than np.sort on large int64 arrays."""
    ordered = np.sort(values, axis=None)
    keep = np.ones(len(ordered), dtype=bool)
    keep[1:] = ordered[1:] != ordered[:-1]
    return ordered[keep]


class MembershipIndex:
    """Sorted (user, item) keys for vectorised 'is this item one of the user's own?' queries."""

    def __init__(self, keys: np.ndarray, n_items: int) -> None:
        self.stride = n_items + 1
        self.keys = keys  # sorted distinct user * stride + item

    @classmethod
    def of_segments(cls, item_seq: np.ndarray, starts: np.ndarray, ends: np.ndarray, n_items: int,
                    users_per_chunk: int = 1 << 20) -> "MembershipIndex":
        """Index of the items item_seq[starts[u]:ends[u]] of every user u, built a chunk of users at
        a time: each chunk's keys sort above the previous chunk's, so the pieces are already in order
        and the peak memory is the index plus one chunk (not several copies of every interaction)."""
        stride = n_items + 1
        keys = np.empty(int((ends - starts).sum()), dtype=np.int64)
        filled = 0
        for lo in range(0, len(starts), users_per_chunk):
            hi = min(lo + users_per_chunk, len(starts))
            pos, owner = ragged_positions(starts[lo:hi], ends[lo:hi] - starts[lo:hi])
            chunk = sorted_distinct((owner + lo) * stride + item_seq[pos])
            keys[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        return cls(keys[:filled], n_items)

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        query = np.asarray(users, dtype=np.int64) * self.stride + np.asarray(items, dtype=np.int64)
        where = np.searchsorted(self.keys, query)
        found = np.zeros(query.shape, dtype=bool)
        inside = where < len(self.keys)
        found[inside] = self.keys[where[inside]] == query[inside]
        return found


class TrainingView:
    """Examples of one view over the training part of each user's history."""

    def __init__(
        self,
        data: PreparedData,
        view: str,
        max_len: int = 10,
        sequences: str = "windows",
        negatives: int = 0,
        in_batch: bool = False,
        mask_ratio: float = 0.2,
    ) -> None:
        if view not in VIEWS:
            raise UserError(f"unknown training view {view!r}; choose from {', '.join(VIEWS)}")
        if sequences not in ("windows", "sliding"):
            raise UserError(f"data.sequences: {sequences!r} is not one of 'windows', 'sliding'")
        self.view, self.max_len, self.sequences = view, max_len, sequences
        self.negatives, self.in_batch, self.mask_ratio = negatives, in_batch, mask_ratio
        self.n_items = data.n_items
        self.item_seq = np.asarray(data.item_seq)
        self.starts = data.train_start
        ends = data.train_end
        train_len = ends - self.starts
        self.own_items = (MembershipIndex.of_segments(self.item_seq, self.starts, ends, data.n_items)
                          if negatives or in_batch else None)
        width = max_len + 1 if view == "sequence" else max_len
        if view in ("pair", "prefixes") or sequences == "sliding":
            skip_first = view != "pair"
            counts = np.maximum(train_len - int(skip_first), 0)
            pos, users = ragged_positions(self.starts + int(skip_first), counts)
            self.example_users, self.example_ends = _compact(users), _compact(pos + 1)  # predicts item_seq[end - 1]
        else:
            counts = np.where(train_len >= 2, -(-(train_len - 1) // width), 0)
            k, users = ragged_positions(np.zeros_like(counts), counts)
            self.example_users, self.example_ends = _compact(users), _compact(ends[users] - k * width)
        self.width = width

    def __len__(self) -> int:
        return len(self.example_users)

    def batch(self, example_ids: np.ndarray, rng: np.random.Generator, job: Job = SINGLE,
              shared_candidates: bool = False) -> Batch:
        """Build the batch of the given examples; `rng` drives negatives and cloze masks.

        Under several ranks every rank builds the whole global batch's examples (cheap gathers),
        so negatives and masks do not depend on the rank count, then keeps its share of rows. With
        `shared_candidates` the in-batch candidates are the global batch's targets, not just its rows'."""
        users = self.example_users[example_ids]
        ends = self.example_ends[example_ids]
        starts = self.starts[users]
        mask = None
        if self.view in ("pair", "prefixes"):
            targets = self.item_seq[ends - 1].astype(np.int64)
            context = gather_windows(self.item_seq, ends - 1, starts, self.max_len)
        elif self.view == "sequence":
            window = gather_windows(self.item_seq, ends, starts, self.width)
            context, targets = window[:, :-1], window[:, 1:].copy()
            targets[context == 0] = 0
            if self.sequences == "sliding":
                targets[:, :-1] = 0
        else:
            context = gather_windows(self.item_seq, ends, starts, self.width)
            mask = self._cloze_mask(context, rng)
            targets = np.where(mask, context, 0)
        negatives = self.sample_negatives(users, targets, rng) if self.negatives else None
        all_targets, rows = targets, job.share(len(example_ids))
        users, context, targets = users[rows], context[rows], targets[rows]
        batch = Batch(users=torch.from_numpy(users.astype(np.int64)), context=torch.from_numpy(context),
                      targets=torch.from_numpy(targets), mask=None if mask is None else torch.from_numpy(mask[rows]))
        if negatives is not None:
            batch.negatives = torch.from_numpy(negatives[rows])
        if self.in_batch:
            pool = all_targets if shared_candidates else targets
            batch.candidates, batch.candidate_mask = self._in_batch(users, targets, pool)
        n_all = int((all_targets > 0).sum())
        if n_all:
            # this rank's share of the global batch's targets x the rank count: averaging gradients
            # over ranks then gives the gradient of the global batch's mean loss
            batch.loss_scale = int((targets > 0).sum()) / n_all * job.world
        return batch

    def _cloze_mask(self, context: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        real = context > 0
        if self.sequences == "sliding":
            mask = np.zeros_like(real)
            mask[:, -1] = True
            return mask & real
        mask = (rng.random(context.shape) < self.mask_ratio) & real
        none = ~mask.any(axis=1)
        mask[none, -1] = real[none, -1]  # every window predicts at least its last item
        return mask

    def sample_negatives(self, users: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One uniform negative per target, never one of the user's own training items."""
        owners = np.broadcast_to(users.reshape((-1,) + (1,) * (targets.ndim - 1)), targets.shape)
        negatives = rng.integers(1, self.n_items + 1, size=targets.shape)
        for _ in range(50):  # rejection rounds; each round is vectorised over the whole batch
            clash = self.own_items.contains(owners, negatives) & (targets > 0)
            if not clash.any():
                break
            negatives[clash] = rng.integers(1, self.n_items + 1, size=int(clash.sum()))
        return np.where(targets > 0, negatives, 0).astype(np.int64)

    def _in_batch(self, users: np.ndarray, targets: np.ndarray, pool: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidates: the distinct targets of `pool`; mask: which are each target's user's other own items."""
        valid = targets > 0
        owners = np.broadcast_to(users.reshape((-1,) + (1,) * (targets.ndim - 1)), targets.shape)[valid]
        flat = targets[valid]
        candidates = sorted_distinct(pool[pool > 0])
        own = self.own_items.contains(owners[:, None], candidates[None, :])
        own &= candidates[None, :] != flat[:, None]
        return torch.from_numpy(candidates.astype(np.int64)), torch.from_numpy(own)

    def epoch_batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[tuple[int, np.ndarray]]:
        """(batch number, example ids) in a shuffled order fixed by (seed, epoch)."""
        order = np.random.default_rng([seed, epoch]).permutation(len(self))
        for number, begin in enumerate(range(0, len(order), batch_size)):
            yield number, order[begin : begin + batch_size]


def _compact(indices: np.ndarray) -> np.ndarray:
    """int32 when every value fits (halves the per-example arrays at full PixelRec size)."""
    if len(indices) == 0 or indices.max() < 2**31:
        return indices.astype(np.int32)
    return indices


def batch_rng(seed: int, epoch: int, number: int) -> np.random.Generator:
    """The random stream of one batch: the same whatever the worker count or a resume."""
    return np.random.default_rng([seed, epoch, number, 1])


def history_batch(data: PreparedData, users: np.ndarray, history_end: np.ndarray, max_len: int) -> tuple[Batch, np.ndarray, np.ndarray]:
    """Batch whose context is each user's last max_len items before `history_end` (exclusive
    positions in item_seq), plus the (row, item) pairs of the whole history, to be masked."""
    users = np.asarray(users, dtype=np.int64)
    starts = data.train_start[users]
    item_seq = np.asarray(data.item_seq)
    context = gather_windows(item_seq, history_end, starts, max_len)
    pos, row = ragged_positions(starts, history_end - starts)
    batch = Batch(users=torch.from_numpy(users), context=torch.from_numpy(context),
                  targets=torch.zeros(len(users), dtype=torch.long))
    return batch, row, item_seq[pos].astype(np.int64)


def whole_history_batch(data: PreparedData, users: np.ndarray, max_len: int) -> tuple[Batch, np.ndarray, np.ndarray]:
    """`history_batch` after each user's whole history (valid and test items included): what
    `recommend` and `export` score from."""
    users = np.asarray(users, dtype=np.int64)
    return history_batch(data, users, np.asarray(data.user_ptr[users + 1], dtype=np.int64), max_len)


def evaluation_batch(data: PreparedData, split: str, users: np.ndarray, max_len: int) -> tuple[Batch, np.ndarray, np.ndarray]:
    """Batch for scoring `users` on `split` (targets set), plus the history pairs to mask."""
    users = np.asarray(users, dtype=np.int64)
    target_pos = data.target_positions(split, users)
    batch, rows, items = history_batch(data, users, target_pos, max_len)
    batch.targets = torch.from_numpy(np.asarray(data.item_seq)[target_pos].astype(np.int64))
    return batch, rows, items
