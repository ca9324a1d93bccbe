"""Decode-once image cache for the paired loader.

Every image of a dataset is decoded a single time (``dataset[i]``, i.e. Pillow)
and stored as uint8, planar (C, H, W): the native kernels then read contiguous
rows of one channel. Small datasets stay in memory; once the decoded
bytes pass ``memory_limit`` (default 2 GiB) they go to a cache file in
``cache_dir`` (default ``$PIX2PIX_FAST_CACHE`` or ``~/.cache/pix2pix-fast``)
that is memory-mapped, shared with the OS page cache and reused by later runs.

Cache file (little-endian), ``<slot>.p2pc``::

    header, HEADER_SIZE bytes:  magic b"P2PCACHE", version u32, header size u32,
        pairs u64, sha256(dataset.fingerprint()) 32 B, sha256(pair 0's pixels
        and shapes) 32 B, index offset u64, index rows u64, data offset u64,
        file size u64, completion marker b"COMPLETE" (zeros until finished)
    data:     each image's C*H*W bytes (planar), 64-byte aligned, A of pair i then B
    index:    one row per image: int64 (offset, h, w, c)
    trailer:  b"P2PC-END"

The slot (file name) is a hash of the folders the dataset reads, so a changed,
added or removed image (a new ``fingerprint()``) rebuilds the same file in
place. A file is written under a temporary name, fsync'ed and renamed, so a
crash while building never leaves a file under the final name; a file that is
nevertheless incomplete or inconsistent (wrong size, no completion marker or
trailer, offsets out of range, other fingerprint, pair 0 not matching a fresh
decode) is never read: it is rebuilt.

Decoding errors surface here, before any training: a corrupt, truncated or
unreadable file raises ``DataError`` naming the file.
"""
from __future__ import annotations

import hashlib
import logging
import os
import struct
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pix2pix_fast.errors import DataError
from pix2pix_fast.fileio import fsync_dir, remove_stale_temps, temp_sibling, write_error

log = logging.getLogger(__name__)

DEFAULT_MEMORY_LIMIT = 2 * 1024**3
MAGIC = b"P2PCACHE"
VERSION = 1
HEADER_SIZE = 4096
ALIGN = 64
COMPLETE = b"COMPLETE"
TRAILER = b"P2PC-END"
_HEADER = struct.Struct("<8sIIQ32s32sQQQQ8s")
_INDEX_COLS = 4  # offset, h, w, c


@dataclass
class PairCache:
    """Decoded pairs: image k (A of pair i is 2i, B is 2i + 1) lies in bases[index[k, 0]]
    at byte index[k, 1], planar (c, h, w) with (h, w, c) = index[k, 2:5]."""

    bases: list[Any]
    index: np.ndarray  # (2 * pairs, 5) int64: base, offset, h, w, c
    location: str  # "memory" or the cache file's path

    def __len__(self) -> int:
        return len(self.index) // 2

    def image(self, k: int) -> np.ndarray:
        """Image k as an (H, W, C) view of the planar storage."""
        base, off, h, w, c = (int(v) for v in self.index[k])
        flat = np.asarray(self.bases[base]).reshape(-1)
        return flat[off : off + h * w * c].reshape(c, h, w).transpose(1, 2, 0)

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.image(2 * i), self.image(2 * i + 1)


def default_cache_dir() -> Path:
    env = os.environ.get("PIX2PIX_FAST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "pix2pix-fast"


def describe(dataset: Any, i: int, which: str | None = None) -> str:
    """The file(s) behind pair i (A: first source, B: last), for error messages."""
    try:
        src = [str(s) for s in dataset.sources(i)]
    except Exception:  # naming must not hide the original error
        src = []
    if not src:
        names = getattr(dataset, "names", None)
        return f"pair {i} ({names[i]})" if names is not None and i < len(names) else f"pair {i}"
    if which == "A":
        return src[0]
    if which == "B":
        return src[-1]
    return " + ".join(dict.fromkeys(src))


def _as_image(x: Any, dataset: Any, i: int, which: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != np.uint8:
        raise DataError(f"{describe(dataset, i, which)}: decoded to {a.dtype}, expected uint8")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.size == 0:
        raise DataError(f"{describe(dataset, i, which)}: decoded to shape {a.shape}, expected (H, W, C)")
    return a


def load_pair(dataset: Any, i: int) -> tuple[np.ndarray, np.ndarray]:
    """dataset[i] as two (H, W, C) uint8 arrays; any failure is a DataError naming the file."""
    try:
        a, b = dataset[i]
    except DataError:
        raise
    except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, ... for bad files
        raise DataError(f"{describe(dataset, i)}: cannot read image ({type(e).__name__}: {e})") from e
    return _as_image(a, dataset, i, "A"), _as_image(b, dataset, i, "B")


def _decode_all(dataset: Any, threads: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pairs in order, decoded by `threads` threads (Pillow releases the GIL), a bounded window ahead."""
    n = len(dataset)
    if threads <= 1:
        for i in range(n):
            yield load_pair(dataset, i)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="p2p-decode") as pool:
        window: deque = deque()
        try:
            for i in range(n):
                window.append(pool.submit(load_pair, dataset, i))
                if len(window) >= 2 * threads:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for f in window:
                f.cancel()


def _planar(img: np.ndarray) -> np.ndarray:
    """(H, W, C) -> contiguous (C, H, W)."""
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _probe(a: np.ndarray, b: np.ndarray) -> bytes:
    h = hashlib.sha256(repr((a.shape, b.shape)).encode())
    h.update(np.ascontiguousarray(a).data)
    h.update(np.ascontiguousarray(b).data)
    return h.digest()


def _slot(dataset: Any, fingerprint: str) -> str:
    """Cache file name: the folders the dataset reads (or, without sources, its fingerprint)."""
    dirs = set()
    for i in range(len(dataset)):
        for s in dataset.sources(i):
            dirs.add(str(Path(s).resolve().parent))
    key = type(dataset).__qualname__ + "\n" + ("\n".join(sorted(dirs)) if dirs else fingerprint)
    return hashlib.sha256(key.encode()).hexdigest()[:24]


class _FileWriter:
    """Streams images into a temporary file; `finish` makes it the cache file atomically."""

    def __init__(self, path: Path, pairs: int, fingerprint_hash: bytes):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.tmp = temp_sibling(path)
        self.pairs = pairs
        self.fingerprint_hash = fingerprint_hash
        self.f = open(self.tmp, "wb")
        self.f.write(b"\0" * HEADER_SIZE)
        self.pos = HEADER_SIZE
        self.rows: list[tuple[int, int, int, int]] = []

    def _align(self) -> None:
        pad = -self.pos % ALIGN
        if pad:
            self.f.write(b"\0" * pad)
            self.pos += pad

    def add(self, img: np.ndarray) -> None:
        """Append one (H, W, C) image, stored planar."""
        self._align()
        h, w, c = img.shape
        self.rows.append((self.pos, h, w, c))
        self.f.write(_planar(img).data)
        self.pos += img.nbytes

    def finish(self, probe: bytes) -> None:
        self._align()
        index_offset = self.pos
        self.f.write(np.asarray(self.rows, dtype="<i8").tobytes())
        self.f.write(TRAILER)
        size = index_offset + len(self.rows) * _INDEX_COLS * 8 + len(TRAILER)
        header = _HEADER.pack(
            MAGIC, VERSION, HEADER_SIZE, self.pairs, self.fingerprint_hash, probe,
            index_offset, len(self.rows), HEADER_SIZE, size, COMPLETE,
        )
        self.f.seek(0)
        self.f.write(header)
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


def open_cache_file(
    path: Path, dataset: Any, fingerprint_hash: bytes, check_pair0: bool = True
) -> tuple[PairCache | None, str]:
    """(cache, "") if `path` is a complete cache of this dataset, else (None, why not).

    check_pair0 also decodes pair 0 and compares it with the file (catches a
    fingerprint that misses a change, e.g. A and B swapped)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(_HEADER.size)
    except OSError as e:
        return None, f"unreadable ({e})"
    if size < HEADER_SIZE + len(TRAILER) or len(head) < _HEADER.size:
        return None, "truncated"
    (magic, version, header_size, pairs, fp, probe, index_offset, rows, data_offset, file_size,
     complete) = _HEADER.unpack(head)
    if magic != MAGIC:
        return None, "not a cache file"
    if version != VERSION or header_size != HEADER_SIZE:
        return None, f"format version {version}, expected {VERSION}"
    if complete != COMPLETE:
        return None, "incomplete (no completion marker)"
    if file_size != size:
        return None, f"size {size} bytes, header says {file_size}"
    if fp != fingerprint_hash:
        return None, "the dataset changed (fingerprint)"
    if pairs != len(dataset) or rows != 2 * pairs:
        return None, f"{pairs} pairs, the dataset has {len(dataset)}"
    index_end = index_offset + rows * _INDEX_COLS * 8
    if data_offset != HEADER_SIZE or index_offset < data_offset or index_end + len(TRAILER) != size:
        return None, "inconsistent offsets"
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    if bytes(mm[size - len(TRAILER) :]) != TRAILER:
        return None, "no trailer"
    table = np.frombuffer(mm[index_offset:index_end], dtype="<i8").reshape(rows, _INDEX_COLS).astype(np.int64)
    off, h, w, c = table.T
    if (h <= 0).any() or (w <= 0).any() or (c <= 0).any() or (off < data_offset).any() or (
        off + h * w * c > index_offset
    ).any():
        return None, "index out of range"
    cache = PairCache([mm], np.column_stack([np.zeros(rows, dtype=np.int64), table]), str(path))
    if not check_pair0:
        return cache, ""
    a, b = load_pair(dataset, 0)
    if _probe(a, b) != probe or not (np.array_equal(cache.image(0), a) and np.array_equal(cache.image(1), b)):
        return None, "pair 0 differs from a fresh decode"
    return cache, ""


def load_or_build(
    dataset: Any,
    *,
    memory_limit: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    threads: int = 1,
) -> PairCache:
    """Decode every pair of `dataset` once: in memory up to `memory_limit` bytes, else a cache file."""
    n = len(dataset)
    if n == 0:
        raise DataError("the dataset has no images")
    limit = DEFAULT_MEMORY_LIMIT if memory_limit is None else int(memory_limit)
    fingerprint = str(dataset.fingerprint())
    fp_hash = _sha(fingerprint.encode())
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"{_slot(dataset, fingerprint)}.p2pc"
    if path.exists():
        cache, why = open_cache_file(path, dataset, fp_hash)
        if cache is not None:
            log.info("using image cache %s", path)
            return cache
        log.warning("image cache %s is not usable (%s); rebuilding it", path, why)

    in_memory: list[np.ndarray] = []
    total = 0
    writer: _FileWriter | None = None
    probe = b""
    try:
        for i, (a, b) in enumerate(_decode_all(dataset, threads)):
            if i == 0:
                probe = _probe(a, b)
            if writer is None:
                in_memory += [_planar(a), _planar(b)]
                total += a.nbytes + b.nbytes
                if total > limit:
                    remove_stale_temps(path.parent)
                    writer = _FileWriter(path, n, fp_hash)
                    for img in in_memory:
                        writer.add(img.transpose(1, 2, 0))
                    in_memory = []
            else:
                writer.add(a)
                writer.add(b)
        if writer is not None:
            writer.finish(probe)
    except BaseException as e:
        if writer is not None:
            writer.abort()
        if isinstance(e, OSError):  # a full disk while writing the cache file
            raise write_error(path, e) from None
        raise
    if writer is None:
        index = np.array([(k, 0, h, w, c) for k, (c, h, w) in enumerate(img.shape for img in in_memory)], dtype=np.int64)
        return PairCache(in_memory, index, "memory")
    log.info("wrote image cache %s (%d pairs)", path, n)
    cache, why = open_cache_file(path, dataset, fp_hash, check_pair0=False)
    if cache is None:
        raise DataError(f"{path}: the image cache just written does not read back ({why})")
    return cache
