"""SR-GNN (Wu et al., 2019): a gated graph network over the session graph of the context's items."""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from pixelrec.data.batch import Batch
from pixelrec.items.base import ItemEncoder, ItemLookup
from pixelrec.models.base import BACKBONES, Backbone
from pixelrec.schema import PositiveInt


class SessionGraph(NamedTuple):
    """Session graphs of a batch, with nodes indexed by the position of an item's first occurrence.

    node:     [B, L] node of each position (L for padding: no node)
    is_node:  [B, L] the position is the first occurrence of a real item
    incoming: [B, L, L] row v: edges u -> v, each 1 / in-degree(v)
    outgoing: [B, L, L] row u: edges u -> v, each 1 / out-degree(u)
    """

    node: Tensor
    is_node: Tensor
    incoming: Tensor
    outgoing: Tensor


def session_graph(context: Tensor) -> SessionGraph:
    """Build every row's graph at once: distinct items from an equality matrix, an edge for each
    transition between consecutive real items, rows normalised by degree. An edge seen twice counts
    once, as in SR-GNN's own code (and RecBole's, PixelRec's); the paper's text weights by count."""
    length = context.shape[1]
    real = context > 0
    positions = torch.arange(length, device=context.device)
    same = (context.unsqueeze(2) == context.unsqueeze(1)) & real.unsqueeze(2)
    node = torch.where(same, positions, length).amin(2)  # first position holding the same item
    one_hot = (node.unsqueeze(2) == positions).float()  # [B, L, L]; padding rows are all zero
    step = (real[:, :-1] & real[:, 1:]).unsqueeze(2).float()
    counts = torch.bmm((one_hot[:, :-1] * step).transpose(1, 2), one_hot[:, 1:])  # [u, v]: edges u -> v
    edges = (counts > 0).float()
    outgoing = edges / edges.sum(2, keepdim=True).clamp(min=1)
    incoming = edges.transpose(1, 2) / edges.sum(1).unsqueeze(2).clamp(min=1)
    return SessionGraph(node, node == positions, incoming, outgoing)


class GatedGraphStep(nn.Module):
    """One propagation step: messages along incoming and outgoing edges, then a GRU-style update."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.edges = nn.Linear(dim, 2 * dim)  # incoming and outgoing edge transforms side by side
        self.bias_in = nn.Parameter(torch.zeros(dim))
        self.bias_out = nn.Parameter(torch.zeros(dim))
        self.update = nn.GRUCell(2 * dim, dim)

    def forward(self, h: Tensor, graph: SessionGraph) -> Tensor:
        along_in, along_out = self.edges(h).chunk(2, -1)
        message_in = torch.bmm(graph.incoming.to(h.dtype), along_in) + self.bias_in
        message_out = torch.bmm(graph.outgoing.to(h.dtype), along_out) + self.bias_out
        messages = torch.cat([message_in, message_out], -1)
        b, length, dim = h.shape
        return self.update(messages.reshape(b * length, -1), h.reshape(b * length, dim)).view(b, length, dim)


@BACKBONES.register("srgnn")
class SRGNN(Backbone):
    """Item vectors are refined by `step` gated-graph steps on the session graph; the session vector
    is a soft-attention sum over the positions (queried by the last item) joined with the last
    item's vector, then linearly transformed back to d.

    init: `default` Xavier-uniform weights and zero biases; `uniform` every parameter drawn from
    U(+-1/sqrt(d)), and so the ID table or the image projection (the PixelRec code's IDNet/srgnn.py and
    PixelNet/mosrgnn.py)."""

    view = "prefixes"
    label = "SRGNN"
    family = "sequential"
    table_order = 2

    def __init__(self, embedding_size: PositiveInt = 64, step: PositiveInt = 1,
                 init: Literal["default", "uniform"] = "default") -> None:
        super().__init__()
        self.init = init
        self.steps = nn.ModuleList(GatedGraphStep(embedding_size) for _ in range(step))
        self.query_last = nn.Linear(embedding_size, embedding_size)
        self.query_item = nn.Linear(embedding_size, embedding_size)
        self.score = nn.Linear(embedding_size, 1, bias=False)
        self.transform = nn.Linear(2 * embedding_size, embedding_size)
        # The original draws every parameter from U(+-1/sqrt(d)). With small item vectors (ID init std
        # 0.02) its random biases swamp the session signal and training sits on a plateau at first;
        # Xavier weights and zero biases leave it within a few dozen steps.
        for weight in self.parameters():
            if init == "uniform":
                nn.init.uniform_(weight, -self.bound, self.bound)
            elif weight.dim() > 1:
                nn.init.xavier_uniform_(weight)
            else:
                nn.init.zeros_(weight)

    @property
    def bound(self) -> float:
        """The original's uniform bound 1/sqrt(d)."""
        return 1.0 / math.sqrt(self.transform.out_features)

    def initialise_items(self, encoder: ItemEncoder) -> None:
        """Called once the recommender is composed: with init=uniform the encoder re-draws what the rule
        covers for it from U(+-1/sqrt(d)): an ID table (IDNet/srgnn.py), an image projection's weights
        and biases (PixelNet/mosrgnn.py). The PixelNet code redraws only the weights of its own linear
        layers, so there the output transform's bias keeps PyTorch's default U(+-1/sqrt(2d))."""
        if self.init != "uniform":
            return
        if encoder.reset_parameters("uniform", self.bound) and encoder.family == "pixelnet":
            edge = 1.0 / math.sqrt(self.transform.in_features)
            nn.init.uniform_(self.transform.bias, -edge, edge)

    def forward(self, batch: Batch, items: ItemLookup) -> Tensor:
        context = batch.context
        graph = session_graph(context)
        x = items(context)
        h = x * graph.is_node.unsqueeze(-1).to(x.dtype)
        for step in self.steps:
            h = step(h, graph)
        real = (context > 0).unsqueeze(-1)
        length = context.shape[1]
        index = graph.node.clamp(max=length - 1).unsqueeze(-1).expand_as(h)
        sequence = h.gather(1, index) * real.to(h.dtype)  # node state at each position
        last = sequence[:, -1]  # left-padded: the most recent item
        alpha = self.score(torch.sigmoid(self.query_last(last).unsqueeze(1) + self.query_item(sequence)))
        session = (alpha * sequence).sum(1)
        return self.transform(torch.cat([session, last], -1))
