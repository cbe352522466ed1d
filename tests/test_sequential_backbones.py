"""Behaviour of the sequential backbones that the registry-generated tests cannot see: causality,
left padding, BERT4Rec's mask token, SR-GNN's session graphs, and no NaN on near-empty contexts."""

from __future__ import annotations

import pytest
import torch

from pixelrec.data.batch import Batch
from pixelrec.items.base import ItemLookup
from pixelrec.models import BACKBONES
from pixelrec.models.srgnn import session_graph

N_ITEMS, DIM, MAX_LEN = 30, 16, 8
SEQUENTIAL = ["gru4rec", "nextitnet", "bert4rec", "srgnn", "lightsans"]


def build(name: str, **kwargs) -> torch.nn.Module:
    """The backbone with every parameter redrawn at a large scale, so no property below holds only
    because an initialisation makes some term vanish (zero biases, near-uniform attention)."""
    torch.manual_seed(0)
    model = BACKBONES.create(name, max_len=MAX_LEN, n_items=N_ITEMS, embedding_size=DIM, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.eval()


def lookup(seed: int = 1) -> ItemLookup:
    table = torch.randn(N_ITEMS + 1, DIM, generator=torch.Generator().manual_seed(seed))
    table[0] = 0
    return ItemLookup.catalogue(table)


def batch_of(context: list[list[int]], per_position: bool) -> Batch:
    context_t = torch.tensor(context)
    targets = (context_t > 0).long() if per_position else torch.ones(len(context), dtype=torch.long)
    return Batch(users=torch.arange(len(context)), context=context_t, targets=targets)


def run(model: torch.nn.Module, context: list[list[int]]) -> torch.Tensor:
    per_position = model.view in ("sequence", "masked")
    with torch.no_grad():
        return model(batch_of(context, per_position), lookup())


@pytest.mark.parametrize("name", ["gru4rec", "nextitnet"])
def test_causal_output_ignores_later_items(name):
    model = build(name)
    a = run(model, [[3, 4, 5, 6, 7, 8, 9, 10]])
    b = run(model, [[3, 4, 5, 6, 20, 21, 22, 23]])
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_left_padding_does_not_change_the_output(name):
    model = build(name)
    session = [11, 12, 11, 13, 14]
    unpadded = run(model, [session])
    for padding in (1, 3):
        padded = run(model, [[0] * padding + session])
        torch.testing.assert_close(padded if model.view == "prefixes" else padded[:, padding:], unpadded)


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_near_empty_contexts_give_finite_vectors_and_gradients(name):
    model = build(name).train()
    context = [[0] * (MAX_LEN - 1) + [5], [0] * MAX_LEN, [1, 2, 3, 4, 5, 6, 7, 8]]
    per_position = model.view in ("sequence", "masked")
    batch = batch_of(context, per_position)
    if model.view == "masked":
        batch.mask = torch.zeros_like(batch.context, dtype=torch.bool)
        batch.mask[:, -1] = True
    table = lookup().table.clone().requires_grad_(True)
    out = model(batch, ItemLookup.catalogue(table))
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(table.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        users = model.user_vectors(batch_of(context, False), lookup())
    assert users.shape == (3, DIM) and torch.isfinite(users).all()


def test_bert4rec_reads_the_user_vector_at_an_appended_mask_token():
    model = build("bert4rec")
    context = [[0, 0, 0, 4, 5, 6, 7, 8]]
    with torch.no_grad():
        users = model.user_vectors(batch_of(context, False), lookup())
        shifted = batch_of([[0, 0, 4, 5, 6, 7, 8, 1]], True)  # the item in the last slot is hidden
        shifted.mask = torch.tensor([[False] * 7 + [True]])
        torch.testing.assert_close(users, model(shifted, lookup())[:, -1])
        model.mask_token.add_(torch.randn(DIM))  # not a constant shift: LayerNorm would remove it
        assert not torch.allclose(users, model.user_vectors(batch_of(context, False), lookup()))


def test_bert4rec_masked_positions_do_not_see_the_hidden_item():
    model = build("bert4rec")
    mask = torch.tensor([[False, False, False, True, False, False, False, False]])
    outputs = []
    for hidden in (4, 25):
        batch = batch_of([[1, 2, 3, hidden, 5, 6, 7, 8]], True)
        batch.mask = mask
        with torch.no_grad():
            outputs.append(model(batch, lookup()))
    torch.testing.assert_close(outputs[0], outputs[1])


def test_srgnn_session_graph_of_a_repeated_item():
    a, b, c = 5, 7, 9
    graph = session_graph(torch.tensor([[0, 0, a, b, a, c]]))
    assert graph.node.tolist() == [[6, 6, 2, 3, 2, 5]]
    assert graph.is_node.tolist() == [[False, False, True, True, False, True]]
    outgoing = torch.zeros(6, 6)
    outgoing[2, 3] = outgoing[2, 5] = 0.5  # a -> b and a -> c
    outgoing[3, 2] = 1.0  # b -> a
    incoming = torch.zeros(6, 6)
    incoming[2, 3] = 1.0  # a <- b
    incoming[3, 2] = 1.0  # b <- a
    incoming[5, 2] = 1.0  # c <- a
    torch.testing.assert_close(graph.outgoing[0], outgoing)
    torch.testing.assert_close(graph.incoming[0], incoming)


def test_srgnn_repeated_transitions_count_once():
    """As in the reference implementations (SR-GNN's own code, RecBole), an edge is present or not;
    a transition seen twice does not weigh more than one seen once."""
    a, b, c = 5, 7, 9
    graph = session_graph(torch.tensor([[a, b, a, b, a, c]]))  # a -> b twice, a -> c once
    assert graph.outgoing[0, 0, [1, 5]].tolist() == [0.5, 0.5]
    assert graph.incoming[0, 1, 0].item() == 1.0  # b <- a


def test_srgnn_graphs_are_built_per_row():
    rows = [[0, 0, 3, 4, 3, 4], [1, 2, 1, 1, 6, 2], [0, 0, 0, 0, 0, 8]]
    together = session_graph(torch.tensor(rows))
    for i, row in enumerate(rows):
        alone = session_graph(torch.tensor([row]))
        for field in ("node", "incoming", "outgoing"):
            torch.testing.assert_close(getattr(together, field)[i], getattr(alone, field)[0])
    # row 1 is the session 1 2 1 1 6 2: nodes 1, 2, 6 sit at positions 0, 1, 4; 1 -> 1 is a self-loop
    third = torch.tensor(1 / 3)
    assert together.outgoing[1, 0, [0, 1, 4]].tolist() == [third.item()] * 3  # 1 -> 1, 2, 6
    assert together.incoming[1, 0, [0, 1]].tolist() == [0.5, 0.5]  # 1 <- 1, 2
    assert together.incoming[1, 1, [0, 4]].tolist() == [0.5, 0.5]  # 2 <- 1, 6
    assert together.outgoing[2].sum() == 0 and together.is_node[2].tolist() == [False] * 5 + [True]
