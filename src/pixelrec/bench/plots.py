"""Figures from runs and studies (matplotlib, Agg canvas, no pyplot state): each function returns a
Figure, so callers and tests can look at its axes, and `save` writes it as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pixelrec.bench.tables import display_name
from pixelrec.items import ITEM_ENCODERS

BAR, LINE, REFERENCE, PRUNED = "#4C72B0", "#C44E52", "#555555", "#DD8452"


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save(figure: Figure, path: str | Path) -> Path:
    """Write the figure as PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _scale(values: list[float]) -> tuple[float, str]:
    top = max(values, default=0)
    return (1e6, "M") if top >= 1e6 else (1e3, "K") if top >= 1e3 else (1.0, "")


def run_name(record: dict[str, Any]) -> str:
    """How a figure names the run a point comes from: its directory's name."""
    return Path(str(record.get("run", "?"))).name


def encoder_figure(results: list[dict[str, Any]], model: str, split: str = "test") -> Figure | None:
    """The paper's Figure 4 for one backbone: trainable parameters per image encoder (bars, left axis)
    and Recall@10 (line, right axis), with the ID model's Recall@10 dashed when there is one; each
    tick and the ID line name the run they come from (the last given, where several are).
    None unless the backbone has pixel runs (items of the PixelNet family) with at least two encoders."""
    mine = [(r, ITEM_ENCODERS.find(r.get("items"))) for r in results if r.get("model") == model]
    by_encoder = {r["encoder"]: r for r, kind in mine if kind is not None and kind.family == "pixelnet" and r.get("encoder")}
    if len(by_encoder) < 2:
        return None
    ids = [r for r, kind in mine if kind is not None and kind.tied_to_catalogue]  # IDNet: items are ID tables
    chosen = sorted(by_encoder.values(), key=lambda r: r.get("trainable_parameters", 0))
    names = [f"{r['encoder']}\n{run_name(r)}" for r in chosen]
    params = [float(r.get("trainable_parameters", 0)) for r in chosen]
    recall = [100 * (r.get(split) or {}).get("Recall@10", float("nan")) for r in chosen]
    divisor, unit = _scale(params)

    figure = _figure(7.5, 4.5)
    bars_axis = figure.add_subplot()
    positions = list(range(len(names)))
    bars = bars_axis.bar(positions, [p / divisor for p in params], color=BAR, alpha=0.75, width=0.6,
                         label="trainable parameters")
    # at the bars' foot, inside: the line's value labels sit above its points, which may fall anywhere
    for x, p in zip(positions, params):
        bars_axis.annotate(f"{p / divisor:.3g}{unit}", (x, 0), textcoords="offset points", xytext=(0, 3),
                           ha="center", va="bottom", fontsize=8, color="white", fontweight="bold")
    bars_axis.set_xticks(positions, names, rotation=25, ha="right")
    bars_axis.set_xlabel("image encoder (PixelNet)")
    bars_axis.set_ylabel(f"trainable parameters{f' ({unit})' if unit else ''}")

    line_axis = bars_axis.twinx()
    line_axis.plot(positions, recall, color=LINE, marker="o", linewidth=2, label=f"PixelNet {split} Recall@10")
    for x, y in zip(positions, recall):
        line_axis.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center",
                           fontsize=8, color=LINE, bbox={"boxstyle": "round,pad=0.15", "fc": "white",
                                                         "ec": "none", "alpha": 0.8})
    if ids:
        reference = 100 * (ids[-1].get(split) or {}).get("Recall@10", float("nan"))
        line_axis.axhline(reference, color=REFERENCE, linestyle="--", linewidth=1.5,
                          label=f"IDNet {split} Recall@10 ({reference:.3f}, {run_name(ids[-1])})")
    line_axis.set_ylabel(f"{split} Recall@10 (%)")
    line_axis.set_ylim(bottom=0, top=max([v for v in recall if v == v] + [0.0]) * 1.3 or 1.0)
    if ids:
        line_axis.set_ylim(top=max(line_axis.get_ylim()[1], reference * 1.3))
    handles = [bars] + line_axis.get_lines()
    figure.legend(handles, [h.get_label() for h in handles], loc="outside lower center", ncol=3, fontsize=8)
    bars_axis.set_title(f"{display_name(model)}: Recall@10 and trainable parameters per image encoder")
    return figure


def learning_curves(runs: list[tuple[str, list[dict[str, Any]]]], metric: str = "NDCG@10",
                    losses: list[str | None] | None = None) -> Figure:
    """Training loss and validation `metric` per epoch, one series per run (label, metrics rows).
    `losses` names each run's loss function: runs of different losses get a loss panel each, since
    a BPR loss and a softmax loss have nothing in common but the word."""
    losses = losses or [None] * len(runs)
    kinds = list(dict.fromkeys(losses))
    figure = _figure(5.5 * (len(kinds) + 1), 4.2)
    *loss_axes, valid_axis = figure.subplots(1, len(kinds) + 1)
    for number, ((label, rows), loss) in enumerate(zip(runs, losses)):
        style = {"marker": ".", "label": label, "color": f"C{number % 10}",
                 "linestyle": ("-", "--", ":", "-.")[number // 10 % 4]}  # ten colours, then a new dash
        loss_axes[kinds.index(loss)].plot([r["epoch"] for r in rows], [r["loss"] for r in rows], **style)
        evaluated = [r for r in rows if metric in (r.get("valid") or {})]
        valid_axis.plot([r["epoch"] for r in evaluated], [100 * r["valid"][metric] for r in evaluated], **style)
    for axis, loss in zip(loss_axes, kinds):
        axis.set(title=f"training loss{f' ({loss})' if loss else ''}", xlabel="epoch", ylabel="loss (mean per step)")
    valid_axis.set(title=f"validation {metric}", xlabel="epoch", ylabel=f"{metric} (%)")
    for axis in (*loss_axes, valid_axis):
        axis.grid(alpha=0.3)
        axis.xaxis.get_major_locator().set_params(integer=True)
    valid_axis.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), title="run")
    figure.suptitle("Learning curves")
    return figure


def study_figure(study, title: str, metric: str = "objective") -> Figure:
    """Objective per trial of an Optuna study: complete trials as dots, pruned trials as crosses at
    their last reported value, and the best value so far as a step line."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    figure = _figure(8.5, 4.2)
    axis = figure.add_subplot()
    axis.plot([t.number for t in complete], [100 * t.value for t in complete], "o", color=BAR, label="complete")
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        axis.plot([t.number for t in pruned], [100 * v for v in last], "X", color=PRUNED, markersize=8,
                  linestyle="none", label="pruned (last reported)")
    best, steps = float("-inf"), []
    for t in sorted(complete, key=lambda t: t.number):
        best = max(best, t.value)
        steps.append((t.number, 100 * best))
    if steps:
        last = max(t.number for t in trials)
        if steps[-1][0] < last:  # carry the best value on to the last trial
            steps.append((last, steps[-1][1]))
        axis.step([s[0] for s in steps], [s[1] for s in steps], where="post", color=LINE, label="best so far")
    axis.set(title=title, xlabel="trial", ylabel=f"{metric} (%)")
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return figure
