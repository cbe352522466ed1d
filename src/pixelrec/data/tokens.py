"""Token -> contiguous code, in order of first appearance, for token columns read batch by batch.

PixelRec's tokens are a fixed prefix and a number (`u123`, `i45`). Those are coded through a lookup
table indexed by the number: only int32 codes are kept (4 bytes a row, 0.8 GB at 195.8M rows) and the
per-batch work is a gather plus a hash of the few tokens not seen before. Any other tokens fall back to
keeping the strings and one `pyarrow.compute.dictionary_encode` at the end, which needs their memory.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pixelrec.errors import UserError


class NotNumbered(Exception):
    """The column is not `<prefix><canonical decimal>` throughout; code it as strings instead."""


class TokenCoder:
    """Feed token arrays in file order; `feed` returns int32 codes (None when keeping strings)."""

    MAX_NUMBER = 1 << 28  # largest id number for the lookup-table path (a 1 GiB table)
    _POWERS = 10 ** np.arange(1, 19, dtype=np.int64)

    def __init__(self, as_strings: bool = False) -> None:
        self.as_strings = as_strings
        self.prefix: str | None = None
        self._table = np.zeros(0, dtype=np.int32)  # number -> code, -1 where unseen
        self._numbers: list[np.ndarray] = []  # numbers in order of first appearance
        self._strings: list[pa.Array] = []
        self._n = 0

    def feed(self, column: pa.Array) -> np.ndarray | None:
        """Codes of one batch of tokens; raises NotNumbered if the numbered path cannot represent them."""
        if self.as_strings:
            self._strings.append(column)
            return None
        numbers = self._parse(column)
        if len(numbers) and numbers.max() >= len(self._table):
            grown = max(int(numbers.max()) + 1, 2 * len(self._table))
            self._table = np.concatenate([self._table, np.full(grown - len(self._table), -1, dtype=np.int32)])
        unseen = numbers[self._table[numbers] < 0]
        new = pc.unique(pa.array(unseen)).to_numpy()  # in order of first appearance
        self._table[new] = np.arange(self._n, self._n + len(new), dtype=np.int32)
        self._n += len(new)
        self._numbers.append(new)
        return self._table[numbers]

    def _parse(self, column: pa.Array) -> np.ndarray:
        if self.prefix is None and len(column):
            match = re.fullmatch(r"(\D*)\d+", column[0].as_py())
            if match is None:
                raise NotNumbered
            self.prefix = match.group(1)
        prefix = self.prefix or ""
        if not pc.all(pc.starts_with(column, prefix)).as_py():
            raise NotNumbered
        digits = pc.utf8_slice_codeunits(column, len(prefix))
        try:
            numbers = pc.cast(digits, pa.int64()).to_numpy()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise NotNumbered from None
        width = np.searchsorted(self._POWERS, numbers, side="right") + 1  # decimal digits of each number
        if (not (pc.binary_length(digits).to_numpy() == width).all() or (numbers < 0).any()
                or (len(numbers) and numbers.max() >= self.MAX_NUMBER)):
            raise NotNumbered  # leading zeros, signs or huge ids: the number would not identify the token
        return numbers

    def tokens(self) -> pa.Array:
        """Token of each code (numbered path)."""
        numbers = np.concatenate(self._numbers) if self._numbers else np.zeros(0, dtype=np.int64)
        return pc.binary_join_element_wise(self.prefix or "", pc.cast(pa.array(numbers), pa.string()), "")

    def encode_strings(self, path: Path, name: str) -> tuple[np.ndarray, pa.Array]:
        """(codes, token per code) for the strings kept; frees them."""
        column, self._strings = pa.chunked_array(self._strings, pa.string()), []
        return encode(path, column, name)


def encode(path: Path, column: pa.ChunkedArray, name: str) -> tuple[np.ndarray, pa.Array]:
    """Token column -> (int32 codes in order of first appearance, token per code); empty tokens are errors."""
    encoded = pc.dictionary_encode(column)
    dictionary = encoded.chunk(0).dictionary if encoded.num_chunks else pa.array([], pa.string())
    codes = np.empty(len(column), dtype=np.int32)
    start = 0
    for chunk in encoded.chunks:
        codes[start:start + len(chunk)] = chunk.indices.to_numpy(zero_copy_only=False)
        start += len(chunk)
    empty = pc.index(dictionary, "").as_py()
    if empty >= 0:
        row = int(np.flatnonzero(codes == empty)[0]) + 1
        raise UserError(f"{path}: data row {row}: empty {name}")
    return codes, dictionary
