"""GAN losses: non-saturating adversarial, R1 penalty, masked L1, feature matching."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d_adversarial(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating discriminator loss: -log D(real) - log(1 - D(fake))."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_adversarial(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: -log D(fake)."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """E ||grad_x D(x)||^2 on real images (Mescheder et al. 2018); the caller scales by gamma/2.
    `real_images` must have requires_grad set before the forward pass."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def masked_l1(generated: torch.Tensor, real: torch.Tensor, hole: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean absolute error over hole pixels only (pixels outside are kept by the composite)."""
    return ((generated - real).abs() * hole).sum() / (hole.sum() + eps)


def feature_matching(fake_feats: list[torch.Tensor], real_feats: list[torch.Tensor]) -> torch.Tensor:
    """L1 between discriminator features of fake and (detached) real images, averaged over layers."""
    losses = [F.l1_loss(f, r.detach()) for f, r in zip(fake_feats, real_feats)]
    return torch.stack(losses).mean()
