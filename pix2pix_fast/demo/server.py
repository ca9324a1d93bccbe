"""The demo's HTTP server: one page and two JSON/PNG endpoints, on the standard library.

  GET  /                  the page (HTML, CSS and JS in one response; no other assets)
  GET  /api/example?i=N   PNG: the N-th example input (the dataset's test split,
                          or a freshly rendered synthetic facade), 404 if none
  POST /api/translate     body: an image file (PNG, JPEG, ..., .npy); query:
                          margin, deterministic (0/1), seed, echo (0/1: also
                          return the decoded input). JSON: output (PNG data
                          URL), width, height, ms, seed, ... or {"error": ...}
                          with status 400 / 403 / 411 / 413 / 500 / 503

Python's `http.server` parses the requests; connections are served by a
bounded pool of WORKERS threads, at most MAX_CONNECTIONS of them open at once
(more are answered 503 at once), and every socket read times out after
TIMEOUT_S seconds, so clients that send half a request cannot hold the
server. Upload bodies are read only within a budget of MAX_INFLIGHT_BYTES
across all connections (a request that cannot get its share within
TIMEOUT_S is answered 503), so concurrent large uploads cannot grow the
process without bound. The model runs one request at a time behind a lock.

Every request is wrapped: a bad upload or header is a 400 with a one-line
message, an unexpected failure a 500 with its type and message (and a
traceback on stderr), a client that hangs up or stalls is dropped quietly;
the server keeps serving. When bound to a loopback address it answers only
requests addressed to localhost (Host header), so a web page elsewhere cannot
reach it through DNS rebinding, and a POST must come from the demo's own page
(Origin, else Referer, when the client sends them; 403 otherwise), so another
web page the user visits cannot make the browser submit work to it.
"""
from __future__ import annotations

import base64
import ipaddress
import json
import re
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np

from pix2pix_fast.config import ConfigError
from pix2pix_fast.errors import DataError
from pix2pix_fast.errors import UserError
from pix2pix_fast.demo.model import MAX_MARGIN, MAX_SEED, DemoModel, png_bytes, to_channels
from pix2pix_fast.demo.page import render_page
from pix2pix_fast.demo.palette import Palette

MAX_UPLOAD_BYTES = 64 * 1024 * 1024
MAX_INFLIGHT_BYTES = 2 * MAX_UPLOAD_BYTES  # upload bodies held at once, all connections together
WORKERS = 16  # threads serving connections
MAX_CONNECTIONS = 64  # open connections (served or waiting for a worker); more get a 503
TIMEOUT_S = 15.0  # every socket read and write, and the wait for upload budget
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}
_BUSY_BODY = json.dumps({"error": "the demo is busy; try again in a moment"}).encode()
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
         b"Content-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


class Busy(Exception):
    """No capacity for this request now (answered 503)."""


class ByteBudget:
    """Bytes that may be held at once by upload bodies; `reserve` waits up to TIMEOUT_S for a share."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, n: int):
        with self._cond:
            if not self._cond.wait_for(lambda: self.used + n <= self.limit, timeout=TIMEOUT_S):
                raise Busy()
            self.used += n
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


class Examples:
    """Example inputs: the dataset's test (else val, else train) split, or rendered synthetic facades."""

    def __init__(self, model: DemoModel, dataroot: str | None):
        """dataroot: a folder given by the user, which must hold a split (else DataError); None
        takes the checkpoint's, which may be missing here (then there are no examples)."""
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

        error = None
        for split in ("test", "val", "train"):
            try:
                self._ds = PairedDataset(root, split=split, layout=cfg.layout, direction=cfg.direction,
                                         input_nc=cfg.input_nc, output_nc=cfg.output_nc)
                return
            except (DataError, ConfigError, OSError) as e:
                error = error or e
        if dataroot is not None:
            raise DataError(f"--dataroot {dataroot}: no test, val or train split to take examples from ({error})")

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


class DemoServer(HTTPServer):
    """HTTPServer whose connections go to a bounded pool of worker threads."""

    def __init__(self, address: tuple[str, int], model: DemoModel, palette: Palette, examples: Examples,
                 *, quiet: bool = False):
        self.model, self.palette, self.examples, self.quiet = model, palette, examples, quiet
        self.uploads = ByteBudget(MAX_INFLIGHT_BYTES)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="pix2pix-fast-demo")
        # Decoding, the model and encoding run on this one thread: the images' memory is then
        # allocated and freed in one place, so the process does not grow with the number of workers.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pix2pix-fast-model")
        try:
            super().__init__(address, _Handler)
        except (OSError, OverflowError) as e:
            raise ConfigError(f"cannot listen on {address[0]}:{address[1]} ({getattr(e, 'strerror', None) or e}); "
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

    # ------------------------------------------------ the bounded worker pool
    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass  # the client is gone; nothing to tell it
            self.shutdown_request(request)
            return
        self._pool.submit(self._serve, request, client_address)

    def _serve(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - one connection's failure must not end the worker
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up or stalls is a line in the log, not a traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            self.log(f"dropped a connection from {client_address[0]} ({type(error).__name__})")
        else:
            super().handle_error(request, client_address)

    def on_model_thread(self, fn):
        """fn() on the model thread; its result or its exception."""
        return self._model_thread.submit(fn).result()

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._model_thread.shutdown(wait=False, cancel_futures=True)


class _Handler(BaseHTTPRequestHandler):
    server: DemoServer
    server_version = "pix2pix-fast-demo"
    protocol_version = "HTTP/1.1"
    timeout = TIMEOUT_S  # every read and write on the socket

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
        if not self._same_origin():
            self._discard_body()
            self._json(HTTPStatus.FORBIDDEN, {"error": "uploads are taken only from the demo's own page"})
            return
        n = self._content_length()
        if n is None:
            return
        margin = _int_param(query, "margin", 0, 0, MAX_MARGIN)
        deterministic = _int_param(query, "deterministic", 0, 0, 1) == 1
        seed = _int_param(query, "seed", None, 0, MAX_SEED)
        echo = _int_param(query, "echo", 0, 0, 1) == 1
        with self.server.uploads.reserve(n):  # the body's bytes count until it is decoded
            body = self._read_exact(n)
            payload = self.server.on_model_thread(lambda: _translate(self.server, body, margin, deterministic,
                                                                     seed, echo))
        self._send(HTTPStatus.OK, payload, "application/json")

    # ------------------------------------------------------------ plumbing
    def _guarded(self, route) -> None:
        try:
            if self.server.local_only and not self._host_is_local():
                self._discard_body()
                self._json(HTTPStatus.FORBIDDEN, {"error": "this demo answers only requests to localhost"})
                return
            parts = urlsplit(self.path)
            route(parts.path, parse_qs(parts.query))
        except OSError:  # the client hung up or stalled past TIMEOUT_S
            self.close_connection = True
        except Busy:
            self._reply_error(HTTPStatus.SERVICE_UNAVAILABLE, json.loads(_BUSY_BODY)["error"])
        except UserError as e:
            self.server.log(f"rejected a request: {e}")
            self._reply_error(HTTPStatus.BAD_REQUEST, str(e))
        except Exception as e:  # noqa: BLE001 - the server must outlive any one request
            traceback.print_exc(file=sys.stderr)
            self._reply_error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(e).__name__}: {e}")

    def _reply_error(self, status: HTTPStatus, message: str) -> None:
        """The error reply, closing the connection (the request may be half read); a client
        that has gone away is not an error."""
        self.close_connection = True
        try:
            self._json(status, {"error": message})
        except OSError:
            pass  # the client is gone; nothing left to tell it

    def _same_origin(self) -> bool:
        """Whether a POST comes from this demo's page: its Origin (else its Referer) names the
        host the request was sent to. A client that sends neither (curl, a script) is no web page."""
        source = self.headers.get("Origin") or self.headers.get("Referer")
        if source is None:
            return True
        parts = urlsplit(source.strip())
        return parts.scheme == "http" and parts.netloc.lower() == (self.headers.get("Host") or "").strip().lower()

    def _host_is_local(self) -> bool:
        host = (self.headers.get("Host") or "").strip().lower()
        if host.startswith("["):
            host = host[: host.find("]") + 1]
        elif host.count(":") == 1:
            host = host.split(":")[0]
        return host in _LOCAL_HOSTS

    def _content_length(self) -> int | None:
        """The upload's size, or None after replying 411 / 413; DataError (400) for a malformed header."""
        n = _length(self.headers.get("Content-Length"))
        if n is None:
            self._reply_error(HTTPStatus.LENGTH_REQUIRED, "the upload needs a Content-Length")
            return None
        if n > MAX_UPLOAD_BYTES:
            self._reply_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                              f"the upload is {n / 2**20:.1f} MiB; the demo takes files up to "
                              f"{MAX_UPLOAD_BYTES // 2**20} MiB")
            return None
        return n

    def _read_exact(self, n: int) -> bytes:
        body = self.rfile.read(n)
        if len(body) != n:
            self.close_connection = True
            raise DataError(f"the upload was cut short ({len(body)} of {n} bytes)")
        return body

    def _discard_body(self) -> None:
        n = _length(self.headers.get("Content-Length", "0"))
        if n is not None and n <= 1 << 20:
            self.rfile.read(n)
        elif n != 0:
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


def _translate(server: DemoServer, body: bytes, margin: int, deterministic: bool, seed: int | None,
               echo: bool) -> bytes:
    """Decode, translate and encode one upload (on the model thread): the JSON reply's bytes."""
    model = server.model
    t = model.translate(model.decode(body), margin=margin, deterministic=deterministic, seed=seed)
    h, w = t.output.shape[:2]
    result = {
        "output": _data_url(png_bytes(t.output)), "width": w, "height": h, "ms": round(t.ms, 2),
        "seed": t.seed, "deterministic": t.deterministic, "margin": margin, "captured": t.captured,
        "device": str(model.device),
    }
    if echo:
        result["input"] = _data_url(png_bytes(t.input))
    mode = "eval mode" if t.deterministic else f"dropout seed {t.seed}"
    server.log(f"{w}x{h}, margin {margin}, {mode}: {t.ms:.1f} ms" + (" (CUDA graph captured)" if t.captured else ""))
    return json.dumps(result).encode()


def _length(value: str | None) -> int | None:
    """A Content-Length header's value: None when absent, DataError unless ASCII digits."""
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]{1,18}", value.strip()):
        raise DataError(f"Content-Length must be a number of bytes, got {value[:40]!r}")
    return int(value)


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
                runtime: str = "auto",
                max_side: int = 8192, quiet: bool = False, tiling=None) -> DemoServer:
    """Load the checkpoint, pick the palette and bind; ConfigError/CheckpointError in one line on failure."""
    from pix2pix_fast.demo.palette import palette_for

    model = DemoModel(checkpoint, device=device, precision=precision, max_side=max_side, tiling=tiling,
                      runtime=runtime)
    palette = palette_for(model.config, palette_file=palette_file, dataroot=dataroot)
    examples = Examples(model, dataroot)
    return DemoServer((host, port), model, palette, examples, quiet=quiet)


def serve_in_thread(server: DemoServer) -> threading.Thread:
    """Serve on a daemon thread (for tests and notebooks); stop with server.shutdown()."""
    thread = threading.Thread(target=server.serve_forever, name="pix2pix-fast-demo", daemon=True)
    thread.start()
    return thread
