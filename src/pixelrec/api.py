"""The Python API: train, evaluate and use runs with plain keyword arguments.

    import pixelrec

    run = pixelrec.train(data="data/x", model="sasrec", items="id", config=["cpu-small"],
                         set={"train.epochs": 3}, out="runs/a")
    run.test["NDCG@10"], run.model, run.config.train.lr, run.path
    pixelrec.evaluate("runs/a", split="test").test
    pixelrec.recommend(run, users=["u1"], k=10).items

Paths are `str` or `pathlib.Path`; results are small objects, metrics are fractions. The functions
build on the library (`config.resolve`, `train.trainer.train`, `evaluate.run`) as the command line
does; their errors are `pixelrec.errors.UserError` that speak of these arguments, not of flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from pixelrec.errors import UserError
from pixelrec.jobs import recommend as recommend_job
from pixelrec.jobs.evaluate import evaluate_run
from pixelrec.jobs.recommend import Recommendations
from pixelrec.jobs.train import train as train_job
from pixelrec.runs.loading import choose_checkpoint
from pixelrec.runs.loading import load_run as load
from pixelrec.runs.results import read_results

if TYPE_CHECKING:
    from pixelrec.config import Config
    from pixelrec.data.prepared import PreparedData
    from pixelrec.recommender import Recommender

PathLike = str | os.PathLike


@dataclass(frozen=True, eq=False)
class Run:
    """A trained run: its directory, resolved configuration, model (checkpoint weights, eval mode),
    dataset and `results.json` record ({} while the run is unfinished)."""

    path: Path
    config: Config
    model: Recommender
    data: PreparedData
    results: dict[str, Any] = field(default_factory=dict)
    checkpoint: str = "best"

    @property
    def valid(self) -> dict[str, float]:
        """Validation metrics of the finished run, e.g. {"Recall@10": 0.0251, ...}."""
        return dict(self.results.get("valid") or {})

    @property
    def test(self) -> dict[str, float]:
        """Test metrics of the finished run."""
        return dict(self.results.get("test") or {})

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        return {"valid": self.valid, "test": self.test}

    def __repr__(self) -> str:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in self.test.items() if k in ("Recall@10", "NDCG@10"))
        return (f"Run({str(self.path)!r}, {self.config.model_name} x {self.config.items.kind}"
                + (f", test {shown}" if shown else "") + ")")


@dataclass(frozen=True)
class Metrics:
    """What `evaluate` measured: metrics per split (fractions), cold-item metrics where the dataset
    holds cold items out, and which run and checkpoint they come from."""

    run: Path
    checkpoint: str  # as asked: "best" or "last"
    valid: dict[str, float] | None = None
    test: dict[str, float] | None = None
    cold: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> metrics of cold-target users
    used: dict[str, Any] = field(default_factory=dict)  # the weights evaluated: file, epoch, run finished

    def as_dict(self) -> dict[str, Any]:
        """{"valid": ..., "test": ..., "valid_cold": ...}, as `pixelrec evaluate` prints."""
        out: dict[str, Any] = {name: getattr(self, name) for name in ("valid", "test") if getattr(self, name)}
        out |= {f"{split}_cold": values for split, values in self.cold.items()}
        return out | ({"checkpoint": self.used} if self.used else {})


# --- the functions ----------------------------------------------------------------------------
def train(
    *,
    data: PathLike | None = None,
    model: str | None = None,
    items: str | None = None,
    encoder: str | None = None,
    loss: str | None = None,
    epochs: int | None = None,
    device: str | None = None,
    seed: int | None = None,
    init_from: PathLike | None = None,
    config: PathLike | Sequence[PathLike] = (),
    set: Mapping[str, Any] | Sequence[str] | None = None,  # noqa: A002 - the command line's --set
    out: PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> Run:
    """Train `model` over `items` on the prepared dataset `data` into run directory `out` (default
    runs/<model>-<items>-<time>), then evaluate it; returns the run with its best model. `config`
    holds YAML files or packaged names (presets, the `paper` profile), `set` any other key. With
    `resume=True`, continue the interrupted run in `out` where it stopped; with `overwrite=True`,
    replace the run files in a non-empty `out`. `init_from`: another run directory whose trained
    weights start this run (train.init_from; train.init_parts says which). `encoder` is the item
    kind's primary tower's: items.image.encoder (text items: items.text.encoder)."""
    path, _ = train_job(data=data, model=model, items=items, encoder=encoder, loss=loss, epochs=epochs,
                        device=device, seed=seed, init_from=init_from, config=config, set=set, out=out,
                        resume=resume, overwrite=overwrite)
    return load_run(path)


def load_run(run: PathLike, *, checkpoint: str = "best", data: PathLike | None = None) -> Run:
    """A run directory with its model (the `checkpoint`: "best" or "last"), configuration, dataset
    (or `data`, a moved copy of it) and results."""
    if checkpoint not in ("best", "last"):
        raise UserError(f"checkpoint={checkpoint!r}: choose 'best' or 'last'")
    path = Path(run)
    config, prepared, model = load(path, checkpoint, None if data is None else os.fspath(data))
    return Run(path=path, config=config, model=model, data=prepared, results=read_results(path, required=False) or {}, checkpoint=checkpoint)


def evaluate(run: PathLike | Run, *, split: str = "both", checkpoint: str = "best",
             data: PathLike | None = None) -> Metrics:
    """Evaluate a run's checkpoint with full ranking on `split` ("valid", "test" or "both"),
    optionally on `data`, another prepared dataset with the same items."""
    if split not in ("valid", "test", "both"):
        raise UserError(f"split={split!r}: choose 'valid', 'test' or 'both'")
    if checkpoint not in ("best", "last"):
        raise UserError(f"checkpoint={checkpoint!r}: choose 'best' or 'last'")
    path = run.path if isinstance(run, Run) else Path(run)
    if isinstance(run, Run) and data is None:
        data = run.data.root  # where the Run found its dataset (it may have been given a moved copy)
    splits = ["valid", "test"] if split == "both" else [split]
    measured = evaluate_run(path, splits, checkpoint, None if data is None else os.fspath(data))
    return Metrics(run=path, checkpoint=checkpoint, valid=measured.get("valid"), test=measured.get("test"),
                   cold={s: measured[f"{s}_cold"] for s in splits if f"{s}_cold" in measured},
                   used=dict(measured.get("checkpoint") or {}))


def recommend(run: PathLike | Run, users: str | Sequence[str], *, k: int = 10, checkpoint: str = "best",
              data: PathLike | None = None, new_items: PathLike | None = None) -> Recommendations:
    """The top `k` items for each user token in `users` after their whole history, which is never
    recommended back. `run` is a run directory or a `Run` (used as it is unless another `checkpoint`
    or `data` is asked for). `new_items`: vectors of items not in the catalogue, written for this
    run by `pixelrec embed`, ranked with the catalogue."""
    users = [users] if isinstance(users, str) else list(users)
    if isinstance(run, Run) and checkpoint == run.checkpoint and data is None:
        weights, _ = choose_checkpoint(run.path, run.checkpoint)
        found, _ = recommend_job.rank(run.path, run.model, run.data, run.config, weights, users, k, new_items)
    else:
        found, _, _ = recommend_job.recommend(run.path if isinstance(run, Run) else run, users, k=k,
                                              checkpoint=checkpoint, data=data, new_items=new_items)
    return found


