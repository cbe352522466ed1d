"""Training losses over user vectors and item vectors; each declares what the batches must carry
(its `sampling`, a `SamplingSpec`).

bpr           one sampled negative per target (never one of the user's own items): the paper's setting
softmax       cross-entropy against the distinct target items of the batch, the user's other
              positives masked, with optional log-popularity (logQ) correction; with across_ranks
              the candidates are the whole global batch's targets, their vectors gathered from
              every rank with gradients, so the negative pool grows with the number of GPUs
full-softmax  cross-entropy over the whole catalogue (item encoders cheap enough to embed it all)

Each loss averages its per-target terms (reduction `targets`), or sums each row's (window's) terms and
averages over the batch's rows, rows without targets included (`windows`: the PixelRec code's sequence
models, whose long windows weigh more).
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pixelrec import distributed
from pixelrec.data.batch import Batch
from pixelrec.data.specs import SamplingSpec
from pixelrec.registry import Registry

LOSSES: Registry = Registry("loss")

ScoreVectors = Callable[[Tensor], Tensor]
Reduction = Literal["targets", "windows"]


class Loss:
    #: what the batches must carry (negatives, in-batch candidates) and each step must encode (the
    #: catalogue); an instance may refine its class's (in-batch candidates from every rank)
    sampling: SamplingSpec = SamplingSpec()

    def __init__(self, reduction: Reduction = "targets") -> None:
        self.reduction = reduction

    def reduce(self, terms: Tensor, batch: Batch) -> Tensor:
        """The batch's loss from its per-target terms [N]: their mean, or their sum over the batch's rows."""
        if self.reduction == "windows":
            return terms.sum() / max(len(batch), 1)
        return terms.mean()

    def __call__(self, users: Tensor, targets: Tensor, batch: Batch, vectors: ScoreVectors) -> Tensor:
        """users [N, d] aligned with targets [N]; `vectors(idx)` gives the scoring vectors of items."""
        raise NotImplementedError


@LOSSES.register("bpr")
class BPRLoss(Loss):
    sampling = SamplingSpec(negatives=1)

    def __call__(self, users: Tensor, targets: Tensor, batch: Batch, vectors: ScoreVectors) -> Tensor:
        negatives = batch.negatives[batch.targets > 0]
        positive = (users * vectors(targets)).sum(-1)
        negative = (users * vectors(negatives)).sum(-1)
        return self.reduce(-F.logsigmoid(positive - negative), batch)


@LOSSES.register("softmax")
class InBatchSoftmaxLoss(Loss):
    sampling = SamplingSpec(in_batch=True)

    def __init__(self, item_popularity: np.ndarray | None = None, logq: bool = False, across_ranks: bool = False,
                 reduction: Reduction = "targets") -> None:
        super().__init__(reduction)
        self.sampling = SamplingSpec(in_batch=True, shares_candidates=across_ranks)
        self.log_q = None
        if logq:
            counts = torch.as_tensor(np.asarray(item_popularity), dtype=torch.float32).clamp(min=1)
            self.log_q = torch.log(counts / counts.sum())

    def __call__(self, users: Tensor, targets: Tensor, batch: Batch, vectors: ScoreVectors) -> Tensor:
        candidates = batch.candidates
        if self.sampling.shares_candidates and distributed.current().active:
            candidate_vectors = _gathered_vectors(candidates, targets, vectors)
        else:
            candidate_vectors = vectors(candidates)
        logits = users @ candidate_vectors.T
        if self.log_q is not None:
            logits = logits - self.log_q.to(logits.device)[candidates]
        logits = logits.masked_fill(batch.candidate_mask, float("-inf"))
        labels = torch.searchsorted(candidates, targets)
        return self.reduce(F.cross_entropy(logits.float(), labels, reduction="none"), batch)


def _gathered_vectors(candidates: Tensor, targets: Tensor, vectors: ScoreVectors) -> Tensor:
    """Vectors of the global batch's candidates: each rank encodes its own distinct targets, all
    are gathered (gradients flow back to the rank that encoded them) and each candidate takes its
    first copy. Every candidate is some rank's target, so each is found."""
    own = torch.unique(targets)
    every_id = distributed.gather_rows(own)
    every_vector = distributed.gather_rows_with_grad(vectors(own))
    order = torch.argsort(every_id, stable=True)
    first = order[torch.searchsorted(every_id[order], candidates)]
    return every_vector[first]


@LOSSES.register("full-softmax")
class FullSoftmaxLoss(Loss):
    sampling = SamplingSpec(full_catalogue=True)

    def __init__(self, n_items: int, reduction: Reduction = "targets") -> None:
        super().__init__(reduction)
        self.n_items = n_items

    def __call__(self, users: Tensor, targets: Tensor, batch: Batch, vectors: ScoreVectors) -> Tensor:
        catalogue = vectors(torch.arange(1, self.n_items + 1, device=users.device))
        return self.reduce(F.cross_entropy((users @ catalogue.T).float(), targets - 1, reduction="none"), batch)
