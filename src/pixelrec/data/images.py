"""The image store: an LMDB of JPEG covers already resized to a square storage size, keyed by item token.

Writing (`build_image_store`) encodes covers in parallel and puts them in item-index order in one write
transaction with a map size fixed by the item count and size, which makes the LMDB file byte-identical
across runs. Reading (`ImageStore`) opens the environment lazily in each process, so one store object can
be handed to any number of DataLoader workers. Values are plain JPEG bytes: nothing executable is stored.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import multiprocessing.pool
import os
import struct
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import lmdb
import numpy as np
from PIL import Image
from tqdm import tqdm

from pixelrec.data.raw import COVER_SUFFIXES
from pixelrec.errors import UserError
from pixelrec.progress import bar
from pixelrec.storage.files import printable

if TYPE_CHECKING:
    import torch

    from pixelrec.data.prepared import PreparedData

STORE_DIR = "images.lmdb"
CURE = "the image store is damaged: prepare the dataset again (`pixelrec prepare`)"
PLACEHOLDER_GREY = (128, 128, 128)
_SHOWN = 5  # item tokens named in an error line
MIN_POOL_TASKS = 64  # below this, starting processes costs more than it saves


def _bar(desc: str, total: int, progress: bool) -> tqdm:
    return bar(desc, progress, total=total, unit="img")


def _listing(tokens: Sequence[str], n: int) -> str:
    more = f" and {n - _SHOWN} more" if n > _SHOWN else ""
    return ", ".join(tokens[:_SHOWN]) + more


# --- encoding ------------------------------------------------------------------------------
def scan_covers(covers: Path) -> dict[str, str]:
    """Cover file name by item token in a covers folder (`<token>.jpg`, .jpeg, .png or .webp; two covers
    of one item are one line, never a silent choice)."""
    found: dict[str, str] = {}
    try:
        with os.scandir(covers) as entries:
            for entry in entries:
                stem, suffix = os.path.splitext(entry.name)
                if suffix.lower() not in COVER_SUFFIXES:
                    continue
                if stem in found:  # which of two images is the item's cover is not ours to guess
                    first, second = sorted((found[stem], entry.name))
                    raise UserError(f"{covers}: item {stem} has two covers, {first} and {second}; keep one")
                found[stem] = entry.name
    except OSError as err:
        raise UserError(f"{covers}: cannot read the covers folder ({err.strerror or err})") from None
    return found


def find_covers(covers: Path, tokens: Sequence[str]) -> list[Path | None]:
    """Cover file of each token, None where there is none."""
    found = scan_covers(covers)
    return [covers / found[t] if t in found else None for t in tokens]


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB. 16-bit greyscale (PNG's "I;16", older Pillow's "I") is scaled to 8 bits first: Pillow's
    own conversion clips it at 255, which turns a 16-bit cover solid white."""
    if image.mode.startswith("I;16") or image.mode == "I":
        wide = np.asarray(image, dtype=np.float32)
        image = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":  # floating point: taken as 0..1 when it fits there, else as 0..255
        values = np.asarray(image, dtype=np.float32)
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
        image = Image.fromarray(np.clip(np.nan_to_num(values * scale), 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def encode_image(image: Image.Image, size: int, quality: int = 90) -> bytes:
    """RGB, square-resized to size x size (as the paper's 224 x 224), JPEG-encoded."""
    image = to_rgb(image)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode_cover(task: tuple[str, int, int]) -> bytes | None:
    """Read, resize and encode one cover file; None if it cannot be decoded (corrupt or truncated)."""
    path, size, quality = task
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # let libjpeg decode large covers at a reduced scale
            return encode_image(image, size, quality)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def placeholder_jpeg(size: int, quality: int = 90) -> bytes:
    """The neutral grey image used for items without a usable cover when `missing` is "placeholder"."""
    return encode_image(Image.new("RGB", (size, size), PLACEHOLDER_GREY), size, quality)


@contextmanager
def _pool(workers: int, n_tasks: int) -> Iterator[multiprocessing.pool.Pool | None]:
    """A process pool, or None where inline work is cheaper (one worker or a handful of tasks)."""
    if workers <= 1 or n_tasks < MIN_POOL_TASKS:
        yield None
        return
    with multiprocessing.get_context().Pool(min(workers, os.cpu_count() or 1)) as pool:
        yield pool


def _imap(pool: multiprocessing.pool.Pool | None, function: Callable, tasks: Sequence) -> Iterator:
    """function(task) for each task, results in task order."""
    return map(function, tasks) if pool is None else pool.imap(function, tasks, chunksize=32)


def _map_size(n_items: int, size: int) -> int:
    """A fixed upper bound (JPEG at quality <= 95 stays under raw RGB); LMDB records it, so it must be
    a function of the inputs only for the file to be reproducible."""
    return ((n_items + 16) * (3 * size * size + 8192) * 2 // (1 << 20) + 64) << 20


def build_image_store(path: Path, tokens: Sequence[str], covers: Path, *, size: int = 224, workers: int = 1,
                      missing: str = "fail", quality: int = 90, progress: bool = True) -> dict:
    """Encode each token's cover into an LMDB at `path`, in token order; returns meta.json's image_store entry.

    Missing or undecodable covers raise a UserError naming them, unless missing == "placeholder".
    """
    found = scan_covers(covers)
    files = [covers / found[t] if t in found else None for t in tokens]
    unused = len(found) - (len(tokens) - sum(f is None for f in files))
    absent = [t for t, f in zip(tokens, files) if f is None]
    if absent and missing == "fail":
        raise UserError(f"{covers}: {len(absent)} of {len(tokens)} items have no cover file (<item_id>.jpg): "
                        f"{_listing(absent, len(absent))}; use missing_images=placeholder or images=False")
    grey = placeholder_jpeg(size, quality)
    placeholders: list[str] = []
    digest = hashlib.sha256()  # of every (token, image) in order: the covers' part of the dataset's identity
    present = [(str(f), size, quality) for f in files if f is not None]
    release_env(path)
    with _pool(workers, len(present)) as pool, _bar("encode covers", len(present), progress) as bar:
        encoded = _imap(pool, encode_cover, present)
        env = lmdb.open(str(path), map_size=_map_size(len(tokens), size), subdir=True, lock=False,
                        meminit=True, sync=False, metasync=False, readahead=False)
        try:
            with env.begin(write=True) as txn:  # one ordered transaction: a reproducible file
                for token, file in zip(tokens, files):
                    data = None
                    if file is not None:
                        data = next(encoded)
                        bar.update(1)
                    if data is None:
                        placeholders.append(token)
                        data = grey
                    txn.put(token.encode("utf-8"), data)
                    digest.update(len(token).to_bytes(4, "little") + token.encode("utf-8") + len(data).to_bytes(8, "little"))
                    digest.update(data)
            env.sync(True)
        finally:
            env.close()
    absent_set = set(absent)
    corrupt = [t for t in placeholders if t not in absent_set]
    if corrupt and missing == "fail":
        raise UserError(f"{covers}: {len(corrupt)} cover files are corrupt or truncated: "
                        f"{_listing(corrupt, len(corrupt))}; use missing_images=placeholder to substitute grey")
    bad = verify_image_store(path, size, workers=workers, progress=progress)
    if bad:
        raise UserError(f"{path}: {len(bad)} stored images do not decode: {_listing(bad, len(bad))}")
    return {"path": STORE_DIR, "size": size, "format": "jpeg", "quality": quality, "placeholders": placeholders,
            "unused_covers": unused, "sha256": digest.hexdigest()}


# --- checking a store before it is mapped ---------------------------------------------------
_LMDB_MAGIC = 0xBEEFC0DE
_LMDB_PAGE_HEADER = 16  # then the meta: magic, version, address, map size, two 48-byte trees, last page, txn id
_LMDB_LAST_PAGE = 120  # offset of the last page number inside the meta
_LMDB_PAGE_SIZES = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


def check_store(path: str | Path) -> None:
    """Refuse a damaged store from its two LMDB meta pages and its file size, before anything maps it.

    LMDB never reads a page past the last one its newest meta records, so a data file at least that
    long cannot SIGBUS a reader; a shorter one (a truncated copy), an empty one or one without LMDB's
    meta pages is a one-line error naming the file.
    """
    data = Path(path) / "data.mdb"
    try:
        size = data.stat().st_size
        with open(data, "rb") as handle:
            head = handle.read(2 * _LMDB_PAGE_SIZES[-1])
    except FileNotFoundError:
        raise UserError(f"{path}: no image store here (no data.mdb); {CURE}") from None
    except OSError as err:
        raise UserError(f"{data}: cannot read ({err.strerror or err})") from None
    if size == 0:
        raise UserError(f"{data}: empty file; {CURE}")
    newest = None
    page = struct.unpack_from("<I", head, _LMDB_PAGE_HEADER + 24)[0] if len(head) >= 44 else 0
    if page in _LMDB_PAGE_SIZES:
        for start in (_LMDB_PAGE_HEADER, page + _LMDB_PAGE_HEADER):
            if len(head) < start + _LMDB_LAST_PAGE + 16:
                continue
            magic, version = struct.unpack_from("<II", head, start)
            last, txn = struct.unpack_from("<QQ", head, start + _LMDB_LAST_PAGE)
            if magic == _LMDB_MAGIC and version == 1 and (newest is None or txn > newest[0]):
                newest = (txn, last)
    if newest is None:
        raise UserError(f"{data}: not an LMDB image store (no valid header); {CURE}")
    need = (newest[1] + 1) * page
    if size < need:
        raise UserError(f"{data}: truncated ({size:,} of at least {need:,} bytes); {CURE}")


# --- shared read-only environments ---------------------------------------------------------
_ENVS: dict[str, lmdb.Environment] = {}
_ENVS_PID: int | None = None


def shared_env(path: str | Path) -> lmdb.Environment:
    """This process's read-only environment for `path`, opened once and shared by every reader.

    py-lmdb refuses a second open of one path in a process, so readers share a handle; after a fork the
    child closes the copies it inherited (read-only, lock-free: the parent's are untouched) and reopens.
    """
    global _ENVS_PID
    if _ENVS_PID != os.getpid():
        for env in _ENVS.values():
            env.close()
        _ENVS.clear()
        _ENVS_PID = os.getpid()
    key = os.path.realpath(path)
    if key not in _ENVS:
        check_store(key)
        try:
            _ENVS[key] = lmdb.open(key, readonly=True, lock=False, readahead=False, subdir=True)
        except lmdb.Error as err:
            raise UserError(f"{path}: cannot open the image store ({_lmdb_text(err)}); {CURE}") from None
    return _ENVS[key]


def _lmdb_text(err: Exception) -> str:
    return printable(str(err), 100)


def release_env(path: str | Path) -> None:
    """Close this process's shared handle on `path` (before writing to it or moving it)."""
    env = _ENVS.pop(os.path.realpath(path), None)
    if env is not None and _ENVS_PID == os.getpid():
        env.close()


# --- verification --------------------------------------------------------------------------
def _check_entry(task: tuple[str, str, int]) -> bool:
    path, key, size = task
    try:
        with shared_env(path).begin() as txn:
            data = txn.get(key.encode("utf-8"))
    except lmdb.Error:
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.size == (size, size) and image.mode == "RGB"
    except (OSError, SyntaxError, ValueError, TypeError):
        return False


def store_keys(path: Path) -> list[str]:
    """Every key of the store (item tokens), in LMDB's order."""
    try:
        with shared_env(path).begin() as txn:
            return [key.decode("utf-8", "replace") for key in txn.cursor().iternext(values=False)]
    except lmdb.Error as err:
        release_env(path)
        raise UserError(f"{path}: cannot list the image store ({_lmdb_text(err)}); {CURE}") from None


def verify_image_store(path: Path, size: int, *, workers: int = 1, progress: bool = False,
                       keys: Sequence[str] | None = None) -> list[str]:
    """Decode every entry (or those of `keys`); return the keys that are missing, fail to decode or are
    not size x size RGB."""
    if keys is None:
        keys = store_keys(path)
    tasks = [(str(path), key, size) for key in keys]
    try:
        with _pool(workers, len(tasks)) as pool, _bar("verify image store", len(tasks), progress) as bar:
            ok = []
            for good in _imap(pool, _check_entry, tasks):
                ok.append(good)
                bar.update(1)
    finally:
        release_env(path)
    return [key for key, good in zip(keys, ok) if not good]


# --- reading -------------------------------------------------------------------------------
Decoder = Callable[[list["torch.Tensor"], "torch.device"], list["torch.Tensor"]]


def _decoder() -> Decoder:
    """JPEG bytes (1-D uint8 tensors) -> uint8 [3, H, W] each, on `device`: torchvision decodes the
    whole list in one call (libjpeg-turbo on the CPU, about 2x PIL; nvjpeg on a GPU), else PIL."""
    import torch

    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        def decode_pil(parts: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
            out = []
            for part in parts:
                with Image.open(io.BytesIO(part.numpy().tobytes())) as image:
                    out.append(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).to(device))
            return out

        return decode_pil

    def decode(parts: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        with warnings.catch_warnings():
            # torchvision 0.29 warns on every call that torchcodec will take over image decoding
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
            return decode_jpeg(parts, mode=ImageReadMode.RGB, device=device)

    return decode


class ImageStore:
    """Random access to stored covers by item index: `read(indices)` -> uint8 tensor [..., 3, S, S].

    Index 0 (padding) reads as zeros. Safe to pass to DataLoader workers: the LMDB environment is
    opened lazily, once per process (see `shared_env`), and reopened after a fork.
    """

    def __init__(self, path: str | Path, tokens: Sequence[str] | np.ndarray, size: int) -> None:
        self.path = Path(path)
        if not (self.path / "data.mdb").is_file():
            raise UserError(f"{self.path}: no image store here; prepare the dataset with covers")
        check_store(self.path)  # here, in the main process, before any DataLoader worker maps it
        self.size = int(size)
        self._keys = [str(t).encode("utf-8") for t in tokens]
        self._decode: Decoder | None = None

    @classmethod
    def from_prepared(cls, data: "PreparedData") -> "ImageStore":
        """The store of a prepared dataset, with item index -> token taken from its item table."""
        store = data.meta.get("image_store")
        if not store:
            raise UserError(f"{data.root}: prepared without an image store (no covers, or prepared without "
                            "images); pixel item encoders need one")
        return cls(data.root / store["path"], data.item_tokens, store["size"])

    def __len__(self) -> int:
        return len(self._keys)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_decode": None}

    def read(self, indices: "np.ndarray | torch.Tensor | Sequence[int]",
             device: "torch.device | str | None" = None) -> "torch.Tensor":
        """Decode the covers of item indices into a uint8 tensor of shape indices.shape + (3, S, S).

        Each distinct index is decoded once, all of them in one decoder call; with a CUDA `device`
        they are decoded there (nvjpeg) and the result lives there, else on the CPU."""
        import torch

        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        flat = np.asarray(indices, dtype=np.int64)
        shape = flat.shape
        flat = flat.reshape(-1)
        if len(flat) and (flat.min() < 0 or flat.max() >= len(self._keys)):
            raise IndexError(f"item index out of range 0..{len(self._keys) - 1}")
        target = torch.device(device) if device is not None else torch.device("cpu")
        distinct, inverse = np.unique(flat, return_inverse=True)
        if len(distinct) == len(flat):  # the usual case (a batch's distinct items): no gather afterwards
            distinct, inverse = flat, None
        images = self._decode_rows(distinct, target)
        if inverse is not None:
            images = images[torch.from_numpy(inverse.reshape(-1)).to(target)]
        return images.reshape(*shape, 3, self.size, self.size)

    def _decode_rows(self, indices: np.ndarray, device: "torch.device") -> "torch.Tensor":
        """[len(indices), 3, S, S] uint8 on `device`; zeros for index 0."""
        import torch

        if self._decode is None:
            self._decode = _decoder()
        s = self.size
        present = np.flatnonzero(indices)
        wanted = indices[present]
        with shared_env(self.path).begin(buffers=True) as txn:  # buffers: no copy until the join
            blobs = [self._entry(txn, index) for index in wanted.tolist()]
            lengths = [len(blob) for blob in blobs]
            joined = bytearray().join(blobs)  # one copy, inside the transaction, where the buffers are valid
        stored = torch.frombuffer(joined, dtype=torch.uint8) if joined else torch.empty(0, dtype=torch.uint8)
        parts = list(stored.split(lengths))  # views, one per entry
        try:
            decoded = self._decode(parts, device) if parts else []
        except (RuntimeError, OSError, ValueError, SyntaxError):  # find the culprit and name it
            decoded = [self._decode_one(part, index, device) for part, index in zip(parts, wanted.tolist())]
        zero = torch.zeros((3, s, s), dtype=torch.uint8, device=device)
        rows = [zero] * len(indices)
        for row, image in zip(present.tolist(), decoded):
            if image.shape[-2:] != (s, s):
                image = torch.nn.functional.interpolate(image[None].float(), size=(s, s), mode="bilinear",
                                                        antialias=True)[0].round().byte()
            rows[row] = image
        return torch.stack(rows) if rows else torch.empty((0, 3, s, s), dtype=torch.uint8, device=device)

    def _token(self, index: int) -> str:
        return self._keys[index].decode("utf-8", "replace")

    def _entry(self, txn: lmdb.Transaction, index: int) -> memoryview:
        """The stored bytes of one item; a missing entry is a one-line error naming it."""
        try:
            data = txn.get(self._keys[index])
        except lmdb.Error as err:
            raise UserError(f"{self.path}: cannot read item {self._token(index)} ({_lmdb_text(err)}); "
                            f"{CURE}") from None
        if data is None:
            raise UserError(f"{self.path}: no image for item {self._token(index)}; {CURE}")
        return data

    def _decode_one(self, part: "torch.Tensor", index: int, device: "torch.device") -> "torch.Tensor":
        """One entry decoded alone; an undecodable one is a one-line error naming its item."""
        assert self._decode is not None
        try:
            return self._decode([part], device)[0]
        except (RuntimeError, OSError, ValueError, SyntaxError) as err:
            raise UserError(f"{self.path}: the image of item {self._token(index)} does not decode "
                            f"({_lmdb_text(err)}); {CURE}") from None
