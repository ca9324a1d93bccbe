"""PairedLoader: native vs NumPy reference, determinism, epochs, resume, cache, bad input, cleanup."""
import hashlib
import io
import logging
import os
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from pix2pix_fast.data import cache as cache_mod
from pix2pix_fast.data import loader as loader_mod
from pix2pix_fast.data import transforms as T
from pix2pix_fast.errors import DataError
from pix2pix_fast.data.loader import PairedLoader, to_unit_range

_C = pytest.importorskip("pix2pix_fast._C")


def _png(img):
    buf = io.BytesIO()
    Image.fromarray(img if img.shape[2] > 1 else img[:, :, 0]).save(buf, format="PNG")
    return buf.getvalue()


class FileDataset:
    """In-memory stand-in for datasets.py: "files" are encoded bytes, decoded by Pillow on access.

    An aligned item (one file) is split into A | B halves like the reference's
    AlignedDataset; a paired item has separate A and B files.
    """

    def __init__(self, root, files):
        self.root = str(root)
        self.files = dict(files)  # name -> bytes, or name -> (bytes_a, bytes_b)
        self.names = sorted(self.files)
        self.reads = 0

    def __len__(self):
        return len(self.names)

    def sources(self, i):
        name = self.names[i]
        if isinstance(self.files[name], tuple):
            return [f"{self.root}/A/{name}", f"{self.root}/B/{name}"]
        return [f"{self.root}/{name}"]

    def fingerprint(self):
        h = hashlib.sha256()
        for name in self.names:
            data = self.files[name]
            for part in data if isinstance(data, tuple) else (data,):
                h.update(name.encode() + hashlib.sha256(part).digest())
        return h.hexdigest()

    def _decode(self, data, path):
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                return np.asarray(im)
        except Exception as e:
            raise DataError(f"{path}: cannot decode image ({e})") from e

    def __getitem__(self, i):
        self.reads += 1
        name = self.names[i]
        data = self.files[name]
        if isinstance(data, tuple):
            return self._decode(data[0], self.sources(i)[0]), self._decode(data[1], self.sources(i)[1])
        ab = self._decode(data, self.sources(i)[0])
        w2 = ab.shape[1] // 2
        return ab[:, :w2], ab[:, w2 : 2 * w2]


def aligned(tmp_path, n=9, h=37, w=53, c=3, seed=0):
    rng = np.random.default_rng(seed)
    files = {f"{i:03d}.png": _png(rng.integers(0, 256, (h, 2 * w, c), dtype=np.uint8)) for i in range(n)}
    return FileDataset(tmp_path / "data", files)


def constant(tmp_path, n):
    """Pair i is a flat image of value 10 * i + 5 in A and B: its identity survives any transform."""
    files = {f"{i:03d}.png": _png(np.full((20, 40, 3), 10 * i + 5, np.uint8)) for i in range(n)}
    return FileDataset(tmp_path / "const", files)


def ids(batch):
    return ((batch[:, 0, 0, 0].to(torch.int64) - 5) // 10).tolist()


def run(loader, epochs=1):
    out = []
    for _ in range(epochs):
        out += [(a.clone(), b.clone()) for a, b in loader]
    return out


def kw(tmp_path, **extra):
    return dict(cache_dir=tmp_path / "cache", pin_memory=False, **extra)


# --- outputs ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "mode, load, crop",
    [("resize_and_crop", 31, 24), ("crop", 0, 16), ("scale_width_and_crop", 29, 12), ("scale_width", 35, 12), ("none", 0, 1)],
)
def test_native_matches_numpy_reference(tmp_path, mode, load, crop):
    ds = aligned(tmp_path)
    opts = dict(batch_size=4, load_size=max(load, 1), crop_size=crop, preprocess=mode, seed=3, **kw(tmp_path))
    nat = run(PairedLoader(ds, backend="native", threads=3, **opts), epochs=2)
    ref = run(PairedLoader(ds, backend="python", **opts), epochs=2)
    assert len(nat) == len(ref) == 2 * 3
    for (a, b), (ra, rb) in zip(nat, ref):
        assert a.dtype == torch.uint8 and a.shape == ra.shape
        tol = 0 if mode == "crop" else 1
        assert (a.int() - ra.int()).abs().max() <= tol
        assert (b.int() - rb.int()).abs().max() <= tol


def test_mixed_channels_and_shapes(tmp_path):
    rng = np.random.default_rng(1)
    files = {
        f"{i}.png": (_png(rng.integers(0, 256, (33, 47, 1), dtype=np.uint8)), _png(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8)))
        for i in range(5)
    }
    ds = FileDataset(tmp_path / "mixed", files)
    opts = dict(batch_size=2, load_size=21, crop_size=16, seed=2, **kw(tmp_path))
    loader = PairedLoader(ds, **opts)
    assert loader.channels == (1, 4) and loader.out_size == (16, 16)
    for (a, b), (ra, rb) in zip(loader, PairedLoader(ds, backend="python", **opts)):
        assert a.shape[1:] == (1, 16, 16) and b.shape[1:] == (4, 16, 16)
        assert (a.int() - ra.int()).abs().max() <= 1 and (b.int() - rb.int()).abs().max() <= 1


def test_same_transform_for_a_and_b(tmp_path):
    img = np.random.default_rng(2).integers(0, 256, (29, 31, 3), dtype=np.uint8)
    ds = FileDataset(tmp_path / "same", {f"{i}.png": (_png(img), _png(img)) for i in range(6)})
    for a, b in PairedLoader(ds, batch_size=3, load_size=40, crop_size=24, threads=2, **kw(tmp_path)):
        assert torch.equal(a, b)


def test_to_unit_range():
    x = torch.tensor([[0, 127, 255]], dtype=torch.uint8)
    y = to_unit_range(x)
    assert y.dtype == torch.float32
    assert torch.allclose(y, torch.tensor([[-1.0, 127 / 127.5 - 1, 1.0]]), atol=1e-7)
    assert to_unit_range(x, torch.bfloat16).dtype == torch.bfloat16
    all_levels = torch.arange(256, dtype=torch.uint8)
    exact = (2 * all_levels.double() - 255) / 255  # (2x - 255) / 255, one rounding
    assert torch.equal(to_unit_range(all_levels, torch.float64), exact)
    assert torch.equal(to_unit_range(all_levels), exact.float())  # correctly rounded


# --- determinism, epochs, resume ------------------------------------------------
def test_same_seed_same_batches_whatever_the_threads(tmp_path):
    ds = aligned(tmp_path, n=11)
    opts = dict(batch_size=3, load_size=41, crop_size=32, seed=7, **kw(tmp_path))
    one = run(PairedLoader(ds, threads=1, **opts), epochs=2)
    four = run(PairedLoader(ds, threads=4, prefetch=5, **opts), epochs=2)
    assert all(torch.equal(x, y) for p, q in zip(one, four) for x, y in zip(p, q))
    other = run(PairedLoader(ds, threads=4, **{**opts, "seed": 8}), epochs=1)
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(one, other))


def test_new_permutation_each_epoch(tmp_path):
    ds = constant(tmp_path, 12)
    loader = PairedLoader(ds, batch_size=4, load_size=20, crop_size=16, threads=2, **kw(tmp_path))
    orders = [sum((ids(a) for a, _ in loader), []) for _ in range(3)]
    assert all(sorted(o) == list(range(12)) for o in orders)
    assert len({tuple(o) for o in orders}) == 3
    assert loader.epoch == 3
    unshuffled = PairedLoader(ds, batch_size=5, load_size=20, crop_size=16, shuffle=False, **kw(tmp_path))
    assert sum((ids(a) for a, _ in unshuffled), []) == list(range(12))


def test_len_and_drop_last(tmp_path):
    ds = constant(tmp_path, 10)
    common = dict(batch_size=4, load_size=20, crop_size=16, **kw(tmp_path))
    keep = PairedLoader(ds, **common)
    assert len(keep) == 3
    assert [a.shape[0] for a, _ in keep] == [4, 4, 2]
    drop = PairedLoader(ds, drop_last=True, **common)
    assert len(drop) == 2
    batches = [ids(a) for a, _ in drop]
    assert [len(b) for b in batches] == [4, 4] and len(set(sum(batches, []))) == 8


def test_resume_mid_epoch(tmp_path):
    ds = aligned(tmp_path, n=10)
    opts = dict(batch_size=3, load_size=41, crop_size=32, seed=5, **kw(tmp_path))
    full = run(PairedLoader(ds, **opts), epochs=2)  # 4 batches per epoch

    first = PairedLoader(ds, **opts)
    it = iter(first)
    next(it), next(it)
    saved = dict(first.state)
    assert saved["epoch"] == 0 and saved["batch"] == 2
    del it

    resumed = PairedLoader(ds, **opts)
    resumed.state = saved
    rest = run(resumed, epochs=2)  # the rest of epoch 0, then epoch 1
    assert len(rest) == 2 + 4
    assert all(torch.equal(x, y) for p, q in zip(full[2:], rest) for x, y in zip(p, q))

    resumed.set_epoch(1)
    assert all(torch.equal(x, y) for p, q in zip(full[4:], run(resumed)) for x, y in zip(p, q))

    # the trainer's loop: set_epoch at the top of each epoch keeps a restored position
    again = PairedLoader(ds, **opts)
    again.state = saved
    again.set_epoch(0)
    assert len(run(again)) == 2 and again.state["epoch"] == 1
    again.set_epoch(0)
    assert len(run(again)) == 4
    with pytest.raises(ValueError, match="batch_size"):
        PairedLoader(ds, **{**opts, "batch_size": 2}).state = saved


# --- cache ------------------------------------------------------------------------
def _file_cache(ds, tmp_path, **extra):
    return PairedLoader(ds, batch_size=2, load_size=41, crop_size=32, cache_memory_limit=0, **kw(tmp_path), **extra)


def test_small_sets_stay_in_memory_large_ones_use_a_file(tmp_path):
    ds = aligned(tmp_path, n=4)
    assert PairedLoader(ds, batch_size=2, load_size=41, crop_size=32, **kw(tmp_path)).cache.location == "memory"
    loader = _file_cache(ds, tmp_path)
    assert loader.cache.location.endswith(".p2pc") and os.path.dirname(loader.cache.location) == str(tmp_path / "cache")
    mem = PairedLoader(ds, batch_size=2, load_size=41, crop_size=32, seed=0, **kw(tmp_path))
    assert all(torch.equal(x, y) for p, q in zip(run(loader), run(mem)) for x, y in zip(p, q))


def test_cache_file_is_reused_and_invalidated(tmp_path):
    ds = aligned(tmp_path, n=5)
    first = _file_cache(ds, tmp_path)
    path = first.cache.location
    assert ds.reads == 5

    ds.reads = 0
    again = _file_cache(ds, tmp_path)
    assert again.cache.location == path and ds.reads == 1  # only pair 0, to check the file

    # changed image -> rebuilt in place, new pixels
    name = ds.names[3]
    ds.files[name] = _png(np.zeros((37, 106, 3), np.uint8))
    changed = _file_cache(ds, tmp_path)
    assert changed.cache.location == path and ds.reads > 1
    assert changed.cache.pair(3)[0].max() == 0

    # added / removed image -> rebuilt with the new count
    ds.files["zzz.png"] = _png(np.full((37, 106, 3), 9, np.uint8))
    ds.names = sorted(ds.files)
    assert len(_file_cache(ds, tmp_path).cache) == 6
    del ds.files[ds.names[0]], ds.files[ds.names[1]]
    ds.names = sorted(ds.files)
    smaller = _file_cache(ds, tmp_path)
    assert len(smaller.cache) == 4 and len(run(smaller)) == 2


@pytest.mark.parametrize("damage", ["truncate", "no_marker", "garbage"])
def test_half_written_cache_is_rebuilt(tmp_path, damage, caplog):
    ds = aligned(tmp_path, n=4)
    path = _file_cache(ds, tmp_path).cache.location
    good = open(path, "rb").read()
    with open(path, "r+b") as f:
        if damage == "truncate":  # a crash in the middle of the data
            f.truncate(len(good) // 2)
        elif damage == "no_marker":  # header never finalised
            f.seek(cache_mod._HEADER.size - len(cache_mod.COMPLETE))
            f.write(b"\0" * len(cache_mod.COMPLETE))
        else:
            f.seek(0)
            f.write(b"junk" * 8)
    # a stale temporary file from a crashed build is neither read nor a problem
    (tmp_path / "cache" / (os.path.basename(path) + ".tmp.999999.dead")).write_bytes(b"partial")
    ds.reads = 0
    with caplog.at_level(logging.WARNING, logger="pix2pix_fast.data.cache"):
        rebuilt = _file_cache(ds, tmp_path)
    assert "rebuilding" in caplog.text
    assert ds.reads >= 4 and open(path, "rb").read() == good
    ref = PairedLoader(ds, batch_size=2, load_size=41, crop_size=32, **kw(tmp_path))
    assert all(torch.equal(x, y) for p, q in zip(run(rebuilt), run(ref)) for x, y in zip(p, q))


# --- bad input ----------------------------------------------------------------------
def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    ds = aligned(tmp_path, n=6)
    ds.files[ds.names[2]] = b"this is not an image"
    with pytest.raises(DataError, match=r"data/002\.png"):
        PairedLoader(ds, batch_size=2, load_size=41, crop_size=32, threads=2, **kw(tmp_path))

    ds = aligned(tmp_path, n=6)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8)).save(buf, "JPEG")
    ds.files[ds.names[4]] = buf.getvalue()[: len(buf.getvalue()) // 2]
    with pytest.raises(DataError, match=r"data/004\.png"):
        _file_cache(ds, tmp_path)
    assert not list((tmp_path / "cache").glob(".*.tmp"))  # the aborted build left nothing behind


def test_dataset_errors_of_other_types_are_wrapped(tmp_path):
    class Broken(FileDataset):
        def __getitem__(self, i):
            if i == 1:
                raise OSError("disk on fire")
            return super().__getitem__(i)

    ds = aligned(tmp_path, n=3)
    broken = Broken(ds.root, ds.files)
    with pytest.raises(DataError, match=r"data/001\.png: cannot read image \(OSError: disk on fire\)"):
        PairedLoader(broken, batch_size=1, load_size=41, crop_size=32, **kw(tmp_path))


def test_unusable_sizes_are_rejected_at_build(tmp_path):
    rng = np.random.default_rng(0)
    ds = aligned(tmp_path, n=3, h=40, w=40)
    ds.files[ds.names[1]] = _png(rng.integers(0, 256, (12, 80, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"data/001\.png: image 12x40 \(HxW\) is smaller than crop_size 32"):
        PairedLoader(ds, batch_size=1, crop_size=32, preprocess="crop", **kw(tmp_path))
    # resizing modes handle small images as the reference does
    assert len(PairedLoader(ds, batch_size=1, load_size=41, crop_size=32, **kw(tmp_path))) == 3
    with pytest.raises(DataError, match=r"data/001\.png.*one size"):
        PairedLoader(ds, batch_size=1, preprocess="none", **kw(tmp_path))
    gray = aligned(tmp_path, n=3, h=40, w=40)
    gray.files[gray.names[2]] = _png(rng.integers(0, 256, (40, 80, 1), dtype=np.uint8))
    with pytest.raises(DataError, match=r"data/002\.png: 1 channel\(s\), but .*data/000\.png has 3"):
        PairedLoader(gray, batch_size=1, load_size=41, crop_size=32, **kw(tmp_path))


def test_bad_options():
    with pytest.raises(ValueError, match="preprocess"):
        PairedLoader(None, 1, preprocess="zoom")
    with pytest.raises(ValueError, match="crop_size 300 > load_size 286"):
        PairedLoader(None, 1, crop_size=300)
    with pytest.raises(ValueError, match="batch_size"):
        PairedLoader(None, 0)


def test_worker_exception_reaches_python():
    # Bypass the build-time checks: a 10x10 image cannot give a 16x16 crop.
    imgs = [np.zeros((40, 40, 3), np.uint8), np.zeros((40, 40, 3), np.uint8), np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10, 3), np.uint8)]
    index = np.array([[k, 0, *im.shape] for k, im in enumerate(imgs)], dtype=np.int64)
    pipe = _C.loader.Pipeline(_C.loader.Store(imgs, index), 16, 16, "crop", True, 0, 2)
    a, b = np.empty((2, 3, 16, 16), np.uint8), np.empty((2, 3, 16, 16), np.uint8)
    pipe.submit(0, 0, np.array([0, 1]), a, b)
    with pytest.raises(RuntimeError, match=r"sample 1: image 10x10 \(HxW\) is smaller than crop_size 16"):
        pipe.wait(0)
    pipe.submit(1, 0, np.array([0, 0]), a, b)  # the pipeline still works
    pipe.wait(1)
    with pytest.raises(ValueError, match="C-contiguous|writable"):
        pipe.submit(2, 0, np.array([0, 0]), a[:, :, :, ::2], b)
    pipe.close()
    with pytest.raises(RuntimeError, match="closed"):
        pipe.submit(3, 0, np.array([0]), a[:1], b[:1])


def test_worker_error_becomes_data_error_naming_the_file(tmp_path, monkeypatch):
    ds = aligned(tmp_path, n=4)
    loader = PairedLoader(ds, batch_size=2, load_size=41, crop_size=32, shuffle=False, **kw(tmp_path))
    loader.out_size = (30, 30)  # batches the workers cannot fill
    with pytest.raises(DataError, match=r"data/00[01]\.png: output 32x32 does not match the batch's 30x30"):
        next(iter(loader))


# --- threads ---------------------------------------------------------------------
def _os_threads():
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc")
def test_breaking_early_joins_the_threads(tmp_path):
    ds = aligned(tmp_path, n=8)
    loader = PairedLoader(ds, batch_size=1, load_size=41, crop_size=32, threads=4, **kw(tmp_path))
    next(iter(loader))
    baseline = _os_threads()
    for _ in range(25):
        loader = PairedLoader(ds, batch_size=1, load_size=41, crop_size=32, threads=4, prefetch=3, **kw(tmp_path))
        for step, _ in enumerate(loader):
            if step == 1:
                break
        it = iter(loader)
        next(it)
        assert _os_threads() >= baseline + 4  # this iterator's workers are running
        it.close()
    del loader, it
    assert _os_threads() == baseline


def test_close_from_another_thread_never_hangs():
    # A waiter (GIL released) and close() (GIL held, frees the buffers) race.
    imgs = [np.zeros((40, 40, 3), np.uint8)] * 4
    index = np.array([[k, 0, 40, 40, 3] for k in range(4)], dtype=np.int64)
    store = _C.loader.Store(imgs, index)
    for _ in range(30):
        pipe = _C.loader.Pipeline(store, 40, 32, "resize_and_crop", True, 0, 2)
        bufs = [(torch.empty(2, 3, 32, 32, dtype=torch.uint8), torch.empty(2, 3, 32, 32, dtype=torch.uint8)) for _ in range(4)]
        for i, (a, b) in enumerate(bufs):
            pipe.submit(i, 0, np.array([0, 1]), a.numpy(), b.numpy())
        del bufs  # the pipeline holds the only references: close() frees torch tensors
        closer = threading.Thread(target=pipe.close)
        closer.start()
        for i in range(4):
            try:
                pipe.wait(i)
            except (RuntimeError, KeyError):
                pass
        closer.join(timeout=30)
        assert not closer.is_alive()


def test_python_fallback_without_the_extension(tmp_path, monkeypatch):
    ds = aligned(tmp_path, n=3)
    monkeypatch.setattr(loader_mod, "_native", lambda: None)
    with pytest.warns(UserWarning, match="NumPy loader"):
        loader = PairedLoader(ds, batch_size=2, load_size=41, crop_size=32, **kw(tmp_path))
    assert loader.backend == "python" and len(run(loader)) == 2
    with pytest.raises(RuntimeError, match="_C"):
        PairedLoader(ds, batch_size=2, backend="native", **kw(tmp_path))


def test_sample_is_the_reference_of_one_item(tmp_path):
    ds = aligned(tmp_path, n=3)
    loader = PairedLoader(ds, batch_size=3, load_size=41, crop_size=32, shuffle=False, **kw(tmp_path))
    a, b = next(iter(loader))
    ra, rb = loader.sample(2, epoch=0)
    p = T.sample_params(0, 0, 2, ds[2][0].shape[:2], 41, 32, "resize_and_crop", True)
    assert np.array_equal(ra, T.apply(ds[2][0], p).transpose(2, 0, 1))
    assert (a[2].int() - torch.from_numpy(ra).int()).abs().max() <= 1


@pytest.mark.gpu
def test_batches_are_pinned_on_cuda_hosts(tmp_path):
    ds = aligned(tmp_path, n=2)
    a, b = next(iter(PairedLoader(ds, batch_size=2, load_size=41, crop_size=32, cache_dir=tmp_path / "c")))
    assert a.is_pinned() and b.is_pinned()
    x = to_unit_range(a.cuda(non_blocking=True))
    assert x.is_cuda and x.min() >= -1 and x.max() <= 1
