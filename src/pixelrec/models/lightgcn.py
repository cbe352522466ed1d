"""LightGCN (He et al. 2020): user and item vectors smoothed over the user-item graph, no transforms."""

from __future__ import annotations

import warnings
import weakref
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from pixelrec.data.batch import Batch
from pixelrec.items.base import ItemLookup
from pixelrec.models.base import BACKBONES, Backbone, init_weights
from pixelrec.schema import NonNegativeInt, PositiveInt


def normalized_adjacency(train_users: np.ndarray, train_items: np.ndarray, n_users: int, n_items: int) -> Tensor:
    """D^-1/2 A D^-1/2 of the bipartite graph A = [[0, R], [R^T, 0]] as a coalesced sparse tensor.

    Nodes are users 0..n_users, then items 0..n_items (node n_users + 1 + i); index 0 of each side
    is padding and stays isolated. R is binary: an item a user consumed several times is one edge.
    """
    users = torch.as_tensor(np.asarray(train_users), dtype=torch.long)
    items = torch.as_tensor(np.asarray(train_items), dtype=torch.long)
    if users.shape != items.shape:
        raise ValueError(f"train_users {tuple(users.shape)} and train_items {tuple(items.shape)} differ in shape")
    edges = torch.unique(users * (n_items + 1) + items)
    users, items = edges // (n_items + 1), edges % (n_items + 1)
    user_degree = torch.bincount(users, minlength=n_users + 1).double()
    item_degree = torch.bincount(items, minlength=n_items + 1).double()
    weight = (user_degree[users] * item_degree[items]).rsqrt().float()  # every endpoint has degree >= 1
    item_nodes = items + n_users + 1
    index = torch.stack([torch.cat([users, item_nodes]), torch.cat([item_nodes, users])])
    size = n_users + n_items + 2
    return torch.sparse_coo_tensor(index, torch.cat([weight, weight]), (size, size), check_invariants=True).coalesce()


@contextmanager
def quiet_csr() -> Iterator[None]:
    """Silence torch's one-time 'CSR support is in beta' notice; the operations used here are stable."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        yield


class SymmetricSpMM(torch.autograd.Function):
    """A @ x for a symmetric sparse A: the gradient is A @ grad, sparing the transpose autograd makes."""

    @staticmethod
    def forward(ctx, adjacency: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(adjacency)
        return torch.sparse.mm(adjacency, x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor]:  # type: ignore[override]
        (adjacency,) = ctx.saved_tensors
        return None, torch.sparse.mm(adjacency, grad)


def version(tensor: Tensor) -> int | None:
    """The in-place modification counter (inference-mode tensors keep none)."""
    return None if tensor.is_inference() else tensor._version


@BACKBONES.register("lightgcn")
class LightGCN(Backbone):
    """K rounds of neighbour averaging over the normalised training graph, the layers' mean as the
    final vectors. Users own their embeddings; items' layer-0 vectors come from the item encoder."""

    view = "pair"
    label = "LightGCN"
    family = "non-sequential"
    table_order = 3
    needs_catalogue = True
    scores_items_alone = False  # neighbour averaging over the training graph

    def __init__(
        self,
        n_users: int,
        n_items: int,
        train_users: np.ndarray,
        train_items: np.ndarray,
        embedding_size: PositiveInt = 64,
        n_layers: NonNegativeInt = 3,
    ) -> None:
        super().__init__()
        self.n_users, self.n_items, self.n_layers = n_users, n_items, n_layers
        self.user_embedding = nn.Embedding(n_users + 1, embedding_size)
        self.apply(init_weights)
        # CSR (about twice as fast as COO on CPU) kept as its dense parts, which device moves and deepcopy
        # handle; derived from the data, so rebuilt rather than stored in checkpoints
        with quiet_csr():
            adjacency = normalized_adjacency(train_users, train_items, n_users, n_items).to_sparse_csr()
        self.register_buffer("adj_crow", adjacency.crow_indices(), persistent=False)
        self.register_buffer("adj_col", adjacency.col_indices(), persistent=False)
        self.register_buffer("adj_values", adjacency.values(), persistent=False)
        # lookup -> (state key, (users, items)); entries die with their lookup, so one training step's
        # or one evaluation's lookup never serves another's
        self._propagated: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def adjacency(self) -> Tensor:
        """The normalised adjacency as a float32 CSR matrix [n_users + n_items + 2] x [same]."""
        size = self.n_users + self.n_items + 2
        with quiet_csr():  # the parts were checked when built; no need to check them every step
            return torch.sparse_csr_tensor(
                self.adj_crow, self.adj_col, self.adj_values.float(), (size, size), check_invariants=False
            )

    def propagate_all(self, table: Tensor) -> Tensor:
        """Mean of layers 0..K of [users; items] vectors ([n_users + n_items + 2, d]), uncached."""
        # sparse products in float32, also under bf16 autocast (sparse kernels lack low precision)
        with torch.autocast(device_type=table.device.type, enabled=False):
            adjacency = self.adjacency()
            x = torch.cat([self.user_embedding.weight.float(), table.float()])
            total = x
            for _ in range(self.n_layers):
                x = SymmetricSpMM.apply(adjacency, x)
                total = total + x
        return total / (self.n_layers + 1)

    def propagate(self, items: ItemLookup) -> tuple[Tensor, Tensor]:
        """(user vectors [n_users + 1, d], item vectors [n_items + 1, d]) for this catalogue lookup,
        computed once per lookup: a training step's forward and loss, or a whole evaluation."""
        table = items.all()
        if table.shape[0] != self.n_items + 1:
            raise ValueError(f"the catalogue has {table.shape[0] - 1} items; LightGCN was built for {self.n_items}")
        # parameters change in place (optimiser steps, loading a checkpoint): their version counters
        # tell a reused lookup that the cached propagation is stale
        key = (version(self.user_embedding.weight), version(table), torch.is_grad_enabled())
        cached = self._propagated.get(items)
        if cached is not None and cached[0] == key:
            return cached[1]
        users, item_vectors = self.propagate_all(table).split([self.n_users + 1, self.n_items + 1])
        self._propagated[items] = (key, (users, item_vectors))
        return users, item_vectors

    def forward(self, batch: Batch, items: ItemLookup) -> Tensor:
        users, _ = self.propagate(items)
        return users[batch.users]

    def score_vectors(self, items: ItemLookup, idx: Tensor) -> Tensor:
        _, item_vectors = self.propagate(items)
        return item_vectors[idx]
