"""Every file the package writes: atomic (temporary file, fsync, rename), one line on a full
disk with nothing partial left, permissions from the umask, temporaries of dead processes removed."""
import os
import subprocess
import sys

import pytest
import torch

from pix2pix_fast.errors import WriteError
from pix2pix_fast.fileio import atomic_write, remove_stale_temps, temp_sibling, write_bytes
from pix2pix_fast.checkpoint import load_checkpoint, save_checkpoint


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, full_disk):
    target = tmp_path / "out" / "report.json"
    write_bytes(target, b"previous")
    full_disk("report.json", after=3)
    with pytest.raises(WriteError) as e:
        write_bytes(target, b"x" * 100)
    assert str(e.value) == f"no space left on device writing {target}"
    assert target.read_bytes() == b"previous" and leftovers(target.parent) == []


def test_full_disk_inside_torch_save(tmp_path, full_disk):
    # torch.save reports a failed write as a RuntimeError raised while handling the OSError
    path = tmp_path / "latest.pt"
    save_checkpoint(path, {"config": {}, "G": {"w": torch.ones(3)}})
    full_disk("latest.pt", after=1000)
    with pytest.raises(WriteError, match=f"no space left on device writing {path}$"):
        save_checkpoint(path, {"config": {}, "G": {"w": torch.zeros(100_000)}})
    assert torch.equal(load_checkpoint(path)["G"]["w"], torch.ones(3)) and leftovers(tmp_path) == []


def test_a_failing_writer_leaves_nothing(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with atomic_write(tmp_path / "a.bin") as f:
            f.write(b"half")
            1 / 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "latest.pt", {"config": {}, "G": {}})
        write_bytes(tmp_path / "log.txt", b"x")
    finally:
        os.umask(old)
    for name in ("latest.pt", "log.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def _dead_pid_temp(target, folder=False):
    """A temporary file (or folder) for `target` made by a process that has since died."""
    target.parent.mkdir(parents=True, exist_ok=True)
    code = ("import sys; from pathlib import Path; from pix2pix_fast.fileio import temp_sibling; "
            "p = temp_sibling(sys.argv[1]); (p.mkdir() if sys.argv[2] == '1' else p.write_bytes(b'partial')); "
            "print(p)")
    out = subprocess.run([sys.executable, "-c", code, str(target), "1" if folder else "0"], check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return type(target)(out.stdout.strip())


def test_temporaries_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    dead_file = _dead_pid_temp(tmp_path / "latest.pt")
    dead_dir = _dead_pid_temp(tmp_path / "synthetic-s64", folder=True)
    live = temp_sibling(tmp_path / "latest.pt")
    live.write_bytes(b"being written")
    foreign = tmp_path / ".latest.pt.abc.tmp"  # not one of ours: left alone
    foreign.write_bytes(b"?")
    assert dead_file.is_file() and dead_dir.is_dir()
    removed = remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted([dead_file, dead_dir])
    assert live.is_file() and foreign.is_file()


def test_first_write_into_a_folder_sweeps_it(tmp_path):
    dead = _dead_pid_temp(tmp_path / "run" / "latest.pt")
    write_bytes(tmp_path / "run" / "other.png", b"x")
    assert not dead.exists()
