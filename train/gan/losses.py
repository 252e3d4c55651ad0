"""GAN losses: non-saturating adversarial, R1 penalty, masked L1, feature matching, and
two against "grey blobs": focal frequency (texture) and mode seeking (diversity)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hole_at(logits: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """The hole at the discriminator's patch grid: 1 where a patch's cell touches the hole."""
    return F.adaptive_max_pool2d(hole, logits.shape[-2:])


def d_adversarial(real_logits: torch.Tensor, fake_logits: torch.Tensor, hole: torch.Tensor | None = None) -> torch.Tensor:
    """Non-saturating discriminator loss: -log D(real) - log(1 - D(fake)).

    With `hole`, only the fake's patches that touch the hole are called fake; the rest of a
    composited fake is the input's own pixels, so they are called real (as in LaMa). Asking
    the discriminator to call identical patches both real and fake pins their logits at 0
    and swamps the few patches where the two differ: measured on NEU-Seg crops, it could
    not separate an L1-trained generator's fills at all (loss at 2 ln 2 for the whole run)."""
    if hole is None:
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    m = hole_at(fake_logits, hole)
    return F.softplus(-real_logits).mean() + (m * F.softplus(fake_logits) + (1 - m) * F.softplus(-fake_logits)).mean()


def g_adversarial(fake_logits: torch.Tensor, hole: torch.Tensor | None = None) -> torch.Tensor:
    """Non-saturating generator loss: -log D(fake), with `hole` averaged over the patches
    the generator painted (the others it cannot change)."""
    if hole is None:
        return F.softplus(-fake_logits).mean()
    m = hole_at(fake_logits, hole)
    return (m * F.softplus(-fake_logits)).sum() / m.sum().clamp_min(1.0)


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


def focal_frequency(generated: torch.Tensor, real: torch.Tensor, hole: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Focal frequency loss (Jiang et al. 2021) on the hole: the spectra of the hole's
    content, generated vs real, compared frequency by frequency, each frequency weighted by
    how wrong it is (normalised, not differentiated). L1 alone is minimised by the blurry
    mean; this makes the missing high frequencies (scale, pits, streaks) cost."""
    fg = torch.fft.fft2((generated * hole).float(), norm="ortho")
    fr = torch.fft.fft2((real * hole).float(), norm="ortho")
    dist = (fg - fr).abs() ** 2
    with torch.no_grad():
        w = dist.sqrt() ** alpha
        w = w / w.flatten(1).amax(1).clamp_min(1e-8)[:, None, None, None]
    return (w * dist).mean()


def mode_seeking(out_a: torch.Tensor, out_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor, hole: torch.Tensor,
                 eps: float = 1e-5) -> torch.Tensor:
    """Mode-seeking term (Mao et al. 2019): two noise codes for the same input should give
    fills that differ about as much as the codes do. Returns 1 / (image distance in the hole
    / code distance), which falls as the fills diverge."""
    hole_px = hole.flatten(1).sum(1).clamp_min(1.0)
    d_img = ((out_a - out_b).abs() * hole).flatten(1).sum(1) / hole_px
    d_z = ((z_a - z_b).abs() * hole).flatten(1).sum(1) / (hole_px * z_a.shape[1])
    return (1.0 / (d_img / d_z.clamp_min(eps) + eps)).mean()
