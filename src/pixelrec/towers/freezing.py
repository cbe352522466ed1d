"""Which layers of a pretrained tower stay frozen, and how they are kept in eval mode."""

from __future__ import annotations

from torch import nn


def frozen_modules(tower: nn.Module) -> list[nn.Module]:
    """The largest submodules whose parameters (counted through their children) are all frozen: kept in
    eval mode (BatchNorm statistics fixed, no dropout or drop-path), while trainable blocks follow train()."""
    out: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(module)
            return
        for child in module.children():
            visit(child)

    visit(tower)
    return out
