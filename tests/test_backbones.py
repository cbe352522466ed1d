"""Tests generated from the registries: every backbone with every applicable loss trains, its loss
falls, its evaluation is well-formed, and it beats the popularity baseline on patterned data."""

from __future__ import annotations

import pytest
import torch

from conftest import patterned_sequences, write_prepared
from helpers import applicable_losses, losses_over_steps, mean, tiny_config, trainable_backbones
from pixelrec.evaluation.evaluator import rank_targets
from pixelrec.training.trainer import Trainer, train

CASES = [(m, loss) for m in trainable_backbones() for loss in applicable_losses(m)]


@pytest.mark.parametrize("model,loss", CASES)
def test_loss_falls(model, loss, tiny_data, tmp_path):
    # dense tables: in 120 steps a lazy user row of a pair model moves only in the steps whose batch holds
    # its user, so its loss falls more slowly; lazy tables learn in test_beats_popularity below
    config = tiny_config(tiny_data, model, loss, train={"table_optimizer": "dense"})
    losses = losses_over_steps(config, 120, tmp_path / "run")  # ~3 epochs of pairs
    assert all(torch.isfinite(torch.tensor(losses)))
    assert mean(losses[-8:]) < 0.9 * mean(losses[:8]), losses


@pytest.mark.parametrize("model", trainable_backbones())
def test_evaluation_ranks_are_valid(model, tiny_data, tmp_path):
    trainer = Trainer(tiny_config(tiny_data, model), tmp_path / "run")
    ranks = rank_targets(trainer.model, trainer.data, "test", 10)
    assert ranks.shape == (trainer.data.n_users,)
    assert int(ranks.min()) >= 0 and int(ranks.max()) < trainer.data.n_items


@pytest.fixture(scope="module")
def patterned(tmp_path_factory):
    return write_prepared(tmp_path_factory.mktemp("patterned") / "data", patterned_sequences(300, 60, 14, seed=1))


@pytest.fixture(scope="module")
def pop_ndcg(patterned, tmp_path_factory):
    return train(tiny_config(patterned, "pop"), tmp_path_factory.mktemp("pop") / "run")["test"]["NDCG@10"]


@pytest.mark.parametrize("model", trainable_backbones())
def test_beats_popularity(model, patterned, pop_ndcg, tmp_path):
    config = tiny_config(patterned, model, train={"epochs": 8}, eval={"batch_size": 512})
    ndcg = train(config, tmp_path / "run")["test"]["NDCG@10"]
    assert ndcg > pop_ndcg + 0.05, (ndcg, pop_ndcg)
