"""`pix2pix-fast demo`: palette choice, upload decoding, the HTTP endpoints, start-up errors,
and the page itself in headless Chromium (painting, upload, output, the error path).

The browser test needs Debian's `chromium` and the `playwright` package (the
test extra); it is skipped, with the reason, where either is missing.
PIX2PIX_FAST_DEMO_CHECKPOINT runs it on another checkpoint and
PIX2PIX_FAST_DEMO_SCREENSHOT saves a screenshot of the final page there
(docs/make_demo_screenshot.sh uses both).
"""
import base64
import http.client
import io
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pix2pix_fast.cli import main
from pix2pix_fast.config import ConfigError, TrainConfig
from pix2pix_fast.data.synthetic import PALETTE, synthetic_dataset
from pix2pix_fast.demo.palette import palette_for, palette_from_inputs, read_palette_file
from pix2pix_fast.demo.server import make_server, serve_in_thread
from pix2pix_fast.inference import Pix2Pix

CHROMIUM = os.environ.get("PIX2PIX_FAST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WINDOW = PALETTE["window"]


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory.mktemp("data"), size=64, n_train=4, n_val=2, n_test=2, seed=5)


@pytest.fixture(scope="module")
def checkpoint(data_root, tmp_path_factory):
    """A tiny unet_64 (the smallest U-Net with a dropout layer) trained for two steps on synthetic
    facades, or PIX2PIX_FAST_DEMO_CHECKPOINT."""
    given = os.environ.get("PIX2PIX_FAST_DEMO_CHECKPOINT")
    if given:
        return Path(given)
    from pix2pix_fast.train.trainer import Trainer

    out = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(dataroot=str(data_root), output_dir=str(out), name="demo", netG="unet_64", ngf=8, ndf=8,
                      load_size=72, crop_size=64, batch_size=2, max_steps=2, epochs=1, epochs_decay=0,
                      log_every=1, sample_every=1000, save_every=1, loader_threads=1, device="cpu")
    assert Trainer(cfg, progress=False).fit().status == "done"
    return out / "demo" / "latest.pt"


@pytest.fixture(scope="module")
def server(checkpoint):
    srv = make_server(checkpoint, port=0, device="cpu", quiet=True)
    serve_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()


def request(srv, method, path, body=None, headers=None):
    """(status, decoded JSON or raw bytes) from the demo server."""
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        res = conn.getresponse()
        data = res.read()
    finally:
        conn.close()
    if res.getheader("Content-Type") == "application/json":
        return res.status, json.loads(data)
    return res.status, data


def exit_status(argv):
    """main()'s status; argparse's own errors end in SystemExit."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def from_data_url(url):
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def facade_like(h, w, seed):
    """A label map in PALETTE colours: bands and blocks, so the model sees its kind of input."""
    rng = np.random.default_rng(seed)
    colours = np.array(list(PALETTE.values()), dtype=np.uint8)
    ids = np.repeat(rng.integers(0, len(colours), size=(h // 4 + 1, 1)), 4, axis=0)[:h]
    ids = np.broadcast_to(ids, (h, w)).copy()
    ids[h // 3: h // 3 + 6, w // 4: w // 2] = 4
    return colours[ids]


# ------------------------------------------------------------------ palette
def test_built_in_facades_get_their_label_colours():
    pal = palette_for(TrainConfig())
    assert pal.kind == "labels"
    assert dict(pal.colours) == {name: tuple(rgb) for name, rgb in PALETTE.items()}
    assert pal.background == PALETTE["wall"] and pal.colours[0][1] == pal.background
    # BtoA on the same data paints photos, not labels
    assert palette_for(TrainConfig(direction="BtoA")).kind == "photo"


def test_palette_from_flat_colour_inputs_is_their_colours_by_frequency():
    a = np.zeros((40, 40, 3), np.uint8)
    a[:] = (10, 200, 30)
    a[:10] = (250, 0, 0)
    a[:3, :5] = (0, 0, 255)
    pal = palette_from_inputs([a, a[::-1].copy()], source="test")
    assert pal.kind == "labels"
    assert [c for _, c in pal.colours] == [(10, 200, 30), (250, 0, 0), (0, 0, 255)]
    assert pal.background == (10, 200, 30)


def test_edge_inputs_get_pen_and_eraser():
    edges = np.full((64, 64, 1), 255, np.uint8)
    edges[20, 5:60] = 0
    edges[5:60, 30] = 3
    pal = palette_from_inputs([edges], source="test")
    assert pal.kind == "edges" and pal.background == (255,) * 3 and dict(pal.colours)["pen"] == (0, 0, 0)
    dark = np.repeat(255 - edges, 3, axis=2)  # light strokes on black, as RGB
    pal = palette_from_inputs([dark], source="test")
    assert pal.kind == "edges" and pal.background == (0,) * 3 and dict(pal.colours)["pen"] == (255,) * 3


def test_photo_inputs_get_their_frequent_colours():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8)
    photo[:24] = (200, 120, 40)
    pal = palette_from_inputs([photo], source="test")
    assert pal.kind == "photo" and 1 < len(pal.colours) <= 12
    assert pal.background == (200, 120, 40)


def test_palette_from_a_dataset_folder(tmp_path):
    root = tmp_path / "labels"
    (root / "train").mkdir(parents=True)
    a = np.zeros((16, 16, 3), np.uint8)
    a[:, :8] = (1, 2, 3)
    a[:, 8:] = (200, 100, 0)
    a[:4] = (9, 9, 250)
    b = np.random.default_rng(1).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    Image.fromarray(np.concatenate([a, b], axis=1)).save(root / "train" / "x.png")
    pal = palette_for(TrainConfig(dataroot=str(root)))
    assert pal.kind == "labels" and {c for _, c in pal.colours} == {(1, 2, 3), (200, 100, 0), (9, 9, 250)}
    missing = palette_for(TrainConfig(dataroot=str(tmp_path / "gone"), input_nc=1))
    assert missing.kind == "edges" and "--palette" in missing.notes[0]


def test_palette_file(tmp_path):
    f = tmp_path / "pal.txt"
    f.write_text("# label colours\n#102030 road\n\n255, 0, 0 car\n0 0 255\n#ABCDEF\n")
    pal = read_palette_file(f)
    assert pal.colours == (("road", (16, 32, 48)), ("car", (255, 0, 0)), ("#0000ff", (0, 0, 255)),
                           ("#abcdef", (171, 205, 239)))
    assert pal.background == (16, 32, 48)
    f.write_text("#102030 road\n300 0 0 bad\n")
    with pytest.raises(ConfigError, match="line 2"):
        read_palette_file(f)
    f.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="no colours"):
        read_palette_file(f)


# -------------------------------------------------------------------- HTTP
def test_translate_gives_the_inference_api_output_at_the_input_size(server, checkpoint):
    img = facade_like(37, 53, seed=1)
    status, res = request(server, "POST", "/api/translate?deterministic=1&margin=5&echo=1", png(img))
    assert status == 200, res
    out = from_data_url(res["output"])
    assert out.shape == img.shape
    assert np.array_equal(from_data_url(res["input"]), img)
    want = Pix2Pix.from_checkpoint(checkpoint, device="cpu", eval_mode=True)(img, margin=5)
    assert np.abs(out.astype(int) - want.astype(int)).max() <= 1
    assert np.abs(out.astype(int) - img.astype(int)).mean() > 5
    assert res["deterministic"] is True and res["ms"] > 0


def test_dropout_noise_follows_the_seed(server):
    body = png(facade_like(48, 40, seed=2))
    outs = [from_data_url(request(server, "POST", f"/api/translate?seed={s}", body)[1]["output"])
            for s in (7, 7, 8)]
    assert np.array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])


def test_bad_input_is_a_message_and_the_server_keeps_serving(server, tmp_path):
    wide = io.BytesIO()
    Image.new("RGB", (20000, 1)).save(wide, format="PNG")
    five = io.BytesIO()
    np.save(five, np.zeros((8, 8, 5), np.uint8))
    cases = [
        (b"just some text", "cannot read image"),
        (wide.getvalue(), "20000x1 pixels"),
        (five.getvalue(), "5 channels"),
        (b"", "empty"),
    ]
    for body, message in cases:
        status, res = request(server, "POST", "/api/translate", body)
        assert status == 400 and message in res["error"], res
        assert "\n" not in res["error"]
    status, res = request(server, "POST", "/api/translate?margin=-1", png(facade_like(8, 8, 0)))
    assert status == 400 and "margin" in res["error"]
    status, res = request(server, "POST", "/api/translate", b"", {"Content-Length": str(1 << 30)})
    assert status == 413 and "MiB" in res["error"]
    status, res = request(server, "GET", "/", headers={"Host": "attacker.example"})
    assert status == 403
    # still serving, and still right
    status, page = request(server, "GET", "/")
    assert status == 200 and b"pix2pix-fast demo" in page
    status, res = request(server, "POST", "/api/translate", png(facade_like(20, 30, 3)))
    assert status == 200 and from_data_url(res["output"]).shape == (20, 30, 3)


def test_page_carries_the_model_and_palette(server):
    status, page = request(server, "GET", "/")
    assert status == 200
    text = page.decode()
    blob = text.split('<script type="application/json" id="config">', 1)[1].split("</script>", 1)[0]
    cfg = json.loads(blob)
    assert cfg["palette"]["kind"] == "labels"
    assert {tuple(c["rgb"]) for c in cfg["palette"]["colours"]} == {tuple(v) for v in PALETTE.values()}
    assert cfg["model"]["input_nc"] == 3 and cfg["model"]["dropout"] is True and cfg["examples"] is True
    status, ex = request(server, "GET", "/api/example?i=1")
    example = np.asarray(Image.open(io.BytesIO(ex)))
    assert status == 200 and example.shape == (cfg["canvas"], cfg["canvas"], 3)


def test_one_channel_model_gets_pen_and_eraser_and_takes_colour_uploads(tmp_path):
    from pix2pix_fast.models import build_generator
    from pix2pix_fast.checkpoint import save_checkpoint

    cfg = TrainConfig(netG="unet_16", ngf=4, input_nc=1, output_nc=1, crop_size=16, load_size=16,
                      dataroot=str(tmp_path / "edges"))  # not on this machine: default pen and eraser
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "edges.pt", {"config": cfg.to_dict(), "G": build_generator(cfg).state_dict()})
    srv = make_server(tmp_path / "edges.pt", port=0, device="cpu", quiet=True)
    serve_in_thread(srv)
    try:
        assert srv.palette.kind == "edges" and srv.examples.available is False
        colour = np.random.default_rng(0).integers(0, 256, size=(19, 23, 3), dtype=np.uint8)
        status, res = request(srv, "POST", "/api/translate?deterministic=1&echo=1", png(colour))
        assert status == 200, res
        gray = np.asarray(Image.fromarray(colour).convert("L"))  # the data pipeline's luma
        assert np.array_equal(from_data_url(res["input"])[:, :, 0], gray)
        assert from_data_url(res["output"]).shape == (19, 23, 3)
        assert request(srv, "GET", "/api/example")[0] == 404
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.gpu
def test_cuda_uses_captured_graphs_that_match_eager(checkpoint):
    from pix2pix_fast.demo.model import DemoModel

    model = DemoModel(checkpoint, device="cuda")
    img = facade_like(40, 56, seed=6)
    first = model.translate(img, margin=4, deterministic=True)
    again = model.translate(img, margin=4, deterministic=True)
    assert first.captured and not again.captured
    assert np.array_equal(first.output, again.output)
    eager = Pix2Pix.from_checkpoint(checkpoint, device="cuda", eval_mode=True)(img, margin=4)
    assert np.abs(first.output.astype(int) - eager.astype(int)).max() <= 1
    # dropout inside the graph follows the seed, as on the eager path
    a, b, c = (model.translate(img, seed=s).output for s in (3, 3, 4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# --------------------------------------------------------------------- CLI
def test_help_says_what_host_0000_exposes(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "0.0.0.0 exposes" in text and "anyone who can reach this machine" in text


def test_start_up_errors_are_one_line(tmp_path, checkpoint, capsys):
    from pix2pix_fast.models import build_generator
    from pix2pix_fast.checkpoint import save_checkpoint

    text_file = tmp_path / "notes.pt"
    text_file.write_text("not a checkpoint")
    state_dict = tmp_path / "latest_net_G.pth"
    torch.save({"model.0.weight": torch.zeros(1)}, state_dict)
    six = TrainConfig(netG="unet_32", ngf=4, input_nc=6)
    save_checkpoint(tmp_path / "six.pt", {"config": six.to_dict(), "G": build_generator(six).state_dict()})
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    palette = tmp_path / "bad.txt"
    palette.write_text("red\n")
    cases = [
        (["demo", str(text_file)], "not a readable pix2pix-fast checkpoint"),
        (["demo", str(state_dict)], "import-reference"),
        (["demo", str(tmp_path / "six.pt")], "6-channel"),
        (["demo", str(checkpoint), "--port", str(busy.getsockname()[1]), "--device", "cpu"], "cannot listen"),
        (["demo", str(checkpoint), "--palette", str(palette), "--device", "cpu"], "--palette"),
        (["demo", str(checkpoint), "--max-side", "0", "--device", "cpu"], "--max-side"),
    ]
    try:
        for argv, message in cases:
            assert exit_status(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and message in err, err
    finally:
        busy.close()


# ----------------------------------------------------------------- browser
def _wait_outputs(page, n):
    page.wait_for_function("n => +document.getElementById('output').dataset.count >= n", arg=n, timeout=60_000)


def _canvas(page):
    return from_data_url(page.evaluate("document.getElementById('input').toDataURL('image/png')"))


def _output(page):
    return from_data_url(page.get_attribute("#output", "src"))


def _drag(page, box, start, end, steps=8):
    page.mouse.move(box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + end[0] * box["width"], box["y"] + end[1] * box["height"], steps=steps)
    page.mouse.up()


def test_page_in_headless_chromium(server, checkpoint, tmp_path):
    # Skipped where the browser or its driver is missing, except in CI (.ci/run installs both).
    missing = pytest.fail if os.environ.get("CI") == "true" else pytest.skip
    try:
        from playwright import sync_api
    except ImportError:
        missing("the browser test needs playwright (pip install '.[test]')")
    if not Path(CHROMIUM).is_file():
        missing(f"the browser test needs Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    upload = facade_like(40, 56, seed=4)
    Image.fromarray(upload).save(tmp_path / "facade.png")
    (tmp_path / "notes.png").write_text("not an image")
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1000, "height": 720}, device_scale_factor=1)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url)
            _wait_outputs(page, 1)  # the page opens on an example input

            # upload: the output appears, at the input's size, and is not the input
            page.set_input_files("#file", str(tmp_path / "facade.png"))
            _wait_outputs(page, 2)
            assert np.array_equal(_canvas(page), upload)
            out = _output(page)
            assert out.shape == upload.shape
            assert np.abs(out.astype(int) - upload.astype(int)).mean() > 5

            # paint a stroke in the window colour across the middle
            page.click(f".swatch[data-rgb='{','.join(map(str, WINDOW))}']")
            page.fill("#brush", "3")
            page.dispatch_event("#brush", "input")
            _drag(page, page.locator("#input").bounding_box(), (0.15, 0.8), (0.85, 0.8))
            _wait_outputs(page, 3)
            painted = _canvas(page)
            changed = (painted != upload).any(axis=2)
            assert changed.sum() >= 40 and (painted[changed] == WINDOW).all()
            assert _output(page).shape == upload.shape

            # deterministic switch: the page shows the model's eval-mode output for the painted input
            page.check("#deterministic")
            _wait_outputs(page, 4)
            want = Pix2Pix.from_checkpoint(checkpoint, device="cpu", eval_mode=True)(painted)
            assert np.abs(_output(page).astype(int) - want.astype(int)).max() <= 1
            assert page.is_disabled("#sample")

            # the error path: a message on the page, the output kept, the server still serving
            page.set_input_files("#file", str(tmp_path / "notes.png"))
            page.wait_for_selector("#error:not([hidden])", timeout=30_000)
            assert "cannot read image" in page.inner_text("#error")
            assert page.get_attribute("#output", "data-count") == "4"
            page.uncheck("#deterministic")
            _wait_outputs(page, 5)
            assert page.is_hidden("#error")

            # undo the stroke, then an example with a rectangle painted on it
            page.click("#undo")
            _wait_outputs(page, 6)
            assert np.array_equal(_canvas(page), upload)
            page.click("#example")
            _wait_outputs(page, 7)
            example = _canvas(page)
            page.click("#tool-rect")
            _drag(page, page.locator("#input").bounding_box(), (0.3, 0.55), (0.7, 0.7), steps=4)
            _wait_outputs(page, 8)
            box = (_canvas(page) != example).any(axis=2)
            ys, xs = np.nonzero(box)
            assert len(ys) and (_canvas(page)[box] == WINDOW).all()
            assert box[ys.min():ys.max() + 1, xs.min():xs.max() + 1].mean() > 0.5  # mostly a filled block
            assert _output(page).shape == example.shape
            assert errors == []
            shot = os.environ.get("PIX2PIX_FAST_DEMO_SCREENSHOT")
            if shot:
                page.wait_for_timeout(200)
                page.screenshot(path=shot, full_page=True)
        finally:
            browser.close()


# ------------------------------------------------------ hostile or sloppy clients
def raw_request(srv, data, *, read=True, timeout=10):
    """Send raw bytes on a fresh connection; the reply's status code (or None when the server
    closed the connection without one)."""
    with socket.create_connection(srv.server_address[:2], timeout=timeout) as s:
        s.sendall(data)
        if not read:
            return None
        reply = b""
        while b"\r\n" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                return None
            reply += chunk
        return int(reply.split(b" ", 2)[1])


def test_posts_from_other_pages_are_refused(server):
    body = png(facade_like(16, 16, 0))
    host = "%s:%d" % server.server_address[:2]
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Referer": "http://evil.example/page.html"}, {"Origin": f"https://{host}"}):
        status, res = request(server, "POST", "/api/translate", body, headers)
        assert status == 403, headers
    for headers in ({"Origin": f"http://{host}"}, {"Referer": f"http://{host}/"}, {}):
        assert request(server, "POST", "/api/translate", body, headers)[0] == 200, headers


@pytest.mark.parametrize("length", ["\u00b2", "12abc", "-5", "1e3"])
def test_malformed_content_length_is_400(server, length):
    status, res = request(server, "POST", "/api/translate", b"", {"Content-Length": length})
    assert status == 400 and "Content-Length" in res["error"]


@pytest.mark.parametrize("shape", [(), (100,), (0, 5, 3)])
def test_npy_uploads_of_other_shapes_are_400(server, shape):
    buf = io.BytesIO()
    np.save(buf, np.zeros(shape, np.uint8))
    status, res = request(server, "POST", "/api/translate", buf.getvalue())
    assert status == 400 and "uint8 (H, W[, C])" in res["error"], res


def test_uploads_in_formats_outside_the_allow_list_never_reach_their_decoder(server, monkeypatch):
    from PIL import EpsImagePlugin

    reached = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: reached.append(1))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n%%EOF\n"
    pcx = io.BytesIO()
    Image.new("RGB", (16, 16)).save(pcx, format="PCX")
    for body in (eps, pcx.getvalue()):
        status, res = request(server, "POST", "/api/translate", body)
        assert status == 400 and "not a PNG, JPEG" in res["error"], res
    assert reached == []


def test_a_client_that_hangs_up_mid_upload_is_not_a_traceback(checkpoint, capfd):
    srv = make_server(checkpoint, port=0, device="cpu")
    serve_in_thread(srv)
    try:
        head = (b"POST /api/translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(5):
            raw_request(srv, head + b"x" * 1000, read=False)
        status, res = request(srv, "POST", "/api/translate", png(facade_like(16, 16, 1)))
        assert status == 200
    finally:
        srv.shutdown()
        srv.server_close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_stalled_clients_time_out_and_connections_are_capped(checkpoint, monkeypatch):
    import pix2pix_fast.demo.server as server_mod

    monkeypatch.setattr(server_mod._Handler, "timeout", 1.0)
    monkeypatch.setattr(server_mod, "MAX_CONNECTIONS", 2)
    srv = make_server(checkpoint, port=0, device="cpu", quiet=True)
    serve_in_thread(srv)
    try:
        stalled = [socket.create_connection(srv.server_address[:2], timeout=10) for _ in range(2)]
        for s in stalled:
            s.sendall(b"POST /api/translate HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # half the headers
        import time

        time.sleep(0.3)
        assert raw_request(srv, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") == 503  # both slots held
        for s in stalled:  # the read timeout ends them: the server closes the connection
            assert s.recv(4096) == b""
            s.close()
        time.sleep(0.3)
        assert request(srv, "GET", "/")[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_upload_bytes_in_flight_are_bounded(checkpoint, monkeypatch):
    import pix2pix_fast.demo.server as server_mod

    monkeypatch.setattr(server_mod, "MAX_INFLIGHT_BYTES", 6000)
    monkeypatch.setattr(server_mod, "TIMEOUT_S", 1.0)
    srv = make_server(checkpoint, port=0, device="cpu", quiet=True)
    serve_in_thread(srv)
    try:
        slow = socket.create_connection(srv.server_address[:2], timeout=10)
        slow.sendall(b"POST /api/translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4000\r\n\r\n" + b"x" * 10)
        import time

        time.sleep(0.3)  # its 4000 bytes are reserved while it trickles
        body = png(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
        assert 2000 < len(body) < 6000 and request(srv, "POST", "/api/translate", body)[0] == 503
        slow.close()
        time.sleep(0.3)
        assert request(srv, "POST", "/api/translate", body)[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_rss_stays_flat_over_many_requests(checkpoint):
    """A bounded soak on this machine: a server process takes 5 rounds of 5 concurrent clients x 10
    uploads of varied sizes; after the first round its resident size stays where it was."""
    import subprocess
    import sys
    import threading

    code = ("import sys; from pix2pix_fast.demo.server import make_server; "
            "srv = make_server(sys.argv[1], port=0, device='cpu', quiet=True); "
            "print(srv.server_address[1], flush=True); srv.serve_forever()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(checkpoint)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"})
    try:
        port = int(proc.stdout.readline())
        rng = np.random.default_rng(0)
        bodies = [png(rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8))
                  for h, w in rng.integers(64, 400, (8, 2))]
        statuses = []

        def client(k):
            for i in range(10):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                conn.request("POST", f"/api/translate?seed={i}&echo=1", bodies[(k + i) % 8])
                res = conn.getresponse()
                res.read()
                conn.close()
                statuses.append(res.status)

        def rss_mib():
            with open(f"/proc/{proc.pid}/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

        sizes = []
        for _ in range(5):
            clients = [threading.Thread(target=client, args=(k,)) for k in range(5)]
            for t in clients:
                t.start()
            for t in clients:
                t.join()
            sizes.append(rss_mib())
        assert statuses == [200] * 250
        assert max(sizes[1:]) - min(sizes[1:]) < 8, sizes
    finally:
        proc.kill()
        proc.wait()


def test_demo_refuses_a_dataroot_it_cannot_read(checkpoint, tmp_path, capsys):
    assert main(["demo", str(checkpoint), "--dataroot", str(tmp_path / "nope"), "--device", "cpu", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dataroot" in err[0] and "nope" in err[0]
