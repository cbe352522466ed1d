"""CPU threads: a fair share of a machine that other processes keep busy.

Two things make small runs crawl beside CPU-bound neighbours: more intra-op threads than the CPUs
this process may run on, and idle OpenMP threads that spin waiting for work instead of yielding
their core. So the thread count comes from the affinity mask (the CPUs this process may use, shared
among the local ranks of a torchrun job), and idle threads sleep (OMP_WAIT_POLICY=PASSIVE). OpenMP
reads that setting once, when torch loads it, so `sleep_when_idle` must run before `import torch`;
nothing here imports torch at module level.
"""

from __future__ import annotations

import os

WAIT_POLICY = "OMP_WAIT_POLICY"


def sleep_when_idle() -> bool:
    """Let idle OpenMP threads sleep instead of spinning (a setting the user made wins). Returns
    whether it can still take effect: False once torch has loaded its OpenMP runtime."""
    import sys

    os.environ.setdefault(WAIT_POLICY, "PASSIVE")
    return "torch" not in sys.modules


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


def choose_threads(requested: int | None = None) -> int:
    """Intra-op threads: `requested` when given; else OMP_NUM_THREADS when the user set it; else the
    usable CPUs shared among this machine's ranks (torchrun's LOCAL_WORLD_SIZE)."""
    if requested is not None:
        return int(requested)
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    local_ranks = os.environ.get("LOCAL_WORLD_SIZE", "1")
    local_ranks = int(local_ranks) if local_ranks.isdigit() and int(local_ranks) > 0 else 1
    return max(1, usable_cpus() // local_ranks)


def use_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads to `requested`, or without one to no more than `choose_threads()`
    (a count the caller lowered already, as tests running side by side do, stays); returns it."""
    import torch

    threads = requested if requested is not None else min(torch.get_num_threads(), choose_threads())
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
