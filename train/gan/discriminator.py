"""PatchGAN discriminator conditioned on the hole and the class map.

Regularised by R1 on real images (in `fit_gan`); spectral normalisation is optional
(`spectral=True`, the pre-study design). The losses (`losses.d_adversarial` with the
hole) call only the fake's patches that touch the hole fake: without that, the
discriminator of the first label-curve study never left 2 ln 2, with or without
spectral normalisation, and the generator was trained by its reconstruction terms alone.

Each output logit judges one overlapping patch (about 46 px at this depth), which is
the scale of defect texture; conditioning on the class map makes "a realistic patch of
the wrong class" a fake, so the generator has to honour the class it is given.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class PatchDiscriminator(nn.Module):
    def __init__(self, num_classes: int, base: int = 32, spectral: bool = False) -> None:
        super().__init__()
        norm = spectral_norm if spectral else (lambda m: m)
        cin = 2 + num_classes + 1  # image, hole, one-hot class map
        widths = [base, base * 2, base * 4, base * 8]
        layers = []
        for i, cout in enumerate(widths):
            stride = 2 if i < 3 else 1
            layers.append(nn.Sequential(norm(nn.Conv2d(cin, cout, 4, stride, 1)), nn.LeakyReLU(0.2, True)))
            cin = cout
        self.layers = nn.ModuleList(layers)
        self.out = norm(nn.Conv2d(cin, 1, 4, 1, 1))

    def forward(self, image: torch.Tensor, hole: torch.Tensor, class_map: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns per-patch logits (N, 1, h, w) and the intermediate features (for feature matching)."""
        x = torch.cat([image, hole, class_map], dim=1)
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return self.out(x), feats
