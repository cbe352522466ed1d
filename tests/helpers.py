"""Small helpers for tests that train models: a tiny configuration and a short training run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pixelrec.config import Config, build_config
from pixelrec.losses import LOSSES
from pixelrec.models import BACKBONES


def tiny_config(data: Path, model: str, loss: str = "bpr", **sections: dict[str, Any]) -> Config:
    """The backbone's own (small) constructor defaults with embedding size 32, a few quick epochs."""
    raw: dict[str, Any] = {
        "model": {"name": model, "embedding_size": 32},
        "data": {"path": str(data)},
        "items": {"kind": "id"},
        "loss": {"name": loss},
        "train": {"epochs": 3, "lr": 3e-3, "batch_size": 32, "progress": False, "seed": 0},
        "eval": {"batch_size": 256},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return build_config(raw, source="test")


def _params(model: str) -> set[str]:
    from pixelrec.registry import constructor_parameters

    return set(constructor_parameters(BACKBONES.get(model)))


def trainable_backbones() -> list[str]:
    return [n for n in BACKBONES.names() if BACKBONES.get(n).trainable]


def applicable_losses(model: str, items: str = "id") -> list[str]:
    return list(LOSSES.names())


def losses_over_steps(config: Config, steps: int, tmp: Path) -> list[float]:
    """Train `steps` optimiser steps (cycling epochs) and return each step's loss."""
    from pixelrec.training.trainer import Trainer

    trainer = Trainer(config, tmp, resume=False)
    trainer.model.train()
    seen: list[float] = []
    epoch = 0
    while len(seen) < steps:
        for batch in trainer.batches(epoch):
            out = trainer.model(batch)
            trainer.optimizer.zero_grad()
            out["loss"].backward()
            trainer.optimizer.step()
            seen.append(float(out["loss"].detach()))
            if len(seen) == steps:
                break
        epoch += 1
    return seen


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def no_dropout(config: Config) -> Config:
    if "dropout" in config.model or "dropout" in _params(config.model_name):
        config.model["dropout"] = 0.0
    torch.manual_seed(0)
    return config


def pixel_encoder(**kwargs: Any) -> Any:
    """A PixelEncoder from flat keyword arguments: its constructor's own, the rest its items.image settings."""
    from pixelrec.items.pixels import ImageSettings, PixelEncoder
    from pixelrec.registry import constructor_parameters

    own = {k: kwargs.pop(k) for k in list(kwargs) if k in constructor_parameters(PixelEncoder)}
    return PixelEncoder(**own, image=ImageSettings(**kwargs))
