"""Download and extract the standard pix2pix datasets (aligned AB images).

    download("facades", "datasets")  ->  datasets/facades/{train,val,test}/*.jpg

The archive is streamed over HTTPS to <root>/<name>.tar.gz.part with a
progress bar; an interrupted download resumes from where it stopped (HTTP
Range; a server that ignores Range restarts it from zero). The finished
archive is checked before anything is used: its size against Content-Length /
Content-Range, its SHA-256 against the expected one (`sha256=`, else the one
pinned in CHECKSUMS), then one full pass through gzip (CRC and length) and tar
while extracting into a temporary folder, which is renamed into place only if
every check passed. A corrupt or empty archive, or one with the wrong SHA-256,
is deleted (so the next run downloads it afresh). Members with absolute
paths, '..' components, links or device files are rejected, and so is an
archive that unpacks to more than EXTRACT_RATIO times its own size (plus
EXTRACT_SLACK bytes; each member counts its 512-byte header too). A finished
dataset is marked with a small file, so a second call does nothing.

CHECKSUMS holds the SHA-256 of each archive whose digest has been recorded
from the real file; for the others the digest of what was downloaded is
printed, so it can be checked by hand or passed as `--sha256` next time.

The base URL is `base_url`, else $PIX2PIX_FAST_DATA_URL, else BASE_URL.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from pix2pix_fast.errors import DataError
from pix2pix_fast.fileio import remove_stale_temps, temp_sibling, write_text

BASE_URL = "https://efrosgans.eecs.berkeley.edu/pix2pix/datasets"
DATASETS: tuple[str, ...] = ("facades", "cityscapes", "maps", "edges2shoes", "edges2handbags", "night2day")
# name -> SHA-256 (hex) of <name>.tar.gz, recorded from the real archive. A name without an entry
# is downloaded unchecked by digest (size and gzip CRC still hold) and its digest is printed.
CHECKSUMS: dict[str, str] = {}
EXTRACT_RATIO = 4  # the datasets are JPEG/PNG files, which gzip barely shrinks
EXTRACT_SLACK = 1 << 20
MARKER = ".pix2pix_fast_download_complete"
_CHUNK = 1 << 20
_TIMEOUT_S = 30


def download(
    name: str,
    root: str | Path,
    progress: bool = True,
    *,
    base_url: str | None = None,
    sha256: str | None = None,
) -> Path:
    """Download and extract dataset `name` into root/name (once); return that folder.

    sha256: the archive's expected SHA-256 (default: CHECKSUMS[name] where pinned)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    root = Path(root).expanduser()
    dest = root / name
    if (dest / MARKER).is_file():
        return dest
    if dest.exists() and any(dest.iterdir()):
        raise DataError(f"{dest} exists but is not a completed download; remove it and run again")
    base = (base_url or os.environ.get("PIX2PIX_FAST_DATA_URL") or BASE_URL).rstrip("/")
    url = f"{base}/{name}.tar.gz"
    expected = (sha256 or CHECKSUMS.get(name) or "").strip().lower() or None
    if expected is not None and not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise DataError(f"--sha256: {sha256!r} is not a SHA-256 digest (64 hexadecimal digits)")
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root)  # extraction folders of runs that were killed
    part = root / f"{name}.tar.gz.part"
    _fetch(url, part, name, progress)
    _check_digest(part, name, expected)
    _extract(part, dest, name, progress)
    part.unlink()
    return dest


def _check_digest(part: Path, name: str, expected: str | None) -> None:
    h = hashlib.sha256()
    with open(part, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    got = h.hexdigest()
    if expected is None:
        print(f"pix2pix-fast: note: no pinned SHA-256 for {name}; the downloaded archive's is {got} "
              "(pass --sha256 to check it)", file=sys.stderr)
    elif got != expected:
        part.unlink(missing_ok=True)
        raise DataError(f"{part}: SHA-256 {got} differs from the expected {expected}; deleted it, run again "
                        "to download afresh")


# --- download ---------------------------------------------------------------


def _fetch(url: str, part: Path, name: str, progress: bool) -> None:
    """Download `url` into `part`, resuming a partial file; verify the final size."""
    from tqdm import tqdm

    def fail(reason: str, offline_hint: bool = False) -> DataError:
        kept = part.is_file() and part.stat().st_size > 0
        hint = " (no network?)" if offline_hint else ""
        hint += "; the partial download is kept, run again to resume" if kept else ""
        return DataError(f"cannot download {name} from {url}: {reason}{hint}")

    have = part.stat().st_size if part.is_file() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "pix2pix-fast"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the part may already be complete
            total = _total_from_content_range(e.headers.get("Content-Range"))
            e.close()
            if total == have:
                return
            part.unlink()
            return _fetch(url, part, name, progress)
        raise fail(f"HTTP {e.code} {e.reason}") from None
    except (OSError, http.client.HTTPException) as e:  # URLError, refused, timeout, DNS: no answer
        raise fail(_reason(e), offline_hint=True) from None

    with resp:
        if resp.status == 206:
            total = _total_from_content_range(resp.headers.get("Content-Range"))
            start = _start_from_content_range(resp.headers.get("Content-Range"))
            if start != have:
                raise fail(f"server resumed at byte {start}, expected {have}")
            mode = "ab"
        else:  # 200: the server sent the whole file (it ignored or never got a Range)
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            have, mode = 0, "wb"
        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=f"downloading {name}", disable=not progress)
        with bar, open(part, mode) as out:
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except (OSError, http.client.HTTPException) as e:  # connection lost mid-way
                    raise fail(f"download interrupted ({_reason(e)})") from None
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as e:  # disk full, ...
                    raise DataError(f"cannot write {part}: {_reason(e)}") from None
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise fail(f"download stopped at {size} of {total} bytes")


def _total_from_content_range(value: str | None) -> int | None:
    m = re.search(r"/(\d+)\s*$", value or "")
    return int(m.group(1)) if m else None


def _start_from_content_range(value: str | None) -> int | None:
    m = re.match(r"\s*bytes\s+(\d+)-", value or "")
    return int(m.group(1)) if m else None


def _reason(e: BaseException) -> str:
    """A short reason: 'Connection refused', 'timed out', 'Not a gzipped file ...'."""
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        return _reason(e.reason) if isinstance(e.reason, BaseException) else str(e.reason)
    return str(getattr(e, "strerror", None) or e or type(e).__name__)


# --- verify and extract -----------------------------------------------------


def _extract(archive: Path, dest: Path, name: str, progress: bool) -> None:
    """One pass: gzip CRC + tar structure + safe extraction into a temporary folder, then rename."""
    from tqdm import tqdm

    tmp = temp_sibling(dest)
    tmp.mkdir()
    cap = EXTRACT_RATIO * archive.stat().st_size + EXTRACT_SLACK
    total = 0
    try:
        with gzip.open(archive, "rb") as gz:
            try:
                with tarfile.open(fileobj=gz, mode="r|") as tar, tqdm(
                    desc=f"extracting {name}", unit="file", disable=not progress
                ) as bar:
                    for member in tar:
                        _check_member(member, archive)
                        total += member.size + 512
                        if total > cap:
                            raise DataError(f"{archive}: unpacks to more than {cap} bytes ({EXTRACT_RATIO} x its "
                                            "size); not a dataset archive, refusing to extract it (deleted it)")
                        if hasattr(tarfile, "data_filter"):
                            tar.extract(member, tmp, filter="data")
                        else:  # Python < 3.11.4: _check_member already rejects what "data" would
                            tar.extract(member, tmp)
                        bar.update()
                # read on to the end of the gzip stream, so its CRC and length are checked
                while gz.read(_CHUNK):
                    pass
            except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as e:
                archive.unlink(missing_ok=True)
                raise DataError(
                    f"{archive}: downloaded archive is corrupt ({_reason(e)}); deleted it, run again to download afresh"
                ) from None
            except DataError:  # an unsafe member: the archive is useless, do not keep it for a resume
                archive.unlink(missing_ok=True)
                raise
            except OSError as e:  # writing the files: disk full, permissions
                raise DataError(f"cannot extract {archive} into {dest.parent}: {_reason(e)}") from None
        entries = list(tmp.iterdir())
        if not entries:
            archive.unlink(missing_ok=True)
            raise DataError(f"{archive}: the {name} archive is empty; deleted it, run again to download afresh")
        # the usual archive holds one folder name/...; otherwise its top level is the dataset
        top = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
        write_text(top / MARKER, "complete\n")  # before the rename: dest appears complete or not at all
        if dest.exists():
            dest.rmdir()  # download() checked that it is empty
        top.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    parts = re.split(r"[/\\]", name)
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name) or ".." in parts:
        raise DataError(f"{archive}: unsafe path {name!r} in archive; refusing to extract it")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: archive member {name!r} is a link or special file; refusing to extract it")
