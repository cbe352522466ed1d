"""The one exception type that reaches users as a single line (exit status 2, no traceback)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class UserError(Exception):
    """Bad input or configuration: the message names the file, row, key or item at fault."""


#: How torch's DataLoader begins the message of an exception it re-raises from a worker process.
_WORKER_PREFIX = "Caught "
_WORKER_TRACEBACK = ".\nOriginal Traceback (most recent call last):\n"


def worker_message(err: UserError) -> str:
    """The original one-line message of a UserError re-raised by a DataLoader worker (else its own).

    torch sends a worker's exception back as its type and formatted traceback, and raises
    `type("Caught <type> in DataLoader worker process N.\\nOriginal Traceback ...")`; the original
    message is what follows the last "<module>.<type>: " of that traceback."""
    text = str(err)
    if not (text.startswith(_WORKER_PREFIX) and _WORKER_TRACEBACK in text):
        return text
    cls = type(err)
    marker = f"{cls.__module__}.{cls.__qualname__}: "
    at = text.rfind(marker)
    return text[at + len(marker):].strip() if at >= 0 else text


@contextmanager
def worker_errors() -> Iterator[None]:
    """Around a loop over a DataLoader: a UserError from one of its workers is raised again as the
    worker's own one line, without the worker's traceback that torch wraps it in."""
    try:
        yield
    except UserError as err:
        message = worker_message(err)
        if message == str(err):
            raise
        raise UserError(message) from None
