"""Progress and the `pixelrec` logger, for every layer: bars on a terminal, plain lines elsewhere.

Long steps (encoding the catalogue, scoring users, filling feature files) report through `progress`,
which shows nothing outside `progress_scope(True)`; a training run opens that scope. Library output
goes through the `pixelrec` logger (`log`); a run attaches its console and train.log handlers to it.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator

from tqdm import tqdm

log = logging.getLogger("pixelrec")
progress_log = logging.getLogger("pixelrec.progress")


#: Seconds between plain progress lines (no bar: stderr is not a terminal).
PLAIN_INTERVAL = 30.0
#: An evaluation step's bar appears only when the step has taken this long.
BAR_DELAY = 1.0

_progress_enabled: ContextVar[bool] = ContextVar("pixelrec_progress", default=False)


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Silent:
    """A progress reporter that reports nothing."""

    n = total = 0

    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, desc: str, refresh: bool = True) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "Silent":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class PlainProgress(Silent):
    """Progress as a log line every `PLAIN_INTERVAL` seconds (none if the work ends sooner): what a
    bar would show, without carriage returns, for files and pipes."""

    def __init__(self, desc: str, total: int, unit: str, initial: int = 0) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.n = self.initial = initial
        self.postfix: dict[str, Any] = {}
        self.started = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= PLAIN_INTERVAL:
            self.last = now
            progress_log.info(self.line(now))

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def line(self, now: float | None = None) -> str:
        elapsed = (time.monotonic() if now is None else now) - self.started
        text = f"{self.desc}: {self.n:,}/{self.total:,} {self.unit}s"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        parts = [text, *(f"{key} {value}" for key, value in self.postfix.items()), f"elapsed {_clock(elapsed)}"]
        done = self.n - self.initial
        if done > 0 and self.total >= self.n:
            parts.append(f"ETA {_clock((self.total - self.n) * elapsed / done)}")
        return ", ".join(parts)


def reporter(desc: str, total: int, unit: str, initial: int = 0, delay: float = 0.0,
             leave: bool = True) -> tqdm | PlainProgress:
    """A bar on stderr when it is a terminal, else plain lines."""
    if is_terminal(sys.stderr):
        # smoothing 0: the rate (and so the ETA) is the average since the start, pauses included
        return tqdm(desc=desc, total=total, initial=initial, unit=unit, delay=delay, leave=leave, smoothing=0,
                    dynamic_ncols=True, file=sys.stderr)
    return PlainProgress(desc, total, unit, initial)


@contextmanager
def progress_scope(enabled: bool) -> Iterator[None]:
    """Report the progress of long steps (`progress`) inside the block when `enabled`."""
    token = _progress_enabled.set(enabled)
    try:
        yield
    finally:
        _progress_enabled.reset(token)


def progress(desc: str, total: int, unit: str) -> Silent | PlainProgress | tqdm:
    """Progress of one long step (encoding the catalogue, scoring users): a bar that appears once the
    step has taken `BAR_DELAY` seconds, or plain lines; nothing outside `progress_scope(True)`."""
    if not _progress_enabled.get():
        return Silent()
    return reporter(desc, total, unit, delay=BAR_DELAY, leave=False)
