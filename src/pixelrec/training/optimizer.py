"""AdamW whose catalogue-sized tables (item IDs, users) are updated only in the rows a step touched.

A step of ID SASRec touches about a thousand of Pixel200K's 96K item rows; dense AdamW still rewrites
every row and both its moments, so the step's cost grows with the catalogue. With lazy rows
(`train.table_optimizer=lazy`) the declared tables (`row_tables` on item encoders and backbones) get
sparse gradients and this rule, per touched row r at the table's step t (counted over every step):

    w_r <- w_r * (1 - lr * wd)
    m_r <- b1 m_r + (1 - b1) g_r           v_r <- b2 v_r + (1 - b2) g_r^2
    w_r <- w_r - lr * (m_r / (1 - b1^t)) / (sqrt(v_r / (1 - b2^t)) + eps)

A row no step touches keeps its weights and moments bit for bit: its decay and the drift of its
moments wait until it is touched again (the "lazy Adam" rule). When every row is touched each step
this is AdamW exactly. Everything else takes torch's fused AdamW step.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import Tensor, nn
from torch.optim.adamw import adamw


def row_tables(model: nn.Module, item_tables: bool = True) -> list[nn.Embedding]:
    """The embeddings that the model's modules declare catalogue-sized (`row_tables`), in module
    order; `item_tables` False leaves out the item encoder's (a step that encodes the whole
    catalogue touches every row of them)."""
    skip = set() if item_tables else {id(m) for m in getattr(model, "item_encoder", nn.Module()).modules()}
    tables: list[nn.Embedding] = []
    for module in model.modules():
        if id(module) in skip:
            continue
        for name in getattr(module, "row_tables", ()):
            table = getattr(module, name, None)
            if isinstance(table, nn.Embedding) and table.weight.requires_grad:
                tables.append(table)
    return tables


class RowAdamW(torch.optim.AdamW):
    """torch's AdamW over `groups`, except the weights of `tables`: these are switched to sparse
    gradients and updated by the lazy row rule above, before the fused step of the rest. The state
    (step, exp_avg, exp_avg_sq per tensor) and the groups are AdamW's, so a checkpoint of either
    kind loads into the other."""

    def __init__(self, groups: list[dict[str, Any]], tables: Iterable[nn.Embedding] = (), **kwargs: Any) -> None:
        super().__init__(groups, **kwargs)
        self.rows: set[int] = set()
        for table in tables:
            table.sparse = True  # before any DDP wrapper is built: it reads this to expect sparse gradients
            self.rows.add(id(table.weight))
        # a pre-hook rather than an overridden step: AdamW.step carries the optimizer's step hooks, and
        # an override calling it would run them twice
        self.register_step_pre_hook(lambda optimizer, args, kwargs: self._row_step())

    @torch.no_grad()
    def _row_step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if id(p) in self.rows and p.grad is not None:
                    self._update_rows(p, group)
                    p.grad = None  # consumed: the fused step skips tensors without a gradient

    def _update_rows(self, p: Tensor, group: dict[str, Any]) -> None:
        """AdamW's own kernel (fused, as the rest of the step) over the touched rows, gathered and put back."""
        grad = p.grad.coalesce() if p.grad.is_sparse else p.grad.to_sparse()
        state = self.state[p]
        if not state:  # as AdamW lays its state out, so that either loads the other's checkpoint
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        rows = grad.indices()[0]
        weights, m, v = (t.index_select(0, rows) for t in (p, state["exp_avg"], state["exp_avg_sq"]))
        beta1, beta2 = group["betas"]
        adamw([weights], [grad.values()], [m], [v], [], [state["step"]], foreach=group["foreach"],
              fused=group["fused"], amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
              weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)
        for table, new in ((p, weights), (state["exp_avg"], m), (state["exp_avg_sq"], v)):
            table.index_copy_(0, rows, new)


def lr_factor(step: int, planned: int, schedule: str, warmup: int = 0) -> float:
    """The multiple of each group's base learning rate at optimiser step `step` (0-based) of a run
    planned for `planned` steps: a linear warm-up over the first `warmup` steps, times 1 (constant) or
    a cosine that falls from 1 at the end of the warm-up to 0 at step `planned` (cosine)."""
    factor = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if schedule == "cosine":
        progress = min(max(step - warmup, 0) / max(planned - warmup, 1), 1.0)
        factor *= 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor
