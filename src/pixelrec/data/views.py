"""Training views and evaluation batches built from the prepared CSR arrays with tensor operations.

A view enumerates examples once (a few integer arrays) and builds each batch by gathering from
`item_seq`, so nothing per sequence is materialised and no per-sample Python loop runs.
  pair      every training interaction: (user, up to max_len earlier items) -> item
  prefixes  every training interaction with a non-empty history -> item (SR-GNN, LightSANs)
  sequence  shifted next-item targets at every position of a window (SASRec, GRU4Rec, NextItNet)
  masked    cloze: random positions of a window hidden and predicted (BERT4Rec)
`windows` cuts each user's training history into non-overlapping windows aligned to its end
(PixelRec's construction, which also drops the leading remainder: `window_remainder=drop`); `sliding` makes one example per training target with up to max_len of
context (targets only at the last position for the sequence and masked views). `window_stride` S
(sequence windows) overlaps the windows, one ending every S items, each predicting only the targets
no later window covers: every target once, with at least max_len - S items of context in full windows.

PixelRec's own examples, each an option (the `paper` profile sets them all):
  window_remainder=drop  the leading L mod width items of a longer history make no window, and a
                         history of one item is a window too (its `_build_seq`)
  prefixes=window        prefixes inside each window of max_len + 1; a window's first item is never a
                         target (its `_build_aug_seq`)
  pair_context=window    each item of a window of max_len + 1 predicted from the window's other items,
                         earlier and later; a batch counts windows or rows (its SampleTwoTower /
                         SampleOneTower / SampleACF datasets)
  negatives_avoid=window a sampled negative avoids only the example's own items: its window, or a
                         prefix's context and target; pair examples without windows (MF) keep the history

first_row_only (FM and DSSM's model option) keeps only each batch's first row: PixelRec's IDNet fm.py
and dssm.py train on nothing else (a bug, copied only on request).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Iterator

import numpy as np
import torch

from pixelrec.data.batch import Batch
from pixelrec.data.prepared import PreparedData
from pixelrec.data.specs import SamplingSpec, ViewSpec
from pixelrec.distributed import SINGLE, Job
from pixelrec.errors import UserError

VIEWS = ("pair", "prefixes", "sequence", "masked")
#: the view options set from the `data` section, and their values (the first is the default)
OPTIONS = {
    "sequences": ("windows", "sliding"),
    "window_remainder": ("keep", "drop"),
    "prefixes": ("history", "window"),
    "pair_context": ("earlier", "window"),
    "negatives_avoid": ("history", "window"),
}


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


def end_windows(starts: np.ndarray, ends: np.ndarray, width: int,
                min_items: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of `width` positions cut from the end of each segment [starts, ends) with the leading
    remainder dropped; a segment of at most `width` items (and at least min_items) is one window.
    Returns (segment, first, end) of every window, the most recent window of a segment first."""
    starts, ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    length = ends - starts
    counts = np.where(length > width, length // width, (length >= min_items).astype(np.int64))
    k, owner = ragged_positions(np.zeros_like(counts), counts)
    last = ends[owner] - k * width
    return owner, np.maximum(last - width, starts[owner]), last


def leave_one_out(item_seq: np.ndarray, first: np.ndarray, length: np.ndarray, left_out: np.ndarray,
                  width: int) -> np.ndarray:
    """Rows of the items of windows [first, first + length) except position `left_out`, in order,
    left-padded to `width` (each window has at most width + 1 items)."""
    others = np.arange(width)[None, :] - (width - (length - 1))[:, None]  # index among the others; < 0: padding
    offset = others + (others >= left_out[:, None])
    valid = others >= 0
    return np.where(valid, item_seq[np.where(valid, first[:, None] + offset, 0)], 0).astype(np.int64)


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
    """Examples of one view over the training part of each user's history.

    The options after `mask_ratio` select PixelRec's own examples (module docstring). Masked view:
    `masked_width` items per window (default max_len); `force_mask` hides a window's last item when
    the draw hid none (PixelRec's draw leaves such a window without targets). Pair view with
    pair_context=window: `window_batches` makes a batch's examples windows (each expanded into its
    rows, PixelRec's FM and DSSM), else rows (its ACF). The options are a `ViewSpec`'s and a
    `SamplingSpec`'s fields; `TrainingView.of` takes the two as a backbone and a loss declare them."""

    def __init__(
        self,
        data: PreparedData,
        view: str,
        max_len: int = 10,
        sequences: str = "windows",
        negatives: int = 0,
        in_batch: bool = False,
        mask_ratio: float = 0.2,
        *,
        window_remainder: str = "keep",
        window_stride: int | None = None,
        prefixes: str = "history",
        pair_context: str = "earlier",
        negatives_avoid: str = "history",
        window_batches: bool = True,
        force_mask: bool = True,
        masked_width: int | None = None,
        first_row_only: bool = False,
        shares_candidates: bool = False,
    ) -> None:
        self.spec = ViewSpec(view, max_len, sequences, mask_ratio, window_remainder, window_stride, prefixes,
                             pair_context, negatives_avoid, window_batches, force_mask, masked_width,
                             first_row_only)
        self.first_row_only = first_row_only
        self.sampling = SamplingSpec(negatives, in_batch, shares_candidates)
        if view not in VIEWS:
            raise UserError(f"unknown training view {view!r}; choose from {', '.join(VIEWS)}")
        chosen = {"sequences": sequences, "window_remainder": window_remainder, "prefixes": prefixes,
                  "pair_context": pair_context, "negatives_avoid": negatives_avoid}
        for key, value in chosen.items():
            if value not in OPTIONS[key]:
                raise UserError(f"data.{key}: {value!r} is not one of {', '.join(repr(v) for v in OPTIONS[key])}")
        self.view, self.max_len, self.sequences = view, max_len, sequences
        self.negatives, self.in_batch, self.mask_ratio, self.force_mask = negatives, in_batch, mask_ratio, force_mask
        self.n_items = data.n_items
        self.item_seq = np.asarray(data.item_seq)
        self.starts = data.train_start
        ends = data.train_end
        train_len = ends - self.starts
        self.window_pairs = view == "pair" and pair_context == "window"
        self.window_batches = window_batches
        # pair examples with earlier context have no window: they avoid the history, as PixelRec's pairs
        self.avoid_own = negatives_avoid == "window" and (view != "pair" or self.window_pairs)
        needs_history = in_batch or bool(negatives and not self.avoid_own)
        self.own_items = (MembershipIndex.of_segments(self.item_seq, self.starts, ends, data.n_items)
                          if needs_history else None)
        width = max_len + 1 if view == "sequence" else (masked_width or max_len)
        self.example_starts: np.ndarray | None = None  # context floor per example when not the user's train start
        self.example_kept: np.ndarray | None = None  # overlapping windows: trailing positions that are targets
        stride = _window_stride(window_stride, view, sequences, window_remainder, width)
        if self.window_pairs:
            users, first, last = end_windows(self.starts, ends, max_len + 1)
            self.window_users, self.window_first = _compact(users), _compact(first)
            self.window_length = (last - first).astype(np.int32)
            self.window_rows = np.cumsum(last - first) - (last - first)  # first row of each window
            self.n_examples = len(users) if window_batches else int((last - first).sum())
        elif view == "prefixes" and prefixes == "window":
            users, first, last = end_windows(self.starts, ends, max_len + 1, min_items=2)
            pos, window = ragged_positions(first + 1, last - first - 1)  # every target but a window's first
            self.example_users, self.example_ends = _compact(users[window]), _compact(pos + 1)
            self.example_starts = _compact(first[window])
        elif view in ("pair", "prefixes") or sequences == "sliding":
            skip_first = view != "pair"
            counts = np.maximum(train_len - int(skip_first), 0)
            pos, users = ragged_positions(self.starts + int(skip_first), counts)
            self.example_users, self.example_ends = _compact(users), _compact(pos + 1)  # predicts item_seq[end - 1]
        elif window_remainder == "drop":
            users, _, last = end_windows(self.starts, ends, width)
            self.example_users, self.example_ends = _compact(users), _compact(last)
        else:
            counts = np.where(train_len >= 2, -(-(train_len - 1) // stride), 0)
            k, users = ragged_positions(np.zeros_like(counts), counts)
            self.example_users, self.example_ends = _compact(users), _compact(ends[users] - k * stride)
            if stride < width - 1:  # a window predicts the targets no later window covers: its last `stride`
                earliest = k == counts[users] - 1
                self.example_kept = np.where(earliest, width - 1, stride).astype(np.int16)
        if not self.window_pairs:
            self.n_examples = len(self.example_users)
        self.width = width

    @classmethod
    def of(cls, data: PreparedData, spec: ViewSpec, sampling: SamplingSpec) -> "TrainingView":
        """The examples that a backbone's view specification and a loss's sampling specification ask for."""
        return cls(data, **asdict(spec), negatives=sampling.negatives, in_batch=sampling.in_batch,
                   shares_candidates=sampling.shares_candidates)

    def __len__(self) -> int:
        return self.n_examples

    def batch(self, example_ids: np.ndarray, rng: np.random.Generator, job: Job = SINGLE,
              shared_candidates: bool | None = None) -> Batch:
        """Build the batch of the given examples; `rng` drives negatives and cloze masks.

        Under several ranks every rank builds the whole global batch's rows (cheap gathers), so
        negatives and masks do not depend on the rank count, then keeps its share of rows. With
        `shared_candidates` (default: the sampling specification's) the in-batch candidates are the
        global batch's targets, not just its rows'."""
        if shared_candidates is None:
            shared_candidates = self.sampling.shares_candidates
        mask = window = None
        if self.window_pairs:
            users, context, targets = self._window_pair_rows(np.asarray(example_ids, dtype=np.int64))
        else:
            users = self.example_users[example_ids]
            ends = self.example_ends[example_ids]
            starts = self.starts[users] if self.example_starts is None else self.example_starts[example_ids]
            if self.view in ("pair", "prefixes"):
                targets = self.item_seq[ends - 1].astype(np.int64)
                context = gather_windows(self.item_seq, ends - 1, starts, self.max_len)
            elif self.view == "sequence":
                window = gather_windows(self.item_seq, ends, starts, self.width)
                context, targets = window[:, :-1], window[:, 1:].copy()
                targets[context == 0] = 0
                if self.example_kept is not None:
                    covered = np.arange(self.max_len)[None, :] < (self.max_len - self.example_kept[example_ids])[:, None]
                    targets[covered] = 0
                if self.sequences == "sliding":
                    targets[:, :-1] = 0
            else:
                context = window = gather_windows(self.item_seq, ends, starts, self.width)
                mask = self._cloze_mask(context, rng)
                targets = np.where(mask, context, 0)
        if self.first_row_only:  # PixelRec's IDNet FM and DSSM: `inputs = inputs[0].unsqueeze(0)`
            users, context, targets = users[:1], context[:1], targets[:1]
            window = None if window is None else window[:1]
            mask = None if mask is None else mask[:1]
        negatives = None
        if self.negatives:
            own = None
            if self.avoid_own:  # the example's own items: its window, or a pair or prefix row's context and target
                own = window if window is not None else np.concatenate([context, targets[:, None]], axis=1)
            negatives = self.sample_negatives(users, targets, rng, own)
        all_targets, rows = targets, job.share(len(targets))
        users, context, targets = users[rows], context[rows], targets[rows]
        batch = Batch(users=torch.from_numpy(users.astype(np.int64)), context=torch.from_numpy(context),
                      targets=torch.from_numpy(targets), mask=None if mask is None else torch.from_numpy(mask[rows]))
        if negatives is not None:
            batch.negatives = torch.from_numpy(negatives[rows])
        if self.in_batch:
            pool = all_targets if shared_candidates else targets
            batch.candidates, batch.candidate_mask = self._in_batch(users, targets, pool)
        n_all = int((all_targets > 0).sum())
        # this rank's share of the global batch's targets x the rank count: averaging gradients over
        # ranks then gives the gradient of the global batch's mean loss; 0 for a share without targets
        batch.loss_scale = int((targets > 0).sum()) / n_all * job.world if n_all else 0.0
        batch.row_scale = len(targets) / len(all_targets) * job.world if len(all_targets) else 0.0
        return batch

    def _window_pair_rows(self, example_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(users, context, targets) of the leave-one-out rows of windows (window_batches) or of rows."""
        if self.window_batches:
            left_out, owner = ragged_positions(np.zeros(len(example_ids), dtype=np.int64),
                                               self.window_length[example_ids])
            windows = example_ids[owner]
        else:
            windows = np.searchsorted(self.window_rows, example_ids, side="right") - 1
            left_out = example_ids - self.window_rows[windows]
        first = self.window_first[windows].astype(np.int64)
        length = self.window_length[windows].astype(np.int64)
        context = leave_one_out(self.item_seq, first, length, left_out, self.max_len)
        return self.window_users[windows], context, self.item_seq[first + left_out].astype(np.int64)

    def _cloze_mask(self, context: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        real = context > 0
        if self.sequences == "sliding":
            mask = np.zeros_like(real)
            mask[:, -1] = True
            return mask & real
        mask = (rng.random(context.shape) < self.mask_ratio) & real
        if self.force_mask:
            none = ~mask.any(axis=1)
            mask[none, -1] = real[none, -1]  # every window predicts at least its last item
        return mask

    def sample_negatives(self, users: np.ndarray, targets: np.ndarray, rng: np.random.Generator,
                         own: np.ndarray | None = None) -> np.ndarray:
        """One uniform negative per target, never one of the user's own training items, or with
        `own` ([rows, K]) never one of its row's items."""
        negatives = rng.integers(1, self.n_items + 1, size=targets.shape)
        for _ in range(50):  # rejection rounds; each round is vectorised over the whole batch
            clash = self._is_own(users, own, negatives) & (targets > 0)
            if not clash.any():
                break
            negatives[clash] = rng.integers(1, self.n_items + 1, size=int(clash.sum()))
        return np.where(targets > 0, negatives, 0).astype(np.int64)

    def _is_own(self, users: np.ndarray, own: np.ndarray | None, items: np.ndarray) -> np.ndarray:
        """Whether each of `items` (one per target slot) is one of the user's training items, or
        with `own` one of its row's items."""
        lead = (len(items),) + (1,) * (items.ndim - 1)
        if own is None:
            return self.own_items.contains(np.broadcast_to(users.reshape(lead), items.shape), items)
        return (items[..., None] == own.reshape(lead + own.shape[1:])).any(axis=-1)

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


def _window_stride(stride: int | None, view: str, sequences: str, remainder: str, width: int) -> int:
    """Items between consecutive window ends (data.window_stride), checked; `width` when not set."""
    if stride is None:
        return width
    if view != "sequence" or sequences != "windows":
        return width  # like the other view options, it applies only where it has a meaning
    if remainder != "keep":
        raise UserError("data.window_stride: overlapping windows keep the leading remainder; "
                        "set data.window_remainder=keep or leave data.window_stride unset")
    if not 1 <= stride <= width:
        raise UserError(f"data.window_stride: {stride} is not between 1 and data.max_len + 1 = {width}")
    return stride


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
