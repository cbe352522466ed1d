"""Whether a model can train at all on this machine, known before anything is allocated or written: the
model is built once on the meta device (shapes, no memory), and its weights, their gradients and
AdamW's two moments are compared with the memory the device has free. Sizes within their bounds can
still multiply past any machine (an embedding size of a million over a large catalogue), and the
kernel's out-of-memory kill prints nothing."""

from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from pixelrec.config import Config
from pixelrec.data.prepared import PreparedData
from pixelrec.errors import UserError
from pixelrec.factory import build_model

GIB = 1024**3


@dataclass(frozen=True)
class ModelMemory:
    bytes: int  # weights + buffers, and gradients and two AdamW moments of the trainable weights
    parameters: int
    largest: str  # the biggest tensor, as `name [rows x cols]`


def model_memory(config: Config, data: PreparedData) -> ModelMemory | None:
    """What the model of `config` takes to train, from a build on the meta device; None when some part
    cannot be built there (the estimate is then skipped, never a refusal)."""
    python, generator = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # weight files load into meta tensors as no-ops, which torch warns about
            model = build_model(config, data)
    except Exception:  # noqa: BLE001 - a part that needs real tensors to be built: no estimate
        return None
    finally:
        random.setstate(python)
        np.random.set_state(generator)
    total, count, largest, largest_bytes = 0, 0, "", -1
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        size = tensor.numel() * tensor.element_size()
        trainable = isinstance(tensor, torch.nn.Parameter) and tensor.requires_grad
        total += size * (4 if trainable else 1)
        count += tensor.numel() if isinstance(tensor, torch.nn.Parameter) else 0
        if size > largest_bytes:
            largest, largest_bytes = f"{name} [{' x '.join(str(n) for n in tensor.shape)}]", size
    return ModelMemory(total, count, largest)


def free_bytes(device: torch.device) -> int | None:
    """Memory the device can still give: the GPU's free memory, or the host's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def refuse_what_cannot_fit(config: Config, data: PreparedData, device: torch.device) -> None:
    """One line naming the largest tensor when the model alone needs more memory than the device has
    free (activations come on top, so a run that passes can still be too big; one that fails here
    always was)."""
    free = free_bytes(device)
    if free is None:
        return
    need = model_memory(config, data)
    if need is None or need.bytes <= free:
        return
    raise UserError(
        f"model {config.model_name} over {data.n_items:,} items needs about {need.bytes / GIB:.1f} GiB to train "
        f"({need.parameters:,} parameters with their gradients and AdamW moments; largest {need.largest}), "
        f"more than the {free / GIB:.1f} GiB free on {device.type}; lower model.embedding_size or the sizes "
        "that make that tensor")
