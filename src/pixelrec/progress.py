"""Progress and the `pixelrec` logger, for every layer: bars on a terminal, plain lines elsewhere.

Long steps (encoding the catalogue, scoring users, filling feature files) report through `progress`,
which shows nothing outside `progress_scope(True)`; a training run opens that scope.

Library output goes through the `pixelrec` logger (`log`, or a module's own `pixelrec.*` logger),
never `print`. Where it shows:

* `console()`: on the console for the block, info lines as they are (on stdout or stderr), warnings
  and errors on stderr as `warning: ...` (`note: ...` for `note`), between redraws of any progress
  bar. `pixelrec` (the CLI) runs every command inside one with info on stderr, so a command's own
  stdout (a CSV, a table) stays clean; a training run opens one with info on stdout beside its
  train.log. Of the consoles open, only the innermost speaks: nothing is said twice.
* From Python with none open and no handler of your own, logging's last resort shows warnings on
  stderr as their bare message, and info lines go nowhere; `with progress.console():` or
  `logging.basicConfig(level=logging.INFO)` shows them. Runs show theirs on the console anyway.
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

#: A record with this attribute set goes to train.log only (the console has said it another way).
FILE_ONLY = "pixelrec_file_only"
#: The word a console puts before a warning that sets this attribute, instead of `warning`.
LABEL = "pixelrec_label"


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


def note(message: str, logger: logging.Logger = log) -> None:
    """A warning that a console shows as `note: ...`: worth knowing, though nothing is wrong."""
    logger.warning(message, extra={LABEL: "note"})


class Console(logging.Handler):
    """Log lines on the console, written between redraws of any progress bar: info on `info`
    ("stdout" or "stderr"), warnings and errors on stderr after their label; only the innermost
    console open speaks, and records meant for train.log only (`FILE_ONLY`) are not shown."""

    def __init__(self, info: str = "stderr") -> None:
        super().__init__(logging.INFO)
        self.info = info

    def filter(self, record: logging.LogRecord) -> bool:
        return self is _innermost() and not getattr(record, FILE_ONLY, False) and bool(super().filter(record))

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno < logging.WARNING:
            return message
        return f"{getattr(record, LABEL, record.levelname.lower())}: {message}"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            stream = getattr(sys, self.info if record.levelno < logging.WARNING else "stderr")
            with tqdm.external_write_mode(file=stream):
                stream.write(message + "\n")
                stream.flush()
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


_attached: list[logging.Handler] = []  # handlers added by `attach`, oldest first
_saved_level = logging.NOTSET  # the logger's level before the first of them


def _innermost() -> Console | None:
    return next((h for h in reversed(_attached) if isinstance(h, Console)), None)


def attach(handler: logging.Handler) -> logging.Handler:
    """Add `handler` to the `pixelrec` logger, which passes info lines while any handler added so is there."""
    global _saved_level
    if not _attached:
        _saved_level = log.level
    _attached.append(handler)
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    return handler


def detach(handler: logging.Handler) -> None:
    """Remove and close a handler that `attach` added; the logger's level is restored with the last."""
    log.removeHandler(handler)
    handler.close()
    if handler in _attached:
        _attached.remove(handler)
        if not _attached:
            log.setLevel(_saved_level)


@contextmanager
def console(info: str = "stderr") -> Iterator[Console]:
    """The library's log lines on the console inside the block (see the module's docstring)."""
    handler = attach(Console(info))
    try:
        yield handler
    finally:
        detach(handler)


def bar(desc: str, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A bar on stderr for a command's own long step (prepare, extract, embed, caches): shown on a
    terminal, silent elsewhere or when not `enabled`; `kwargs` are tqdm's (total, unit, initial)."""
    return tqdm(desc=desc, file=sys.stderr, disable=None if enabled else True, dynamic_ncols=True, **kwargs)


def progress(desc: str, total: int, unit: str) -> Silent | PlainProgress | tqdm:
    """Progress of one long step (encoding the catalogue, scoring users): a bar that appears once the
    step has taken `BAR_DELAY` seconds, or plain lines; nothing outside `progress_scope(True)`."""
    if not _progress_enabled.get():
        return Silent()
    return reporter(desc, total, unit, delay=BAR_DELAY, leave=False)
