"""``fuse(model)``: put the fused layers into any PyTorch GAN without rewriting it.

What is replaced (only where the result is provably the same function):

* ``InstanceNorm2d`` (affine or not, ``track_running_stats=False``) followed,
  inside an ``nn.Sequential``, by ``ReLU`` / ``LeakyReLU`` -> one
  :class:`InstanceNormAct` carrying the activation; a ``ReflectionPad2d``
  right after the norm (+ activation) folds into it too (the padded output is
  written in the same pass).  Inside an ``nn.Sequential`` (with its own
  ``forward``) a module's output is the next module's input and nothing
  else's, which is what makes the folding safe.
* an ``InstanceNorm2d`` anywhere else -> ``InstanceNormAct(act="none")``
  (same function whatever the parent does with its output);
* ``ReflectionPad2d`` -> :class:`ReflectPad2d`;
* the reference implementation's ``GANLoss`` criterion (vanilla or lsgan,
  fake label 0) -> :class:`pix2pix_fast.nn.GANLoss`, on the fused PatchGAN loss.

Folded modules are replaced by ``nn.Identity`` at their own index, so every
``state_dict`` key and value stays as it was (the new modules hold the
original ``Parameter`` objects, not copies): checkpoints of the original
load into the fused model and back, and an optimizer built on the original
parameters (``inplace=True``) keeps working.

Left alone, each with its reason in :func:`explain_fuse`: norms that track
running statistics (eval mode would use them), modules with forward/backward
hooks or parametrizations (the hooks would no longer see what they saw),
modules shared between several places of the model, a norm whose output is
not provably used only by the following activation (any parent that is not
an ``nn.Sequential``: its ``forward`` may use the output twice; such a norm
is still replaced alone), other norms and paddings the fused ops do not cover,
and leaf modules of unknown classes (their ``forward`` is not inspected).
Convolutions are not touched: ``ConvNormAct`` replaces cuDNN by a Triton
implicit GEMM, a different trade-off that ``fuse`` does not make for you.

The fused layers expect 4-D (N, C, H, W) inputs, which is what GAN layers see;
a 3-D unbatched input raises a ValueError rather than computing something else.
"""
from __future__ import annotations

import copy
import dataclasses
import sys
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from pix2pix_fast.nn.gan_loss import FUSED_GAN_MODES, GANLoss
from pix2pix_fast.nn.instance_norm_act import InstanceNormAct
from pix2pix_fast.nn.reflect_pad import ReflectPad2d

__all__ = ["fuse", "explain_fuse", "FuseReport", "FuseEntry"]

# Leaf modules of torch.nn that hold nothing to fuse: kept silently.
_PLAIN = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.Linear, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Tanh, nn.Sigmoid, nn.ReLU, nn.LeakyReLU,
    nn.Upsample, nn.AvgPool2d, nn.MaxPool2d, nn.Flatten, nn.Softmax, nn.ELU, nn.GELU, nn.SiLU, nn.PReLU,
    nn.Hardtanh, nn.ReLU6,
)
# Norms and paddings that the fused ops do not implement.
_UNCOVERED = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm,
    nn.InstanceNorm1d, nn.InstanceNorm3d, nn.LocalResponseNorm, nn.ReplicationPad2d, nn.ZeroPad2d,
    nn.ConstantPad2d, nn.ReflectionPad1d, nn.ReflectionPad3d,
)


@dataclass(frozen=True)
class FuseEntry:
    """One decision of :func:`fuse`: ``action`` is "fused" or "skipped"."""

    path: str  # dotted module path ("" = the model itself)
    action: str
    what: str  # e.g. "InstanceNorm2d + ReLU + ReflectionPad2d(1) -> InstanceNormAct(act='relu', pad=1)"
    reason: str = ""
    replacement: str = ""  # class of the new module ("fused" only)
    folded: Tuple[str, ...] = ()  # classes of the following modules folded into it

    def __str__(self) -> str:
        where = self.path or "<model>"
        tail = f" ({self.reason})" if self.reason else ""
        return f"{self.action:7} {where}: {self.what}{tail}"


class FuseReport(List[FuseEntry]):
    """Every replacement and every skip of one :func:`fuse` run, in model order."""

    @property
    def fused(self) -> List[FuseEntry]:
        return [e for e in self if e.action == "fused"]

    @property
    def skipped(self) -> List[FuseEntry]:
        return [e for e in self if e.action == "skipped"]

    def counts(self) -> dict:
        """{"InstanceNormAct": n, "ReflectPad2d": n, "GANLoss": n, "folded_acts": n, "folded_pads": n, "skipped": n}."""
        out = {"InstanceNormAct": 0, "ReflectPad2d": 0, "GANLoss": 0, "folded_acts": 0, "folded_pads": 0,
               "skipped": len(self.skipped)}
        for e in self.fused:
            out[e.replacement] += 1
            out["folded_acts"] += sum(f in ("ReLU", "LeakyReLU") for f in e.folded)
            out["folded_pads"] += sum(f == "ReflectionPad2d" for f in e.folded)
        return out

    def __str__(self) -> str:
        c = self.counts()
        head = (f"fuse: {len(self.fused)} replaced ({c['folded_acts']} activations and {c['folded_pads']} "
                f"reflect pads folded into norms), {len(self.skipped)} left alone")
        return "\n".join([head] + [str(e) for e in self])


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _hooked(m: nn.Module) -> Optional[str]:
    """Why ``m`` must keep its identity (hooks, parametrizations), or None."""
    for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
        if getattr(m, attr, None):
            return f"has {attr.strip('_').replace('_', ' ')}"
    if parametrize.is_parametrized(m):
        return "has parametrizations"
    return None


def _plain_forward(m: nn.Module, cls: type) -> bool:
    return type(m).forward is cls.forward


def _is_instance_norm(m: nn.Module) -> bool:
    return isinstance(m, nn.InstanceNorm2d)


def _is_act(m: nn.Module) -> bool:
    return type(m) in (nn.ReLU, nn.LeakyReLU)


def _is_reflect_pad(m: nn.Module) -> bool:
    return type(m) is nn.ReflectionPad2d


def _is_sequential(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and _plain_forward(m, nn.Sequential)


def _looks_like_reference_gan_loss(m: nn.Module) -> bool:
    """The reference implementation's ``GANLoss`` (duck-typed: it is not importable here)."""
    return (
        type(m).__name__ == "GANLoss"
        and not isinstance(m, GANLoss)
        and isinstance(getattr(m, "gan_mode", None), str)
        and isinstance(getattr(m, "real_label", None), torch.Tensor)
        and isinstance(getattr(m, "fake_label", None), torch.Tensor)
        and m.real_label.dim() == 0
        and m.fake_label.dim() == 0
    )


def _pad_text(p) -> str:
    p = tuple(p)
    return f"{p[0]}" if len(set(p)) == 1 else f"{p}"


class _Fuser:
    def __init__(self, model: nn.Module):
        self.report = FuseReport()
        self.uses = {}
        for _, m in model.named_modules(remove_duplicate=False):
            self.uses[id(m)] = self.uses.get(id(m), 0) + 1

    # ----------------------------------------------------------- checks
    def _blocker(self, m: nn.Module) -> Optional[str]:
        why = _hooked(m)
        if why:
            return why
        # A stateless module (an activation, a padding) used at several places
        # may be folded at one of them: only that place changes.  One holding
        # parameters or buffers stays, so that sharing them stays exact.
        stateful = next(m.parameters(), None) is not None or next(m.buffers(), None) is not None
        if stateful and self.uses.get(id(m), 0) > 1:
            return f"the same module, with its parameters, is used at {self.uses[id(m)]} places"
        return None

    def _norm_blocker(self, m: nn.Module) -> Optional[str]:
        if not _plain_forward(m, nn.InstanceNorm2d):
            return f"{type(m).__name__} overrides forward"
        if m.track_running_stats:
            return "tracks running statistics (eval mode would normalise with them)"
        return self._blocker(m)

    def _skip(self, path: str, m: nn.Module, reason: str) -> None:
        self.report.append(FuseEntry(path, "skipped", type(m).__name__, reason))

    # ------------------------------------------------------- builders
    @staticmethod
    def _norm_act(norm: nn.InstanceNorm2d, act: Optional[nn.Module], pad) -> InstanceNormAct:
        kind, slope = "none", 0.2
        if isinstance(act, nn.LeakyReLU):
            kind, slope = "leaky_relu", float(act.negative_slope)
        elif isinstance(act, nn.ReLU):
            kind = "relu"
        return InstanceNormAct.from_norm(norm, kind, slope, pad)

    # --------------------------------------------------------- walking
    def visit(self, parent: nn.Module, path: str) -> None:
        # _modules, not named_children(): that one skips a module object's
        # second place, and every place matters here.
        items: List[Tuple[str, nn.Module]] = [(n, m) for n, m in parent._modules.items() if m is not None]
        if _is_sequential(parent):
            self._visit_sequence(parent, path, items)
        else:
            for name, m in items:
                self._visit_one(parent, path, name, m, sequential=False)

    def _visit_sequence(self, parent: nn.Module, path: str, items) -> None:
        i = 0
        while i < len(items):
            name, m = items[i]
            if _is_instance_norm(m) and self._norm_blocker(m) is None:
                i = self._fold(parent, path, items, i)
            else:
                self._visit_one(parent, path, name, m, sequential=True)
                i += 1

    def _fold(self, parent: nn.Module, path: str, items, i: int) -> int:
        """Replace items[i] (a fusable norm) and the activation / reflect pad after it; next index."""
        name, norm = items[i]
        act, pad, notes = None, (0, 0, 0, 0), []
        j = i + 1
        if j < len(items) and _is_act(items[j][1]):
            why = self._blocker(items[j][1])
            if why is None:
                act = items[j][1]
                j += 1
            else:
                notes.append(f"following {type(items[j][1]).__name__} not folded: {why}")
        if (act is not None or j == i + 1) and j < len(items) and _is_reflect_pad(items[j][1]):
            why = self._blocker(items[j][1])
            if why is None:
                pad = tuple(items[j][1].padding)
                j += 1
            else:
                notes.append(f"following ReflectionPad2d not folded: {why}")
        new = self._norm_act(norm, act, pad)
        setattr(parent, name, new)
        parts = ["InstanceNorm2d"]
        if act is not None:
            parts.append(type(act).__name__)
        if any(pad):
            parts.append(f"ReflectionPad2d({_pad_text(pad)})")
        for k in range(i + 1, j):
            setattr(parent, items[k][0], nn.Identity())
        desc = f"{' + '.join(parts)} -> InstanceNormAct(act={new.act!r}"
        desc += f", pad={_pad_text(pad)})" if any(pad) else ")"
        folded = tuple(type(items[k][1]).__name__ for k in range(i + 1, j))
        self.report.append(FuseEntry(_join(path, name), "fused", desc, "; ".join(notes), "InstanceNormAct", folded))
        return j

    def _visit_one(self, parent: nn.Module, path: str, name: str, m: nn.Module, sequential: bool) -> None:
        where = _join(path, name)
        if _is_instance_norm(m):
            why = self._norm_blocker(m)
            if why is not None:
                self._skip(where, m, why)
                return
            new = self._norm_act(m, None, (0, 0, 0, 0))
            setattr(parent, name, new)
            note = "" if sequential else (
                f"not folded with what follows: {type(parent).__name__}.forward is not nn.Sequential's, "
                "so its output may have other uses")
            self.report.append(
                FuseEntry(where, "fused", "InstanceNorm2d -> InstanceNormAct(act='none')", note, "InstanceNormAct"))
        elif _is_reflect_pad(m):
            why = self._blocker(m)
            if why is not None:
                self._skip(where, m, why)
                return
            setattr(parent, name, ReflectPad2d(tuple(m.padding)).train(m.training))
            self.report.append(
                FuseEntry(where, "fused", f"ReflectionPad2d({_pad_text(m.padding)}) -> ReflectPad2d", "", "ReflectPad2d"))
        elif _looks_like_reference_gan_loss(m):
            self._gan_loss(parent, where, name, m)
        elif isinstance(m, _UNCOVERED):
            self._skip(where, m, "not covered by the fused ops")
        elif isinstance(m, (InstanceNormAct, ReflectPad2d, GANLoss)):
            return  # already fused
        elif next(m.children(), None) is not None:
            self.visit(m, where)
        elif not isinstance(m, _PLAIN):
            self._skip(where, m, "unknown module (its forward is not inspected)")

    def _gan_loss(self, parent: nn.Module, where: str, name: str, m: nn.Module) -> None:
        why = self._blocker(m)
        if why is None and m.gan_mode not in FUSED_GAN_MODES:
            why = f"gan_mode {m.gan_mode!r} has no fused loss"
        if why is None and float(m.fake_label) != 0.0:
            why = f"fake label {float(m.fake_label)} (the fused loss's fake target is 0)"
        if why is not None:
            self._skip(where, m, why)
            return
        new = GANLoss(m.gan_mode, float(m.real_label), float(m.fake_label))
        # Keep the original buffers (their dtype and device).
        new.real_label, new.fake_label = m.real_label, m.fake_label
        setattr(parent, name, new.train(m.training))
        self.report.append(FuseEntry(where, "fused", f"{type(m).__name__}({m.gan_mode!r}) -> GANLoss", "", "GANLoss"))


def _run(model: nn.Module) -> Tuple[nn.Module, FuseReport]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse expects an nn.Module, got {type(model).__name__}")
    fuser = _Fuser(model)
    if _is_instance_norm(model) or _is_reflect_pad(model) or _looks_like_reference_gan_loss(model):
        # The model itself is one replaceable module: hold it somewhere to replace it.
        holder = nn.Module()
        holder.add_module("model", model)
        fuser._visit_one(holder, "", "model", model, sequential=True)
        report = FuseReport(dataclasses.replace(e, path="") for e in fuser.report)
        return holder.model, report
    fuser.visit(model, "")
    return model, fuser.report


def fuse(model: nn.Module, inplace: bool = False, verbose: bool = False) -> nn.Module:
    """The model with the fused layers in place of the patterns they provably replace.

    inplace=False (default) works on a deep copy and leaves ``model`` as it
    was; inplace=True changes ``model`` itself (its parameters stay the same
    objects, so existing optimizers keep working) and returns it.
    verbose=True prints :func:`explain_fuse`'s report.  ``state_dict`` keys
    and values are unchanged.  See the module docstring for what is replaced.
    """
    target = model if inplace else copy.deepcopy(model)
    fused, report = _run(target)
    if verbose:
        print(report, file=sys.stdout)
    return fused


def explain_fuse(model: nn.Module) -> FuseReport:
    """What :func:`fuse` would replace and what it would leave alone (with reasons); ``model`` is untouched.

    ``print(explain_fuse(model))`` gives one line per decision; ``.counts()``
    the numbers.
    """
    _, report = _run(copy.deepcopy(model))
    return report
