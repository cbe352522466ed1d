"""What a backbone and a loss ask of the training batches: one view specification, one sampling specification.

A backbone builds its `ViewSpec` from the `data` section (`Backbone.view_spec`), a loss declares its
`SamplingSpec` (`Loss.sampling`), and `TrainingView.of(data, view, sampling)` builds the examples from
the two; nothing in between reads a component's flags one by one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ViewSpec:
    """The training view and its options, as `TrainingView` takes them (see data.views)."""

    view: str  # pair | prefixes | sequence | masked
    max_len: int = 10
    sequences: str = "windows"  # windows | sliding
    mask_ratio: float = 0.2  # masked view: fraction of a window's positions hidden
    window_remainder: str = "keep"  # keep | drop: a history's leading remainder is a short window, or no window
    window_stride: int | None = None  # sequence windows: items between consecutive window ends (None: max_len + 1)
    prefixes: str = "history"  # history | window: where a prefixes view's contexts come from
    pair_context: str = "earlier"  # earlier | window: a pair's context is its earlier items, or its window's others
    negatives_avoid: str = "history"  # history | window: what a sampled negative must not be
    window_batches: bool = True  # pair_context=window: a batch counts windows (True) or rows
    force_mask: bool = True  # masked view: a window whose draw hid nothing hides its last item
    masked_width: int | None = None  # masked view: items per window (None: max_len)
    first_row_only: bool = False  # a batch keeps only its first row (PixelRec's IDNet FM and DSSM, a bug)


@dataclass(frozen=True)
class SamplingSpec:
    """What a loss needs each training batch to carry, and each step to encode."""

    negatives: int = 0  # sampled negatives per target
    in_batch: bool = False  # the batch's distinct targets as candidates, with own-positive masks
    shares_candidates: bool = False  # in_batch: candidates from every rank's rows of the global batch
    full_catalogue: bool = False  # every item's vector at each step
