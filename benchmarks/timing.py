"""Shared by the benchmark scripts: timing a window of optimiser steps, and writing the report."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class StepWindow:
    """Wall and CPU seconds per optimiser step between step `warmup` and step `warmup + steps`,
    read from a post-step hook on `optimizer` (the trainer's own loop runs unchanged)."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: int, steps: int) -> None:
        self.warmup, self.steps, self.count = warmup, steps, 0
        self.wall: dict[int, float] = {}
        self.cpu: dict[int, float] = {}  # one torch thread: CPU seconds are the step's cost on a shared machine
        optimizer.register_step_post_hook(self._tick)

    def _tick(self, *_: object) -> None:
        self.count += 1
        if self.count in (self.warmup, self.warmup + self.steps):
            self.wall[self.count] = time.perf_counter()
            self.cpu[self.count] = time.process_time()

    def seconds_per_step(self) -> float:
        return (self.wall[self.warmup + self.steps] - self.wall[self.warmup]) / self.steps

    def cpu_seconds_per_step(self) -> float:
        return (self.cpu[self.warmup + self.steps] - self.cpu[self.warmup]) / self.steps


def write_report(report: dict, out: Path | None) -> None:
    """Print the report as JSON, and write it to `out` too when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")
