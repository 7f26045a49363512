"""ResNet-18 for 32×32 images (the paper's CIFAR-10 model).

The common CIFAR variant of He et al. (2016)'s ImageNet ResNet-18 (as in the
widely used ``kuangliu/pytorch-cifar``): the 7×7 stride-2 stem and its max-pool
are replaced by one 3×3 stride-1 convolution with 64 channels, so the four
stages see 32, 16, 8 and 4 pixels square. Each stage has two BasicBlocks
(two 3×3 convolutions with BatchNorm), widths 64/128/256/512; stages 2–4 halve
the resolution in their first block, whose shortcut is then a 1×1 stride-2
convolution with BatchNorm. Convolutions have no bias. Global average pooling
and one linear layer give the logits: 11,173,962 parameters for 10 classes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    """``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3×3 stem (64), BasicBlocks [2, 2, 2, 2], global average pool, linear.

    Input ``(N, in_channels, 32, 32)`` (other sizes work too: the pooling is
    global), output logits ``(N, num_classes)``. ``width`` is the channel
    count of the stem and first stage (64, the paper's model); the stages have
    ``width × (1, 2, 4, 8)`` channels, so a small width gives a toy ResNet-18
    of the same depth (for tests).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be at least 1, got {width}")
        base = width
        self.conv1 = nn.Conv2d(in_channels, base, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        stages = []
        for out_channels, stride in ((base, 1), (2 * base, 2), (4 * base, 2), (8 * base, 2)):
            stages.append(nn.Sequential(
                BasicBlock(width, out_channels, stride),
                BasicBlock(out_channels, out_channels, 1),
            ))
            width = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(8 * base, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


__all__ = ["BasicBlock", "ResNet18"]
