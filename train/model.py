"""A U-Net family for the edge: residual encoder, light decoder, named sizes.

The encoder downsamples five times (stride-2 stem, then four stride-2 stages),
so inputs are padded up to a multiple of 32 inside `forward` and the logits are
cropped back: any frame size works, and with fixed (H, W) the padding amounts
are plain Python ints, so tracing/ONNX export sees a static graph.

The decoder is deliberately light (one 3x3 conv per level, bilinear
upsampling): on a strip camera most of the time goes into full-resolution
feature maps, so the widths of the shallow levels dominate speed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from train.config import strict_from_dict

STRIDE = 32  # total downsampling of the encoder; inputs are padded to a multiple of this


@dataclass(frozen=True)
class SizeSpec:
    widths: tuple[int, int, int, int, int]  # stem, stage1..stage4
    blocks: tuple[int, int, int, int]  # residual blocks per stage
    decoder_width: int


# Named sizes trade accuracy for speed; add a size here and it is selectable everywhere.
SIZES: dict[str, SizeSpec] = {
    "nano": SizeSpec(widths=(8, 16, 24, 48, 96), blocks=(1, 1, 1, 1), decoder_width=16),
    # nano's shallow levels (which set the speed at 256x1600) with wider, deeper /16 and /32
    # stages: 4.3x the parameters for 1.6x the multiply-adds.
    "nano-deep": SizeSpec(widths=(8, 16, 32, 64, 160), blocks=(1, 2, 2, 2), decoder_width=16),
    "small": SizeSpec(widths=(16, 24, 48, 96, 160), blocks=(1, 2, 2, 2), decoder_width=32),
    "base": SizeSpec(widths=(32, 64, 128, 256, 384), blocks=(2, 2, 3, 3), decoder_width=64),
}


@dataclass(frozen=True)
class UNetConfig:
    size: str = "nano"
    in_channels: int = 1
    num_classes: int = 4

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"unknown model size {self.size!r}; valid sizes: {', '.join(SIZES)}")
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        return strict_from_dict(cls, d, "model config")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def arch(self) -> str:
        return f"unet-{self.size}"


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """Basic ResNet block; a 1x1 projection on the shortcut when shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x), inplace=True)


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.conv = conv_bn_relu(cin + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


class UNet(nn.Module):
    # Capabilities, stated so callers need not guess.
    exportable = True
    input_multiple = STRIDE

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        spec = SIZES[config.size]
        w = spec.widths
        self.stem = conv_bn_relu(config.in_channels, w[0], stride=2)  # /2
        stages = []
        for i in range(4):  # /4, /8, /16, /32
            blocks = [ResidualBlock(w[i], w[i + 1], stride=2)]
            blocks += [ResidualBlock(w[i + 1], w[i + 1]) for _ in range(spec.blocks[i] - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        d = spec.decoder_width
        # Decode /32 -> /16 -> /8 -> /4 -> /2 with skips from the encoder.
        self.decoders = nn.ModuleList(
            [
                DecoderBlock(w[4], w[3], d * 2),
                DecoderBlock(d * 2, w[2], d * 2),
                DecoderBlock(d * 2, w[1], d),
                DecoderBlock(d, w[0], d),
            ]
        )
        self.head = nn.Conv2d(d, config.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        pad_h = (STRIDE - h % STRIDE) % STRIDE
        pad_w = (STRIDE - w % STRIDE) % STRIDE
        # Replicate the edge pixels, as the edge's pre-processing pads short frames:
        # a constant border reads as a false edge (defects along the bottom/right).
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        y = feats[-1]
        for dec, skip in zip(self.decoders, reversed(feats[:-1])):
            y = dec(y, skip)
        y = self.head(y)
        y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
        return y[:, :, :h, :w]


def build_model(cfg: dict | UNetConfig) -> UNet:
    """Build a segmenter; `cfg` holds `size`, `in_channels`, `num_classes`."""
    if isinstance(cfg, dict):
        cfg = UNetConfig.from_dict(cfg)
    return UNet(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
