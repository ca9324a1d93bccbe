"""The fast training step: the same math as `eager.EagerStep`, run as one CUDA graph.

What changes against the reference step, and why:
- G and D are built from the fused layers (InstanceNorm+activation in one
  pass) and run channels_last under bf16 autocast (fp32 master weights; the
  losses and normalisation statistics stay fp32).
- D scores the fake and the real pair in ONE batched call where the norm is
  per-sample (instance norm or none); batch norm keeps two calls, because
  batching would mix the statistics of real and fake pairs.
- The GAN loss is the fused `patchgan_loss` op: its label smoothing and
  flipping draw from the device RNG, so they are capturable.
- Adam is fused and capturable, with the learning rate in a device tensor.
- After a few warm-up steps (which are real training steps, run on a side
  stream so torch.compile and the optimizer state settle), the whole step
  (G forward, D forward/backward/Adam, G's D call, G backward/Adam) is
  captured once in one CUDA graph and replayed: no host sync and no Python
  per kernel. Inputs are copied into static buffers before each replay.
A multi-scale D (--num-D) and feature matching (--lambda-feat) run as in the
eager step: each scale's logits go through the fused loss (summed), and G's
step runs D once more on the real pair, without gradients, for the features.
On a CPU (tests) the same step runs without graph and compile, so its
losses can be compared with the eager step's from the same seed.

Under torchrun (`world`, see `distributed.py`) the gradient average over the
ranks is part of the step: one all-reduce of D's gradients before D's Adam
and one of G's before G's, so with the graph on both are captured into it
(NCCL supports capture; the warm-up steps run them first, which sets up the
communicators before the capture). Without the graph (CPU, gloo) the same
code runs as plain calls.
"""
from __future__ import annotations

import time

import torch
import torch.nn as nn

from pix2pix_fast.config import ConfigError, TrainConfig
from pix2pix_fast.cuda_graph import CudaGraph
from pix2pix_fast.ops.patchgan_loss import patchgan_loss
from pix2pix_fast.models import scale_logits
from pix2pix_fast.train.eager import set_requires_grad
from pix2pix_fast.train.losses import generator_gan_loss
from pix2pix_fast.train.step import set_lr

WARMUP_STEPS = 3


class FastStepFailure(RuntimeError):
    """Compiling, warming up or capturing the fast step failed.

    `stage` is "compile", "warm-up" or "capture"; `cause` the original error.
    """

    def __init__(self, stage: str, cause: BaseException):
        self.stage, self.cause = stage, cause
        first_line = (str(cause).strip().splitlines() or [""])[0][:200]
        super().__init__(f"{stage} of the fast step failed ({type(cause).__name__}: {first_line})")


def _is_compile_error(e: BaseException) -> bool:
    from torch._dynamo.exc import TorchDynamoException

    return isinstance(e, TorchDynamoException)


class FastStep:
    """One D+G update per call; returns the step's losses as a (3,) fp32 device tensor (a TrainStep).

    With the CUDA graph on, the returned tensor is a static buffer that the
    next call overwrites: consume it (e.g. add it to a running sum) first.

    Until it has `settled` (warm-up steps done and, with the graph on, the
    graph captured), a failure raises `FastStepFailure` naming the stage; the
    trainer then restores the state from before the step and continues on a
    fallback (see `train/fallback.py`). A step that raises has not finished,
    but it may have changed parameters or optimizer state on the way.
    """

    backend = "fast"

    def __init__(
        self,
        cfg: TrainConfig,
        G: nn.Module,
        D: nn.Module,
        opt_G,
        opt_D,
        autocast_dtype: torch.dtype | None,
        use_graph: bool | None = None,
        compile: bool | None = None,
        world=None,
        memory_format: torch.memory_format | None = None,
    ):
        # world: a distributed.World whose ranks share the gradients (None: this process alone).
        self.cfg, self.G, self.D = cfg, G, D
        self.world = world
        self.opt_G, self.opt_D = opt_G, opt_D
        self.device = next(G.parameters()).device
        on_cuda = self.device.type == "cuda"
        if autocast_dtype == torch.float16:
            raise ConfigError("--precision fp16 is not supported by the fast backend (use bf16, or --backend eager)")
        self.autocast_dtype = autocast_dtype
        # Inputs in the models' layout (default: channels_last on CUDA), graph or not.
        self.memory_format = memory_format or (torch.channels_last if on_cuda else torch.contiguous_format)
        self.use_graph = (on_cuda and cfg.cuda_graph) if use_graph is None else use_graph
        self.compiled = (cfg.compile and on_cuda) if compile is None else compile
        if on_cuda:
            # Safe under the graph: cuDNN times its algorithms in the warm-up
            # steps, before capture, and the choice is then fixed.
            torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
        # dynamic=False: D sees batch 2N (batched D step) and N (G step); keep
        # each shape specialised instead of falling back to a dynamic kernel.
        self.Gc = torch.compile(G, dynamic=False) if self.compiled else G
        self.Dc = torch.compile(D, dynamic=False) if self.compiled else D
        self.batch_D = cfg.norm != "batch"
        self.use_gan = cfg.gan_mode != "none"
        self.noise_std = torch.zeros((), device=self.device)
        self.smoothing = (cfg.real_label_min, cfg.real_label) if cfg.real_label_min >= 0 else None
        # With the graph on: the step's static inputs, warm-up and capture (cuda_graph.py).
        self.graph = CudaGraph(self._step, memory_format=self.memory_format) if self.use_graph else None
        self.warmup_left = WARMUP_STEPS
        self.warmup_seconds = 0.0  # compile + first steps
        self.capture_seconds = 0.0

    @property
    def settled(self) -> bool:
        """Warm-up done and, with the graph on, the graph captured and replayed once."""
        return self.warmup_left <= 0 and (not self.use_graph or self.graph.captured)

    def set_lr(self, lr: float) -> None:
        set_lr((self.opt_G, self.opt_D), lr)  # a tensor LR, read by the captured Adam kernels

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __call__(self, real_A: torch.Tensor, real_B: torch.Tensor, noise_std: float = 0.0) -> torch.Tensor:
        self.noise_std.fill_(noise_std)
        if not self.use_graph:
            A = real_A.contiguous(memory_format=self.memory_format)
            B = real_B.contiguous(memory_format=self.memory_format)
            return self._warmup_step(self._step, A, B) if self.warmup_left > 0 else self._step(A, B)
        self.graph.load(real_A, real_B)
        if not self.graph.captured:
            if self.warmup_left > 0:
                return self._warmup_step(self.graph.warm_up)
            try:
                self.graph.capture()
            except Exception as e:
                raise FastStepFailure("capture", e) from e
            self.capture_seconds = self.graph.capture_seconds
        return self.graph.replay()

    # ------------------------------------------------------------ internals
    def _warmup_step(self, run, *args) -> torch.Tensor:
        """A real training step; the first one compiles. On a side stream before
        a capture (the graph's warm-up), plainly otherwise."""
        t0 = time.perf_counter()
        try:
            out = run(*args)
        except Exception as e:
            stage = "compile" if self.compiled and _is_compile_error(e) else "warm-up"
            raise FastStepFailure(stage, e) from e
        self.warmup_seconds += time.perf_counter() - t0
        self.warmup_left -= 1
        return out

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def _noisy(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.instance_noise <= 0:
            return x
        return x + self.noise_std * torch.randn_like(x)

    def _d_loss(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        cfg = self.cfg
        return patchgan_loss(logits, real, mode=cfg.gan_mode, real_label=cfg.real_label,
                             smoothing=self.smoothing, flip_prob=cfg.label_flip_prob)

    def _step(self, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        # Gradients are zeroed in place (set_to_none=False): a captured graph
        # must keep writing the same .grad tensors on every replay.
        cfg = self.cfg
        with self._autocast():
            fake_B = self.Gc(A)

        loss_D = torch.zeros((), device=A.device)
        if self.use_gan:
            set_requires_grad(self.D, True)
            self.opt_D.zero_grad(set_to_none=False)
            fake_pair = torch.cat([A, fake_B.detach().to(A.dtype)], 1)
            real_pair = torch.cat([A, B], 1)
            with self._autocast():
                if self.batch_D:
                    pred = scale_logits(self.Dc(self._noisy(torch.cat([fake_pair, real_pair], 0))))
                    pred_fake, pred_real = zip(*(p.chunk(2) for p in pred))
                else:
                    pred_fake = scale_logits(self.Dc(self._noisy(fake_pair)))
                    pred_real = scale_logits(self.Dc(self._noisy(real_pair)))
            loss_D = 0.5 * (sum(self._d_loss(p, False) for p in pred_fake)
                            + sum(self._d_loss(p, True) for p in pred_real))
            loss_D.backward()
            self._average_gradients(self.D)
            self.opt_D.step()
            set_requires_grad(self.D, False)

        self.opt_G.zero_grad(set_to_none=False)
        loss_G_GAN = torch.zeros((), device=A.device)
        if self.use_gan:
            loss_G_GAN = generator_gan_loss(
                self.Dc, self._noisy(torch.cat([A, fake_B.to(A.dtype)], 1)), lambda: self._noisy(torch.cat([A, B], 1)),
                lambda p: patchgan_loss(p, True, mode=cfg.gan_mode, for_discriminator=False), cfg.lambda_feat,
                self._autocast)
        loss_G_L1 = (fake_B.float() - B.float()).abs().mean() * cfg.lambda_l1
        (loss_G_GAN + loss_G_L1).backward()
        self._average_gradients(self.G)
        self.opt_G.step()
        return torch.stack([loss_D.detach().float(), loss_G_GAN.detach().float(), loss_G_L1.detach()])

    def _average_gradients(self, model: nn.Module) -> None:
        if self.world is not None:
            self.world.average_gradients(model.parameters())
