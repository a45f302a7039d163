"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"), v0.1.

The reference implementation is the `lpips` package; attribute names follow it and torchvision, so its state
dicts load key for key: the trunk's `net.features.{i}.*` (torchvision's `vgg16().features` / `alexnet().features`
indices) and the linear heads' `lin{k}.model.1.weight` (a 1x1 convolution without bias after a dropout).

Inputs are RGB in [-1, 1], (B, 3, H, W). Each image is shifted and scaled per channel (the package's ScalingLayer),
run through the trunk, and at five ReLU outputs the features are unit-normalised over channels; the squared
difference of the two images' features goes through that layer's head (non-negative weights) and is averaged
over space. The distance is the sum over the five layers: 0 for identical images, about 0.1-0.7 for different
photos. `spatial=True` returns the (B, 1, H, W) map instead (each layer's map upsampled bilinearly), whose mean is
the distance.

The module is frozen (no parameter asks for a gradient) but differentiable in its inputs: a training loss
(`lpips(fake, real).mean()`, as taming's VQGAN and SPADE-style generators train with a VGG loss). The weights are
read by engine/importers/lpips.py (this module imports no importer, per the layering rule).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NETS = ("vgg", "alex")
# ScalingLayer of the lpips package: inputs in [-1, 1] to ImageNet-normalised values
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# torchvision vgg16().features up to conv5_3; LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG16_TAPS = (3, 8, 15, 22, 29)
VGG16_CHANNELS = (64, 128, 256, 512, 512)
# torchvision alexnet().features without the last max-pool; LPIPS taps relu1..relu5
ALEX_TAPS = (1, 4, 7, 9, 11)
ALEX_CHANNELS = (64, 192, 384, 256, 256)


def vgg16_features(layers=VGG16_LAYERS, inplace: bool = False) -> nn.Sequential:
    """torchvision's vgg16().features (same indices, so the same `N.weight` keys), up to the end of `layers`."""
    modules: list[nn.Module] = []
    channels = 3
    for v in layers:
        if v == "M":
            modules.append(nn.MaxPool2d(2, 2))
        else:
            modules += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=inplace)]
            channels = v
    return nn.Sequential(*modules)


def _alexnet_features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    )  # fmt: skip


class Trunk(nn.Module):
    """The ImageNet classifier's convolutional part; forward returns the five tapped ReLU outputs."""

    def __init__(self, net: str):
        super().__init__()
        if net not in NETS:
            raise ValueError(f"LPIPS net must be one of {NETS}, not {net!r}")
        self.features = vgg16_features() if net == "vgg" else _alexnet_features()
        self.taps = VGG16_TAPS if net == "vgg" else ALEX_TAPS

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                out.append(x)
                if len(out) == len(self.taps):
                    break
        return out


class NetLinLayer(nn.Module):
    """One layer's head: dropout (inactive in eval) and a 1x1 convolution to one channel, no bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def normalize_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    def __init__(self, net: str = "alex"):
        super().__init__()
        self.net_type = net
        self.net = Trunk(net)
        channels = VGG16_CHANNELS if net == "vgg" else ALEX_CHANNELS
        for k, c in enumerate(channels):
            setattr(self, f"lin{k}", NetLinLayer(c))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """Always in eval mode: the heads' dropout must stay off, also inside a model put in training mode."""
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor, spatial: bool = False) -> torch.Tensor:
        """(B,) distances of x and y ((B, 3, H, W) in [-1, 1]), or the (B, 1, H, W) map with `spatial`."""
        if x.shape != y.shape:
            raise ValueError(f"LPIPS inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
        both = torch.cat([x, y]).to(self.shift.dtype)
        feats = self.net((both - self.shift) / self.scale)
        n = x.shape[0]
        total = None
        for k, f in enumerate(feats):
            f = normalize_channels(f)
            d = getattr(self, f"lin{k}")((f[:n] - f[n:]) ** 2)
            d = F.interpolate(d, size=x.shape[-2:], mode="bilinear", align_corners=False) if spatial \
                else d.mean(dim=(2, 3), keepdim=True)
            total = d if total is None else total + d
        return total if spatial else total.flatten()
