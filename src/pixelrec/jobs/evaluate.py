"""Re-evaluate a saved run's checkpoint with full ranking (`pixelrec evaluate`, `pixelrec.evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pixelrec import distributed
from pixelrec.evaluation.evaluator import evaluate
from pixelrec.runs.loading import open_run


def evaluate_run(run: Path, splits: list[str], checkpoint: str = "best",
                 data_path: str | None = None) -> dict[str, Any]:
    """Metrics of each split, and `checkpoint`: the weights evaluated (file, epoch, whether the run finished)."""
    loaded = open_run(run, checkpoint, data_path, shared=True)
    config, data, model = loaded.config, loaded.data, loaded.model
    out: dict[str, Any] = {}
    for split in splits:
        out |= evaluate(model, data, split, config.data.max_len, config.eval.ks, config.eval.batch_size,
                        config.eval.score_budget_mb, workers=config.train.num_workers, job=distributed.current(),
                        mask_target=config.eval.mask_target, ties=config.eval.ties)
    return {**out, "checkpoint": loaded.describe()}


