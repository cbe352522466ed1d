"""Atomic files: written to a hidden temporary name, synced, then renamed into place, so a reader
sees the old file or the new one, never half of one. Files get the process umask's permissions, and
a failed write is one line that says what to do."""

from __future__ import annotations

import errno
import json
import os
import secrets
from pathlib import Path
from typing import Any, BinaryIO, Callable

from pixelrec.errors import UserError


def write_error(path: Path, err: OSError) -> UserError:
    """A failed write as one line that says what happened and what to do."""
    cure = {errno.ENOSPC: "free some space or write elsewhere", errno.EDQUOT: "free some space or write elsewhere",
            errno.EACCES: "choose a folder you can write to", errno.EPERM: "choose a folder you can write to",
            errno.EROFS: "choose a folder on a writable file system",
            errno.ENOTDIR: "a part of the path is a file, not a folder"}.get(err.errno, "check the path")
    return UserError(f"{path}: cannot write ({err.strerror or err}); {cure}")


def _temp_file(path: Path) -> tuple[int, Path]:
    """A new hidden file beside `path`, created with mode 0666 so that the umask decides (mkstemp's 0600 would not)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(path.parent, err) from None
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue
        except OSError as err:
            raise write_error(path, err) from None


def _sync_folder(folder: Path) -> None:
    """Make a rename durable (best effort: some file systems cannot open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_with(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write `path` atomically with `write(handle)` (e.g. torch.save into the open temporary file)."""
    fd, tmp = _temp_file(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise write_error(path, err) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temporary file, fsync, rename), with the umask's permissions."""
    atomic_write_with(Path(path), lambda handle: handle.write(data))


def atomic_json(path: Path, payload: Any) -> None:
    atomic_write(path, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())
