"""A SPADE-style generator (Park et al. 2019, NVlabs/SPADE generator.py layout) written only as the baseline of
bench_asapnet: same data flow (label map resized to a small grid, conv to 16*ngf, SPADE residual blocks with
nearest 2x upsampling to full resolution, leaky ReLU, conv to RGB, tanh), with widths chosen so its parameter count
is close to the model it is compared with. Parameter-free instance norm (the 'spadeinstance3x3' variant) and no
spectral norm: neither changes the cost of a forward pass noticeably. Random weights: only the speed matters."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SPADE(nn.Module):
    def __init__(self, channels: int, label_nc: int, hidden: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x, segmap):
        segmap = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        h = self.shared(segmap)
        return self.norm(x) * (1 + self.gamma(h)) + self.beta(h)


class SPADEResBlock(nn.Module):
    def __init__(self, fin: int, fout: int, label_nc: int, hidden: int):
        super().__init__()
        fmid = min(fin, fout)
        self.conv_0 = nn.Conv2d(fin, fmid, 3, padding=1)
        self.conv_1 = nn.Conv2d(fmid, fout, 3, padding=1)
        self.norm_0 = SPADE(fin, label_nc, hidden)
        self.norm_1 = SPADE(fmid, label_nc, hidden)
        self.shortcut = None
        if fin != fout:
            self.conv_s = nn.Conv2d(fin, fout, 1, bias=False)
            self.norm_s = SPADE(fin, label_nc, hidden)
            self.shortcut = True

    def forward(self, x, seg):
        xs = self.conv_s(self.norm_s(x, seg)) if self.shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return xs + dx


class SPADEGenerator(nn.Module):
    """'normal' upsampling: 5 x 2 (start grid = H/32 x W/32)."""

    def __init__(self, label_nc: int, ngf: int = 16, hidden: int = 32):
        super().__init__()
        nf = ngf
        self.fc = nn.Conv2d(label_nc, 16 * nf, 3, padding=1)
        self.head_0 = SPADEResBlock(16 * nf, 16 * nf, label_nc, hidden)
        self.G_middle_0 = SPADEResBlock(16 * nf, 16 * nf, label_nc, hidden)
        self.G_middle_1 = SPADEResBlock(16 * nf, 16 * nf, label_nc, hidden)
        self.up_0 = SPADEResBlock(16 * nf, 8 * nf, label_nc, hidden)
        self.up_1 = SPADEResBlock(8 * nf, 4 * nf, label_nc, hidden)
        self.up_2 = SPADEResBlock(4 * nf, 2 * nf, label_nc, hidden)
        self.up_3 = SPADEResBlock(2 * nf, nf, label_nc, hidden)
        self.conv_img = nn.Conv2d(nf, 3, 3, padding=1)

    def forward(self, seg):
        h, w = seg.shape[2] // 32, seg.shape[3] // 32
        x = self.fc(F.interpolate(seg, size=(h, w), mode="nearest"))
        x = self.head_0(x, seg)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.G_middle_0(x, seg)
        x = self.G_middle_1(x, seg)
        for block in (self.up_0, self.up_1, self.up_2, self.up_3):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(x, seg)
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))
