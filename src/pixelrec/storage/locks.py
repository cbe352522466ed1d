"""Advisory locks: one writer at a time per run directory, dataset or feature file.

`acquire(path, what)` takes an exclusive `fcntl.flock` on the lock file `path` and writes this
process's PID into it; `hold(path, what)` does the same for a `with` block. The kernel drops the lock
when the holder exits, however it exits (`kill -9` included), so a lock file left behind never blocks
anyone. A second writer gets `Busy`, a one-line `UserError` naming the holder's PID, or with
`wait=True` a line saying whom it waits for, and waits. Releasing removes the lock file; acquiring
checks that the file it locked is still the one at `path`, so the removal never lets two writers in.

A lock file lives in folders that others may write (a shared data or project folder), so it is never
followed as a link: a symbolic link (or anything but a plain file) where the lock file goes is refused,
and nothing it points to is opened, truncated or written.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pixelrec.errors import UserError
from pixelrec.progress import log


class Busy(UserError):
    """Another process holds the lock; `pid` is its PID where the lock file says it."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


def lock_path(target: str | Path) -> Path:
    """The lock file guarding `target` from outside it: the hidden sibling `.NAME.lock`, so that
    `target` itself can be replaced or removed while the lock is held."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


def holder(path: str | Path) -> int | None:
    """PID recorded in a lock file, or None when there is none (yet), or it is not a plain file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, 64).decode("ascii", "replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    return int(text) if text.isdigit() else None


class NotAPlainFile(UserError):
    """Something other than a regular file (a symbolic link, a folder, a FIFO) sits where a lock file goes."""


class Lock:
    """A held lock; `release()` (or leaving a `with` block) gives it up. Also released at exit, and when
    the object is dropped: keep a reference for as long as the lock must hold."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd
        self._pid = os.getpid()  # a forked child (a DataLoader worker) shares the descriptor but never releases

    @property
    def held(self) -> bool:
        return self._fd is not None and self._pid == os.getpid()

    def release(self) -> None:
        if not self.held:
            return
        try:
            os.unlink(self.path)  # still locked here: a waiter finds the file gone and locks a fresh one
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a lock whose owner object is gone (an abandoned Trainer) is given up
        try:
            self.release()
        except Exception:  # noqa: BLE001 - at interpreter exit the process's end releases it anyway
            pass


def _open_locked(path: Path, blocking: bool) -> int | None:
    """A descriptor of `path` holding the lock, or None when another process holds it (non-blocking)."""
    while True:
        try:  # O_NOFOLLOW: a link planted at `path` is never followed (it fails with ELOOP)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO) or os.path.islink(path):
                raise _not_plain(path) from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise _not_plain(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            mine, there = os.fstat(fd), os.lstat(path)
            if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed the file while we waited: lock the one there now


def _not_plain(path: Path) -> NotAPlainFile:
    return NotAPlainFile(f"{path}: not a plain file (a symbolic link or another kind of file) where a lock file "
                         "goes; nothing was written through it; remove it if you did not put it there")


def _holder_pid(path: Path) -> int | None:
    for _ in range(20):  # the holder writes its PID just after locking
        pid = holder(path)
        if pid is not None:
            return pid
        time.sleep(0.01)
    return None


#: How long a lock named by a process that has ended may still be held by its children (DataLoader
#: workers forked with the lock's descriptor finish their batch and exit within seconds).
LEFTOVER_SECONDS = 15.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _wait_for_leftovers(path: Path) -> int | None:
    """The lock, once the children of its ended holder let it go (None if they still hold it)."""
    deadline = time.monotonic() + LEFTOVER_SECONDS
    while time.monotonic() < deadline:
        time.sleep(0.1)
        fd = _open_locked(path, blocking=False)
        if fd is not None:
            return fd
    return None


def _who(pid: int | None) -> str:
    return f"process {pid}" if pid is not None else "another process"


def acquire(path: str | Path, what: str, *, wait: bool = False) -> Lock:
    """Lock `path` for writing `what` (e.g. "feature file data/f.npy"). Held elsewhere: `Busy`, or with
    `wait` a log line and a wait until it is free."""
    path = Path(path)
    try:
        fd = _open_locked(path, blocking=False)
        if fd is None and wait:
            log.info(f"waiting for {what}: {_who(_holder_pid(path))} is writing it")
            fd = _open_locked(path, blocking=True)
    except OSError as err:
        raise UserError(f"{path}: cannot create the lock file for {what} ({err.strerror or err})") from None
    if fd is None:
        pid = _holder_pid(path)
        if pid is not None and not _alive(pid):  # its worker processes, forked with the lock, are still ending
            fd = _wait_for_leftovers(path)
    if fd is None:
        raise Busy(f"{what} is being written by {_who(pid)} (lock {path}); wait for it to finish or stop it", pid)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass  # the PID only names the holder in messages (a full disk may refuse it); the lock is held
    return Lock(path, fd)


@contextmanager
def hold(path: str | Path, what: str, *, wait: bool = False) -> Iterator[Lock]:
    """`acquire` for the length of a `with` block."""
    with acquire(path, what, wait=wait) as lock:
        yield lock
