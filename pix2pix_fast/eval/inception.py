"""The Inception-v3 network used for FID/KID, as the TTUR/pytorch-fid port of
the 2015-12-05 TensorFlow graph defines it, with its 2048-d pool features.

It differs from the ImageNet Inception-v3 in four places, all inherited from
the TensorFlow graph the FID weights were trained in:
  * the 3x3 average pools inside the A, C and first E blocks do not count the
    zero padding (TF's average pool divides by the number of real pixels);
  * the pool branch of the last E block (Mixed_7c) is a 3x3 *max* pool;
  * 1008 classes (the unused logits layer is not built here);
  * inputs are resized to 299 x 299 (bilinear, no antialiasing) and scaled
    from [0, 1] to [-1, 1] inside the network.
Module names follow the usual PyTorch naming (Conv2d_1a_3x3.conv.weight, ...),
so the published `pt_inception-2015-12-05-6726825d.pth` loads as is.

Weights are never downloaded: pass a file (`--inception-weights PATH`), set
PIX2PIX_FAST_INCEPTION_WEIGHTS, or place the file in the torch hub cache
(`<torch.hub.get_dir()>/checkpoints/`). Without one, `load_inception` raises
MissingWeightsError and callers still compute the other metrics.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pix2pix_fast.errors import MissingWeightsError

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_ENV = "PIX2PIX_FAST_INCEPTION_WEIGHTS"
FEATURE_DIM = 2048
INPUT_SIZE = 299

__all__ = [
    "FIDInceptionV3",
    "InceptionWeightsError",
    "MissingWeightsError",
    "default_weights_path",
    "find_weights",
    "load_inception",
    "FID_WEIGHTS_NAME",
    "FEATURE_DIM",
]


class InceptionWeightsError(MissingWeightsError):
    """A weights file exists but is unreadable or not the FID Inception-v3's."""


# --- building blocks ----------------------------------------------------------

class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3, as in TF) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    # TF semantics: the border average is over the pixels inside the image only.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | avgpool->1x1; out = 224 + pool_features."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg3(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction: 3x3/2 | 1x1->3x3->3x3/2 | maxpool/2; out = 480 + cin."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, 3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class FIDInceptionC(nn.Module):
    """17x17 block with factorised 7x7 convs (1x7 / 7x1); out = 768."""

    def __init__(self, cin: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(_avg3(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction: 1x1->3x3/2 | 1x1->1x7->7x1->3x3/2 | maxpool/2; out = 512 + cin."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, 3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class FIDInceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs; out = 2048.

    `max_pool=True` is the last block (Mixed_7c), whose pool branch is a max
    pool in the TF graph; the first (Mixed_7b) uses the padding-excluding average.
    """

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        t = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(t), self.branch3x3_2b(t)], 1)
        t = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(t), self.branch3x3dbl_3b(t)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        bp = self.branch_pool(pooled)
        return torch.cat([b1, b3, bd, bp], 1)


# --- the network --------------------------------------------------------------

class FIDInceptionV3(nn.Module):
    """Images (N, 3, H, W) in [0, 1], any size -> pool3 features (N, 2048).

    Always use it in eval mode (BatchNorm running statistics); `load_inception`
    returns it that way.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = FIDInceptionE(2048, max_pool=True)

    @staticmethod
    def preprocess(x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images of any size -> 299 x 299 in [-1, 1], as the network expects."""
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return 2 * x - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"Inception features need (N, 3, H, W) images, got shape {tuple(x.shape)}")
        x = self.preprocess(x.float())
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (
            self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
            self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c,
        ):
            x = block(x)
        return x.mean(dim=(2, 3))


# --- weights ------------------------------------------------------------------

def default_weights_path() -> Path:
    """Where the torch hub cache keeps the FID weights (honours TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_NAME


def find_weights(weights: str | os.PathLike | None = None) -> Path:
    """The weights file to use: `weights` if given, else $PIX2PIX_FAST_INCEPTION_WEIGHTS, else the hub cache.

    Raises MissingWeightsError (one line) when the chosen file does not exist.
    """
    if weights is not None:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise MissingWeightsError(f"Inception weights file not found: {p}")
        return p
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise MissingWeightsError(f"Inception weights file not found: {p} (from ${WEIGHTS_ENV})")
        return p
    p = default_weights_path()
    if not p.is_file():
        raise MissingWeightsError(
            f"no Inception weights for FID/KID: pass --inception-weights PATH or place {FID_WEIGHTS_NAME} in {p.parent}"
        )
    return p


# Keys the published file carries that this feature extractor does not use.
_UNUSED_PREFIXES = ("fc.", "AuxLogits.")


def load_inception(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """The FID Inception-v3 with weights from `find_weights(weights)`, in eval mode on `device`."""
    path = find_weights(weights)
    from pix2pix_fast.checkpoint import torch_load

    state = torch_load(path, "weights file", InceptionWeightsError)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InceptionWeightsError(f"{path}: not a state dict of the FID Inception-v3")
    state = {k: v for k, v in state.items() if not k.startswith(_UNUSED_PREFIXES)}
    net = FIDInceptionV3()
    expected = net.state_dict()
    # Files converted before BatchNorm had num_batches_tracked lack it; it is unused in eval mode.
    for k, v in expected.items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise InceptionWeightsError(f"{path} does not hold FID Inception-v3 weights ({'; '.join(parts)})")
    net.load_state_dict(state, strict=True)
    return net.eval().requires_grad_(False).to(device)
