"""PairedLoader: the pix2pix input pipeline, native (C++ threads) or NumPy reference.

    loader = PairedLoader(dataset, batch_size=16)          # 286 -> random 256 crop + flip
    for a, b in loader:                                     # uint8 (N, C, 256, 256), pinned on CUDA hosts
        a = to_unit_range(a.to(device, non_blocking=True))  # [-1, 1] on the device
        b = to_unit_range(b.to(device, non_blocking=True))

Data flow: `dataset[i]` decodes each image once into a uint8 cache (cache.py:
in memory, or a memory-mapped file for large sets). Each batch's output
tensors are allocated here (``pin_memory=True`` when CUDA is present, so the
copy to the GPU is asynchronous) and handed to the C++ pipeline
(csrc/loader.cpp), whose worker threads -- which never hold the GIL -- render
each sample (resize + crop + flip in one pass, transforms.py documents the
filter) straight into them. ``prefetch`` batches are rendered ahead of the one
the trainer holds. Every yielded tensor is fresh: keeping it (or an async copy
from it still in flight) is safe.

Determinism: a sample's crop/flip is a hash of (seed, epoch, index) and the
epoch's order a hash of (seed, epoch), so batches do not depend on the
thread count or timing, and ``state`` (epoch + batches consumed) resumes an
interrupted epoch exactly. An iteration runs from ``state`` to the end of
that epoch and then moves to the next epoch; breaking out early keeps the
position, so the next iteration continues the same epoch. ``set_epoch(e)``
moves to the start of epoch e (and keeps the position if already in e)::

    loader.state = checkpoint["loader"]        # resume: epoch 3, batch 117
    for epoch in range(start_epoch, epochs):
        loader.set_epoch(epoch)                # no-op for the resumed epoch
        for a, b in loader: ...
        checkpoint["loader"] = loader.state

Several processes (data-parallel training, ``rank`` of ``world_size``): batch
k of an epoch is the batch k a single loader with ``batch_size x world_size``
would yield, and rank r gets its r-th slice of ``batch_size`` samples. So the
samples of a step, their order and their crops and flips do not depend on
the number of processes, only the split does; ``state`` counts these global
batches (and records the global batch size).

``backend="python"`` runs the same pipeline on the NumPy reference
(transforms.py) in the calling thread: slow, for comparisons and for machines
without the extension; ``"auto"`` picks the native one when it is built.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from collections import deque
from typing import Any

import numpy as np
import torch

from pix2pix_fast.data import transforms as T
from pix2pix_fast.data.cache import PairCache, describe, load_or_build
from pix2pix_fast.errors import DataError

BACKENDS = ("auto", "native", "python")


def to_unit_range(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [0, 255] -> `dtype` [-1, 1], i.e. x / 127.5 - 1, on x's device: call it after the copy to the GPU.

    Computed as (x - 127.5) / 127.5 in float32 (float64 for a float64 result;
    x - 127.5 is exact), one rounding, then cast: bf16/fp16 results carry a
    single rounding too. Two elementwise kernels for float32. Equals the
    reference's ToTensor() + Normalize(0.5, 0.5).
    """
    if dtype == torch.float64:
        return x.to(torch.float64).sub_(127.5).div_(127.5)
    y = x.sub(127.5)  # uint8 - Python float -> the default float dtype
    if y.dtype != torch.float32:
        y = y.to(torch.float32)
    return y.div_(127.5).to(dtype)


def _native():
    """The compiled extension's loader module, or None when it is not built."""
    try:
        from pix2pix_fast import _C
    except ImportError:
        return None
    return getattr(_C, "loader", None)


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class PairedLoader:
    """Batches of (A, B) uint8 tensors (N, C, H, W) of a paired dataset, augmented as pix2pix does.

    dataset: ``len(ds)``, ``ds[i] -> (A, B)`` uint8 (H, W, C) arrays, ``ds.names``,
    ``ds.fingerprint() -> str``, ``ds.sources(i) -> list[str]``.
    preprocess: resize_and_crop | crop | scale_width | scale_width_and_crop | none (transforms.py).
    threads: worker threads (None: one per available core); also used to decode the cache.
    pin_memory: None = when CUDA is available.
    cache_dir / cache_memory_limit: where the decoded cache goes once it exceeds
    cache_memory_limit bytes (default 2 GiB); see cache.py.
    prefetch: batches rendered ahead of the one being consumed (None: enough to
    keep every thread busy, at least 2).
    rank / world_size: this process's slice of each global batch of
    ``batch_size x world_size`` samples (needs ``drop_last`` when world_size > 1).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        load_size: int | tuple[int, int] = 286,
        crop_size: int | tuple[int, int] = 256,
        flip: bool = True,
        preprocess: str = "resize_and_crop",
        threads: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        pin_memory: bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        *,
        backend: str = "auto",
        prefetch: int | None = None,
        cache_memory_limit: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..world_size-1 and world_size >= 1, got {rank} and {world_size}")
        if world_size > 1 and not drop_last:
            raise ValueError("world_size > 1 needs drop_last=True (every rank takes an equal slice of a full batch)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        load_hw, crop_hw = T.size_hw(load_size), T.size_hw(crop_size)
        if min(load_hw + crop_hw) < 1:
            raise ValueError(f"load_size and crop_size must be >= 1, got {load_size} and {crop_size}")
        if preprocess not in T.PREPROCESS_MODES:
            raise ValueError(f"preprocess must be one of {', '.join(T.PREPROCESS_MODES)}; got '{preprocess}'")
        if preprocess in ("resize_and_crop", "scale_width_and_crop") and (
                crop_hw[1] > load_hw[1] or (preprocess == "resize_and_crop" and crop_hw[0] > load_hw[0])):
            raise ValueError(f"crop_size {crop_size} > load_size {load_size} with preprocess={preprocess}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 (or None for one per core), got {threads}")
        if prefetch is not None and prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got '{backend}'")
        native = _native()
        if backend == "native" and native is None:
            raise RuntimeError("backend='native' needs the compiled extension pix2pix_fast._C (pip install -e .)")
        if backend == "auto":
            if native is None:
                warnings.warn(
                    "pix2pix_fast._C is not built: using the slow NumPy loader (backend='python')", stacklevel=2
                )
            backend = "native" if native is not None else "python"

        self.dataset = dataset
        self.batch_size = int(batch_size)  # per rank
        self.rank, self.world_size = int(rank), int(world_size)
        self.global_batch_size = self.batch_size * self.world_size
        self.load_size = load_hw  # (height, width)
        self.crop_size = crop_hw
        self.flip = bool(flip)
        self.preprocess = preprocess
        self.threads = int(threads) if threads is not None else default_threads()
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.backend = backend
        self.prefetch = prefetch if prefetch is not None else max(2, math.ceil(2 * self.threads / self.batch_size))
        self._epoch = 0
        self._batch = 0  # batches of `_epoch` already consumed

        self.cache: PairCache = load_or_build(
            dataset, memory_limit=cache_memory_limit, cache_dir=cache_dir, threads=self.threads
        )
        self.channels, self.out_size = self._check_images()
        self._store = native.Store(list(self.cache.bases), self.cache.index) if backend == "native" else None

    # --- shape checks at build time (not mid-epoch in a thread) -------------
    def _check_images(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(A channels, B channels), (H, W) of every output; DataError naming the first file that breaks them."""
        idx = self.cache.index
        geo: dict[tuple[int, int], T.Geometry] = {}
        channels: list[int | None] = [None, None]
        first: list[int] = [0, 0]
        out: tuple[int, int] | None = None
        out_from = 0
        for i in range(len(self.cache)):
            sizes = []
            for side, which in enumerate("AB"):
                _, _, h, w, c = (int(v) for v in idx[2 * i + side])
                if channels[side] is None:
                    channels[side], first[side] = c, i
                elif c != channels[side]:
                    raise DataError(
                        f"{describe(self.dataset, i, which)}: {c} channel(s), but "
                        f"{describe(self.dataset, first[side], which)} has {channels[side]}"
                    )
                if (h, w) not in geo:
                    try:
                        geo[h, w] = T.output_geometry(h, w, self.load_size, self.crop_size, self.preprocess)
                    except ValueError as e:
                        raise DataError(
                            f"{describe(self.dataset, i, which)}: {e} (preprocess={self.preprocess})"
                        ) from None
                sizes.append(geo[h, w])
            ga, gb = sizes
            if (ga.resize_h, ga.resize_w) != (gb.resize_h, gb.resize_w):
                raise DataError(
                    f"{describe(self.dataset, i)}: A resizes to {ga.resize_h}x{ga.resize_w} but B to "
                    f"{gb.resize_h}x{gb.resize_w} with preprocess={self.preprocess}; A and B must match"
                )
            if out is None:
                out, out_from = (ga.crop_h, ga.crop_w), i
            elif (ga.crop_h, ga.crop_w) != out:
                raise DataError(
                    f"{describe(self.dataset, i)}: gives {ga.crop_h}x{ga.crop_w} samples but "
                    f"{describe(self.dataset, out_from)} gives {out[0]}x{out[1]} with preprocess="
                    f"{self.preprocess}; batches need one size (use a crop mode)"
                )
        assert out is not None and channels[0] is not None and channels[1] is not None
        return (channels[0], channels[1]), out

    # --- epochs and resume ---------------------------------------------------
    def __len__(self) -> int:
        n, bs = len(self.cache), self.global_batch_size
        return n // bs if self.drop_last else math.ceil(n / bs)

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration run `epoch` from its first batch.

        If the loader is already in `epoch` (e.g. restored mid-epoch from
        `state`), it keeps its position, so a trainer may call set_epoch at the
        top of every epoch and still resume exactly.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if int(epoch) != self._epoch:
            self._epoch, self._batch = int(epoch), 0

    @property
    def state(self) -> dict[str, int]:
        """Where the loader stands: save it with a checkpoint, assign it back to resume exactly."""
        return {
            "seed": self.seed,
            "epoch": self._epoch,
            "batch": self._batch,
            "samples": len(self.cache),
            "batch_size": self.global_batch_size,
        }

    @state.setter
    def state(self, state: dict[str, int]) -> None:
        mine = self.state
        for key in ("seed", "samples", "batch_size"):
            if int(state[key]) != mine[key]:
                raise ValueError(
                    f"loader state has {key}={state[key]} but this loader has {key}={mine[key]}; "
                    "cannot resume the same batches"
                )
        if not 0 <= int(state["batch"]) <= len(self):
            raise ValueError(f"loader state batch={state['batch']} outside 0..{len(self)}")
        self._epoch, self._batch = int(state["epoch"]), int(state["batch"])

    def _advance(self, epoch: int, consumed: int) -> None:
        # Called by an iterator after each batch; the epoch ends after its last batch.
        if consumed >= len(self):
            self._epoch, self._batch = epoch + 1, 0
        else:
            self._epoch, self._batch = epoch, consumed

    def _epoch_batches(self) -> tuple[int, int, list[np.ndarray]]:
        # A loader standing at the end of its epoch (a state saved after the
        # epoch's last batch) yields nothing: that epoch is over, and
        # set_epoch(epoch + 1) moves on. It never runs ahead into the next
        # epoch, which the caller would count as the rest of this one.
        epoch, start = self._epoch, self._batch
        order = T.permutation(self.seed, epoch, len(self.cache), self.shuffle)
        bs, lo = self.global_batch_size, self.rank * self.batch_size
        batches = [order[k * bs : (k + 1) * bs][lo : lo + self.batch_size] for k in range(start, len(self))]
        return epoch, start, batches

    def __iter__(self):
        epoch, start, batches = self._epoch_batches()
        if self.backend == "native":
            return _NativeIterator(self, epoch, start, batches)
        return _PythonIterator(self, epoch, start, batches)

    # --- helpers for the iterators -------------------------------------------
    def _empty(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = self.out_size
        ca, cb = self.channels
        a = torch.empty((n, ca, h, w), dtype=torch.uint8, pin_memory=self.pin_memory)
        b = torch.empty((n, cb, h, w), dtype=torch.uint8, pin_memory=self.pin_memory)
        return a, b

    def _worker_error(self, err: RuntimeError) -> DataError:
        msg = str(err)
        m = re.match(r"sample (\d+): (.*)", msg, re.S)
        if m:
            return DataError(f"{describe(self.dataset, int(m.group(1)))}: {m.group(2)}")
        return DataError(f"data loader: {msg}")

    def sample(self, index: int, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pair `index` as the NumPy reference renders it in `epoch` (default: the current one): (C, H, W) uint8."""
        e = self._epoch if epoch is None else epoch
        a, b = self.cache.pair(index)
        p = T.sample_params(
            self.seed, e, index, a.shape[:2], self.load_size, self.crop_size, self.preprocess, self.flip
        )
        return T.apply(a, p).transpose(2, 0, 1), T.apply(b, p).transpose(2, 0, 1)


class _NativeIterator:
    """One epoch on the C++ pipeline; closing it (or dropping it) joins the threads."""

    def __init__(self, loader: PairedLoader, epoch: int, start: int, batches: list[np.ndarray]):
        self._pipe = None  # first, so that close() works whatever __init__ reaches
        native = _native()
        self._loader = loader
        self._epoch = epoch
        self._next = start  # number of the next batch to yield
        self._todo = deque(batches)
        self._pending: deque = deque()  # (id, a, b), submitted in order
        self._next_id = start
        if batches:
            threads = min(loader.threads, len(loader.cache))
            (load_h, load_w), (crop_h, crop_w) = loader.load_size, loader.crop_size
            self._pipe = native.Pipeline(
                loader._store, load_w, crop_w, loader.preprocess, loader.flip, loader.seed & ((1 << 64) - 1), threads,
                load_h=load_h, crop_h=crop_h,
            )
            self._fill(loader.prefetch)

    def _fill(self, depth: int) -> None:
        while self._todo and self._pipe is not None and len(self._pending) < depth:
            idx = self._todo.popleft()
            a, b = self._loader._empty(len(idx))
            self._pipe.submit(self._next_id, self._epoch, idx, a.numpy(), b.numpy())
            self._pending.append((self._next_id, a, b))
            self._next_id += 1

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pipe is None or not self._pending:
            self.close()
            raise StopIteration
        self._fill(self._loader.prefetch + 1)
        bid, a, b = self._pending.popleft()
        pipe = self._pipe
        try:
            pipe.wait(bid)
        except RuntimeError as e:
            if self._pipe is None:  # closed (from another thread) while waiting
                raise StopIteration from None
            self.close()
            raise self._loader._worker_error(e) from None
        self._fill(self._loader.prefetch)
        self._next += 1
        self._loader._advance(self._epoch, self._next)
        return a, b

    def close(self) -> None:
        """Stop: drop queued batches and join the worker threads."""
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        self._pending.clear()
        self._todo.clear()

    def __del__(self):
        self.close()


class _PythonIterator:
    """One epoch on the NumPy reference, in the calling thread."""

    def __init__(self, loader: PairedLoader, epoch: int, start: int, batches: list[np.ndarray]):
        self._loader = loader
        self._epoch = epoch
        self._next = start
        self._todo = deque(batches)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._todo:
            raise StopIteration
        idx = self._todo.popleft()
        a, b = self._loader._empty(len(idx))
        an, bn = a.numpy(), b.numpy()
        for j, i in enumerate(idx):
            an[j], bn[j] = self._loader.sample(int(i), self._epoch)
        self._next += 1
        self._loader._advance(self._epoch, self._next)
        return a, b

    def close(self) -> None:
        self._todo.clear()
