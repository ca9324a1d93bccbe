"""download(): against a local HTTP server (Range, interruption, corruption, unsafe members) and offline."""
import gzip
import io
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from pix2pix_fast.data import DataError, PairedDataset
from pix2pix_fast.data import download as download_mod
from pix2pix_fast.data.download import BASE_URL, MARKER, download


def _png_bytes(seed):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _targz(members):
    """members: (name, bytes) for a file, or (name, SYMLINK) for a link to /etc/passwd."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is SYMLINK:
                info.type = tarfile.SYMTYPE
                info.linkname = "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


SYMLINK = object()


@pytest.fixture
def archive():
    members = [(f"facades/{split}/{i}.png", _png_bytes(10 * k + i))
               for k, split in enumerate(("train", "val", "test")) for i in range(3)]
    return _targz(members)


class _Server:
    """A bounded local HTTP server for /<name>.tar.gz that honours (or ignores) Range."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.ignore_range = False
        self.cut_after: int | None = None  # the next response stops after this many body bytes
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    body, server.cut_after = body[: server.cut_after], None
                    self.close_connection = True
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _get(root, server, **kw):
    return download("facades", root, progress=False, base_url=server.url, **kw)


def test_download_extracts_and_is_idempotent(tmp_path, server, archive):
    server.files["/data/facades.tar.gz"] = archive
    root = tmp_path / "datasets"
    dest = _get(root, server)
    assert dest == root / "facades"
    assert (dest / MARKER).is_file()
    assert sorted(p.name for p in root.iterdir()) == ["facades"]  # no .part, no temporary folders
    for split in ("train", "val", "test"):
        ds = PairedDataset(dest, split=split)
        assert len(ds) == 3 and ds[0][0].shape == (16, 16, 3)
    assert server.requests == [("/data/facades.tar.gz", None)]
    assert _get(root, server) == dest
    assert len(server.requests) == 1  # the second call did not touch the network


def test_base_url_from_environment(tmp_path, server, archive, monkeypatch):
    server.files["/data/facades.tar.gz"] = archive
    monkeypatch.setenv("PIX2PIX_FAST_DATA_URL", server.url + "/")
    dest = download("facades", tmp_path, progress=False)
    assert (dest / "train" / "0.png").is_file()


def test_resumes_a_partial_download(tmp_path, server, archive):
    server.files["/data/facades.tar.gz"] = archive
    half = len(archive) // 2
    (tmp_path / "facades.tar.gz.part").write_bytes(archive[:half])
    dest = _get(tmp_path, server)
    assert server.requests == [("/data/facades.tar.gz", f"bytes={half}-")]
    assert len(PairedDataset(dest)) == 3


def test_server_ignoring_range_restarts(tmp_path, server, archive):
    server.files["/data/facades.tar.gz"] = archive
    server.ignore_range = True
    (tmp_path / "facades.tar.gz.part").write_bytes(archive[:100])
    dest = _get(tmp_path, server)
    assert len(PairedDataset(dest)) == 3


def test_complete_part_file_is_used(tmp_path, server, archive):
    server.files["/data/facades.tar.gz"] = archive
    (tmp_path / "facades.tar.gz.part").write_bytes(archive)
    dest = _get(tmp_path, server)  # the server answers 416: nothing left to send
    assert len(PairedDataset(dest)) == 3


def test_interrupted_download_is_kept_and_resumed(tmp_path, server, archive):
    server.files["/data/facades.tar.gz"] = archive
    server.cut_after = 1000
    with pytest.raises(DataError) as e:
        _get(tmp_path, server)
    msg = str(e.value)
    assert "\n" not in msg and "facades" in msg and "resume" in msg
    assert "no network" not in msg  # the server did answer
    assert (tmp_path / "facades.tar.gz.part").stat().st_size == 1000
    dest = _get(tmp_path, server)
    assert server.requests[-1] == ("/data/facades.tar.gz", "bytes=1000-")
    assert len(PairedDataset(dest, split="test")) == 3


@pytest.mark.parametrize("damage", ["garbage", "truncated", "bad_crc"])
def test_corrupt_archive(tmp_path, server, archive, damage):
    if damage == "garbage":
        data = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    elif damage == "truncated":
        data = archive[: len(archive) * 2 // 3]
    else:  # flip the gzip CRC in the trailer: only a full read notices
        data = archive[:-8] + bytes([archive[-8] ^ 0xFF]) + archive[-7:]
    server.files["/data/facades.tar.gz"] = data
    with pytest.raises(DataError) as e:
        _get(tmp_path, server)
    msg = str(e.value)
    assert "\n" not in msg and "corrupt" in msg and "facades.tar.gz.part" in msg
    assert list(tmp_path.iterdir()) == []  # the bad archive and the partial extraction are gone
    # the next run downloads afresh and succeeds
    server.files["/data/facades.tar.gz"] = archive
    assert len(PairedDataset(_get(tmp_path, server))) == 3


@pytest.mark.parametrize(
    "member", [("../evil.txt", b"x"), ("/tmp/evil.txt", b"x"), ("facades/link", SYMLINK)]
)
def test_unsafe_members_are_rejected(tmp_path, server, member):
    server.files["/data/facades.tar.gz"] = _targz([("facades/train/a.txt", b"ok"), member])
    root = tmp_path / "root"
    with pytest.raises(DataError) as e:
        _get(root, server)
    assert repr(member[0]) in str(e.value)
    assert not (tmp_path / "evil.txt").exists() and not (root / "evil.txt").exists()
    assert not (root / "facades").exists()


def test_offline(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(DataError) as e:
        download("facades", tmp_path, progress=False, base_url=url)
    msg = str(e.value)
    assert msg.startswith(f"cannot download facades from {url}/facades.tar.gz: ")
    assert msg.endswith("(no network?)") and "\n" not in msg


def test_http_error_and_unknown_name(tmp_path, server):
    with pytest.raises(DataError, match="HTTP 404"):
        _get(tmp_path, server)
    with pytest.raises(DataError, match="unknown dataset 'faces'"):
        download("faces", tmp_path, progress=False)


def test_refuses_a_non_empty_unfinished_folder(tmp_path, server, archive):
    server.files["/data/facades.tar.gz"] = archive
    (tmp_path / "facades").mkdir()
    (tmp_path / "facades" / "mine.txt").write_text("x")
    with pytest.raises(DataError, match="not a completed download"):
        _get(tmp_path, server)
    assert server.requests == []


def test_gzip_trailer_layout(archive):
    # guards the bad_crc case above: the last 8 bytes are CRC32 and ISIZE
    raw = gzip.decompress(archive)
    assert int.from_bytes(archive[-4:], "little") == len(raw) % 2**32


def test_the_standard_sets_come_over_https():
    assert BASE_URL.startswith("https://")


def test_sha256_is_checked_before_extraction(tmp_path, server, archive, monkeypatch, capsys):
    import hashlib

    server.files["/data/facades.tar.gz"] = archive
    digest = hashlib.sha256(archive).hexdigest()
    monkeypatch.setitem(download_mod.CHECKSUMS, "facades", "0" * 64)
    with pytest.raises(DataError) as e:
        _get(tmp_path, server)
    assert f"SHA-256 {digest} differs from the expected {'0' * 64}" in str(e.value)
    assert list(tmp_path.iterdir()) == []  # nothing extracted, the archive deleted
    monkeypatch.setitem(download_mod.CHECKSUMS, "facades", digest)
    assert len(PairedDataset(_get(tmp_path, server))) == 3
    assert "SHA-256" not in capsys.readouterr().err


def test_an_unpinned_archive_prints_its_digest_and_sha256_checks_it(tmp_path, server, archive, monkeypatch, capsys):
    import hashlib

    monkeypatch.delitem(download_mod.CHECKSUMS, "facades", raising=False)
    server.files["/data/facades.tar.gz"] = archive
    digest = hashlib.sha256(archive).hexdigest()
    _get(tmp_path / "a", server)
    assert f"the downloaded archive's is {digest}" in capsys.readouterr().err
    with pytest.raises(DataError, match="differs from the expected"):
        _get(tmp_path / "b", server, sha256="f" * 64)
    assert len(PairedDataset(_get(tmp_path / "c", server, sha256=digest.upper()))) == 3
    with pytest.raises(DataError, match="--sha256"):
        _get(tmp_path / "d", server, sha256="not-hex")


def test_extracted_size_is_capped(tmp_path, server):
    bomb = _targz([("facades/train/zeros.png", bytes(8 << 20))])  # 8 MiB of zeros, a few KiB packed
    assert len(bomb) * download_mod.EXTRACT_RATIO + download_mod.EXTRACT_SLACK < 8 << 20
    server.files["/data/facades.tar.gz"] = bomb
    with pytest.raises(DataError, match="unpacks to more than"):
        _get(tmp_path, server)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_archive_is_deleted_and_says_so(tmp_path, server, archive):
    server.files["/data/facades.tar.gz"] = _targz([])
    with pytest.raises(DataError) as e:
        _get(tmp_path, server)
    assert "empty" in str(e.value) and "deleted it" in str(e.value)
    assert list(tmp_path.iterdir()) == []
    server.files["/data/facades.tar.gz"] = archive
    assert len(PairedDataset(_get(tmp_path, server))) == 3
