"""Files checked before they are trusted: `.npy` headers and sizes, disk space, full-disk errors.

A truncated array mapped by numpy fails with a traceback, and a mapping of pages past the end of a
file kills the reader with SIGBUS; a header with an object dtype would unpickle data. `npy_info`
reads only the header and the file's size, so every reader (prepared arrays, feature files, the
prefix cache) refuses a damaged file with one line naming it and its cure before touching its data.
Writers of memory-mapped files reserve their blocks first (`allocate`): a full disk is then an
error at the start, never a SIGBUS in the middle.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixelrec.errors import UserError

_VERSIONS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class NpyInfo:
    """What a `.npy` header says, and where its data starts."""

    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def npy_info(path: str | Path, cure: str) -> NpyInfo:
    """The header of `path`, checked against the file's size; a UserError ending in `cure` otherwise."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                raise UserError(f"{path}: empty file; {cure}")
            try:
                version = np.lib.format.read_magic(handle)
                reader = _VERSIONS.get(version)
                if reader is None:
                    raise ValueError(f"format version {version[0]}.{version[1]}")
                shape, fortran, dtype = reader(handle)
            except (ValueError, SyntaxError, TypeError, EOFError) as err:
                raise UserError(f"{path}: not a readable .npy array (damaged header: {_short(err)}); {cure}") from None
            offset = handle.tell()
    except FileNotFoundError:
        raise UserError(f"{path}: missing; {cure}") from None
    except IsADirectoryError:
        raise UserError(f"{path}: a folder, not a .npy file; {cure}") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
    if dtype.hasobject:
        raise UserError(f"{path}: holds Python objects (pickles), which are never loaded; {cure}")
    info = NpyInfo(tuple(int(n) for n in shape), dtype, offset)
    if fortran and len(shape) > 1:
        raise UserError(f"{path}: a Fortran-ordered array, not one this program wrote; {cure}")
    expected = offset + info.nbytes
    if size < expected:
        raise UserError(f"{path}: truncated ({size:,} of {expected:,} bytes for {dtype} {info.shape}); {cure}")
    if size > expected:
        raise UserError(f"{path}: {size - expected:,} bytes more than its header's {dtype} {info.shape}; {cure}")
    return info


def open_npy(path: str | Path, cure: str, mode: str | None = "r") -> np.ndarray:
    """The array at `path`, memory-mapped with `mode` (None: read into memory), after `npy_info`'s checks."""
    npy_info(path, cure)
    try:
        return np.load(path, mmap_mode=mode, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable .npy array ({_short(err)}); {cure}") from None


def read_json_object(path: str | Path, cure: str) -> dict | None:
    """A JSON object written by pixelrec (meta.json, a sidecar, a run's record), or None when the file is
    absent; an unreadable or non-object file is one line ending with `cure`."""
    import json

    path = Path(path)
    if not path.is_file():
        return None
    try:
        loaded = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: unreadable ({type(err).__name__}); {cure}") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: not a JSON object; {cure}")
    return loaded


def allocate(path: str | Path, size: int) -> None:
    """Reserve the blocks of a freshly created file, so that a full disk is an error now and never a SIGBUS
    while its memory map is written (numpy creates the file sparse). Filesystems without it are let be."""
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, size)
        except OSError as err:
            if err.errno in DISK_FULL:
                raise
        except AttributeError:  # no posix_fallocate on this platform
            pass


def disk_full(err: BaseException) -> bool:
    """True for "no space left" (or quota) errors, however the library raising them words them."""
    if isinstance(err, OSError) and err.errno in DISK_FULL:
        return True
    text = str(err)
    return "No space left on device" in text or "Disk quota exceeded" in text


def free_bytes(folder: str | Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def size_text(n: int | None) -> str:
    """Bytes as a short human number (1.5 GB)."""
    if n is None:
        return "unknown"
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def printable(text: str, limit: int = 100) -> str:
    """`text` on one line, at most `limit` characters, anything unprintable or not ASCII escaped."""
    text = " ".join(str(text).split())
    cut = "".join(c if c.isascii() and c.isprintable() else c.encode("unicode_escape").decode() for c in text[:limit])
    return cut + ("..." if len(text) > limit else "")


def _short(err: BaseException) -> str:
    return printable(str(err), 80)
