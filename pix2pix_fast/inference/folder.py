"""`pix2pix-fast test`: run a checkpoint over a dataset split or a folder of
images, write the outputs and an index.html with input | output | target."""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pix2pix_fast.config import COUNT, MARGIN
from pix2pix_fast.errors import DataError
from pix2pix_fast.data.imageio import read_image, write_image
from pix2pix_fast.fileio import write_text


def run_test(
    checkpoint: str | Path,
    split: str = "test",
    input_dir: str | Path | None = None,
    dataroot: str | Path | None = None,
    out_dir: str | Path | None = None,
    eval_mode: bool = False,
    margin: int = 0,
    device: str = "auto",
    limit: int = 0,
    progress: bool = True,
    tiling=None,
    runtime: str = "auto",
) -> Path:
    from pix2pix_fast.inference import Pix2Pix

    MARGIN.check("--margin", margin)
    COUNT.check("--limit", limit)
    model = Pix2Pix.from_checkpoint(checkpoint, device=device, eval_mode=eval_mode, tiling=tiling, runtime=runtime)
    cfg = model.config
    items = _items(cfg, split, input_dir, dataroot)
    if limit:
        items = items[:limit]
    model.runtime.expected_images = len(items)
    if out_dir is None:
        tag = Path(input_dir).name if input_dir else split
        out_dir = Path(checkpoint).parent / f"test_{tag}"
    out_dir = Path(out_dir)
    images = out_dir / "images"
    try:
        images.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot write to output folder {out_dir}: {e.strerror or e}") from None

    rows = []
    for name, load in tqdm(items, desc="test", unit="img", disable=not progress):
        A, B = load()
        fake = model(A, margin=margin)
        cells = {"input": A, "output": fake, "target": B}
        row = {"name": name}
        for kind, img in cells.items():
            if img is not None:
                rel = f"images/{name}_{kind}.png"
                write_image(out_dir / rel, np.asarray(img))
                row[kind] = rel
        rows.append(row)
    _write_index(out_dir / "index.html", rows, checkpoint, eval_mode)
    return out_dir


def _items(cfg, split, input_dir, dataroot):
    """(name, loader) pairs; a loader returns (A, B or None) as uint8 HWC arrays."""
    if input_dir is not None:
        from pix2pix_fast.data.datasets import check_unique_stems, list_images

        folder = Path(input_dir)
        if not folder.is_dir():
            raise DataError(f"input folder not found: {folder}")
        paths = list_images(folder)
        check_unique_stems(paths, folder)  # outputs are named by stem: x.png and x.jpg would collide
        return [(p.stem, lambda p=p: (read_image(p, cfg.input_nc), None)) for p in paths]

    from pix2pix_fast.data.datasets import PairedDataset
    from pix2pix_fast.data.datasets import dataset_root

    root = Path(dataroot) if dataroot else dataset_root(cfg)
    ds = PairedDataset(root, split=split, layout=cfg.layout, direction=cfg.direction,
                       input_nc=cfg.input_nc, output_nc=cfg.output_nc)
    return [(ds.names[i], lambda i=i: ds[i]) for i in range(len(ds))]


def _write_index(path: Path, rows: list[dict], checkpoint, eval_mode: bool) -> None:
    mode = "eval mode (deterministic)" if eval_mode else "test-time dropout (as the paper)"
    head = "".join(f"<th>{c}</th>" for c in ("name", "input", "output", "target"))
    body = []
    for r in rows:
        cells = [f"<td>{html.escape(r['name'])}</td>"]
        for kind in ("input", "output", "target"):
            cells.append(f'<td><img src="{html.escape(r[kind])}"></td>' if kind in r else "<td></td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    write_text(
        path,
        "<!doctype html><meta charset='utf-8'><title>pix2pix-fast test</title>"
        "<style>body{font-family:sans-serif}img{max-width:256px;image-rendering:pixelated}"
        "td{padding:2px;vertical-align:top}</style>"
        f"<h1>pix2pix-fast test</h1><p>{html.escape(str(checkpoint))}, {len(rows)} images, {mode}</p>"
        f"<table><tr>{head}</tr>{''.join(body)}</table>\n"
    )
