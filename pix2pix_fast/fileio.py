"""Every file the package writes goes through here: a temporary file in the
same folder, fsync, rename over the target, fsync of the folder.

A crash, a kill or a full disk therefore never leaves a partial file under
the final name: the previous file (if any) stays intact. A failed write
removes its temporary file and raises `WriteError` in one line naming the
target ("no space left on device writing runs/x/latest.pt").

New files get the permissions `open()` would give them (0666 less the umask),
not the 0600 of `tempfile.mkstemp`.

Temporary names carry this host and process (`.<name>.<host>-<pid>-<token>.tmp`),
so the first write into a folder removes the temporaries that dead processes
on this host left behind there (a `kill -9` mid-write); `remove_stale_temps`
does the same for a folder on request. Temporary folders (`temp_sibling`)
follow the same rule.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from pix2pix_fast.errors import WriteError

__all__ = ["atomic_write", "atomic_path", "write_bytes", "write_text", "temp_sibling", "remove_stale_temps",
           "write_error", "os_error_in", "fsync_dir"]

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMP = re.compile(r"^\..+\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
_FULL = (errno.ENOSPC, errno.EDQUOT)
_swept: set[str] = set()
_swept_lock = threading.Lock()


def temp_sibling(path: str | os.PathLike) -> Path:
    """A fresh temporary name next to `path` (same folder, so a rename is atomic)."""
    path = Path(path)
    return path.parent / f".{path.name}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp"


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders in `folder` whose process (on this host) has died."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TEMP.match(name)
        if m is None or m["host"] != _HOST or _alive(int(m["pid"])):
            continue
        p = Path(folder) / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def _sweep_once(folder: Path) -> None:
    key = str(folder.absolute())
    with _swept_lock:
        if key in _swept:
            return
        _swept.add(key)
    remove_stale_temps(folder)


def os_error_in(e: BaseException) -> OSError | None:
    """The OSError behind `e` (itself, or what it was raised from or while handling), if any.

    torch.save reports a failed write as a RuntimeError raised while handling the OSError.
    """
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def write_error(path: str | os.PathLike, e: OSError) -> WriteError:
    """The one-line error for a failed write of `path`."""
    if e.errno in _FULL:
        return WriteError(f"no space left on device writing {path}")
    return WriteError(f"cannot write {path}: {e.strerror or e}")


def _make_folder(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path, e) from None
    if path.is_dir():
        raise WriteError(f"cannot write {path}: it is a folder")


def _open(fd: int, target: Path) -> IO[bytes]:
    """The temporary file's object for writing `target` (a seam for tests that simulate a full disk)."""
    return os.fdopen(fd, "wb")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path for a writer that wants a file name; on success it replaces `path`."""
    path = Path(path)
    _make_folder(path)
    _sweep_once(path.parent)
    tmp = temp_sibling(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise WriteError(f"cannot write {path}: the writer produced no file")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        cause = os_error_in(e)
        if cause is not None and not isinstance(e, WriteError):
            raise write_error(path, cause) from None
        raise
    fsync_dir(path.parent)


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Yield a binary file object; on success its content replaces `path` atomically."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        with _open(fd, Path(path)) as f:
            yield f
            f.flush()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms where a folder cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders; the rename is still atomic
    finally:
        os.close(fd)
