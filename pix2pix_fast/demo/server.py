"""The demo's HTTP server: one page and two JSON/PNG endpoints, on the standard library.

  GET  /                  the page (HTML, CSS and JS in one response; no other assets)
  GET  /api/example?i=N   PNG: the N-th example input (the dataset's test split,
                          or a freshly rendered synthetic facade), 404 if none
  POST /api/translate     body: an image file (PNG, JPEG, ..., .npy); query:
                          margin, deterministic (0/1), seed, echo (0/1: also
                          return the decoded input). JSON: output (PNG data
                          URL), width, height, ms, seed, ... or {"error": ...}
                          with status 400 / 413 / 500

`http.server.ThreadingHTTPServer` serves each connection on its own thread;
the model runs one request at a time behind a lock. Every request is wrapped:
a bad upload is a 400 with a one-line message, an unexpected failure a 500
with its type and message (and a traceback on stderr), a client that hangs
up is ignored; the server keeps serving. When bound to a loopback address it
answers only requests addressed to localhost (Host header), so a web page
elsewhere cannot reach it through DNS rebinding.
"""
from __future__ import annotations

import base64
import ipaddress
import json
import sys
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np

from pix2pix_fast.config import ConfigError
from pix2pix_fast.data.errors import DataError
from pix2pix_fast.demo.model import MAX_MARGIN, MAX_SEED, DemoModel, png_bytes, to_channels
from pix2pix_fast.demo.page import render_page
from pix2pix_fast.demo.palette import Palette

MAX_UPLOAD_BYTES = 64 * 1024 * 1024
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}


class Examples:
    """Example inputs: the dataset's test (else val, else train) split, or rendered synthetic facades."""

    def __init__(self, model: DemoModel, dataroot: str | None):
        cfg = model.config
        self.input_nc = cfg.input_nc
        self._cfg = cfg
        self._ds = None
        self._synthetic = False
        root = dataroot if dataroot is not None else cfg.dataroot
        if not root:
            self._synthetic = True
            return
        from pix2pix_fast.data.datasets import PairedDataset

        for split in ("test", "val", "train"):
            try:
                self._ds = PairedDataset(root, split=split, layout=cfg.layout, direction=cfg.direction,
                                         input_nc=cfg.input_nc, output_nc=cfg.output_nc)
                return
            except (DataError, ConfigError, OSError):
                continue

    @property
    def available(self) -> bool:
        return self._synthetic or self._ds is not None

    def get(self, i: int) -> np.ndarray | None:
        if self._synthetic:
            from pix2pix_fast.data.synthetic import render_pair

            a, b = render_pair(np.random.default_rng([11, i]), self._cfg.crop_size)
            return to_channels(b if self._cfg.direction == "BtoA" else a, self.input_nc)
        if self._ds is None or len(self._ds) == 0:
            return None
        return self._ds[i % len(self._ds)][0]


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never blocks shutdown

    def __init__(self, address: tuple[str, int], model: DemoModel, palette: Palette, examples: Examples,
                 *, quiet: bool = False):
        self.model, self.palette, self.examples, self.quiet = model, palette, examples, quiet
        try:
            super().__init__(address, _Handler)
        except OSError as e:
            raise ConfigError(f"cannot listen on {address[0]}:{address[1]} ({e.strerror or e}); "
                              "choose another --port or --host") from None
        self.local_only = _is_loopback(address[0])
        self.page = render_page(self.page_config()).encode()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}/"

    def page_config(self) -> dict:
        return {
            "model": self.model.describe(),
            "palette": self.palette.to_json(),
            "examples": self.examples.available,
            "max_side": self.model.max_side,
            "max_bytes": MAX_UPLOAD_BYTES,
            "max_margin": MAX_MARGIN,
            "canvas": self.model.config.crop_size,
        }

    def log(self, line: str) -> None:
        if not self.quiet:
            print(f"pix2pix-fast demo: {line}", file=sys.stderr, flush=True)


class _Handler(BaseHTTPRequestHandler):
    server: DemoServer
    server_version = "pix2pix-fast-demo"
    protocol_version = "HTTP/1.1"

    # -------------------------------------------------------------- routing
    def do_GET(self) -> None:
        self._guarded(self._get)

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _get(self, path: str, query: dict) -> None:
        if path == "/":
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8", page=True)
        elif path == "/api/example":
            image = self.server.examples.get(_int_param(query, "i", 0, 0, 10**9))
            if image is None:
                self._json(HTTPStatus.NOT_FOUND, {"error": "this model has no example inputs"})
            else:
                self._send(HTTPStatus.OK, png_bytes(image), "image/png")
        elif path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "text/plain")
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {path}"})

    def _post(self, path: str, query: dict) -> None:
        if path != "/api/translate":
            self._discard_body()
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {path}"})
            return
        body = self._read_body()
        if body is None:
            return
        margin = _int_param(query, "margin", 0, 0, MAX_MARGIN)
        deterministic = _int_param(query, "deterministic", 0, 0, 1) == 1
        seed = _int_param(query, "seed", None, 0, MAX_SEED)
        echo = _int_param(query, "echo", 0, 0, 1) == 1
        model = self.server.model
        image = model.decode(body)
        t = model.translate(image, margin=margin, deterministic=deterministic, seed=seed)
        h, w = t.output.shape[:2]
        result = {
            "output": _data_url(png_bytes(t.output)), "width": w, "height": h, "ms": round(t.ms, 2),
            "seed": t.seed, "deterministic": t.deterministic, "margin": margin, "captured": t.captured,
            "device": str(model.device),
        }
        if echo:
            result["input"] = _data_url(png_bytes(t.input))
        mode = "eval mode" if t.deterministic else f"dropout seed {t.seed}"
        self.server.log(f"{w}x{h}, margin {margin}, {mode}: {t.ms:.1f} ms"
                        + (" (CUDA graph captured)" if t.captured else ""))
        self._json(HTTPStatus.OK, result)

    # ------------------------------------------------------------ plumbing
    def _guarded(self, route) -> None:
        try:
            if self.server.local_only and not self._host_is_local():
                self._discard_body()
                self._json(HTTPStatus.FORBIDDEN, {"error": "this demo answers only requests to localhost"})
                return
            parts = urlsplit(self.path)
            route(parts.path, parse_qs(parts.query))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except (DataError, ConfigError) as e:
            self.server.log(f"rejected a request: {e}")
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 - the server must outlive any one request
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            try:
                self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {type(e).__name__}: {e}"})
            except OSError:
                pass  # the client is gone; nothing left to tell it

    def _host_is_local(self) -> bool:
        host = (self.headers.get("Host") or "").strip().lower()
        if host.startswith("["):
            host = host[: host.find("]") + 1]
        elif host.count(":") == 1:
            host = host.split(":")[0]
        return host in _LOCAL_HOSTS

    def _read_body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            self.close_connection = True
            self._json(HTTPStatus.LENGTH_REQUIRED, {"error": "the upload needs a Content-Length"})
            return None
        n = int(length)
        if n > MAX_UPLOAD_BYTES:
            self.close_connection = True
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       {"error": f"the upload is {n / 2**20:.1f} MiB; the demo takes files up to "
                                 f"{MAX_UPLOAD_BYTES // 2**20} MiB"})
            return None
        body = self.rfile.read(n)
        if len(body) != n:
            self.close_connection = True
            raise DataError(f"the upload was cut short ({len(body)} of {n} bytes)")
        return body

    def _discard_body(self) -> None:
        length = self.headers.get("Content-Length", "0").strip()
        if length.isdigit() and int(length) <= MAX_UPLOAD_BYTES:
            self.rfile.read(int(length))
        elif length != "0":
            self.close_connection = True

    def _json(self, status: HTTPStatus, payload: dict) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, *, page: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if page:
            self.send_header("Content-Security-Policy",
                             "default-src 'self'; img-src 'self' data: blob:; style-src 'unsafe-inline'; "
                             "script-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - BaseHTTPRequestHandler's signature
        pass  # no access log; translations and rejections are logged by the server

    def log_error(self, format: str, *args) -> None:  # noqa: A002
        self.server.log(format % args)


def _int_param(query: dict, name: str, default: int | None, lo: int, hi: int) -> int | None:
    values = query.get(name)
    if not values or values[0] == "":
        return default
    try:
        v = int(values[0])
    except ValueError:
        raise DataError(f"{name} must be an integer, got {values[0][:40]!r}") from None
    if not lo <= v <= hi:
        raise DataError(f"{name} must be between {lo} and {hi}, got {v}")
    return v


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(checkpoint: str | Path, *, host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
                precision: str = "fp32", palette_file: str | None = None, dataroot: str | None = None,
                max_side: int = 2048, quiet: bool = False) -> DemoServer:
    """Load the checkpoint, pick the palette and bind; ConfigError/CheckpointError in one line on failure."""
    from pix2pix_fast.demo.palette import palette_for

    model = DemoModel(checkpoint, device=device, precision=precision, max_side=max_side)
    palette = palette_for(model.config, palette_file=palette_file, dataroot=dataroot)
    examples = Examples(model, dataroot)
    return DemoServer((host, port), model, palette, examples, quiet=quiet)


def serve_in_thread(server: DemoServer) -> threading.Thread:
    """Serve on a daemon thread (for tests and notebooks); stop with server.shutdown()."""
    thread = threading.Thread(target=server.serve_forever, name="pix2pix-fast-demo", daemon=True)
    thread.start()
    return thread
