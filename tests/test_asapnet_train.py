"""The ASAPNet training task: one backward gives each network exactly its own GAN gradient."""

import torch
import torch.nn.functional as F

from engine.models.asapnet import ASAPNetConfig
from engine.train.tasks_asapnet import ASAPNetGAN


def test_combined_loss_gives_each_network_its_own_gradient():
    torch.manual_seed(0)
    cfg = ASAPNetConfig(in_channels=4, downsampling=16, lr_width=8, lr_max_width=16, lr_depth=1, hr_width=8)
    gan = ASAPNetGAN(cfg, {"fm": 10.0, "l1": 10.0, "grad": 5.0})
    x = torch.zeros(2, 4, 32, 32).scatter_(1, torch.randint(0, 4, (2, 1, 32, 32)), 1.0)
    real = torch.rand(2, 3, 32, 32) * 2 - 1
    loss, logs = gan(x, real)
    loss.backward()
    d_grad = [p.grad.clone() for p in gan.netD.parameters()]
    assert set(logs) == {"d", "g_adv", "fm", "l1", "grad"}

    # the discriminator's gradient must be that of its hinge loss alone ...
    gan.zero_grad()
    fake = gan.netG(x).detach()
    d_real, d_fake = gan.netD(torch.cat([x, real], 1)), gan.netD(torch.cat([x, fake], 1))
    hinge = sum(F.relu(1 - r[-1]).mean() + F.relu(1 + f[-1]).mean() for r, f in zip(d_real, d_fake)) / 2
    hinge.backward()
    for got, want in zip(d_grad, [p.grad for p in gan.netD.parameters()]):
        assert (got - want).abs().max() <= 1e-5 * (1 + want.abs().max())
    # ... while the generator does get the adversarial and feature-matching gradients through the discriminator
    gan.zero_grad()
    gan.weights = {"fm": 0.0, "l1": 0.0, "grad": 0.0}
    gan(x, real)[0].backward()
    assert all(p.grad is not None for p in gan.netG.parameters())
    assert sum(float(p.grad.abs().sum()) for p in gan.netG.parameters()) > 0
