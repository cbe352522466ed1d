"""CPU threads: a fair share of a machine that other processes keep busy.

Two things make small runs crawl beside CPU-bound neighbours: more intra-op threads than the CPUs
this process may run on, and idle OpenMP threads that spin waiting for the next parallel region.
GNU OpenMP (torch's on Linux) spins about 3 ms by default, a whole scheduler slice: when a
neighbour holds one of the CPUs, every operation waits that long for the descheduled thread, and a
small model's epoch became 10-50x slower. So the thread count comes from the affinity mask (the
CPUs this process may use, shared among the local ranks of a torchrun job), and idle threads spin
only briefly (GOMP_SPINCOUNT, about 10 us) before they sleep. Sleeping at once
(OMP_WAIT_POLICY=PASSIVE) is as fair to neighbours, but then every operation pays a wake-up, which
made a lone small run up to 2x slower where waking an idle CPU is slow (virtual machines);
benchmarks/cpu_share.py compares the three. OpenMP reads these settings once, when torch loads it,
so `limit_idle_spin` must run before `import torch`; nothing here imports torch at module level.
"""

from __future__ import annotations

import os

WAIT_POLICY = "OMP_WAIT_POLICY"
SPIN_COUNT = "GOMP_SPINCOUNT"
#: Busy-wait iterations of an idle GNU OpenMP thread before it sleeps (about 100 per microsecond).
IDLE_SPIN = "1000"


def limit_idle_spin() -> bool:
    """Let idle OpenMP threads spin only briefly, then sleep, unless the user chose a wait policy or
    spin count. Returns whether it can still take effect: False once torch has loaded OpenMP."""
    import sys

    if WAIT_POLICY not in os.environ and SPIN_COUNT not in os.environ:
        os.environ[SPIN_COUNT] = IDLE_SPIN
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
