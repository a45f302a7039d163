"""DeepLab-v2: a dilated ResNet-101 with ASPP, wrapped in the multi-scale MSC module, as kazuto1011/deeplab-pytorch
builds `DeepLabV2_ResNet101_MSC` (the network taming's and ASSET's label maps were made with).

Module names are the official checkpoint's keys (`base.layer1.conv1.conv.weight`, `base.layer2.block1.reduce.bn.
running_mean`, `base.aspp.c0.bias`, ...), so `deeplabv2_resnet101_msc-cocostuff164k-100000.pth` loads key for key.

- `base.layer1` (the stem): 7x7/2 conv + BN + ReLU, then a 3x3/2 max pool with ceil_mode (not the torchvision stem);
- `base.layer2..5`: bottleneck stages of [3, 4, 23, 3] blocks (the first of each with a projection `shortcut`);
  layer3 has stride 2, layer4 and layer5 are dilated 2 and 4 instead of strided: the output stride is 8;
  each block is `reduce` (1x1, carrying the stride) -> `conv3x3` (dilated) -> `increase` (1x1) + shortcut -> ReLU;
  BatchNorm eps 1e-5 (momentum 0.001 as upstream, which only matters when training);
- `base.aspp`: four 3x3 convs with biases at dilations 6, 12, 18, 24 from 2048 channels to the classes, summed;
- MSC: logits of the input, of the input scaled by 0.5 and by 0.75 (bilinear, align_corners False, by scale factor),
  the scaled ones resized to the first one's grid, and the pixel-wise maximum of the three (in eval mode).

Preprocessing as upstream's demo (configs/cocostuff164k.yaml): the image resized so its long side is 513 px
(cv2 bilinear), BGR, minus the mean (B 104.008, G 116.669, R 122.675), no scaling by a std; the logits are
resized (bilinear) to the resized image's size before the softmax/argmax. `preprocess` does this.

`width` and `n_blocks` shrink the network for tests (official: 64 and [3, 4, 23, 3]); the key names do not change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EXPANSION = 4
MEAN_BGR = (104.008, 116.669, 122.675)
TEST_SIZE = 513  # configs/cocostuff164k.yaml IMAGE.SIZE.TEST: the long side the demo resizes to


@dataclass(frozen=True)
class DeepLabConfig:
    n_classes: int = 182
    n_blocks: tuple[int, ...] = (3, 4, 23, 3)
    atrous_rates: tuple[int, ...] = (6, 12, 18, 24)
    width: int = 64  # the stem's channels; stages have 4, 8, 16 and 32 times this (256..2048 officially)
    scales: tuple[float, ...] = (0.5, 0.75)
    test_size: int = TEST_SIZE

    @classmethod
    def from_dict(cls, values: dict) -> "DeepLabConfig":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known})

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class ConvBnReLU(nn.Sequential):
    def __init__(self, in_ch, out_ch, kernel_size, stride, padding, dilation, relu=True):
        super().__init__()
        self.add_module("conv", nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_ch, eps=1e-5, momentum=1 - 0.999))
        if relu:
            self.add_module("relu", nn.ReLU())


class Bottleneck(nn.Module):
    def __init__(self, in_ch, out_ch, stride, dilation, downsample):
        super().__init__()
        mid = out_ch // EXPANSION
        self.reduce = ConvBnReLU(in_ch, mid, 1, stride, 0, 1, True)
        self.conv3x3 = ConvBnReLU(mid, mid, 3, 1, dilation, dilation, True)
        self.increase = ConvBnReLU(mid, out_ch, 1, 1, 0, 1, False)
        self.shortcut = ConvBnReLU(in_ch, out_ch, 1, stride, 0, 1, False) if downsample else nn.Identity()

    def forward(self, x):
        h = self.increase(self.conv3x3(self.reduce(x)))
        return F.relu(h + self.shortcut(x))


class ResLayer(nn.Sequential):
    def __init__(self, n_layers, in_ch, out_ch, stride, dilation):
        super().__init__()
        for i in range(n_layers):
            self.add_module(f"block{i + 1}", Bottleneck(in_ch if i == 0 else out_ch, out_ch,
                                                        stride if i == 0 else 1, dilation, i == 0))


class Stem(nn.Sequential):
    def __init__(self, out_ch):
        super().__init__()
        self.add_module("conv1", ConvBnReLU(3, out_ch, 7, 2, 3, 1))
        self.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))


class ASPP(nn.Module):
    def __init__(self, in_ch, out_ch, rates):
        super().__init__()
        for i, rate in enumerate(rates):
            self.add_module(f"c{i}", nn.Conv2d(in_ch, out_ch, 3, 1, padding=rate, dilation=rate, bias=True))

    def forward(self, x):
        out = None
        for stage in self.children():
            y = stage(x)
            out = y if out is None else out + y
        return out


class DeepLabV2(nn.Sequential):
    """Dilated ResNet + ASPP; output stride 8."""

    def __init__(self, cfg: DeepLabConfig):
        super().__init__()
        ch = [cfg.width * 2**p for p in range(6)]
        n = cfg.n_blocks
        self.add_module("layer1", Stem(ch[0]))
        self.add_module("layer2", ResLayer(n[0], ch[0], ch[2], 1, 1))
        self.add_module("layer3", ResLayer(n[1], ch[2], ch[3], 2, 1))
        self.add_module("layer4", ResLayer(n[2], ch[3], ch[4], 1, 2))
        self.add_module("layer5", ResLayer(n[3], ch[4], ch[5], 1, 4))
        self.add_module("aspp", ASPP(ch[5], cfg.n_classes, cfg.atrous_rates))


class MSC(nn.Module):
    """Multi-scale inputs with max fusion (eval) around `base`; in training mode returns every scale's logits plus
    the fused ones, as upstream."""

    def __init__(self, cfg: DeepLabConfig = DeepLabConfig()):
        super().__init__()
        self.cfg = cfg
        self.base = DeepLabV2(cfg)
        self.scales = list(cfg.scales)

    def forward(self, x: torch.Tensor, check=None):
        """x: preprocessed (B, 3, H, W) BGR minus mean. `check` (optional) is called between scales."""
        logits = self.base(x)
        h, w = logits.shape[-2:]
        pyramid = []
        for p in self.scales:
            if check is not None:
                check()
            pyramid.append(self.base(F.interpolate(x, scale_factor=p, mode="bilinear", align_corners=False)))
        resized = [F.interpolate(l, size=(h, w), mode="bilinear", align_corners=False) for l in pyramid]
        fused = torch.max(torch.stack([logits, *resized]), dim=0)[0]
        if self.training:
            return [logits, *pyramid, fused]
        return fused


def preprocess(rgb: np.ndarray, test_size: int = TEST_SIZE) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, h, w) float32 BGR minus the mean, the long side resized to `test_size` as
    upstream's demo does (cv2.resize, bilinear)."""
    import cv2

    scale = test_size / max(rgb.shape[:2])
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    image = cv2.resize(bgr, dsize=None, fx=scale, fy=scale).astype(np.float32)
    # upstream subtracts a float64 mean in place from the float32 image: the difference is rounded once
    image = (image.astype(np.float64) - np.array(MEAN_BGR, np.float64)).astype(np.float32)
    return torch.from_numpy(image.transpose(2, 0, 1).copy()).unsqueeze(0)
