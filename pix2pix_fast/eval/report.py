"""Evaluate a checkpoint on a dataset split and write an HTML report.

`evaluate(checkpoint)` (what `pix2pix-fast eval` runs):
  1. builds the generator from the checkpoint (`Pix2Pix.from_checkpoint`),
  2. translates every image of the split at its own size (reflect-pad to the
     network's multiple, crop back), in the paper's test-time mode by default
     (dropout on, a fixed seed so reruns agree; `eval_mode=True` for the
     deterministic mode),
  3. scores each output against its target: L1 (mean |error| on the [0, 1]
     scale), PSNR (dB, data range 1), SSIM (Gaussian 11 / 1.5), the border
     and checkerboard artifact scores (see `pix2pix_fast.eval.artifacts`;
     the checkerboard score of the output, and of the target for reference),
     and over the whole split FID and KID (real = targets, fake = outputs)
     when Inception weights are available,
  4. writes <out_dir>/index.html (metrics table, training plots, per-image
     table with input | output | target), images/, metrics.json,
     per_image.csv, and loss_curves.png / metrics_curves.png from the run's
     log.jsonl (the checkpoint's folder).

`evaluate_model(G, dataset)` is the quick in-training variant: an in-memory
generator and a dataset (or loader), L1/PSNR/SSIM means only, nothing written,
G's mode and the global RNG left as they were.
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from pix2pix_fast.config import COUNT, MARGIN
from pix2pix_fast.errors import DataError
from pix2pix_fast.eval import artifacts
from pix2pix_fast.metrics import image_metrics
from pix2pix_fast.fileio import write_text
from pix2pix_fast.plots import plot_training_log, read_run_log

__all__ = ["evaluate", "evaluate_model", "plot_training_log", "read_run_log"]

PER_IMAGE_METRICS = ("l1", "psnr", "ssim", "border", "checkerboard", "checkerboard_target")


# ------------------------------------------------------------------ batching
def _pairs_to_batches(
    dataset: Any, indices: Iterable[int], batch_size: int
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Consecutive same-sized pairs of an indexable dataset as uint8 (N, C, H, W) batches."""
    idx: list[int] = []
    As: list[np.ndarray] = []
    Bs: list[np.ndarray] = []

    def flush():
        a = torch.from_numpy(np.stack(As)).permute(0, 3, 1, 2)
        b = torch.from_numpy(np.stack(Bs)).permute(0, 3, 1, 2)
        return list(idx), a, b

    for i in indices:
        A, B = dataset[i]
        A = A[:, :, None] if A.ndim == 2 else A
        B = B[:, :, None] if B.ndim == 2 else B
        if A.shape[:2] != B.shape[:2]:
            raise DataError(f"pair {i}: input {A.shape[1]}x{A.shape[0]} and target {B.shape[1]}x{B.shape[0]} differ in size")
        if As and (A.shape != As[0].shape or B.shape != Bs[0].shape or len(As) == batch_size):
            yield flush()
            idx.clear()
            As.clear()
            Bs.clear()
        idx.append(i)
        As.append(A)
        Bs.append(B)
    if As:
        yield flush()


def _batches(dataset: Any, batch_size: int, max_images: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) uint8 (N, C, H, W) batches from a PairedDataset-like object or a loader."""
    if _is_pair_dataset(dataset):
        n = len(dataset) if not max_images else min(max_images, len(dataset))
        for _, A, B in _pairs_to_batches(dataset, range(n), batch_size):
            yield A, B
        return
    seen = 0
    for A, B in dataset:
        if max_images and seen >= max_images:
            return
        if max_images:
            A, B = A[: max_images - seen], B[: max_images - seen]
        seen += A.shape[0]
        yield torch.as_tensor(A), torch.as_tensor(B)


def _is_pair_dataset(dataset: Any) -> bool:
    """Indexable and ds[0] is one (A, B) pair of (H, W[, C]) arrays, not a batch."""
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")) or len(dataset) == 0:
        return False
    first = dataset[0]
    return np.ndim(first[0]) in (2, 3)


def _to_unit(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 -> float [-1, 1] on `device` (a float batch is taken as already in [-1, 1])."""
    x = x.to(device, non_blocking=True)
    return x.float().div(127.5).sub(1.0) if x.dtype == torch.uint8 else x.float()


# ----------------------------------------------------------- evaluate_model
def evaluate_model(
    G: nn.Module,
    dataset: Any,
    *,
    batch_size: int = 8,
    max_images: int | None = None,
    eval_mode: bool = True,
    margin: int = 0,
    seed: int = 0,
) -> dict[str, float]:
    """Mean {"l1", "psnr", "ssim"} of G on `dataset`, for periodic validation in training.

    G: an in-memory generator (with `multiple`); it runs on its own device,
    under no_grad, at each image's size (reflect-padded to the multiple).
    dataset: a PairedDataset (ds[i] -> (A, B) uint8 HWC arrays) or any
    iterable of (A, B) batches, uint8 (N, C, H, W) or float in [-1, 1] (e.g.
    a validation PairedLoader). max_images: stop after this many (None = all).
    eval_mode: True (default) = deterministic (dropout off, BatchNorm running
    statistics), comparable from epoch to epoch; False = the paper's
    test-time mode, seeded with `seed`. G's train/eval mode, BatchNorm
    buffers and the global RNG state are restored afterwards, so calling this
    does not perturb training. Pass the plain (not torch.compile'd) module:
    validation sizes would trigger recompiles.
    """
    from pix2pix_fast.metrics import MetricAccumulator
    from pix2pix_fast.inference import translate

    param = next(iter(G.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = G.training
    buffers = {k: v.clone() for k, v in G.named_buffers()} if not eval_mode else {}
    acc = MetricAccumulator()
    fork_devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            G.train(not eval_mode)
            for A, B in _batches(dataset, batch_size, max_images):
                real_A, real_B = _to_unit(A, device), _to_unit(B, device)
                acc.update(translate(G, real_A, margin=margin), real_B)
    finally:
        G.train(was_training)
        if buffers:
            with torch.no_grad():
                for k, v in G.named_buffers():
                    v.copy_(buffers[k])
    if len(acc) == 0:
        raise DataError("evaluate_model: the dataset is empty")
    return acc.means()


# ----------------------------------------------------------------- evaluate
def _dataset_root(cfg, dataroot: str | os.PathLike | None) -> Path:
    if dataroot:
        return Path(dataroot)
    # The trainer's own resolution (the user's folder, or the synthetic set
    # with the checkpoint's size and counts), so eval sees the data training saw.
    from pix2pix_fast.data.datasets import dataset_root

    return Path(dataset_root(cfg))


def _display(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) float [-1, 1] -> uint8 (H, W) or (H, W, 3/4) for PNG (2 ch -> gray, > 4 -> first 3)."""
    from pix2pix_fast.inference import to_uint8

    u = to_uint8(x).cpu()
    c = u.shape[0]
    if c == 2:
        u = u[:1]
    elif c > 4:
        u = u[:3]
    arr = u.permute(1, 2, 0).numpy()
    return arr[:, :, 0] if arr.shape[2] == 1 else arr


def _writable_dir(path: Path) -> Path:
    try:
        (path / "images").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot write to output folder {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK):
        raise DataError(f"cannot write to output folder {path}: permission denied")
    return path


def evaluate(
    checkpoint_path: str | os.PathLike,
    split: str = "val",
    dataroot: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    device: str = "auto",
    inception_weights: str | os.PathLike | None = None,
    batch_size: int = 8,
    *,
    eval_mode: bool = False,
    margin: int = 0,
    max_images: int | None = None,
    fid: bool = True,
    seed: int = 0,
    write_images: bool = True,
    progress: bool = False,
    tiling=None,
    runtime: str = "auto",
) -> dict[str, Any]:
    """Score a checkpoint on `split` and write the report; returns the results.

    checkpoint_path: a checkpoint written by `train`; its folder is the run
      folder (log.jsonl is read from there).
    split: dataset split folder (train / val / test).
    dataroot: dataset folder (None: the checkpoint's; an empty dataroot in
      the checkpoint means the built-in synthetic set).
    out_dir: report folder (None: <run folder>/eval_<split>).
    device: auto | cpu | cuda.
    inception_weights: FID Inception weights file. None: look in
      $PIX2PIX_FAST_INCEPTION_WEIGHTS and the torch hub cache, and skip
      FID/KID with a note when there are none; a given path that is missing
      or bad raises MissingWeightsError / InceptionWeightsError.
    batch_size: images per forward pass (consecutive same-size images); 1 is
      forced in the paper's mode with BatchNorm, whose batch statistics would
      otherwise mix images.
    eval_mode: False = the paper's test-time mode (dropout on, seeded by
      `seed`); True = deterministic.
    margin: extra reflect padding around each image (border-artifact cure).
    max_images: evaluate only the first N images (None = all).
    fid: False skips FID/KID (Inception costs ~1 s per image on a CPU).
    write_images: False writes the report without the image files.
    tiling: inference.tiled.TileOptions (None: the defaults, tiles only past half the free memory).
    runtime: how the generator runs (auto | eager | compiled | onnx; runtime.py).

    Returns {"checkpoint", "step", "split", "dataroot", "n_images",
    "eval_mode", "margin", "mean": {metric: float}, "per_image": [{"name",
    metric: float}], "notes": [str], "out_dir", "report", "plots"}. "mean"
    holds l1, psnr, ssim, border, checkerboard, checkerboard_target, and fid, kid, kid_std when
    computed. Errors (bad checkpoint, data, output folder, weights) are raised
    as one-line CheckpointError / DataError / ConfigError / MissingWeightsError.
    """
    from pix2pix_fast.data.datasets import PairedDataset
    from pix2pix_fast.data.imageio import write_image
    from pix2pix_fast.eval.fid import InceptionFeatures
    from pix2pix_fast.eval.inception import MissingWeightsError
    from pix2pix_fast.inference import Pix2Pix

    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    MARGIN.check("--margin", margin)
    COUNT.check("--max-images", max_images or 0)
    checkpoint_path = Path(checkpoint_path)
    model = Pix2Pix.from_checkpoint(checkpoint_path, device=device, eval_mode=eval_mode, tiling=tiling,
                                    runtime=runtime)
    cfg = model.config
    root = _dataset_root(cfg, dataroot)
    ds = PairedDataset(root, split=split, layout=cfg.layout, direction=cfg.direction,
                       input_nc=cfg.input_nc, output_nc=cfg.output_nc)
    run_dir = checkpoint_path.parent
    out = _writable_dir(Path(out_dir) if out_dir is not None else run_dir / f"eval_{split}")
    notes: list[str] = []

    feats = None
    if fid:
        if cfg.output_nc not in (1, 3):
            notes.append(f"FID/KID skipped: they need 1- or 3-channel outputs, this model gives {cfg.output_nc}")
        else:
            try:
                feats = InceptionFeatures(inception_weights, device=model.device)
            except MissingWeightsError as e:
                if inception_weights is not None:
                    raise
                notes.append(f"FID/KID skipped: {e}")

    if not eval_mode and cfg.norm == "batch" and batch_size > 1:
        batch_size = 1
        notes.append("batch size 1: test-time BatchNorm uses batch statistics, as in the paper's test")

    n_total = len(ds) if not max_images else min(max_images, len(ds))
    model.runtime.expected_images = n_total
    per_image: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_total, desc="eval", unit="img")
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        for idx, A, B in _pairs_to_batches(ds, range(n_total), batch_size):
            real_A, real_B = _to_unit(A, model.device), _to_unit(B, model.device)
            fake_B = model.predict_tensor(real_A, margin=margin)
            scores = {k: v.double().cpu() for k, v in image_metrics(fake_B, real_B).items()}
            scores.update(_artifact_scores(fake_B, real_B))
            if feats is not None:
                feats.update(real_B, real=True)
                feats.update(fake_B, real=False)
            for j, i in enumerate(idx):
                name = ds.names[i]
                rec = {"name": name, **{k: float(scores[k][j]) for k in PER_IMAGE_METRICS}}
                per_image.append(rec)
                row = dict(rec)
                if write_images:
                    for kind, t in (("input", real_A[j]), ("output", fake_B[j]), ("target", real_B[j])):
                        rel = f"images/{_safe(name)}_{kind}.png"
                        write_image(out / rel, _display(t))
                        row[kind] = rel
                rows.append(row)
            if bar is not None:
                bar.update(len(idx))
    if bar is not None:
        bar.close()
    if not per_image:
        raise DataError(f"no images in split {split!r} of {root}")

    mean = {k: _mean([r[k] for r in per_image]) for k in PER_IMAGE_METRICS}
    if feats is not None:
        if len(per_image) >= 2:
            mean.update(feats.compute(kid_subset_size=min(1000, len(per_image)), seed=seed))
            if len(per_image) < 2048:
                notes.append(f"FID from {len(per_image)} images (< 2048 features' dimension) is biased upwards; compare only at equal counts")
        else:
            notes.append("FID/KID skipped: they need at least 2 images")

    plots = plot_training_log(run_dir / "log.jsonl", out, notes=notes)
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint_path),
        "step": model.step,
        "split": split,
        "dataroot": str(root),
        "n_images": len(per_image),
        "eval_mode": eval_mode,
        "margin": margin,
        "mean": mean,
        "per_image": per_image,
        "notes": notes,
        "out_dir": str(out),
        "report": str(out / "index.html"),
        "plots": [str(p) for p in plots],
    }
    _write_json(out / "metrics.json", result)
    _write_csv(out / "per_image.csv", per_image)
    _write_html(out / "index.html", result, rows, [p.name for p in plots], cfg)
    return result


def _artifact_scores(fake: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
    """Border / checkerboard scores, NaN where the image is too small for them."""
    side = min(fake.shape[-2:])
    if side >= 8:
        return {k: v.double().cpu() for k, v in artifacts.artifact_scores(fake, real).items()}
    nan = torch.full((fake.shape[0],), math.nan, dtype=torch.float64)
    border = artifacts.border_score(fake, real).double().cpu() if side >= 3 else nan
    return {"border": border, "checkerboard": nan, "checkerboard_target": nan}


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _safe(name: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return keep or "image"


def _json_safe(x: Any) -> Any:
    """Non-finite floats (PSNR of an exact output is +inf) as strings: JSON has no inf/nan."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def _write_json(path: Path, result: dict[str, Any]) -> None:
    write_text(path, json.dumps(_json_safe(result), indent=1) + "\n")


def _write_csv(path: Path, per_image: list[dict[str, Any]]) -> None:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=["name", *PER_IMAGE_METRICS])
    w.writeheader()
    w.writerows(per_image)
    write_text(path, buf.getvalue())


# -------------------------------------------------------------------- HTML
_UNITS = {
    "l1": "mean |output - target| on [0, 1] (lower is better)",
    "psnr": "dB, data range 1 (higher is better)",
    "ssim": "Gaussian window 11, sigma 1.5 (higher is better, max 1)",
    "border": "edge-band error / interior error (1 = no border artifact)",
    "checkerboard": "spectral peak ratio of the output at period 2 (about 1 = none)",
    "checkerboard_target": "the same score of the target: what the real images have",
    "fid": "Fréchet Inception distance, targets vs outputs (lower is better)",
    "kid": "kernel Inception distance, unbiased MMD^2 (lower is better)",
    "kid_std": "standard deviation of KID over subsets",
}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if math.isinf(v):
            return "inf"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.4e}"
    return html.escape(str(v))


def _write_html(path: Path, result: dict[str, Any], rows: list[dict[str, Any]], plots: list[str], cfg) -> None:
    e = html.escape
    mode = "eval mode (deterministic)" if result["eval_mode"] else "paper test-time mode (dropout on, seeded)"
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>pix2pix-fast eval: {e(result['checkpoint'])}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}"
        "td.name{text-align:left}img.t{width:128px;image-rendering:pixelated}</style></head><body>",
        f"<h1>{e(cfg.name)}: {e(result['split'])} split</h1>",
        f"<p>checkpoint <code>{e(result['checkpoint'])}</code> (step {e(str(result['step']))}), "
        f"{cfg.netG}, {cfg.input_nc}&rarr;{cfg.output_nc} channels, {result['n_images']} images from "
        f"<code>{e(result['dataroot'])}</code>; {mode}, margin {result['margin']}.</p>",
        "<h2>Metrics (mean over images)</h2><table><tr><th>metric</th><th>value</th><th>meaning</th></tr>",
    ]
    for k, v in result["mean"].items():
        parts.append(f"<tr><td class='name'>{e(k)}</td><td>{_fmt(v)}</td><td class='name'>{e(_UNITS.get(k, ''))}</td></tr>")
    parts.append("</table>")
    if result["notes"]:
        parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in result["notes"]) + "</ul>")
    if plots:
        parts.append("<h2>Training</h2>" + "".join(f"<p><img src='{e(p)}'></p>" for p in plots))
    parts.append("<h2>Per image</h2><table><tr><th>name</th><th>input</th><th>output</th><th>target</th>"
                 + "".join(f"<th>{k}</th>" for k in PER_IMAGE_METRICS) + "</tr>")
    for row in rows:
        cells = [f"<td class='name'>{e(row['name'])}</td>"]
        for kind in ("input", "output", "target"):
            cells.append(f"<td><img class='t' src='{e(row[kind])}'></td>" if kind in row else "<td></td>")
        cells += [f"<td>{_fmt(row[k])}</td>" for k in PER_IMAGE_METRICS]
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table></body></html>")
    write_text(path, "\n".join(parts) + "\n")
