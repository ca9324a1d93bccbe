"""Border and checkerboard artifacts: zero vs reflect padding, transposed vs resize upsampling.

Trains four small generators on the built-in data (the CPU quick-start model
at 64 px by default, `--size 128` for a deeper U-Net on larger images; a
longer schedule) from the same seeds and scores each on the val split:

  - at initialisation and after training: the checkerboard score of the
    outputs (period 2, output alone; the targets' own score is the reference
    row), the border score, and L1;
  - zero-padded models also with pad-then-crop inference (`--margin`).

Writes artifacts.md (the table), artifacts.json (every number, per seed) and
artifacts.png (per variant: a val output, a 4x zoom of its corner, and the
same corner before training):

    python benchmarks/artifacts_demo.py --out benchmarks/results/artifacts
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pix2pix_fast.bench import harness
from pix2pix_fast.config import CPU_QUICKSTART, TrainConfig
from pix2pix_fast.eval.report import evaluate
from pix2pix_fast.fileio import write_text
from pix2pix_fast.train.trainer import Trainer

VARIANTS = {
    "zero + transposed (paper)": dict(padding="zero", upsample="transposed"),
    "reflect + transposed": dict(padding="reflect", upsample="transposed"),
    "zero + nearest resize-conv": dict(padding="zero", upsample="nearest"),
    "reflect + nearest resize-conv": dict(padding="reflect", upsample="nearest"),
}
SCORES = ("l1", "border", "checkerboard", "checkerboard_target")


def _scores(checkpoint: Path, out_dir: Path, args, margin: int = 0) -> dict:
    report = evaluate(checkpoint, split="val", out_dir=out_dir, device="cpu", eval_mode=True, margin=margin,
                      fid=False, max_images=args.images, write_images=False)
    return {k: report["mean"][k] for k in SCORES}


def run_variant(name: str, opts: dict, seed: int, out: Path, args) -> dict:
    tag = f"{opts['padding']}_{opts['upsample']}_s{seed}"
    size = {"crop_size": args.size, "load_size": args.size * 9 // 8, "netG": f"unet_{args.size}"}
    cfg = TrainConfig(**{**CPU_QUICKSTART, **size, "epochs": args.epochs, "epochs_decay": args.epochs_decay,
                         "seed": seed, "output_dir": str(out / "runs"), "name": tag, **opts})
    trainer = Trainer(cfg, progress=False, overwrite=True)  # a rerun into the same folder starts over
    init = _scores(trainer.save_checkpoint("init.pt"), trainer.run_dir / "eval_init", args)
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    latest = result.run_dir / "latest.pt"
    row = {"variant": name, **opts, "seed": seed, "steps": result.step, "train_seconds": round(seconds, 1),
           "init": init, "trained": _scores(latest, result.run_dir / "eval_trained", args)}
    if opts["padding"] == "zero":
        row["trained_margin"] = _scores(latest, result.run_dir / "eval_margin", args, margin=args.margin)
    print(json.dumps(row), flush=True)
    return row


def _cell(rows: list[dict], stage: str, key: str, fmt: str) -> str:
    """Mean over seeds, then each seed in brackets."""
    vals = [r[stage][key] for r in rows if stage in r]
    if not vals:
        return "-"
    each = ", ".join(format(v, fmt) for v in vals)
    return f"{format(float(np.mean(vals)), fmt)} ({each})"


def table(rows: list[dict], margin: int) -> str:
    lines = [
        f"| variant | val L1 | border | border, margin {margin} | checkerboard at init | checkerboard trained |",
        "|---|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        rs = [r for r in rows if r["variant"] == name]
        lines.append(" | ".join([
            f"| {name}", _cell(rs, "trained", "l1", ".4f"), _cell(rs, "trained", "border", ".3f"),
            _cell(rs, "trained_margin", "border", ".3f"), _cell(rs, "init", "checkerboard", ".2f"),
            _cell(rs, "trained", "checkerboard", ".2f"),
        ]) + " |")
    target = float(np.mean([r["trained"]["checkerboard_target"] for r in rows]))
    lines.append(f"| targets (reference) | | | | {target:.2f} | {target:.2f} |")
    return "\n".join(lines) + "\n"


def _enlarge(x: np.ndarray, k: int) -> np.ndarray:
    return x.repeat(k, axis=0).repeat(k, axis=1)


def picture(rows: list[dict], out: Path, image: int) -> None:
    """Per variant (first seed), one column: a val output at 2x, its top-left quarter at 4x,
    and the same quarter from the untrained generator at 4x."""
    from pix2pix_fast.data.datasets import PairedDataset, dataset_root
    from pix2pix_fast.inference import Pix2Pix

    columns = []
    for name in VARIANTS:
        r = next(r for r in rows if r["variant"] == name)
        run = out / "runs" / f"{r['padding']}_{r['upsample']}_s{r['seed']}"
        model = Pix2Pix.from_checkpoint(run / "latest.pt", device="cpu", eval_mode=True)
        untrained = Pix2Pix.from_checkpoint(run / "init.pt", device="cpu", eval_mode=True)
        a = Image.fromarray(PairedDataset(dataset_root(model.config), split="val")[image][0])
        y, y0 = np.asarray(model(a)), np.asarray(untrained(a))
        h, w = y.shape[:2]
        quarter = (slice(0, h // 2), slice(0, w // 2))
        columns.append(np.concatenate([_enlarge(y, 2), _enlarge(y[quarter], 4), _enlarge(y0[quarter], 4)], axis=0))
    gap = np.full((columns[0].shape[0], 4, 3), 255, np.uint8)
    strip = np.concatenate(sum(([c, gap] for c in columns), [])[:-1], axis=1)
    # A white header naming each column: padding on the first line, upsampling on the second.
    canvas = Image.new("RGB", (strip.shape[1], strip.shape[0] + 28), "white")
    canvas.paste(Image.fromarray(strip), (0, 28))
    draw = ImageDraw.Draw(canvas)
    for i, opts in enumerate(VARIANTS.values()):
        x = i * (columns[0].shape[1] + gap.shape[1]) + 4
        draw.text((x, 2), f"{opts['padding']} padding", fill="black")
        draw.text((x, 14), f"{opts['upsample']} upsampling", fill="black")
    canvas.save(out / "artifacts.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/artifacts")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--size", type=int, default=64, choices=(64, 128, 256), help="image size (U-Net depth follows)")
    p.add_argument("--epochs", type=int, default=18, help="epochs at the full learning rate (50 steps each)")
    p.add_argument("--epochs-decay", type=int, default=12, help="epochs of linear decay after them")
    p.add_argument("--images", type=int, default=50, help="val images scored")
    p.add_argument("--margin", type=int, default=8, help="pad-then-crop margin for the zero-padded models")
    p.add_argument("--image", type=int, default=0, help="val image shown in artifacts.png")
    p.add_argument("--redraw", action="store_true", help="rewrite the table and picture from artifacts.json and runs/")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.redraw:
        saved = json.loads((out / "artifacts.json").read_text())
        rows, args.margin = saved["rows"], saved["args"]["margin"]
    else:
        rows = [run_variant(name, opts, seed, out, args) for seed in args.seeds for name, opts in VARIANTS.items()]
        settings = {k: v for k, v in vars(args).items() if k not in ("out", "redraw")}
        harness.write_json(out / "artifacts.json", {"args": settings, "env": harness.environment("cpu"), "rows": rows})
    md = table(rows, args.margin)
    write_text(out / "artifacts.md", md)
    picture(rows, out, args.image)
    print(md)


if __name__ == "__main__":
    main()
