"""The built-in synthetic facades: determinism, the folder protocol, and that B is learnable from A."""
import json

import numpy as np
import pytest

from pix2pix_fast.data import DataError, PairedDataset, synthetic_dataset
from pix2pix_fast.data.synthetic import CLASSES, MARKER, PALETTE, labels_of, render_pair

S = 64
SMALL = dict(size=S, n_train=5, n_val=2, n_test=1)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_render_pair_shapes_and_palette():
    a, b = render_pair(np.random.default_rng(0), S)
    assert a.shape == b.shape == (S, S, 3) and a.dtype == b.dtype == np.uint8
    colours = {tuple(c) for c in a.reshape(-1, 3)}
    assert colours <= set(PALETTE.values())
    assert {PALETTE["wall"], PALETTE["window"], PALETTE["door"]} <= colours
    palette = np.array(list(PALETTE.values()), dtype=np.uint8)
    np.testing.assert_array_equal(palette[labels_of(a)], a)


def test_render_pair_is_deterministic():
    a1, b1 = render_pair(np.random.default_rng([3, 0, 7]), S)
    a2, b2 = render_pair(np.random.default_rng([3, 0, 7]), S)
    a3, b3 = render_pair(np.random.default_rng([3, 0, 8]), S)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)
    assert not np.array_equal(b1, b3)


@pytest.mark.parametrize("size", [16, 37, 256])
def test_render_pair_odd_and_large_sizes(size):
    a, b = render_pair(np.random.default_rng(1), size)
    assert a.shape == b.shape == (size, size, 3)


def test_dataset_splits_and_format(tmp_path):
    root = synthetic_dataset(tmp_path / "syn", **SMALL)
    assert root == tmp_path / "syn"
    for split, n in (("train", 5), ("val", 2), ("test", 1)):
        ds = PairedDataset(root, split=split)
        assert ds.layout == "aligned" and len(ds) == n
        a, b = ds[0]
        assert a.shape == b.shape == (S, S, 3)
    assert json.loads((root / MARKER).read_text())["counts"] == {"train": 5, "val": 2, "test": 1}
    # val images are not train images
    assert not np.array_equal(PairedDataset(root, "val")[0][1], PairedDataset(root, "train")[0][1])
    # no temporary folders left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]


def test_zero_sized_splits_get_no_folder(tmp_path):
    root = synthetic_dataset(tmp_path / "syn", size=S, n_train=2, n_val=0, n_test=0)
    assert sorted(p.name for p in root.iterdir()) == [MARKER, "train"]


def test_same_seed_is_byte_identical_and_seeds_differ(tmp_path):
    one = _files(synthetic_dataset(tmp_path / "a", seed=4, **SMALL))
    two = _files(synthetic_dataset(tmp_path / "b", seed=4, **SMALL))
    other = _files(synthetic_dataset(tmp_path / "c", seed=5, **SMALL))
    assert one == two
    assert one.keys() == other.keys()
    assert all(one[k] != other[k] for k in one)


def test_image_does_not_depend_on_split_size(tmp_path):
    few = _files(synthetic_dataset(tmp_path / "a", size=S, n_train=2, n_val=1, n_test=0))
    more = _files(synthetic_dataset(tmp_path / "b", size=S, n_train=4, n_val=1, n_test=0))
    assert few["train/synth_00001.png"] == more["train/synth_00001.png"]


def test_complete_dataset_is_reused(tmp_path):
    root = synthetic_dataset(tmp_path / "syn", **SMALL)
    f = root / "train" / "synth_00000.png"
    before = f.stat().st_mtime_ns, f.stat().st_ino
    synthetic_dataset(tmp_path / "syn", **SMALL)
    assert (f.stat().st_mtime_ns, f.stat().st_ino) == before


def test_half_written_folder_is_regenerated(tmp_path):
    reference = _files(synthetic_dataset(tmp_path / "ref", **SMALL))
    root = tmp_path / "syn"
    (root / "train").mkdir(parents=True)
    (root / "train" / "synth_00000.png").write_bytes(b"half")  # no marker: an interrupted run
    synthetic_dataset(root, **SMALL)
    assert _files(root) == reference
    assert (root / MARKER).is_file()


def test_missing_file_or_changed_parameters_regenerate(tmp_path):
    root = synthetic_dataset(tmp_path / "syn", **SMALL)
    (root / "val" / "synth_00001.png").unlink()
    synthetic_dataset(root, **SMALL)
    assert len(PairedDataset(root, "val")) == 2
    synthetic_dataset(root, **{**SMALL, "n_val": 3})
    assert len(PairedDataset(root, "val")) == 3
    assert json.loads((root / MARKER).read_text())["counts"]["val"] == 3


def test_refuses_to_overwrite_other_data(tmp_path):
    root = tmp_path / "mine"
    (root / "train").mkdir(parents=True)
    (root / "train" / "photo.png").write_bytes(b"precious")
    with pytest.raises(DataError) as e:
        synthetic_dataset(root, **SMALL)
    assert str(root) in str(e.value) and "train/photo.png" in str(e.value)
    assert (root / "train" / "photo.png").read_bytes() == b"precious"


def test_default_root_uses_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PIX2PIX_FAST_CACHE", str(tmp_path / "cache"))
    root = synthetic_dataset(size=S, n_train=2, n_val=1, n_test=1, seed=3)
    assert root == tmp_path / "cache" / f"synthetic-s{S}-n2-seed3"
    assert len(PairedDataset(root)) == 2


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="size"):
        synthetic_dataset(tmp_path / "x", size=8)
    with pytest.raises(ValueError, match="n_train"):
        synthetic_dataset(tmp_path / "x", size=S, n_train=0)


# --- learnability -------------------------------------------------------------


def _pairs(seed, n):
    out = [render_pair(np.random.default_rng([seed, i]), S) for i in range(n)]
    return np.stack([a for a, _ in out]), np.stack([b for _, b in out])


def test_b_is_a_learnable_non_trivial_function_of_a():
    a_fit, b_fit = _pairs(0, 12)
    a_test, b_test = _pairs(1, 12)
    lab_fit, lab_test = labels_of(a_fit.reshape(-1, S, 3)), labels_of(a_test.reshape(-1, S, 3))
    b_fit, b_test = b_fit.reshape(-1, 3).astype(np.float64), b_test.reshape(-1, 3).astype(np.float64)
    lab_fit, lab_test = lab_fit.reshape(-1), lab_test.reshape(-1)

    # mean B colour per class, fitted on one set of images
    means = np.zeros((len(CLASSES), 3))
    for c in range(len(CLASSES)):
        means[c] = b_fit[lab_fit == c].mean(axis=0) if (lab_fit == c).any() else b_fit.mean(axis=0)
    present = [c for c in range(len(CLASSES)) if (lab_fit == c).sum() > 50]
    for name in ("sky", "wall", "window", "door"):
        assert CLASSES.index(name) in present

    # the classes look clearly different from each other in B
    wall, window, sky, door = (means[CLASSES.index(n)] for n in ("wall", "window", "sky", "door"))
    for x, y in ((wall, window), (wall, sky), (window, sky), (wall, door)):
        assert np.abs(x - y).mean() > 40

    # copying A is far worse than the simplest function of A (its per-class mean colour),
    # evaluated on unseen images; and B is not that trivial function either
    copy_l1 = np.abs(a_test.reshape(-1, 3) - b_test).mean()
    class_mean_l1 = np.abs(means[lab_test] - b_test).mean()
    assert copy_l1 > 70
    assert class_mean_l1 < 0.5 * copy_l1
    assert class_mean_l1 > 8

    # structure beyond the class: within windows, frames and glass differ (a local function of A)
    win = b_test[lab_test == CLASSES.index("window")]
    assert win.std(axis=0).mean() > 20


def test_folders_of_killed_builds_are_removed_at_the_next_start(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    monkeypatch.setenv("PIX2PIX_FAST_CACHE", str(tmp_path))
    code = ("import sys; from pathlib import Path; from pix2pix_fast.fileio import temp_sibling; "
            "d = temp_sibling(sys.argv[1]); (d / 'train').mkdir(parents=True); "
            "(d / 'train' / 'synth_00000.png').write_bytes(b'x' * 1000)")  # the build ends as if killed
    subprocess.run([sys.executable, "-c", code, str(tmp_path / f"synthetic-s{S}-n2-seed0")], check=True,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    root = synthetic_dataset(size=S, n_train=2, n_val=1, n_test=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [root.name]
