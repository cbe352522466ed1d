"""Training losses over user vectors and item vectors; each declares what the batches must carry.

bpr           one sampled negative per target (never one of the user's own items): the paper's setting
softmax       cross-entropy against the distinct target items of the batch, the user's other
              positives masked, with optional log-popularity (logQ) correction
full-softmax  cross-entropy over the whole catalogue (item encoders cheap enough to embed it all)
"""

from __future__ import annotations

from typing import Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pixelrec.data.batch import Batch
from pixelrec.registry import Registry

LOSSES: Registry = Registry("loss")

ScoreVectors = Callable[[Tensor], Tensor]


class Loss:
    negatives: ClassVar[int] = 0  # sampled negatives per target the batches must carry
    in_batch: ClassVar[bool] = False  # batches carry distinct candidates and own-positive masks
    full_catalogue: ClassVar[bool] = False  # every item's vector is needed at each step

    def __call__(self, users: Tensor, targets: Tensor, batch: Batch, vectors: ScoreVectors) -> Tensor:
        """users [N, d] aligned with targets [N]; `vectors(idx)` gives the scoring vectors of items."""
        raise NotImplementedError


@LOSSES.register("bpr")
class BPRLoss(Loss):
    negatives = 1

    def __call__(self, users: Tensor, targets: Tensor, batch: Batch, vectors: ScoreVectors) -> Tensor:
        negatives = batch.negatives[batch.targets > 0]
        positive = (users * vectors(targets)).sum(-1)
        negative = (users * vectors(negatives)).sum(-1)
        return -F.logsigmoid(positive - negative).mean()


@LOSSES.register("softmax")
class InBatchSoftmaxLoss(Loss):
    in_batch = True

    def __init__(self, item_popularity: np.ndarray | None = None, logq: bool = False) -> None:
        self.log_q = None
        if logq:
            counts = torch.as_tensor(np.asarray(item_popularity), dtype=torch.float32).clamp(min=1)
            self.log_q = torch.log(counts / counts.sum())

    def __call__(self, users: Tensor, targets: Tensor, batch: Batch, vectors: ScoreVectors) -> Tensor:
        candidates = batch.candidates
        logits = users @ vectors(candidates).T
        if self.log_q is not None:
            logits = logits - self.log_q.to(logits.device)[candidates]
        logits = logits.masked_fill(batch.candidate_mask, float("-inf"))
        labels = torch.searchsorted(candidates, targets)
        return F.cross_entropy(logits.float(), labels)


@LOSSES.register("full-softmax")
class FullSoftmaxLoss(Loss):
    full_catalogue = True

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items

    def __call__(self, users: Tensor, targets: Tensor, batch: Batch, vectors: ScoreVectors) -> Tensor:
        catalogue = vectors(torch.arange(1, self.n_items + 1, device=users.device))
        return F.cross_entropy((users @ catalogue.T).float(), targets - 1)
