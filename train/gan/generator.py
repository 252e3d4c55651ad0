"""Mask-conditioned inpainting generator with Fourier-convolution residual blocks.

Input: the real crop with the hole blanked (zero in [-1, 1] units = mid grey), the
binary hole mask, a one-hot class map (channel 0 clean steel, k+1 defect class k)
saying what to paint where and, with `noise_channels`, per-pixel noise inside the hole,
so one mask gets many different fills instead of the average texture. Output: the full crop; `composite` then keeps every pixel
outside the hole bit-exact.

Why Fourier convolutions (as in LaMa): a 1x1 convolution on the 2-D spectrum mixes
every position with every other in one layer, so a block at 1/8 resolution already
"sees" the whole crop. Rolling streaks and scale texture are periodic along the strip,
which a spectral layer captures far more cheaply than a deep stack of 3x3 convolutions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GeneratorConfig:
    num_classes: int  # defect classes of the data set (clean steel is added as class 0)
    base: int = 16  # channels after the stem; doubled at each of the 3 downsamplings
    ffc_blocks: int = 4
    global_ratio: float = 0.75  # share of bottleneck channels on the spectral (global) path
    noise_channels: int = 0  # per-pixel noise maps inside the hole: one mask, many fills (0 = deterministic)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def map_channels(self) -> int:
        return self.num_classes + 1


class FourierUnit(nn.Module):
    """1x1 convolution in the frequency domain (real and imaginary parts as channels)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels * 2, channels * 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        spec = torch.fft.rfft2(x.float(), norm="ortho")
        y = torch.cat([spec.real, spec.imag], dim=1)
        y = F.relu(self.bn(self.conv(y)))
        re, im = y.chunk(2, dim=1)
        return torch.fft.irfft2(torch.complex(re, im), s=(h, w), norm="ortho").to(x.dtype)


class SpectralTransform(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = max(cout // 2, 1)
        self.reduce = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(True))
        self.fourier = FourierUnit(mid)
        self.expand = nn.Conv2d(mid, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        return self.expand(x + self.fourier(x))


class FFC(nn.Module):
    """Fast Fourier convolution: local (3x3) and global (spectral) paths that exchange
    information both ways; channels split (local, global) on input and output."""

    def __init__(self, channels: int, global_ratio: float) -> None:
        super().__init__()
        self.cg = int(round(channels * global_ratio))
        self.cl = channels - self.cg
        cl, cg = self.cl, self.cg
        self.l2l = nn.Conv2d(cl, cl, 3, padding=1, padding_mode="reflect", bias=False)
        self.l2g = nn.Conv2d(cl, cg, 3, padding=1, padding_mode="reflect", bias=False)
        self.g2l = nn.Conv2d(cg, cl, 3, padding=1, padding_mode="reflect", bias=False)
        self.g2g = SpectralTransform(cg, cg)
        self.bn_l = nn.BatchNorm2d(cl)
        self.bn_g = nn.BatchNorm2d(cg)

    def forward(self, xl: torch.Tensor, xg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        yl = self.l2l(xl) + self.g2l(xg)
        yg = self.l2g(xl) + self.g2g(xg)
        return F.relu(self.bn_l(yl)), F.relu(self.bn_g(yg))


class FFCResBlock(nn.Module):
    def __init__(self, channels: int, global_ratio: float) -> None:
        super().__init__()
        self.a = FFC(channels, global_ratio)
        self.b = FFC(channels, global_ratio)
        self.cl = self.a.cl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xl, xg = x[:, : self.cl], x[:, self.cl :]
        yl, yg = self.b(*self.a(xl, xg))
        return torch.cat([xl + yl, xg + yg], dim=1)


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, padding_mode="reflect", bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(True),
    )


class InpaintGenerator(nn.Module):
    input_multiple = 8  # three stride-2 downsamplings

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        b, m = cfg.base, cfg.map_channels
        self.stem = _conv(2 + m + cfg.noise_channels, b, k=7)
        self.down = nn.ModuleList([_conv(b, 2 * b, stride=2), _conv(2 * b, 4 * b, stride=2), _conv(4 * b, 8 * b, stride=2)])
        self.blocks = nn.Sequential(*[FFCResBlock(8 * b, cfg.global_ratio) for _ in range(cfg.ffc_blocks)])
        # Each decoder level sees the class map again at its own resolution, so thin
        # masks (scratches) are not lost in the bottleneck.
        self.up = nn.ModuleList([_conv(8 * b + m, 4 * b), _conv(4 * b + m, 2 * b), _conv(2 * b + m, b)])
        self.head = nn.Conv2d(b + m, 1, 7, padding=3, padding_mode="reflect")

    def noise_like(self, hole: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """A fresh noise code for these holes (None for a deterministic generator)."""
        if not self.cfg.noise_channels:
            return None
        n, _, h, w = hole.shape
        return torch.randn((n, self.cfg.noise_channels, h, w), generator=generator).to(hole.device)

    def forward(self, masked: torch.Tensor, hole: torch.Tensor, class_map: torch.Tensor,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        """masked, hole: (N, 1, H, W); class_map: (N, K+1, H, W); H, W multiples of 8;
        noise: (N, noise_channels, H, W) or None for a fresh draw.
        Returns the raw generated crop in [-1, 1] (use `composite` before using it)."""
        h, w = masked.shape[-2:]
        if h % self.input_multiple or w % self.input_multiple:
            raise ValueError(f"generator input {h}x{w}: height and width must be multiples of {self.input_multiple}")
        parts = [masked, hole, class_map]
        if self.cfg.noise_channels:
            # Noise only inside the hole: outside it the real pixels already say everything,
            # and a code there would let the net learn to ignore it.
            parts.append((self.noise_like(hole) if noise is None else noise) * hole)
        x = self.stem(torch.cat(parts, dim=1))
        for d in self.down:
            x = d(x)
        x = self.blocks(x)
        for u in self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            cm = F.interpolate(class_map, size=x.shape[-2:], mode="nearest")
            x = u(torch.cat([x, cm], dim=1))
        return torch.tanh(self.head(torch.cat([x, class_map], dim=1)))


def composite(generated: torch.Tensor, real: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """hole * generated + (1 - hole) * real, written as a select so pixels outside the
    hole are the input's bits exactly (no float round trip)."""
    return torch.where(hole > 0.5, generated, real)


def build_generator(cfg: GeneratorConfig | dict) -> InpaintGenerator:
    if isinstance(cfg, dict):
        cfg = GeneratorConfig(**cfg)
    return InpaintGenerator(cfg)
