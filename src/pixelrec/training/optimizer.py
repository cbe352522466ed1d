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

from typing import Any, Iterable

import torch
from torch import Tensor, nn


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
        grad = p.grad.coalesce() if p.grad.is_sparse else p.grad.to_sparse()
        lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if state["step"].device.type != "cpu":  # loaded from a fused checkpoint: counted on the host
            state["step"] = state["step"].cpu()
        state["step"] += 1
        step = float(state["step"])
        rows, g = grad.indices()[0], grad.values()
        weights = p.index_select(0, rows)
        m = state["exp_avg"].index_select(0, rows)
        v = state["exp_avg_sq"].index_select(0, rows)
        weights.mul_(1 - lr * decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v.sqrt() / (1 - beta2 ** step) ** 0.5).add_(eps)
        weights.addcdiv_(m, denom, value=-lr / (1 - beta1 ** step))
        p.index_copy_(0, rows, weights)
        state["exp_avg"].index_copy_(0, rows, m)
        state["exp_avg_sq"].index_copy_(0, rows, v)
