"""Data-parallel training under torchrun: one process per GPU (or per CPU slot with gloo).

    torchrun --nproc-per-node N -m pix2pix_fast train ...

`World.from_env()` reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK; without
them (or with WORLD_SIZE=1) it is the single process and every method here
is a no-op, so the trainer has one code path.

What is shared, and how:
- Gradients: after each backward and before its optimizer step, the
  gradients of the model being updated are averaged over the ranks by ONE
  all-reduce over a flat buffer (`average_gradients`). This is the math of
  DistributedDataParallel (mean of the per-rank gradients of a per-rank
  mean loss = the gradient of the mean over the global batch), done
  explicitly instead of through DDP's autograd hooks because the training
  step calls D three times per step (fake, real, and for G's loss with D's
  parameters frozen): DDP's reducer expects one backward per forward of its
  module, and would need `no_sync` around one call and find-unused-parameters
  around another. The explicit form runs unchanged on the eager and the fast
  step, and inside the fast step's CUDA graph (NCCL collectives can be
  captured). What it gives up is DDP's overlap of the all-reduce with the
  backward (for pix2pix's 57 M parameters, one fp32 all-reduce per model per
  step).
- Control (`agree`): a gloo group on the CPU carries the small
  per-step decisions every rank must take together: stop after a signal,
  and a user error (a corrupt image) raised on one rank, which then ends
  every rank with the same one-line error. Host integers on the CPU group
  never make the GPU wait.
- Every collective has a timeout (`PIX2PIX_FAST_DIST_TIMEOUT` seconds,
  default 1800): a rank that died or stalled ends the others with an error
  instead of a hang.

Only rank 0 (`is_writer`) writes checkpoints, samples, logs, plots and the
progress bar; every rank loads the same checkpoint on resume.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.distributed as dist

from pix2pix_fast.config import ConfigError

TIMEOUT_ENV = "PIX2PIX_FAST_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0


def collective_timeout() -> datetime.timedelta:
    """The timeout of every collective: $PIX2PIX_FAST_DIST_TIMEOUT seconds (default 1800)."""
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ConfigError(f"${TIMEOUT_ENV}: {text!r} is not a number of seconds") from None
    if seconds <= 0:
        raise ConfigError(f"${TIMEOUT_ENV} must be > 0 seconds, got {text}")
    return datetime.timedelta(seconds=seconds)


@dataclass
class World:
    """This process's place among the ranks (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: Any = field(default=None, repr=False)  # the CPU (gloo) group for agreements

    @classmethod
    def from_env(cls) -> "World":
        """torchrun's environment; a single process when WORLD_SIZE is unset or 1."""
        try:
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError:
            raise ConfigError("RANK / WORLD_SIZE / LOCAL_RANK must be integers (set by torchrun)") from None
        if world_size <= 1:
            return cls()
        if not 0 <= rank < world_size:
            raise ConfigError(f"RANK={rank} is outside 0..{world_size - 1} (WORLD_SIZE={world_size})")
        return cls(rank=rank, world_size=world_size, local_rank=local_rank)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------- set-up
    def device(self, requested: torch.device) -> torch.device:
        """One GPU per local rank (cuda:LOCAL_RANK); CPU stays CPU."""
        if not self.enabled or requested.type != "cuda":
            return requested
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise ConfigError(f"LOCAL_RANK {self.local_rank} has no GPU: this node has {count} "
                              f"(--nproc-per-node must not exceed the GPUs per node)")
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def init(self, device: torch.device) -> None:
        """Join the process group (NCCL on CUDA, gloo on CPU) and make the CPU control group."""
        if not self.enabled:
            return
        timeout = collective_timeout()
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            kwargs = {"device_id": device} if device.type == "cuda" else {}
            dist.init_process_group(backend=backend, rank=self.rank, world_size=self.world_size,
                                    timeout=timeout, **kwargs)
        if dist.get_world_size() != self.world_size or dist.get_rank() != self.rank:
            raise ConfigError(f"the process group (rank {dist.get_rank()} of {dist.get_world_size()}) does not "
                              f"match RANK={self.rank} WORLD_SIZE={self.world_size}")
        self.control = dist.new_group(backend="gloo", timeout=timeout) if dist.get_backend() != "gloo" else None

    # -------------------------------------------------------- agreements
    def agree(self, error: BaseException | None, stop: bool = False) -> bool:
        """Collective: raise on every rank if any rank brought an error; else
        True on every rank when `stop` is True on any rank.

        The error of the lowest failing rank is raised everywhere (its own
        type where the CLI reports it in one line, else a RuntimeError naming
        the rank), so every rank ends with the same message and exit status.
        One all-reduce of two integers on the CPU group.
        """
        if not self.enabled:
            if error is not None:
                raise error
            return stop
        # MAX of (world_size - rank) finds the lowest failing rank.
        flags = torch.tensor([0 if error is None else self.world_size - self.rank, int(stop)], dtype=torch.int64)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.control)
        if int(flags[0]) == 0:
            return bool(flags[1])
        first = self.world_size - int(flags[0])
        payload = [_portable_error(error) if self.rank == first else None]
        dist.broadcast_object_list(payload, src=first, group=self.control)
        if self.rank == first and error is not None:
            raise error
        raise _rebuild_error(payload[0], first)

    def all_same(self, value: str) -> str:
        """Collective: `value` if every rank has it, else the smallest (a choice every rank takes)."""
        if not self.enabled:
            return value
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value, group=self.control)
        return min(values)

    def gather_objects(self, value: Any) -> list[Any]:
        """Collective: every rank's `value`, in rank order (on every rank)."""
        if not self.enabled:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value, group=self.control)
        return values

    # ---------------------------------------------------------- tensors
    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (same start, as DDP does at wrap time)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Average the .grad of `params` over the ranks: one all-reduce per dtype over a
        flat copy, divided by the world size. Capturable (no host sync)."""
        if not self.enabled:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for p in params:
            if p.grad is not None:
                by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat.div_(self.world_size)
            for g, avg in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(avg.view(g.shape))

    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        """In place: the mean of `t` over the ranks."""
        if self.enabled:
            dist.all_reduce(t)
            t.div_(self.world_size)
        return t

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(group=self.control)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def is_collective_failure(error: BaseException) -> bool:
    """A collective that timed out or lost a peer (gloo reports both as plain RuntimeErrors)."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        s in text for s in ("gloo", "Timed out waiting", "Connection closed by peer", "Connection reset by peer", "NCCL"))


def _portable_error(error: BaseException | None) -> tuple[str, str]:
    return (type(error).__name__, str(error)) if error is not None else ("RuntimeError", "")


def _rebuild_error(payload: tuple[str, str], rank: int) -> BaseException:
    """The error rank `rank` raised, as one the CLI prints in one line where it is a user error."""
    from pix2pix_fast.errors import DataError
    from pix2pix_fast.errors import WriteError
    from pix2pix_fast.errors import CheckpointError

    kind, message = payload
    for cls in (DataError, ConfigError, CheckpointError, WriteError):
        if kind == cls.__name__:
            return cls(message)
    if kind in ("FileNotFoundError", "PermissionError", "IsADirectoryError", "NotADirectoryError"):
        return ConfigError(f"rank {rank}: {message}")
    return RuntimeError(f"rank {rank} failed: {kind}: {message}")


def convert_sync_batchnorm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """BatchNorm -> SyncBatchNorm: statistics over the global batch, as one process would see it."""
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    if device.type != "cuda":
        raise ConfigError("--norm batch under torchrun uses SyncBatchNorm, which needs CUDA devices "
                          "(use --norm instance or none on CPU)")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)

