"""Lazy row updates of catalogue-sized tables (train.table_optimizer): the rule by hand, AdamW when
every row is touched, untouched rows bit-identical, gradient clipping, the trainer's choice per profile."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from helpers import tiny_config
from pixelrec.config import resolve
from pixelrec.training.optimizer import RowAdamW, row_tables
from pixelrec.training.trainer import Trainer

LR, DECAY, BETAS, EPS = 0.1, 0.5, (0.9, 0.999), 1e-8


def lazy_by_hand(w: float, touches: list[float | None]) -> float:
    """One weight under the documented rule: `touches[t]` its gradient at step t + 1, None untouched."""
    m = v = 0.0
    for t, g in enumerate(touches, start=1):
        if g is None:
            continue
        w *= 1 - LR * DECAY
        m = BETAS[0] * m + (1 - BETAS[0]) * g
        v = BETAS[1] * v + (1 - BETAS[1]) * g * g
        w -= LR * (m / (1 - BETAS[0] ** t)) / (math.sqrt(v / (1 - BETAS[1] ** t)) + EPS)
    return w


def step_with(optimizer: RowAdamW, table: nn.Embedding, lookups: list[list[int]], scale: torch.Tensor) -> None:
    """loss = sum over lookups of (scale * rows).sum(): a row looked up twice gets twice the gradient."""
    optimizer.zero_grad(set_to_none=True)
    sum((table(torch.tensor(ids)) * scale).sum() for ids in lookups).backward()
    optimizer.step()


def test_touched_rows_follow_the_lazy_rule_and_untouched_rows_stay_bit_identical():
    torch.manual_seed(0)
    table = nn.Embedding(5, 2)
    start = table.weight.detach().clone()
    optimizer = RowAdamW([{"params": [table.weight], "weight_decay": DECAY}], [table], lr=LR, betas=BETAS, eps=EPS)
    assert table.sparse
    scale = torch.tensor([1.0, -3.0])
    plan = [[[1, 2]], [[2]], [[1, 2], [2]]]  # step 3: row 2 twice (gradient 2 x scale), row 1 once
    for lookups in plan:
        step_with(optimizer, table, lookups, scale)
    gradients = {1: [1, None, 1], 2: [1, 1, 2]}  # multiples of `scale` per step
    for row, multiples in gradients.items():
        for col in range(2):
            touches = [None if k is None else k * float(scale[col]) for k in multiples]
            assert table.weight[row, col].item() == pytest.approx(lazy_by_hand(float(start[row, col]), touches),
                                                                  rel=1e-6, abs=1e-7)
    for row in (0, 3, 4):  # never touched: weights and moments exactly as they were
        assert torch.equal(table.weight[row], start[row])
        assert not optimizer.state[table.weight]["exp_avg"][row].any()
    assert float(optimizer.state[table.weight]["step"]) == 3


def test_every_row_touched_each_step_is_adamw():
    torch.manual_seed(0)
    lazy_table, dense_table = nn.Embedding(6, 3), nn.Embedding(6, 3)
    dense_table.load_state_dict(lazy_table.state_dict())
    lazy = RowAdamW([{"params": [lazy_table.weight], "weight_decay": DECAY}], [lazy_table], lr=LR)
    dense = torch.optim.AdamW([{"params": [dense_table.weight], "weight_decay": DECAY}], lr=LR, foreach=False)
    for step in range(4):
        scale = torch.randn(6, 3, generator=torch.Generator().manual_seed(step))
        for table, optimizer in ((lazy_table, lazy), (dense_table, dense)):
            optimizer.zero_grad(set_to_none=True)
            (table(torch.arange(6)) * scale).sum().backward()
            optimizer.step()
    torch.testing.assert_close(lazy_table.weight, dense_table.weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(lazy.state[lazy_table.weight]["exp_avg_sq"],
                               dense.state[dense_table.weight]["exp_avg_sq"], rtol=1e-6, atol=1e-9)


def test_a_clipped_first_step_without_decay_is_the_same_lazy_or_dense(tiny_data, tmp_path):
    """Step 1 without decay moves no untouched row under AdamW either (its moments are zero), so the two
    agree exactly if the clipped norm reads the sparse gradients as the dense ones."""
    tables = []
    for mode in ("lazy", "dense"):
        config = tiny_config(tiny_data, "sasrec", train={"table_optimizer": mode, "clip_grad": 0.01, "max_steps": 1})
        trainer = Trainer(config, tmp_path / mode)
        trainer.train_epoch(0)
        tables.append(trainer.model.item_encoder.embedding.weight.detach())
        trainer.close()
    torch.testing.assert_close(tables[0], tables[1], rtol=0, atol=1e-7)


def test_the_trainer_updates_only_the_touched_item_rows(tiny_data, tmp_path):
    """lazy: after one step the rows of items outside the batch are as initialised; dense: every
    row has decayed. The paper profile keeps the dense AdamW of the original."""
    moved = {}
    for mode in ("lazy", "dense"):
        config = tiny_config(tiny_data, "sasrec", train={"table_optimizer": mode, "weight_decay": 0.1})
        trainer = Trainer(config, tmp_path / mode)
        table = trainer.model.item_encoder.embedding.weight
        before = table.detach().clone()
        batch = next(iter(trainer.batches(0)))
        trainer.net(batch)["loss"].backward()
        trainer.optimizer.step()
        touched = torch.zeros(len(table), dtype=torch.bool)
        touched[batch.distinct_items()] = True
        moved[mode] = (table.detach() != before).any(dim=1)
        assert moved[mode][touched].all()
        trainer.close()
    assert not moved["lazy"][~touched].any() and moved["dense"][~touched].all()
    paper = resolve(model="sasrec", files=["paper"], flags={"data": {"path": str(tiny_data)}})
    assert paper.train.table_optimizer == "dense"


def test_declared_tables_are_the_catalogue_sized_ones(tiny_data, tmp_path):
    mf = Trainer(tiny_config(tiny_data, "mf"), tmp_path / "mf")
    assert row_tables(mf.model) == [mf.model.item_encoder.embedding, mf.model.backbone.user_embedding]
    assert {id(t.weight) for t in row_tables(mf.model)} == mf.optimizer.rows
    mf.close()
    full = Trainer(tiny_config(tiny_data, "sasrec", loss="full-softmax"), tmp_path / "full")
    assert full.optimizer.rows == set()  # every step encodes the whole catalogue: the table stays dense
    full.close()


def test_a_dense_state_loads_into_lazy_rows_and_goes_on_from_its_moments():
    """The state is AdamW's in both modes: a dense checkpoint continues with lazy rows from its moments."""
    torch.manual_seed(0)
    dense_table, lazy_table = nn.Embedding(4, 2), nn.Embedding(4, 2)
    dense = RowAdamW([{"params": [dense_table.weight], "weight_decay": DECAY}], lr=LR)
    step_with(dense, dense_table, [[0, 1, 2, 3]], torch.tensor([1.0, 2.0]))
    lazy_table.load_state_dict(dense_table.state_dict())
    lazy = RowAdamW([{"params": [lazy_table.weight], "weight_decay": DECAY}], [lazy_table], lr=LR)
    lazy.load_state_dict(copy.deepcopy(dense.state_dict()))  # as read back from last.pt: no shared tensors
    for optimizer, table in ((dense, dense_table), (lazy, lazy_table)):
        step_with(optimizer, table, [[0, 1, 2, 3]], torch.tensor([-1.0, 0.5]))  # every row: the same rule
    torch.testing.assert_close(lazy_table.weight, dense_table.weight, rtol=1e-6, atol=1e-7)
    assert float(lazy.state[lazy_table.weight]["step"]) == 2


def test_a_run_saved_before_lazy_tables_resumes_with_dense_updates():
    """Its config.yaml has no train.table_optimizer; it was trained densely, so it goes on densely."""
    from pixelrec.config import upgrade

    assert upgrade({"train": {"epochs": 3}})["train"]["table_optimizer"] == "dense"
    assert upgrade({"train": {"epochs": 3, "table_optimizer": "lazy"}})["train"]["table_optimizer"] == "lazy"
    assert "train" not in upgrade({"model": {"name": "sasrec"}})
