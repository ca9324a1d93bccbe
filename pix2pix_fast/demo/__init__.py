"""`pix2pix-fast demo CKPT`: a local web page to try a trained generator.

Upload an image of any size or paint one (a palette of label colours for
label-to-photo models, a pen and an eraser for edge inputs), see input and
output side by side with the model's time, draw new test-time dropout noise or
switch to deterministic eval mode, and set the pad-then-crop margin.

The server is Python's standard `http.server` (threaded), so the command
needs nothing beyond the base install; the page is one self-contained HTML
document with vanilla JS.
"""
from __future__ import annotations

__all__ = ["make_server", "run_demo"]


def make_server(*args, **kwargs):
    """See pix2pix_fast.demo.server.make_server."""
    from pix2pix_fast.demo.server import make_server as _make

    return _make(*args, **kwargs)


def run_demo(checkpoint: str, *, host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
             precision: str = "fp32", palette_file: str | None = None, dataroot: str | None = None,
             max_side: int = 8192, tiling=None, runtime: str = "auto") -> int:
    """Serve until Ctrl-C; start-up errors raise ConfigError / CheckpointError (one line)."""
    import sys

    server = make_server(checkpoint, host=host, port=port, device=device, precision=precision, runtime=runtime,
                         palette_file=palette_file, dataroot=dataroot, max_side=max_side, tiling=tiling)
    model, palette = server.model, server.palette
    for note in palette.notes:
        print(f"pix2pix-fast demo: note: {note}", file=sys.stderr)
    mode = "test-time dropout" if model.has_dropout else "no dropout"
    print(f"pix2pix-fast demo: {model.config.netG} ({model.config.input_nc}->{model.config.output_nc} channels, "
          f"{mode}) on {model.device}, palette: {palette.kind} ({len(palette.colours)} colours)")
    if not server.local_only:
        print(f"pix2pix-fast demo: listening on {host}: anyone who can reach this machine can use the page",
              file=sys.stderr)
    print(f"pix2pix-fast demo: open {server.url}  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("pix2pix-fast demo: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
