"""Re-evaluate a saved run: rebuild the model from its config, load a checkpoint, rank."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pixelrec.data.prepared import PreparedData
from pixelrec.errors import UserError
from pixelrec.evaluate.evaluator import evaluate
from pixelrec.train import rundir


def evaluate_run(run: Path, splits: list[str], checkpoint: str = "best", data_path: str | None = None) -> dict[str, Any]:
    from pixelrec.train.trainer import build_model, config_of_run, resolve_device

    if not (run / "config.yaml").is_file():
        raise UserError(f"{run}: not a run directory (no config.yaml)")
    config = config_of_run(run)
    data = PreparedData(data_path or config.data.path)
    device = resolve_device(config.train.device)
    model = build_model(config, data).to(device)
    path = run / f"{checkpoint}.pt"
    if not path.exists() and checkpoint == "best":
        path = run / "last.pt"
    model.load_state_dict(rundir.load_checkpoint(path, device)["model"])
    out: dict[str, Any] = {}
    for split in splits:
        out |= evaluate(model, data, split, config.data.max_len, config.eval.ks, config.eval.batch_size,
                        config.eval.score_budget_mb)
    return out
