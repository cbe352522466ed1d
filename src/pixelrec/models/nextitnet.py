"""NextItNet (Yuan et al., 2019): stacked residual blocks of dilated causal 1-D convolutions."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from pixelrec.data.batch import Batch
from pixelrec.items.base import ItemLookup
from pixelrec.models.base import BACKBONES, Backbone
from pixelrec.schema import PositiveInt, SequenceLength


class CausalConv(nn.Module):
    """A dilated 1-D convolution over [B, L, d] that sees only the current and earlier positions."""

    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.left = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x.transpose(1, 2), (self.left, 0))).transpose(1, 2)


class ResidualBlock(nn.Module):
    """The paper's residual block (b): conv(dilation r) -> LN -> ReLU -> conv(2r) -> LN -> ReLU, + input.

    Activations at padding slots are zeroed after each layer, so padding acts exactly like the
    causal zero padding and an item's output does not depend on how much padding precedes it.
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = CausalConv(channels, kernel_size, dilation)
        self.norm1 = nn.LayerNorm(channels, eps=1e-8)
        self.conv2 = CausalConv(channels, kernel_size, 2 * dilation)
        self.norm2 = nn.LayerNorm(channels, eps=1e-8)

    def forward(self, x: Tensor, real: Tensor) -> Tensor:
        h = F.relu(self.norm1(self.conv1(x))) * real
        h = F.relu(self.norm2(self.conv2(h))) * real
        return x + h


@BACKBONES.register("nextitnet")
class NextItNet(Backbone):
    """A convolutional generative next-item model: the output at position t predicts item t + 1.

    `block_num` repetitions of the `dilations` pattern (e.g. [1, 4] -> 1, 4, 1, 4, ...), each block
    holding two convolutions (dilation r and 2r), so the receptive field grows exponentially.
    """

    view = "sequence"

    def __init__(
        self,
        embedding_size: PositiveInt = 64,
        kernel_size: PositiveInt = 3,
        block_num: PositiveInt = 2,
        dilations: list[SequenceLength] | None = None,
    ) -> None:
        super().__init__()
        pattern = list(dilations) if dilations is not None else [1, 4]
        if not pattern:
            raise ValueError("model.dilations: give at least one dilation")
        self.blocks = nn.ModuleList(
            ResidualBlock(embedding_size, kernel_size, r) for r in pattern * block_num
        )

    def forward(self, batch: Batch, items: ItemLookup) -> Tensor:
        x = items(batch.context)
        real = (batch.context > 0).unsqueeze(-1).to(x.dtype)
        for block in self.blocks:
            x = block(x, real)
        return x
