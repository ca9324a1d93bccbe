"""`pix2pix-fast train|test|eval|bench|export|data ...`

The `train` flags are generated from TrainConfig, so every option has one
default, one help text and one name. Errors a user can cause are printed as
one line (`pix2pix-fast: error: ...`) with exit status 2; nothing is
overwritten on the way out.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Sequence

from pix2pix_fast.config import (CHOICES, COUNT, CPU_QUICKSTART, MARGIN, MAX_SIZE, RUNTIMES, SYNTHETIC_SIZE, Range,
                                  TrainConfig)
from pix2pix_fast.errors import UserError



# ----------------------------------------------------------------- train
def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field. Defaults are suppressed so that only the
    flags a user actually gave show up in the parsed namespace."""
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        number = f.metadata.get("range")
        help_text = f"{f.metadata['help']}{'; ' + number.describe() if number else ''} (default: {default!r})"
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=number or type(default), choices=CHOICES.get(f.name),
                                default=argparse.SUPPRESS, metavar=f.name.upper() if f.name not in CHOICES else None,
                                help=help_text)


def add_number(parser: argparse.ArgumentParser, flag: str, number: Range, default, help: str, **kwargs) -> None:
    """A numeric option of a verb other than train: parsed and checked by `number`, its range in --help."""
    shown = kwargs.pop("default_text", repr(default))
    parser.add_argument(flag, type=number, default=default, help=f"{help}; {number.describe()} (default: {shown})",
                        **kwargs)


def resolve_train_config(args: argparse.Namespace) -> tuple[TrainConfig, str | None]:
    """Defaults < CPU quick-start (no GPU, no dataset) < config file < flags; or, on
    --resume, the checkpoint's own config plus the run-control flags."""
    names = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    if args.config:
        cfg = TrainConfig.from_file(args.config, **given)
    else:
        cfg = TrainConfig.from_dict(given)
    explicit = set(given) | (_config_file_keys(args.config) if args.config else set())

    resume = None
    if args.resume is not None:
        from pix2pix_fast.train.resume import resumed_config

        resume = args.resume if args.resume != "auto" else str(Path(cfg.output_dir) / cfg.name / "latest.pt")
        cfg = resumed_config(resume, cfg, explicit)
    elif not cfg.dataroot and not args.full and _no_gpu(cfg):
        quick = {k: v for k, v in CPU_QUICKSTART.items() if k not in explicit}
        if quick and os.environ.get("RANK", "0") == "0":  # under torchrun: said once, by rank 0
            print("pix2pix-fast: no GPU and no dataset given: training a small quick-start model on the "
                  "built-in data (pass --full for the paper's configuration)", file=sys.stderr)
        if quick:
            cfg = cfg.replace(**quick)
    cfg.validate()
    return cfg, resume


def _config_file_keys(path: str) -> set[str]:
    """The option names a (valid, already loaded) config file sets."""
    import json

    import yaml

    text = Path(path).read_text()
    data = json.loads(text) if path.lower().endswith(".json") else yaml.safe_load(text)
    return {k.replace("-", "_") for k in data}


def _no_gpu(cfg: TrainConfig) -> bool:
    if cfg.device == "cpu":
        return True
    import torch

    return not torch.cuda.is_available()


def cmd_train(args: argparse.Namespace) -> int:
    """Train; under torchrun this runs on every rank (see train/distributed.py)."""
    cfg, resume = resolve_train_config(args)
    import torch.distributed as dist

    from pix2pix_fast.train.distributed import is_collective_failure
    from pix2pix_fast.train.fast import FastStepFailure
    from pix2pix_fast.train.trainer import Trainer

    try:
        trainer = Trainer(cfg, resume=resume, progress=not args.quiet, overwrite=args.overwrite)
        result = trainer.fit()
    except FastStepFailure as e:
        if not _under_torchrun():
            raise
        print(f"pix2pix-fast: error: {e} (under torchrun a failure of the fast step is fatal on every rank; "
              "--backend eager, --no-compile or --no-cuda-graph avoid the failing part)", file=sys.stderr)
        return 1
    except RuntimeError as e:
        if not (_under_torchrun() and is_collective_failure(e)):
            raise
        # Another rank died or stalled past the collective timeout: end this one too.
        first_line = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"pix2pix-fast: error: rank {dist.get_rank() if dist.is_initialized() else '?'}: a collective "
              f"failed, another rank has failed or stalled ({type(e).__name__}: {first_line})", file=sys.stderr)
        return 1
    trainer.world.close()
    return {"done": 0, "interrupted": 130, "nan": 3}[result.status]


def _under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _note_distributed(parser: argparse.ArgumentParser) -> None:
    """What --batch-size and --norm batch mean under torchrun, in their --help."""
    notes = {
        "batch_size": " Under torchrun: per rank; the global batch is batch x ranks.",
        "norm": " Under torchrun, batch uses SyncBatchNorm (statistics over the global batch; CUDA only).",
    }
    for action in parser._actions:
        if action.dest in notes and action.help:
            head, _, default = action.help.rpartition(" (default:")
            action.help = f"{head}.{notes[action.dest]} (default:{default}" if head else action.help + notes[action.dest]


# ------------------------------------------------------------ test / eval
def cmd_test(args: argparse.Namespace) -> int:
    from pix2pix_fast.inference.folder import run_test

    out = run_test(
        args.checkpoint, split=args.split, input_dir=args.input, dataroot=args.dataroot, out_dir=args.out,
        eval_mode=args.eval_mode, margin=args.margin, device=args.device, limit=args.limit,
        progress=not args.quiet, tiling=_tile_options(args), runtime=args.runtime,
    )
    print(f"wrote {out / 'index.html'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pix2pix_fast.eval.report import evaluate

    result = evaluate(
        args.checkpoint, split=args.split, dataroot=args.dataroot, out_dir=args.out, device=args.device,
        inception_weights=args.inception_weights, eval_mode=args.eval_mode, margin=args.margin,
        max_images=args.max_images or None, fid=not args.no_fid, progress=not args.quiet,
        tiling=_tile_options(args), runtime=args.runtime,
    )
    for note in result.get("notes", []):
        print(f"note: {note}")
    print("  ".join(f"{k}={v:.4f}" for k, v in result["mean"].items() if isinstance(v, float)))
    print(f"wrote {result['report']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pix2pix_fast.interop.export import export

    path = export(args.checkpoint, args.out, format=args.format, size=args.size, net=args.net)
    print(f"wrote {path}")
    return 0


def cmd_import_reference(args: argparse.Namespace) -> int:
    from pix2pix_fast.interop.reference import import_reference

    names = {f.name for f in fields(TrainConfig)}
    options = {k: v for k, v in vars(args).items() if k in names}
    path, cfg = import_reference(args.net_G, args.out, net_d=args.net_D, netD=args.netD, options=options)
    print(f"wrote {path} (--netG {cfg.netG} --ngf {cfg.ngf} --norm {cfg.norm} --input-nc {cfg.input_nc} "
          f"--output-nc {cfg.output_nc}{'' if cfg.dropout else ' --no-dropout'}"
          f"{f' --n-layers-D {cfg.n_layers_D} --ndf {cfg.ndf}' if args.net_D else ''})")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from pix2pix_fast.bench.steps import run_bench

    overrides = {k: v for k, v in (("ngf", args.ngf), ("ndf", args.ndf)) if v is not None}
    if args.suite == "cpu" or (args.suite == "auto" and args.device == "cpu"):
        from pix2pix_fast.bench.cpu import RUNTIMES, TRAIN_VARIANTS, run_cpu_bench

        run_cpu_bench(sizes=args.sizes or [args.size], batch_sizes=args.batch_sizes or [1, 4],
                      variants=args.variant or TRAIN_VARIANTS,
                      runtimes=RUNTIMES if args.runtimes is None else args.runtimes,
                      steps=args.steps or 2, repeats=args.repeats, overrides=overrides,
                      netG=args.netG, json_path=args.json)
        return 0
    run_bench(batch_sizes=args.batch_sizes or [1, 16, 64], steps=args.steps or 50, json_path=args.json, size=args.size,
              variants=args.variant, order=args.order, netG=args.netG, overrides=overrides,
              seconds=args.seconds, repeats=args.repeats, warmup=args.warmup, device=args.device,
              sweep_base=args.sweep_base, append=args.append)
    return 0


# ------------------------------------------------------------------ demo
def cmd_demo(args: argparse.Namespace) -> int:
    from pix2pix_fast.demo import run_demo

    return run_demo(args.checkpoint, host=args.host, port=args.port, device=args.device, precision=args.precision,
                    palette_file=args.palette, dataroot=args.dataroot, max_side=args.max_side,
                    tiling=_tile_options(args), runtime=args.runtime)


# ------------------------------------------------------------------ data
def cmd_data(args: argparse.Namespace) -> int:
    if args.data_cmd == "download":
        from pix2pix_fast.data.download import download

        print(download(args.name, args.root, sha256=args.sha256))
    elif args.data_cmd == "combine":
        from pix2pix_fast.data.combine import combine

        print(combine(args.a_dir, args.b_dir, args.out))
    elif args.data_cmd == "synthetic":
        from pix2pix_fast.data.synthetic import synthetic_dataset

        n = args.count
        print(synthetic_dataset(args.root, size=args.size, n_train=n, n_val=max(1, n // 4),
                                n_test=max(1, n // 4), seed=args.seed))
    elif args.data_cmd == "check":
        from pix2pix_fast.data.datasets import PairedDataset

        for split in args.splits:
            ds = PairedDataset(args.root, split=split, layout=args.layout)
            ds.validate_all(progress=True)
            print(f"{split}: {len(ds)} pairs, all readable")
    return 0


# ---------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `pix2pix-fast: error: ...` and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _run_flags() -> argparse.ArgumentParser:
    """The flags of every verb that runs a trained generator on data (test, eval, demo)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("checkpoint", help="a checkpoint written by `train` (e.g. runs/experiment/latest.pt)")
    p.add_argument("--dataroot", metavar="DIR",
                   help="dataset folder (default: the one the checkpoint was trained on)")
    p.add_argument("--device", default="auto", choices=CHOICES["device"],
                   help="where the generator runs (default: auto: cuda, else mps, else cpu)")
    p.add_argument("--runtime", default="auto", choices=RUNTIMES,
                   help="how the generator runs: eager PyTorch; compiled (torch.compile; on a CPU in --eval-mode "
                        "with frozen, prepacked weights; each image size compiles once); onnx (ONNX Runtime: CPU, "
                        "--eval-mode, needs onnxruntime); auto (default): eager, or ONNX Runtime on a CPU in "
                        "--eval-mode when the images ahead take long enough to pay for its export")
    return p


def _batch_flags() -> argparse.ArgumentParser:
    """The flags of the verbs that translate a whole split or folder (test, eval)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--eval-mode", action="store_true",
                   help="deterministic eval mode (dropout off, BatchNorm running stats); "
                        "the default keeps the paper's test-time dropout")
    add_number(p, "--margin", MARGIN, 0,
               "extra reflect padding around each image, cropped off after (border-artifact fix)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _tile_flags() -> argparse.ArgumentParser:
    """The tiled-inference flags of every verb that runs a trained generator (test, eval, demo)."""
    from pix2pix_fast.inference.tiled import BATCH, MAX_MEMORY, OVERLAP, TILE

    p = argparse.ArgumentParser(add_help=False)
    add_number(p, "--tile", TILE, 0,
               "run images larger than N x N pixels (after --margin and padding to the network's multiple) in "
               "overlapping N x N tiles blended over the overlap, in memory that does not grow with the image's "
               "height; N a multiple of the network's multiple (unet_256: 256). 0 = the whole image at once, "
               "unless that would exceed --max-memory")
    add_number(p, "--overlap", OVERLAP, None,
               "least overlap of neighbouring tiles in pixels; tiles start on multiples of the network's multiple, "
               "so it is rounded up to one", default_text="a quarter of the tile")
    add_number(p, "--max-memory", MAX_MEMORY, 0,
               "memory budget in MiB: an image whose whole-image forward would need more (estimated from the "
               "bytes of every activation) is tiled automatically, with the largest tile up to 1024 px that "
               "fits; 0 = half the memory free at the first image (the GPU's on CUDA, else the machine's)")
    add_number(p, "--tile-batch", BATCH, 4, "tiles per forward pass")
    p.add_argument("--per-tile-stats", action="store_true",
                   help="tiles normalise instance norm (and train-mode batch norm) with their own statistics: one "
                        "pass, but tone drifts between tiles. Default: the whole image's statistics, gathered "
                        "layer by layer (one extra partial pass over the tiles per norm layer)")
    return p


def _tile_options(args: argparse.Namespace):
    from pix2pix_fast.inference.tiled import TileOptions

    return TileOptions(tile=args.tile, overlap=args.overlap, max_memory=args.max_memory, batch=args.tile_batch,
                       image_stats=not args.per_tile_stats)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="pix2pix-fast",
        description="Fast pix2pix: conditional-GAN image-to-image translation (U-Net + PatchGAN).",
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", parser_class=_Parser)

    run_flags, batch_flags, tile_flags = _run_flags(), _batch_flags(), _tile_flags()

    t = sub.add_parser("train", help="train a model (on the built-in dataset when given no --dataroot)",
                       description="Train pix2pix. With no --dataroot it trains on the built-in synthetic "
                                   "facades; on a machine without a GPU it then picks a small quick-start "
                                   f"configuration ({', '.join(f'{k}={v}' for k, v in CPU_QUICKSTART.items())}) "
                                   "unless --full is given or you set those options yourself. On several GPUs or "
                                   "machines launch it with torchrun (torchrun --nproc-per-node N -m pix2pix_fast "
                                   "train ...): --batch-size is then per rank, rank 0 writes the run folder, "
                                   "and collectives time out after $PIX2PIX_FAST_DIST_TIMEOUT seconds (default 1800).")
    t.add_argument("--config", metavar="FILE", help="YAML or JSON file of options (flags override it)")
    t.add_argument("--resume", nargs="?", const="auto", metavar="CHECKPOINT",
                   help="continue a run from CHECKPOINT (default: <output-dir>/<name>/latest.pt)")
    t.add_argument("--overwrite", action="store_true",
                   help="start over in a run folder that already holds a run (its checkpoints, log and samples "
                        "are replaced); without it such a folder is refused")
    t.add_argument("--full", action="store_true", help="use the paper's configuration even on a CPU")
    t.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_config_flags(t)
    _note_distributed(t)
    t.set_defaults(func=cmd_train)

    te = sub.add_parser("test", parents=[run_flags, batch_flags, tile_flags],
                        help="run a checkpoint on a split or a folder of images; writes index.html",
                        description="Translate images with a trained generator. Images of any size are "
                                    "reflect-padded to the network's multiple and cropped back.")
    te.add_argument("--split", default="test", help="dataset split to run on (default: test)")
    te.add_argument("--input", metavar="DIR", help="a folder of input images instead of a dataset split")
    te.add_argument("--out", metavar="DIR", help="output folder (default: <run>/test_<split>)")
    add_number(te, "--limit", COUNT, 0, "process at most this many images (0 = all)")
    te.set_defaults(func=cmd_test)

    ev = sub.add_parser(
        "eval", parents=[run_flags, batch_flags, tile_flags],
        help="metrics (L1, PSNR, SSIM, FID/KID, artifact scores) and an HTML report",
        description="Score a checkpoint on a split and write <run>/eval_<split>/index.html. Artifact scores: "
                    "border = error in an edge band / error inside (about 1 = no border artifact); "
                    "checkerboard = the output's spectral peak at period 2 over its neighbourhood "
                    "(about 1 = none, tens = visible), with checkerboard_target, the same score of the "
                    "targets, as the data's own level.")
    ev.add_argument("--split", default="val", help="dataset split (default: val)")
    ev.add_argument("--out", metavar="DIR", help="report folder (default: <run>/eval_<split>)")
    ev.add_argument("--inception-weights", metavar="PATH",
                    help="FID Inception weights file (default: the usual torch hub cache path); "
                         "without them FID/KID are skipped and the other metrics still run")
    ev.add_argument("--no-fid", action="store_true", help="skip FID/KID even when weights are available")
    add_number(ev, "--max-images", COUNT, 0, "evaluate at most this many images (0 = all)")
    ev.set_defaults(func=cmd_eval)

    ex = sub.add_parser("export", help="export the generator to ONNX or TorchScript, or as a reference .pth",
                        description="Export a checkpoint's generator. --format reference writes the state dict "
                                    "of the reference implementation (pytorch-CycleGAN-and-pix2pix), loadable by "
                                    "its test.py with the same --netG/--ngf/--norm options.")
    ex.add_argument("checkpoint")
    ex.add_argument("--format", default="onnx", choices=("onnx", "torchscript", "reference"))
    ex.add_argument("--net", default="G", choices=("G", "D"),
                    help="--format reference: the network to write (default: G; D for latest_net_D.pth)")
    ex.add_argument("--out", required=True, help="output file")
    add_number(ex, "--size", Range(int, 1, MAX_SIZE), None, "input size to trace with",
               default_text="the crop size")
    ex.set_defaults(func=cmd_export)

    b = sub.add_parser(
        "bench", help="time training-step variants (eager reference, hand-captured graph, fast step + levers)",
        description="Time training steps in one process on one device: the eager reference step (fp32, NCHW, "
                    "PyTorch norms), the same step captured whole in one CUDA graph (graph_ref; graph_ref_bf16 "
                    "adds bf16 + channels_last, graph_ref_compiled also torch.compiles G and D), and the fast "
                    "step with its levers. A VARIANT is base[:field=value,...][@batch/batch] with base one of "
                    "eager, graph_ref, graph_ref_bf16, graph_ref_compiled, fast and any TrainConfig field as an "
                    "override, e.g. fast:compile=0,pad_channels=1 or eager@16. Reports ms/step, img/s, it/s, "
                    "TFLOP/s, peak memory, compile and capture seconds, and speed-ups over eager and graph_ref. "
                    "A failing variant is recorded with its error and the bench goes on; --json is rewritten "
                    "after every row. With --device cpu it times, at each of --sizes and --batch-sizes, the eager "
                    "step, the CPU fast step and its switches (default variants: eager, fast, "
                    "fast:cpu_channels_last=0, fast:cpu_compile=1) and the inference --runtimes, interleaved "
                    "(each variant once per repeat, in turn) and reports medians and the median per-repeat "
                    "speed-up over eager; --order, --seconds, --warmup and --sweep-base apply to CUDA only.")
    b.add_argument("--batch-sizes", type=_int_list, default=None,
                   help=f"comma-separated, each {_field_range('batch_size').describe()} "
                        "(default: 1,16,64; with --device cpu 1,4)")
    b.add_argument("--sizes", type=_size_list, default=None,
                   help="--device cpu: comma-separated image sizes (default: --size)")
    b.add_argument("--runtimes", type=_runtime_list, default=None,
                   help="--device cpu: inference runtimes to time, comma-separated from eager, compiled, onnx "
                        "(default: all three; an empty list none)")
    b.add_argument("--variant", action="append", metavar="VARIANT",
                   help="a variant to time (repeatable, timed in this order; default: eager, graph_ref, fast); "
                        "the word 'levers' stands for the lever sweep: --sweep-base, then each of pad_channels, "
                        "conv_impl, cudnn_benchmark, cuda_graph, compile flipped against it, then "
                        "padding=reflect without and with fused_pad")
    b.add_argument("--sweep-base", default="fast:compile=0", metavar="VARIANT",
                   help="the fast variant the lever sweep flips levers of (default: fast:compile=0)")
    b.add_argument("--order", choices=("batch", "variant"), default="batch",
                   help="batch: every variant at one batch size, then the next; variant: each variant at every "
                        "batch size, then the next variant (default: batch)")
    add_number(b, "--steps", Range(int, 1, 10**6), None, "most timed steps per run; fewer once --seconds is reached "
               "(--device cpu: the steps or calls of each interleaved run)", default_text="50; --device cpu 2")
    add_number(b, "--seconds", Range(float, 0, 3600), 0.5,
               "target length of one timed run (0: --steps alone)")
    add_number(b, "--repeats", Range(int, 1, 1000), 3, "timed runs per row; the median is reported")
    add_number(b, "--warmup", Range(int, 0, 10**6), 5, "untimed steps first (at least 4 on CUDA, so graphs capture)")
    add_number(b, "--size", _field_range("crop_size"), 256, "image size")
    b.add_argument("--netG", default=None, help="generator (default: unet_<size>)")
    add_number(b, "--ngf", _field_range("ngf"), None, "generator width", default_text="TrainConfig's")
    add_number(b, "--ndf", _field_range("ndf"), None, "discriminator width", default_text="TrainConfig's")
    b.add_argument("--device", default=None, choices=("cpu", "cuda"), help="default: cuda when available")
    b.add_argument("--suite", default="auto", choices=("auto", "gpu", "cpu"),
                   help="what to time: gpu = the training-step variants above (eager, graph_ref*, fast and its "
                        "levers; on --device cpu a dry run of them at toy sizes), cpu = the CPU suite (the CPU "
                        "training variants and the inference runtimes); auto (default): cpu with --device cpu, "
                        "else gpu")
    b.add_argument("--json", metavar="FILE", help="write the results as JSON (rewritten after every row)")
    b.add_argument("--append", action="store_true",
                   help="keep the rows already in --json (an earlier run's) and add this run's after them; "
                        "speed-ups are computed over all of them")
    b.set_defaults(func=cmd_bench)

    ir = sub.add_parser(
        "import-reference",
        help="convert a reference implementation's NET_G.pth (and NET_D.pth) into a checkpoint",
        description="Convert latest_net_G.pth (and latest_net_D.pth) saved by the reference implementation "
                    "(pytorch-CycleGAN-and-pix2pix; unet_<size>, resnet_6blocks/9blocks; batch, instance or no "
                    "norm; basic, n_layers or pixel D) into a checkpoint that test, eval, export, "
                    "Pix2Pix.from_checkpoint and train --resume accept. What the tensor shapes determine "
                    "(--netG, --ngf, --norm, --input-nc, --output-nc, ResNet dropout, --n-layers-D, --ndf) is "
                    "inferred; options you give are checked against the file, and a mismatch is reported as "
                    "the first key or shape that disagrees (exit status 2). U-Net dropout has no weights: "
                    "give --no-dropout for a model trained with --no_dropout. Running statistics: BatchNorm's are "
                    "kept and are what eval-mode inference (test/eval --eval-mode, export) normalises with; the "
                    "default test mode uses the batch's statistics, as the reference's test.py without --eval. "
                    "InstanceNorm running statistics (running_mean/running_var/num_batches_tracked, saved by "
                    "older reference versions) are dropped: instance norm normalises each image by its own "
                    "statistics in train and eval mode, as the reference's current test.py does after deleting "
                    "them. 'module.' prefixes (nn.DataParallel) are removed. Without NET_D the checkpoint gets a "
                    "freshly initialised discriminator, so training can fine-tune from it; the other options "
                    "(e.g. --dataroot, --lr, --epochs) go into its config. The discriminator pads with zeros "
                    "(--padding-D zero), as the reference's does beside any generator.")
    ir.add_argument("net_G", metavar="NET_G.pth", help="the reference generator's state dict")
    ir.add_argument("net_D", metavar="NET_D.pth", nargs="?", default=None,
                    help="the reference discriminator's state dict (optional)")
    ir.add_argument("--netD", choices=("basic", "n_layers", "pixel"), default=None,
                    help="discriminator architecture (default: inferred; basic = --n-layers-D 3)")
    ir.add_argument("--out", required=True, metavar="FILE", help="the checkpoint to write (e.g. model.pt)")
    add_config_flags(ir)
    ir.set_defaults(func=cmd_import_reference)

    dm = sub.add_parser(
        "demo", parents=[run_flags, tile_flags],
        help="serve a page to try a checkpoint: upload or paint an input, see the output",
        description="Serve a local web page for a trained generator: upload an image of any size or paint one "
                    "(label colours for label-to-photo models, pen and eraser for edge inputs), see input and "
                    "output side by side with the model's time, sample new test-time dropout noise or switch to "
                    "deterministic eval mode, and set the pad-then-crop margin. The dataset (--dataroot) gives "
                    "the palette and the example inputs. CUDA uses captured fixed-size graphs, CPU the eager "
                    "model. Needs no packages beyond the base install.")
    dm.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default: 127.0.0.1, this machine only). --host 0.0.0.0 exposes "
                         "the page on every network interface: anyone who can reach this machine can run the model "
                         "on images they upload, with no password; use it only on a network you trust")
    add_number(dm, "--port", Range(int, 0, 65535), 7860, "TCP port (0 picks a free one)")
    dm.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                    help="bf16 runs the generator under bf16 autocast (default: fp32)")
    dm.add_argument("--palette", metavar="FILE",
                    help="label colours to paint with, one a line: '#rrggbb name' or 'r g b name' (default: the "
                         "built-in facades' labels, else the most frequent colours of the training inputs)")
    add_number(dm, "--max-side", Range(int, 1, MAX_SIZE), MAX_SIZE,
               "largest image side accepted, in pixels (larger images are tiled under --max-memory)")
    dm.set_defaults(func=cmd_demo)

    d = sub.add_parser("data", help="download, build and check datasets")
    dsub = d.add_subparsers(dest="data_cmd", required=True, metavar="ACTION", parser_class=_Parser)
    dl = dsub.add_parser("download", help="download a standard pix2pix dataset (resumable, checked)")
    dl.add_argument("name", choices=("facades", "cityscapes", "maps", "edges2shoes", "edges2handbags", "night2day"))
    dl.add_argument("--root", default="datasets", help="where to put it (default: ./datasets)")
    dl.add_argument("--sha256", metavar="HEX", help="the archive's expected SHA-256, checked before extraction "
                                                    "(default: the one pinned for that dataset, where recorded)")
    co = dsub.add_parser("combine", help="build side-by-side AB images from folders A and B with matching names")
    co.add_argument("a_dir")
    co.add_argument("b_dir")
    co.add_argument("out")
    sy = dsub.add_parser("synthetic", help="write the built-in synthetic facades dataset to a folder")
    sy.add_argument("root")
    add_number(sy, "--size", SYNTHETIC_SIZE, 256, "image side in pixels")
    add_number(sy, "--count", _field_range("synthetic_count"), 400, "training pairs (val/test get a quarter each)")
    add_number(sy, "--seed", _field_range("seed"), 0, "random seed")
    ch = dsub.add_parser("check", help="decode every image of a dataset once and report the first bad file")
    ch.add_argument("root")
    ch.add_argument("--splits", type=lambda s: s.split(","), default=["train"], help="comma-separated (default: train)")
    ch.add_argument("--layout", default="auto", choices=CHOICES["layout"])
    d.set_defaults(func=cmd_data)
    return p


def _int_list(text: str) -> list[int]:
    """Comma-separated batch sizes, each in TrainConfig's --batch-size range."""
    return [_field_range("batch_size")(x) for x in text.split(",") if x.strip()]


def _size_list(text: str) -> list[int]:
    """Comma-separated image sizes, each in TrainConfig's --crop-size range."""
    return [_field_range("crop_size")(x) for x in text.split(",") if x.strip()]


def _runtime_list(text: str) -> list[str]:
    """Comma-separated inference runtimes to time (not auto: the bench times each one)."""
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in names if x not in RUNTIMES or x == "auto"]
    if bad:
        raise argparse.ArgumentTypeError(f"{bad[0]!r} is not one of eager, compiled, onnx")
    return names


def _field_range(name: str) -> Range:
    return next(f.metadata["range"] for f in fields(TrainConfig) if f.name == name)



def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"pix2pix-fast: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        print(f"pix2pix-fast: error: {e.strerror or e}: {e.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pix2pix-fast: interrupted", file=sys.stderr)
        return 130
    except _fast_step_failure() as e:  # only with an explicit --backend fast; auto falls back
        print(f"pix2pix-fast: error: {e} (--backend fast makes this fatal; --backend auto falls back)",
              file=sys.stderr)
        return 1


def _fast_step_failure() -> type[BaseException]:
    from pix2pix_fast.train.fast import FastStepFailure

    return FastStepFailure


if __name__ == "__main__":
    sys.exit(main())
