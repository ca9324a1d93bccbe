"""The training loop: data -> step -> logs, samples, checkpoints.

The per-step math lives in `eager.EagerStep` (the reference) or
`fast.FastStep` (fused kernels + one CUDA graph); this module owns
everything around it: the schedule, device-side loss accumulation read back
every `log_every` steps, NaN stops, Ctrl-C / SIGTERM checkpoints, resume,
sample grids, validation and the final loss plot.

Under torchrun (`distributed.py`) every rank runs this loop on its slice of
each global batch (`--batch-size` per rank; the global batch is
batch x ranks); the ranks agree before each step on whether to stop (a
signal on any rank) and on errors (bad input on any rank ends every rank
with the same one-line error); rank 0 alone writes the run folder.
"""
from __future__ import annotations

import itertools
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pix2pix_fast.config import ConfigError, TrainConfig
from pix2pix_fast.device import resolve_device
from pix2pix_fast.errors import DataError
from pix2pix_fast.errors import WriteError
from pix2pix_fast.fileio import remove_stale_temps
from pix2pix_fast.models import build_discriminator, build_generator
from pix2pix_fast import checkpoint as ckpt
from pix2pix_fast.train.distributed import World
from pix2pix_fast.train import build, cpu
from pix2pix_fast.train.resume import check_resumable
from pix2pix_fast.train.losses import instance_noise_std
from pix2pix_fast.runlog import RunLog
from pix2pix_fast.train.step import LOSS_NAMES, TrainStep
from pix2pix_fast.train.samples import save_sample_grid
from pix2pix_fast.train.schedule import lr_factor


class NonFiniteLoss(RuntimeError):
    """A loss became NaN/Inf; training stops and the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    epoch: int
    status: str  # "done" | "interrupted" | "nan"
    val: dict[str, float]


def make_dataset(cfg: TrainConfig, split: str):
    from pix2pix_fast.data.datasets import PairedDataset, dataset_root

    return PairedDataset(
        dataset_root(cfg), split=split, layout=cfg.layout, direction=cfg.direction,
        input_nc=cfg.input_nc, output_nc=cfg.output_nc,
    )


def make_loader(cfg: TrainConfig, dataset, train: bool, device: torch.device, world: World | None = None):
    """Training: the pix2pix jitter (this rank's slice of each global batch).
    Validation: a deterministic resize to crop_size."""
    from pix2pix_fast.data.loader import PairedLoader

    world = world if train and world is not None else World()
    if train and len(dataset) < cfg.batch_size * world.world_size:
        per_rank = f" ({cfg.batch_size} per rank x {world.world_size} ranks)" if world.enabled else ""
        raise ConfigError(f"--batch-size {cfg.batch_size}{per_rank} is larger than the {len(dataset)} training pairs")
    return PairedLoader(
        dataset,
        batch_size=cfg.batch_size if train else min(cfg.batch_size * 2, 16),
        load_size=cfg.load_hw if train else cfg.crop_hw,
        crop_size=cfg.crop_hw,
        flip=cfg.flip and train,
        preprocess=cfg.preprocess if train else "resize_and_crop",
        threads=cpu.loader_threads(cfg) if device.type == "cpu" else cfg.loader_threads or None,
        seed=cfg.seed,
        shuffle=train,
        drop_last=train,
        pin_memory=device.type == "cuda",
        rank=world.rank,
        world_size=world.world_size,
    )


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A uint8 host batch -> float32 in [-1, 1] on the device (scaled there, not on the CPU)."""
    from pix2pix_fast.data.loader import to_unit_range

    return to_unit_range(x.to(device, non_blocking=True))


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: str | Path | None = None, progress: bool = True,
                 overwrite: bool = False):
        """resume: a checkpoint to continue from. Without it the run folder must not hold an
        earlier run (its checkpoints and log), unless `overwrite` starts over there."""
        cfg.validate()
        self.cfg = cfg
        self.progress = progress
        self.resume_path = Path(resume) if resume is not None else None
        self.world = World.from_env()
        self.device = self.world.device(resolve_device(cfg.device))
        self.world.init(self.device)
        if self.device.type == "cpu" and not self.world.enabled:  # torchrun sets each rank's threads
            cpu.set_threads()
        if cfg.validation:  # --val-runtime is checked before training, not after it
            from pix2pix_fast.runtime import resolve_runtime

            resolve_runtime(cfg.val_runtime, self.device, eval_mode=True)
        self.writer = self.world.is_writer
        # Set-up errors are agreed on: a rank that fails (a corrupt image, an unwritable
        # folder) ends every rank with its error instead of leaving them in a collective.
        backend, error = "eager", None
        try:
            backend = build.resolve_backend(cfg, self.device)
        except Exception as e:  # re-raised below, on every rank
            error = e
        self.world.agree(error)
        self._backend = self.world.all_same(backend)  # one rank that cannot run fast: all eager
        self.run_dir = Path(cfg.output_dir) / cfg.name
        resumed: dict[str, Any] = {}
        try:
            resumed = self._set_up(resume, overwrite)
        except Exception as e:  # re-raised below, on every rank
            error = e
        self.world.agree(error)
        self.world.broadcast_module(self.G)
        self.world.broadcast_module(self.D)
        if self.world.enabled and not resumed.get("rng_ranks"):
            # Each rank its own stream (dropout, label noise); rank 0 keeps the single process's.
            if self.world.rank > 0:
                torch.manual_seed((cfg.seed << 16) + self.world.rank + (self.step << 32))

        self.step_fn.load_state_dict(resumed)
        self._loss_sum = torch.zeros(len(LOSS_NAMES), device=self.device)
        self._loss_count = 0
        self._stop_signal: int | None = None
        self._last_val: tuple[int, dict[str, float]] = (-1, {})
        self._sample_batch = self._fixed_sample_batch() if self.writer else None

    def _set_up(self, resume: str | Path | None, overwrite: bool) -> dict[str, Any]:
        """Everything of __init__ that involves no other rank: models, data, resume, log."""
        cfg = self.cfg
        state = None
        if resume is not None:
            # Checked against the config on the meta device before anything is allocated.
            state = ckpt.load_checkpoint(resume)
            ckpt.check_config_fits(build_generator, cfg, state["G"], "G", resume)
            ckpt.check_config_fits(build_discriminator, cfg, state.get("D"), "D", resume)
            check_resumable(cfg, resume)  # the rule `train --resume` follows (train/resume.py)
        if self.writer:
            _check_writable(self.run_dir)
            remove_stale_temps(self.run_dir)
            if resume is None:
                _check_fresh(self.run_dir, overwrite)

        self.train_set = make_dataset(cfg, "train")
        check_input_size(cfg, *training_size(cfg, self.train_set))
        self.step_fn: TrainStep = build.build_step(cfg, self.device, backend=self._backend, world=self.world,
                                             announce=self._announce)

        self.val_set = self._optional_split("val") if self.writer else None
        self.loader = make_loader(cfg, self.train_set, train=True, device=self.device, world=self.world)
        self.global_batch = self.loader.global_batch_size
        self.steps_per_epoch = len(self.loader)
        self.total_steps = cfg.total_epochs * self.steps_per_epoch
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps) if cfg.total_epochs else cfg.max_steps

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        resumed = self._resume(Path(resume), state) if state is not None else {}
        self.log = RunLog(self.run_dir) if self.writer else _NoLog()
        if resume is not None:
            self.log.truncate_after(self.step)
        return resumed

    # ------------------------------------------------------------------ loop
    def fit(self) -> TrainResult:
        cfg = self.cfg
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = _progress_bar(self.total_steps, self.step, enabled=self.progress and self.writer)
        status = "done"
        t_start = time.time()
        try:
            while self.step < self.total_steps:
                self.loader.set_epoch(self.epoch)
                self.step_fn.set_lr(cfg.lr * lr_factor(cfg, self.epoch))
                # On a resumed epoch the loader already stands at batch_in_epoch.
                batches = iter(self.loader)
                for i in itertools.count(self.batch_in_epoch):
                    batch = self._next_batch(batches)  # agreed with the other ranks: stop, error
                    if batch is None or self._stop_signal is not None:
                        break
                    A, B = batch
                    real_A, real_B = to_device(A, self.device), to_device(B, self.device)
                    noise = instance_noise_std(cfg, self.step, self.total_steps)
                    self._loss_sum += self.step_fn(real_A, real_B, noise)
                    self._loss_count += 1
                    self.step += 1
                    self.batch_in_epoch = i + 1
                    bar.update(1)
                    if self.step % cfg.log_every == 0:
                        self._flush_losses(bar)
                    if self.step % cfg.sample_every == 0 and self.writer:
                        self.save_samples(f"step_{self.step:07d}.png")
                    # The epoch boundary is decided here, right after its last
                    # step, so that a stop at that moment saves (epoch + 1, 0).
                    if self.batch_in_epoch >= self.steps_per_epoch:
                        self.epoch += 1
                        self.batch_in_epoch = 0
                        self._end_of_epoch()
                    if self.step >= self.total_steps:
                        break
                _close(batches)
                if self._stop_signal is not None:
                    status = "interrupted"
                    break
            self._flush_losses(bar)
            self.save_checkpoint("latest.pt")
        except NonFiniteLoss as e:  # raised on every rank alike: the losses are averaged first
            status = "nan"
            bar.close()
            if self.writer:
                print(f"pix2pix-fast: {e}; stopped, {self.last_good()}", file=sys.stderr)
        except WriteError as e:  # a full disk: say which checkpoint is intact
            raise WriteError(f"{e}; {self.last_good()}") from None
        finally:
            bar.close()
            for s, h in old_handlers.items():
                signal.signal(s, h)
        elapsed = time.time() - t_start
        val: dict[str, float] = {}
        if not self.writer:  # the run folder is rank 0's
            return TrainResult(self.run_dir, self.step, self.epoch, status, val)
        if status == "done":
            # The last epoch's periodic validation, if it ran, already scored these weights.
            val = self._last_val[1] if self._last_val[0] == self.step else self.validate()
            self.save_samples("final.png")
        from pix2pix_fast.plots import plot_training_log

        plot_training_log(self.log.path, self.run_dir)
        if status == "interrupted":
            print(f"pix2pix-fast: interrupted at step {self.step}; checkpoint saved to "
                  f"{self.run_dir / 'latest.pt'} (continue with --resume)", file=sys.stderr)
        self.log.close()
        if self.progress and status == "done":
            print(_summary(self, elapsed, val), file=sys.stderr)
        return TrainResult(self.run_dir, self.step, self.epoch, status, val)

    # ------------------------------------------------------------ the step
    # What the step trains, and on which backend: after a fall back to eager (train/fallback.py)
    # the reference models, so they are always read from the step.
    backend = property(lambda self: self.step_fn.backend)
    G = property(lambda self: self.step_fn.G)
    D = property(lambda self: self.step_fn.D)
    opt_G = property(lambda self: self.step_fn.opt_G)
    opt_D = property(lambda self: self.step_fn.opt_D)

    def _announce(self, line: str) -> None:
        if self.writer:
            print(f"{line} from step {self.step}", file=sys.stderr)

    def _next_batch(self, batches):
        """The next (A, B) of this rank, or None at the end of the epoch; under torchrun
        also where every rank stops together (a signal on any rank) or fails together
        (bad input on any rank: its error is raised on every rank)."""
        batch, error = None, None
        try:
            batch = next(batches)
        except StopIteration:
            pass
        except DataError as e:
            error = e
        if self.world.agree(error, stop=self._stop_signal is not None) and self._stop_signal is None:
            self._stop_signal = signal.SIGTERM  # another rank was signalled
        return batch

    def _end_of_epoch(self) -> None:
        cfg = self.cfg
        self._flush_losses(None)  # raises before any checkpoint is written from NaN weights
        self.save_checkpoint("latest.pt")
        if self.epoch % cfg.save_every == 0:
            self.save_checkpoint(f"epoch_{self.epoch:04d}.pt")
        if cfg.eval_every and self.epoch % cfg.eval_every == 0 and self.writer:
            self.validate()  # rank 0's alone; the others wait for it at the next step

    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self._stop_signal = signum

    # --------------------------------------------------------------- losses
    def _flush_losses(self, bar) -> None:
        if self._loss_count == 0:
            return
        # The only host sync per interval; under torchrun the mean over the ranks
        # (= the loss of the global batch), the same on every rank.
        means = (self.world.mean_(self._loss_sum.clone()) / self._loss_count).tolist()
        if not all(math.isfinite(v) for v in means):
            raise NonFiniteLoss(f"non-finite loss at step {self.step} ({_fmt_losses(means)})")
        record = {"step": self.step, "epoch": self.epoch, **dict(zip(LOSS_NAMES, means)),
                  "lr": self.cfg.lr * lr_factor(self.cfg, self.epoch), "global_batch": self.global_batch}
        self.log.write(record)
        if bar is not None:
            bar.set_postfix_str(_fmt_losses(means), refresh=False)
        self._loss_sum.zero_()
        self._loss_count = 0

    # ----------------------------------------------------------- checkpoints
    def last_good(self) -> str:
        """Where the run can continue from, for the message of a run that stopped on an error."""
        latest = self.run_dir / "latest.pt"
        if latest.is_file():
            return f"the last good checkpoint is {latest}"
        if self.resume_path is not None:
            return f"no checkpoint was written; the one it resumed from, {self.resume_path}, is unchanged"
        return f"no checkpoint was written ({self.run_dir} holds none)"

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_G": ckpt.portable_opt_state(self.opt_G),
            "opt_D": ckpt.portable_opt_state(self.opt_D),
            "schedule": {"policy": self.cfg.lr_policy, "epoch": self.epoch},
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,  # global batches of the epoch consumed
            "world_size": self.world.world_size,
            "global_batch": self.global_batch,
            "rng": ckpt.rng_state(),
            **self._rank_rng_states(),
            **self.step_fn.state_dict(),  # fp16's loss scale ("scaler")
        }

    def _rank_rng_states(self) -> dict[str, Any]:
        """Collective under torchrun: every rank's RNG states (rank 0's is also "rng")."""
        if not self.world.enabled:
            return {}
        return {"rng_ranks": self.world.gather_objects(ckpt.rng_state())}

    def save_checkpoint(self, name: str) -> Path:
        """Collective under torchrun: every rank calls it, rank 0 writes."""
        state = self.state_dict()
        path, error = self.run_dir / name, None
        if self.writer:
            try:
                ckpt.save_checkpoint(path, state)
            except Exception as e:  # re-raised below, on every rank
                error = e
        self.world.agree(error)
        return path

    def _resume(self, path: Path, state: dict[str, Any]) -> dict[str, Any]:
        ckpt.load_weights(self.G, state["G"], "generator", path)
        ckpt.load_weights(self.D, state["D"], "discriminator", path)
        for opt, key in ((self.opt_G, "opt_G"), (self.opt_D, "opt_D")):
            if key in state:
                ckpt.load_opt_state(opt, state[key])
        saved_world = int(state.get("world_size", 1))
        saved_batch = int(state.get("global_batch", state["config"].get("batch_size", self.cfg.batch_size)))
        if saved_batch != self.global_batch:
            raise ConfigError(
                f"{path} was trained with a global batch of {saved_batch} ({saved_batch // saved_world} per rank x "
                f"{saved_world} rank(s)); this run's is {self.global_batch} ({self.cfg.batch_size} x "
                f"{self.world.world_size}): its position counts global batches, so resume with --batch-size "
                f"{saved_batch // self.world.world_size if saved_batch % self.world.world_size == 0 else 'B'} "
                f"so that --batch-size x ranks = {saved_batch}")
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state.get("batch_in_epoch", 0))
        if self.batch_in_epoch >= self.steps_per_epoch:
            # Written by versions that saved the end of an epoch as (epoch, last batch).
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        # The loader's order is a function of (seed, epoch): jump straight to the saved position.
        self.loader.state = {**self.loader.state, "epoch": self.epoch, "batch": self.batch_in_epoch}
        ranks = state.get("rng_ranks") or []
        if len(ranks) == self.world.world_size > 1:
            ckpt.set_rng_state(ranks[self.world.rank])
        elif "rng" in state:
            ckpt.set_rng_state(state["rng"])  # rank 0's; the other ranks are reseeded after set-up
            state.pop("rng_ranks", None)
        return state

    # ------------------------------------------------- samples and validation
    def _optional_split(self, split: str):
        try:
            return make_dataset(self.cfg, split)
        except DataError:
            return None  # a dataset without val/ still trains; validation is skipped

    def _fixed_sample_batch(self):
        """Rank 0's: the samples it draws every sample_every steps."""
        source = self.val_set if self.val_set is not None else self.train_set
        loader = make_loader(self.cfg, source, train=False, device=self.device)
        A, B = next(iter(loader))
        n = min(4, A.shape[0])
        return to_device(A[:n], self.device), to_device(B[:n], self.device)

    @torch.no_grad()
    def save_samples(self, name: str) -> Path:
        real_A, real_B = self._sample_batch
        was_training = self.G.training
        self.G.eval()
        fake_B = self.G(real_A)
        self.G.train(was_training)
        return save_sample_grid(self.run_dir / "samples" / name, real_A, fake_B, real_B)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """L1 / PSNR / SSIM of G(A) vs B on the val split (deterministic eval mode), and
        the L1 of copying the input, the baseline any useful model must beat. Batched, through
        the inference runtime of --val-runtime (runtime.py); {} with --no-validation."""
        from pix2pix_fast.runtime import make_runtime
        from pix2pix_fast.metrics import MetricAccumulator, l1

        if self.val_set is None or not self.cfg.validation:
            return {}
        loader = make_loader(self.cfg, self.val_set, train=False, device=self.device)
        was_training = self.G.training
        self.G.eval()
        run = make_runtime(self.cfg.val_runtime, self.G, self.device, input_nc=self.cfg.input_nc, eval_mode=True,
                           announce=self._announce)
        run.expected_images = len(self.val_set)
        acc = MetricAccumulator()
        copy_err = []
        for A, B in loader:
            real_A, real_B = to_device(A, self.device), to_device(B, self.device)
            acc.update(run(real_A).to(self.device).float(), real_B)
            if real_A.shape == real_B.shape:
                copy_err.append(l1(real_A, real_B))
        self.G.train(was_training)
        result = {k: float(v) for k, v in acc.means().items()}
        if copy_err:
            result["l1_copy_input"] = float(torch.cat(copy_err).mean())
        self.log.write({"step": self.step, "epoch": self.epoch, "eval": result})
        self._last_val = (self.step, result)
        return result


class _NoLog:
    """The run log of ranks other than 0: they write nothing."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def truncate_after(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def _close(batches) -> None:
    """End a loader iteration early (joins its threads at once rather than when collected)."""
    close = getattr(batches, "close", None)
    if close is not None:
        close()


# What a run writes into its folder; the first three mean the folder holds a run.
RUN_FILES = ("latest.pt", "epoch_*.pt", "log.jsonl", "loss_curves.png", "metrics_curves.png",
             "samples/step_*.png", "samples/final.png", "tb/events.out.tfevents.*")


def _check_fresh(run_dir: Path, overwrite: bool) -> None:
    """Refuse a run folder that holds an earlier run, or (overwrite) clear that run's files."""
    earlier = [p for pattern in RUN_FILES[:3] for p in sorted(run_dir.glob(pattern))]
    if not earlier:
        return
    if not overwrite:
        raise ConfigError(f"{run_dir} already holds a run ({earlier[0].name}): continue it with --resume, "
                          "start over there with --overwrite, or choose another --name")
    for pattern in RUN_FILES:
        for p in run_dir.glob(pattern):
            p.unlink()


def training_size(cfg: TrainConfig, dataset) -> tuple[int, int]:
    """(H, W) of the training samples, from the first pair's size (crop modes: crop_size)."""
    from pix2pix_fast.data import transforms

    a, _ = dataset[0]
    try:
        g = transforms.output_geometry(a.shape[0], a.shape[1], cfg.load_hw, cfg.crop_hw, cfg.preprocess)
    except ValueError as e:
        raise DataError(f"{dataset.sources(0)[0]}: {e} (--preprocess {cfg.preprocess})") from None
    return g.crop_h, g.crop_w


def check_input_size(cfg: TrainConfig, h: int, w: int) -> None:
    """ConfigError (one line) unless G and D can train on (batch, C, h, w) inputs.

    The models run on the meta device: shapes only, nothing computed or allocated."""
    with torch.device("meta"):
        G = build_generator(cfg)
    m = G.multiple
    if h % m or w % m:
        nearest = ", ".join(f"{side} {_nearest_multiples(v, m)}" for side, v in (("height", h), ("width", w)) if v % m)
        raise ConfigError(f"the training images are {h}x{w} (HxW) pixels (--preprocess {cfg.preprocess}); {cfg.netG} "
                          f"takes sides that are multiples of {m}, the nearest: {nearest} (--crop-size is the width, "
                          "--crop-height the height)")
    try:
        with torch.device("meta"):
            x = torch.empty(cfg.batch_size, cfg.input_nc, h, w)
            build_discriminator(cfg)(torch.cat([x, G(x)], 1))
    except (RuntimeError, ValueError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        scales = f" at {cfg.num_D} scales" if cfg.num_D > 1 else ""
        raise ConfigError(f"the training images are {h}x{w} pixels, too small for {cfg.netG} and the "
                          f"{cfg.n_layers_D}-layer PatchGAN{scales} ({reason}): use a larger --crop-size or fewer "
                          f"--n-layers-D{' or --num-D' if scales else ''}") from None


def _nearest_multiples(v: int, m: int) -> str:
    """The multiples of m on either side of v (at least m), as "a or b"."""
    below = max(m, v // m * m)
    above = below + m if below < v else below
    return f"{below} or {above}" if below != above else str(below)


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write to output folder {folder}: {e.strerror or e}") from None


def _fmt_losses(values) -> str:
    return " ".join(f"{name[5:]}={v:.3f}" for name, v in zip(LOSS_NAMES, values))


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, disable=not enabled,
                mininterval=0.5, smoothing=0.05, desc="train")


def _summary(trainer: Trainer, elapsed: float, val: dict[str, float]) -> str:
    world = trainer.world
    where = f"{world.world_size} ranks x {trainer.device.type}" if world.enabled else str(trainer.device)
    batch = (f"global batch {trainer.global_batch} = {trainer.cfg.batch_size} per rank x {world.world_size}"
             if world.enabled else f"batch {trainer.global_batch}")
    lines = [f"trained {trainer.step} steps ({batch}) in {elapsed:.0f} s on {where} ({trainer.backend} backend)"]
    if "l1" in val:
        line = f"validation L1 (0-1 scale): {val['l1']:.4f}"
        if "l1_copy_input" in val:
            line += f"  (copying the input: {val['l1_copy_input']:.4f})"
        lines.append(line)
    lines.append(f"outputs: {trainer.run_dir}  (latest.pt, samples/, loss_curves.png, log.jsonl)")
    return "\n".join(lines)
