"""Find and read raw interaction files: PixelRec CSVs as distributed and RecBole atomic `.inter` files.

Readers are vectorised with pyarrow (streaming multithreaded CSV parsing) and numpy; tokens become codes
in the order they first appear in the file (`pixelrec.data.tokens`). Every problem with the input becomes a
one-line `UserError` naming the file and, where there is one, the row.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from pixelrec.data.tokens import NotNumbered, TokenCoder
from pixelrec.errors import UserError

INTERACTION_COLUMNS = ("item_id", "user_id", "timestamp")
ITEM_INFO_COLUMNS = ("item_id", "view_number", "comment_number", "thumbup_number", "share_number",
                     "coin_number", "favorite_number", "barrage_number", "title", "tag", "description")
COVER_FOLDERS = ("covers", "images")
COVER_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
BLOCK_SIZE = 4 << 20
_SNIFF_BYTES = 1 << 16


@dataclass
class RawSource:
    """Where a raw dataset's parts are: interactions (required), item info and covers (optional)."""

    root: Path
    kind: str  # "pixelrec-csv" | "recbole-inter"
    interactions: Path
    item_info: Path | None = None
    covers: Path | None = None

    def describe(self) -> dict:
        """Paths relative to the raw folder, so that meta.json does not depend on where the data lives."""
        rel = lambda p: None if p is None else os.path.relpath(p, self.root)  # noqa: E731
        return {"kind": self.kind, "files": {"interactions": rel(self.interactions),
                                             "item_info": rel(self.item_info), "covers": rel(self.covers)}}


@dataclass
class Interactions:
    """Interactions in file order: int32 codes into the token arrays, and int64 timestamps."""

    items: np.ndarray
    users: np.ndarray
    timestamps: np.ndarray
    item_tokens: pa.Array
    user_tokens: pa.Array
    path: Path = field(default=Path())


# --- showing bad input ---------------------------------------------------------------------
def excerpt(data: bytes | str, limit: int = 40) -> str:
    """A short printable rendering of raw input: escapes for control characters and anything not
    ASCII (a terminal never receives raw bytes from a file), `...` when cut."""
    cut = data[:limit]
    text = repr(cut) if isinstance(cut, bytes) else ascii(cut)
    return text + ("..." if len(data) > limit else "")


def first_binary_line(path: Path) -> tuple[int, bytes] | None:
    """(line number, the line) of the first line that is not UTF-8 text or holds a NUL byte, or None.

    Blocks are cut at line ends and decoded whole, so the scan runs at the codec's speed; it is only
    used to explain a failed read.
    """
    line, rest = 1, b""
    with open(path, "rb") as handle:
        while True:
            block = handle.read(BLOCK_SIZE)
            data = rest + block
            if not data:
                return None
            cut = data.rfind(b"\n") + 1 if block else len(data)
            chunk, rest = data[: cut or len(data)], data[cut or len(data):]  # a line longer than a block: whole
            bad = chunk.find(b"\0")
            try:
                chunk.decode("utf-8")
            except UnicodeDecodeError as err:
                bad = err.start if bad < 0 else min(bad, err.start)
            if bad >= 0:
                start = chunk.rfind(b"\n", 0, bad) + 1
                end = chunk.find(b"\n", bad)
                return line + chunk.count(b"\n", 0, bad), chunk[start : end if end >= 0 else len(chunk)].rstrip(b"\r")
            line += chunk.count(b"\n")


def _binary_line_error(path: Path) -> UserError | None:
    found = first_binary_line(path)
    if found is None:
        return None
    line, text = found
    return UserError(f"{path}: line {line}: not UTF-8 text ({excerpt(text, 24)}); a damaged or binary file")


@contextmanager
def _quiet_unraisable() -> Iterator[None]:
    """pyarrow reports a malformed row whose text is not UTF-8 through `sys.unraisablehook` (a traceback on
    stderr) before it fails the read; that failure is diagnosed by `_diagnose`, so the report is dropped."""
    previous = sys.unraisablehook
    sys.unraisablehook = lambda info: None
    try:
        yield
    finally:
        sys.unraisablehook = previous


# --- finding the files ---------------------------------------------------------------------
def _header(path: Path, expect: str = f"a header line {','.join(INTERACTION_COLUMNS)}") -> list[str]:
    """Column names of a CSV or .inter file (RecBole `name:type` reduced to `name`); errors name the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
    if not head.strip():
        raise UserError(f"{path}: empty file (expected {expect})")
    line, newline, _ = head.partition(b"\n")
    if b"\0" in line or (not newline and len(head) == _SNIFF_BYTES):
        raise UserError(f"{path}: not a CSV text file (binary content)")
    try:
        text = line.decode("utf-8-sig").rstrip("\r")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a CSV text file (header is not UTF-8)") from None
    if path.suffix == ".inter":
        return [name.split(":", 1)[0].strip() for name in text.split("\t")]
    return [name.strip() for name in next(csv.reader([text]), [])]


def _is_interactions(columns: list[str]) -> bool:
    return set(INTERACTION_COLUMNS) <= set(columns)


def _is_item_info(columns: list[str]) -> bool:
    return "item_id" in columns and "user_id" not in columns


def _expected(path: Path, columns: list[str]) -> str:
    kind = "RecBole .inter columns user_id:token, item_id:token, timestamp:float" if path.suffix == ".inter" \
        else f"columns {','.join(INTERACTION_COLUMNS)}"
    missing = [c for c in INTERACTION_COLUMNS if c not in columns]
    return f"{path}: expected {kind}; missing {','.join(missing)} (found {','.join(columns) or 'nothing'})"


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise UserError(f"{path}: permission denied")


def find_raw(path: str | Path) -> RawSource:
    """Locate the interactions file, item-info CSV and covers folder of a raw dataset (a folder or one file).

    Given a file, it is the interactions file and its folder is searched for item info and covers.
    """
    path = Path(path)
    _check_readable(path)
    if path.is_file():
        columns = _header(path)
        if not _is_interactions(columns):
            raise UserError(_expected(path, columns))
        root, interactions = path.parent, path
    elif path.is_dir():
        root = path
        candidates = sorted(p for p in root.iterdir() if p.suffix in (".csv", ".inter") and p.is_file())
        found, problems = [], []
        for p in candidates:
            try:
                columns = _header(p)
            except UserError as err:
                problems.append(str(err))
                continue
            if _is_interactions(columns):
                found.append(p)
        if len(found) > 1:
            raise UserError(f"{root}: several interaction files ({', '.join(p.name for p in found)}); "
                            "pass one of them with raw=")
        if not found:
            if len(candidates) == 1:  # the one file there is the intended one: say what is wrong with it
                raise UserError(problems[0] if problems else _expected(candidates[0], _header(candidates[0])))
            raise UserError(f"{root}: no interactions file (a CSV with columns {','.join(INTERACTION_COLUMNS)} "
                            f"or a RecBole .inter file); found {', '.join(p.name for p in candidates) or 'none'}")
        interactions = found[0]
    else:
        raise UserError(f"{path}: not a regular file or folder")
    kind = "recbole-inter" if interactions.suffix == ".inter" else "pixelrec-csv"
    return RawSource(root, kind, interactions, _find_item_info(root, interactions), _find_covers(root))


def _find_item_info(root: Path, interactions: Path) -> Path | None:
    """The item-info CSV beside the interactions. Every other CSV there is read for its header: one that
    cannot be read (empty, binary, unreadable) is an error, not a dataset silently without titles."""
    infos = []
    for p in sorted(root.glob("*.csv")):
        if p == interactions:
            continue
        try:
            columns = _header(p, expect="a header line starting item_id")
        except UserError as err:
            raise UserError(f"{err}; item info is optional: repair {p.name} or move it out of {root}") from None
        if _is_item_info(columns):
            infos.append(p)
    if len(infos) > 1:
        raise UserError(f"{root}: several item-info CSVs ({', '.join(p.name for p in infos)}); keep one")
    return infos[0] if infos else None


def _find_covers(root: Path) -> Path | None:
    return next((root / name for name in COVER_FOLDERS if (root / name).is_dir()), None)


# --- reading interactions ------------------------------------------------------------------
class _CountingReader(io.RawIOBase):
    """A file wrapper that reports bytes read, for a progress bar over pyarrow's CSV reader."""

    def __init__(self, path: Path, on_read: Callable[[int], object]) -> None:
        self._file = open(path, "rb")
        self._on_read = on_read
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._file.readinto(buffer)
        self.bytes_read += n
        self._on_read(n)
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def _csv_options(path: Path, kind: str, threads: bool, on_invalid=None):
    """pyarrow options for the interactions file; column names come from `_header` (BOM, spaces, types gone)."""
    read = pv.ReadOptions(use_threads=threads, block_size=BLOCK_SIZE, column_names=_header(path), skip_rows=1)
    if kind == "recbole-inter":
        parse = pv.ParseOptions(delimiter="\t", quote_char=False, invalid_row_handler=on_invalid)
        ts_type = pa.float64()  # RecBole types timestamps as float; whole numbers are accepted below
    else:
        parse = pv.ParseOptions(invalid_row_handler=on_invalid)
        ts_type = pa.int64()
    convert = pv.ConvertOptions(include_columns=list(INTERACTION_COLUMNS),
                                column_types={"item_id": pa.string(), "user_id": pa.string(), "timestamp": ts_type})
    return read, parse, convert


class _Columns:
    """Growable int arrays, one allocation each (many per-batch arrays would fragment the heap)."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.n = 0

    def append(self, values: dict[str, np.ndarray], capacity: int) -> None:
        k = len(values["timestamp"])
        for name, part in values.items():
            array = self.arrays.get(name)
            if array is None or self.n + k > len(array):
                grown = np.empty(max(capacity, int((self.n + k) * 1.25)), dtype=part.dtype)
                if array is not None:
                    grown[:self.n] = array[:self.n]
                self.arrays[name] = array = grown
            array[self.n:self.n + k] = part
        self.n += k

    def take(self, name: str) -> np.ndarray:
        return self.arrays.pop(name)[:self.n]


def read_interactions(source: RawSource, progress: Callable[[int], object] | None = None) -> Interactions:
    """Read (item, user, timestamp) rows into codes + token dictionaries; `progress` receives bytes read.

    Streams the file in blocks with multithreaded parsing; memory holds 16 bytes a row, not the text.
    """
    progress = progress or (lambda n: None)
    as_strings = {"item_id": False, "user_id": False}
    while True:
        try:
            return _read_pass(source, as_strings, progress)
        except NotNumbered as fallback:  # rare: re-read with that column coded as strings
            name, bytes_read = fallback.args
            as_strings[name] = True
            progress(-bytes_read)


def _read_pass(source: RawSource, as_strings: dict[str, bool], progress: Callable[[int], object]) -> Interactions:
    path = source.interactions
    bad_row: list = []

    def on_invalid(row) -> str:
        bad_row.append(row)
        return "error"

    read, parse, convert = _csv_options(path, source.kind, True, on_invalid)
    coders = {name: TokenCoder(strings) for name, strings in as_strings.items()}
    columns, capacity = _Columns(), 0
    stream = _CountingReader(path, progress)
    try:
        with _quiet_unraisable():
            for batch in pv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert):
                # a batch is one block of text: estimate the file's rows from the first (generously: pages
                # of an np.empty array that are never written take no memory)
                capacity = capacity or int(batch.num_rows * (path.stat().st_size / BLOCK_SIZE + 1) * 1.5)
                values = {"timestamp": _timestamps(path, batch.column("timestamp"), columns.n)}
                for name, coder in coders.items():
                    try:
                        codes = coder.feed(batch.column(name))
                    except NotNumbered:
                        raise NotNumbered(name, stream.bytes_read) from None
                    if codes is not None:
                        values[name] = codes
                columns.append(values, capacity)
    except pa.ArrowInvalid as err:
        raise _diagnose(source, err, bool(bad_row)) from None
    except (OSError, pa.ArrowException) as err:
        raise UserError(f"{path}: cannot read ({excerpt(' '.join(str(err).split()), 160)})") from None
    finally:
        stream.close()
    if columns.n == 0:
        raise UserError(f"{path}: no interactions (the file has a header but no data rows)")
    coded = {name: coder.encode_strings(path, name) if coder.as_strings else (columns.take(name), coder.tokens())
             for name, coder in coders.items()}
    (items, item_tokens), (users, user_tokens) = coded["item_id"], coded["user_id"]
    return Interactions(items, users, columns.take("timestamp"), item_tokens, user_tokens, path)


def _timestamps(path: Path, column: pa.Array, offset: int) -> np.ndarray:
    """Validate timestamps (present, whole, non-negative) and return them as int64; `offset` rows precede."""
    values = column.to_numpy(zero_copy_only=False)
    if column.null_count:
        row = offset + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0]) + 1
        raise UserError(f"{path}: data row {row}: missing timestamp")
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.floor(values)) | (np.abs(values) >= 2.0**53)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise UserError(f"{path}: data row {offset + first + 1}: timestamp {float(values[first])!r} "
                            "is not a whole number")
        values = values.astype(np.int64)
    negative = np.flatnonzero(values < 0)
    if len(negative):
        first = int(negative[0])
        raise UserError(f"{path}: data row {offset + first + 1}: negative timestamp {int(values[first])}")
    return values


def _diagnose(source: RawSource, err: pa.ArrowInvalid, malformed: bool) -> UserError:
    """Turn a pyarrow parse/convert failure into a one-line error naming the file and row (or line)."""
    path = source.interactions
    message = " ".join(str(err).split())
    binary = first_binary_line(path)
    row = None
    if malformed or "Expected" in message or binary is not None:
        read, parse, convert = _csv_options(path, source.kind, False, None)
        row = _first_malformed(path, read, parse, convert)
    if binary is not None and (row is None or row.number is None or binary[0] <= row.number):
        return _binary_line_error(path)
    if row is not None:
        where = f"line {row.number}" if row.number is not None else "a row"
        return UserError(f"{path}: {where}: expected {row.expected_columns} fields, found "
                         f"{row.actual_columns} ({excerpt(row.text)})")
    if "timestamp" in message or "column #2" in message or "conversion error" in message:
        located = _find_bad_timestamp(source)
        if located:
            return located
    if "UTF8" in message or "UTF-8" in message:
        return UserError(f"{path}: not a CSV text file (invalid UTF-8 data)")
    return UserError(f"{path}: cannot parse ({excerpt(message, 160)})")


def _first_malformed(path: Path, read: pv.ReadOptions, parse: pv.ParseOptions, convert: pv.ConvertOptions):
    """The first row with the wrong number of fields (pyarrow's InvalidRow), by a single-threaded re-read."""
    found: list = []

    def on_invalid(row) -> str:
        found.append(row)
        return "error"

    parse.invalid_row_handler = on_invalid
    read.use_threads = False
    try:
        with _quiet_unraisable():
            for _ in pv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert):
                pass
    except (pa.ArrowInvalid, OSError):
        pass
    return found[0] if found else None


def _find_bad_timestamp(source: RawSource) -> UserError | None:
    """Stream the timestamp column as text and name the first row that is not a non-negative whole number."""
    path = source.interactions
    read, parse, convert = _csv_options(path, source.kind, True)
    convert.column_types = {**convert.column_types, "timestamp": pa.string()}
    pattern = r"^\s*[0-9]+(\.0*)?\s*$" if source.kind == "recbole-inter" else r"^\s*[0-9]+\s*$"
    seen = 0
    try:
        for batch in pv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert):
            column = batch.column("timestamp")
            ok = pc.match_substring_regex(column, pattern).to_numpy(zero_copy_only=False)
            bad = np.flatnonzero(~ok)
            if len(bad):
                value = column[int(bad[0])].as_py()
                return UserError(f"{path}: data row {seen + int(bad[0]) + 1}: timestamp {excerpt(value)} "
                                 "is not a non-negative whole number")
            seen += batch.num_rows
    except (pa.ArrowInvalid, OSError):
        return None
    return None


# --- item info -----------------------------------------------------------------------------
def read_item_info(path: Path) -> pa.Table:
    """Read the item-info CSV: text columns as strings, count columns as int64 (float64 if not whole).
    A file that gives no rows, or that cannot be parsed, is an error naming the file and line."""
    columns = _header(path, expect="a header line starting item_id")
    if "item_id" not in columns:
        raise UserError(f"{path}: no item_id column (its header: {','.join(columns)[:120]}); item info starts with "
                        "a header line item_id,...")
    read = pv.ReadOptions(block_size=BLOCK_SIZE)
    convert = pv.ConvertOptions(column_types={name: pa.string() for name in columns}, strings_can_be_null=True)
    try:
        with _quiet_unraisable():
            table = pv.read_csv(path, read_options=read, parse_options=pv.ParseOptions(newlines_in_values=True),
                                convert_options=convert)
    except (pa.ArrowInvalid, OSError) as err:
        raise _item_info_error(path, err, read, convert) from None
    if table.num_rows == 0:
        raise UserError(f"{path}: item info with a header but no rows; item info is optional: repair the file "
                        "or move it away")
    out = {}
    for name in table.column_names:
        column = table.column(name)
        if name in ITEM_INFO_COLUMNS[1:8]:
            column = _as_number(column)
        out[name] = column
    return pa.table(out)


def _item_info_error(path: Path, err: Exception, read: pv.ReadOptions, convert: pv.ConvertOptions) -> UserError:
    binary = _binary_line_error(path)
    if binary is not None:
        return binary
    row = _first_malformed(path, read, pv.ParseOptions(newlines_in_values=True), convert)
    if row is not None and row.number is not None:
        return UserError(f"{path}: line {row.number}: expected {row.expected_columns} fields, found "
                         f"{row.actual_columns} ({excerpt(row.text)})")
    return UserError(f"{path}: cannot parse item info ({excerpt(' '.join(str(err).split()), 160)})")


def _as_number(column: pa.ChunkedArray) -> pa.ChunkedArray:
    for target in (pa.int64(), pa.float64()):
        try:
            return pc.cast(column, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return column
