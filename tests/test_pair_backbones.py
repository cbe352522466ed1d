"""Behaviour of the pair-view backbones (MF, FM, DSSM, LightGCN) that the registry-generated tests
cannot see: padding, empty histories, the FM identity, LightGCN's graph, cache and exact scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import write_prepared
from pixelrec.config import resolve
from pixelrec.data.batch import Batch
from pixelrec.data.prepared import PreparedData
from pixelrec.data.views import evaluation_batch
from pixelrec.evaluation.evaluator import rank_targets
from pixelrec.factory import DatasetFacts, build_recommender
from pixelrec.items.base import ItemLookup
from pixelrec.models import BACKBONES
from pixelrec.models.lightgcn import normalized_adjacency

D = 6


def catalogue(n_items: int, padding_value: float = 0.0, seed: int = 0) -> ItemLookup:
    """A catalogue lookup of random item vectors; a non-zero padding row exposes unmasked padding."""
    table = torch.randn(n_items + 1, D, generator=torch.Generator().manual_seed(seed))
    table[0] = padding_value
    return ItemLookup.catalogue(table)


def batch(context: list[list[int]], users: list[int] | None = None) -> Batch:
    context_t = torch.tensor(context)
    users_t = torch.tensor(users if users is not None else [1] * len(context))
    return Batch(users=users_t, context=context_t, targets=torch.ones(len(context), dtype=torch.long))


def test_mf_user_vector_depends_only_on_the_user():
    mf = BACKBONES.create("mf", n_users=3, embedding_size=D)
    items = catalogue(9)
    out = mf(batch([[0, 1, 2], [4, 5, 6], [7, 8, 9]], users=[2, 2, 3]), items)
    assert torch.equal(out[0], out[1])
    assert not torch.equal(out[0], out[2])
    assert torch.equal(out[0], mf.user_embedding.weight[2])


@pytest.mark.parametrize("name,args", [("fm", {}), ("fm", {"linear": False}), ("dssm", {}),
                                       ("dssm", {"similarity": "dot", "n_layers": 2})])
def test_padding_never_changes_the_user_vector(name, args):
    model = BACKBONES.create(name, embedding_size=D, **args).eval()
    items = catalogue(9, padding_value=3.0)  # padding must be masked, not trusted to be zeros
    short = model(batch([[4, 7]]), items)
    padded = model(batch([[0, 0, 0, 4, 7]]), items)
    torch.testing.assert_close(short, padded)


def test_fm_score_differences_equal_the_full_fm_model():
    """The terms the FM user vector drops (w_0, history first-order, history pairs) cancel between
    two candidates of one user; the target's first-order term is <w, t>."""
    fm = BACKBONES.create("fm", embedding_size=D)
    with torch.no_grad():
        fm.linear.normal_()
    items = catalogue(9)
    history = [2, 5, 5, 8]  # a repeated item is two fields, as in the sum

    def full_fm(target: int) -> torch.Tensor:
        v = items(torch.tensor(history + [target]))
        pairs = 0.5 * (v.sum(0).pow(2).sum() - v.pow(2).sum())
        w_history = (items(torch.tensor(history)) @ fm.linear).sum()
        return 0.7 + w_history + fm.linear @ v[-1] + pairs  # 0.7: an arbitrary global bias

    user = fm(batch([[0] + history]), items)[0]
    for a, b in [(1, 3), (3, 9), (9, 5)]:
        expected = full_fm(a) - full_fm(b)
        got = user @ (fm.score_vectors(items, torch.tensor(a)) - fm.score_vectors(items, torch.tensor(b)))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["fm", "dssm"])
def test_empty_history_gives_finite_vectors_and_gradients(name):
    model = BACKBONES.create(name, embedding_size=D)
    table = torch.randn(10, D).index_fill(0, torch.tensor([0]), 0.0).requires_grad_()
    items = ItemLookup.catalogue(table)
    users = model(batch([[0, 0, 0], [0, 3, 4]]), items)
    scores = users @ model.score_vectors(items, torch.arange(10)).T
    scores.sum().backward()
    assert torch.isfinite(users).all() and torch.isfinite(table.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_dssm_cosine_scores_are_bounded_by_the_temperature():
    dssm = BACKBONES.create("dssm", embedding_size=D, temperature=0.25)
    items = catalogue(9)
    users = dssm(batch([[1, 2, 3], [0, 0, 9]]), items)
    vectors = dssm.score_vectors(items, torch.arange(10))
    torch.testing.assert_close(users.norm(dim=-1), torch.full((2,), 4.0))
    torch.testing.assert_close(vectors[1:].norm(dim=-1), torch.ones(9))
    assert torch.equal(vectors[0], torch.zeros(D))


def test_dssm_without_towers_is_pixelrecs_mean_history_dot_product():
    dssm = BACKBONES.create("dssm", embedding_size=D, n_layers=0, similarity="dot")
    items = catalogue(9)
    user = dssm(batch([[0, 2, 4, 9]]), items)[0]
    torch.testing.assert_close(user, items(torch.tensor([2, 4, 9])).mean(0))
    torch.testing.assert_close(dssm.score_vectors(items, torch.tensor([3])), items(torch.tensor([3])))


def test_lightgcn_adjacency_on_a_hand_made_graph():
    # user 1: items 1, 2; user 2: items 2, 3 (item 3 twice: still one edge)
    adjacency = normalized_adjacency(np.array([1, 1, 2, 2, 2]), np.array([1, 2, 2, 3, 3]), 2, 3).to_dense()
    r, h = 2**-0.5, 0.5  # 1/sqrt(deg_u * deg_i): degrees are users 2, 2; items 1, 2, 1
    user_item = torch.tensor([[0, 0, 0, 0], [0, r, h, 0], [0, 0, h, r]])
    expected = torch.zeros(7, 7)  # nodes: users 0..2, then items 0..3
    expected[:3, 3:] = user_item
    expected[3:, :3] = user_item.T
    torch.testing.assert_close(adjacency, expected)


SEQUENCES = [[1, 2, 3, 4, 1], [2, 3, 5, 4], [5, 1, 2, 2, 3], [4, 5, 1], [3, 3, 1, 2, 5, 4]]


@pytest.fixture
def lightgcn(tmp_path):
    data = PreparedData(write_prepared(tmp_path / "data", SEQUENCES))
    facts = DatasetFacts(data, max_len=10)
    torch.manual_seed(0)
    model = build_recommender("lightgcn", {"embedding_size": D, "n_layers": 2}, "id", {}, "bpr", {}, facts)
    return model, data, facts


def dense_propagation(model, facts: DatasetFacts) -> tuple[torch.Tensor, torch.Tensor]:
    """LightGCN's final vectors computed from the definition with a dense adjacency."""
    n_u, n_i = facts.n_users, facts.n_items
    r = torch.zeros(n_u + 1, n_i + 1)
    r[torch.from_numpy(facts.train_users), torch.from_numpy(facts.train_items)] = 1.0
    a = torch.zeros(n_u + n_i + 2, n_u + n_i + 2)
    a[: n_u + 1, n_u + 1 :], a[n_u + 1 :, : n_u + 1] = r, r.T
    degree = a.sum(1)
    scale = torch.where(degree > 0, degree.rsqrt(), torch.zeros_like(degree))
    a = scale[:, None] * a * scale[None, :]
    x = torch.cat([model.backbone.user_embedding.weight, model.catalogue_with_grad()])
    layers = [x]
    for _ in range(2):
        layers.append(a @ layers[-1])
    final = torch.stack(layers).mean(0)
    return final[: n_u + 1], final[n_u + 1 :]


def test_lightgcn_evaluation_propagates_once_and_matches_dense(lightgcn, monkeypatch):
    model, data, facts = lightgcn
    calls = []
    original = model.backbone.propagate_all
    monkeypatch.setattr(model.backbone, "propagate_all", lambda table: calls.append(1) or original(table))
    rank_targets(model, data, "test", 10, batch_size=1)  # one user per block: five user blocks
    assert len(calls) == 1
    rank_targets(model, data, "test", 10, batch_size=1)
    assert len(calls) == 2  # a new evaluation propagates again

    users = np.arange(1, data.n_users + 1)
    eval_batch, _, _ = evaluation_batch(data, "test", users, 10)
    with torch.no_grad():
        lookup, scoring = model.catalogue_vectors()
        scores = model.backbone.user_vectors(eval_batch, lookup) @ scoring.T
        dense_users, dense_items = dense_propagation(model, facts)
    torch.testing.assert_close(scores, dense_users[1:] @ dense_items.T, rtol=1e-5, atol=1e-6)


def test_lightgcn_training_gradients_match_dense_and_cache_follows_parameters(lightgcn):
    model, _, facts = lightgcn
    lookup = ItemLookup.catalogue(model.catalogue_with_grad())
    users = model.backbone(batch([[0]], users=[3]), lookup)
    scores = users @ model.backbone.score_vectors(lookup, torch.arange(facts.n_items + 1)).T
    scores.sum().backward()
    sparse_grads = [p.grad.clone() for p in (model.backbone.user_embedding.weight, model.item_encoder.embedding.weight)]
    model.zero_grad()
    dense_users, dense_items = dense_propagation(model, facts)
    (dense_users[3:4] @ dense_items.T).sum().backward()
    for sparse, p in zip(sparse_grads, (model.backbone.user_embedding.weight, model.item_encoder.embedding.weight)):
        torch.testing.assert_close(sparse, p.grad, rtol=1e-5, atol=1e-6)

    # an in-place parameter update (an optimiser step) invalidates the cached propagation of a lookup
    before = model.backbone.propagate(lookup)[0].detach().clone()
    with torch.no_grad():
        model.backbone.user_embedding.weight.add_(1.0)
    after = model.backbone.propagate(lookup)[0]
    assert not torch.allclose(before, after)


def test_lightgcn_propagates_in_float32_under_bf16_autocast(lightgcn):
    model, _, facts = lightgcn
    table = model.item_encoder.catalogue().to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        users, items = model.backbone.propagate(ItemLookup.catalogue(table))
    assert users.dtype == items.dtype == torch.float32
    assert torch.isfinite(users).all() and items.shape == (facts.n_items + 1, D)


def test_lightgcn_scores_under_inference_mode(lightgcn):
    model, data, _ = lightgcn
    with torch.no_grad():
        expected = rank_targets(model, data, "test", 10)
    with torch.inference_mode():
        assert torch.equal(rank_targets(model, data, "test", 10), expected)


@pytest.mark.parametrize("name", ["mf", "fm", "dssm", "lightgcn"])
def test_paper_settings_validate(name):
    config = resolve(model=name)
    assert config.model["embedding_size"] >= 256 and config.loss.name == "bpr"
