"""taming-transformers' patch discriminator (`taming/modules/discriminator/model.py`), used by the optional
adversarial loss terms of the VQGAN and ASAPNet trainers (engine/train/losses.py).

`NLayerDiscriminator`: the pix2pix PatchGAN, 4x4 convolutions (stride 2 for the first `n_layers`, then 1), batch
norm, LeakyReLU 0.2, one logit per ~70 px patch at n_layers 3. Attribute names follow taming (`main.{i}.*`), so a
taming VQGAN checkpoint's `loss.discriminator.*` loads into it key for key; initialised as taming's weights_init.
"""

from __future__ import annotations

from torch import nn


def weights_init(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.constant_(module.bias, 0)


class NLayerDiscriminator(nn.Module):
    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        kw, padw = 4, 1
        sequence: list[nn.Module] = [nn.Conv2d(input_nc, ndf, kw, 2, padw), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            sequence += [nn.Conv2d(ndf * prev, ndf * mult, kw, 2, padw, bias=False), nn.BatchNorm2d(ndf * mult),
                         nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2**n_layers, 8)
        sequence += [nn.Conv2d(ndf * prev, ndf * mult, kw, 1, padw, bias=False), nn.BatchNorm2d(ndf * mult),
                     nn.LeakyReLU(0.2, True), nn.Conv2d(ndf * mult, 1, kw, 1, padw)]
        self.main = nn.Sequential(*sequence)
        self.apply(weights_init)

    def forward(self, x):
        return self.main(x)
