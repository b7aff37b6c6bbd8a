"""A ResNet-18-sized CNN (11.2 M parameters) for the compare benchmark; random weights, made at run time.

One class only: TorchServe's BaseHandler loads an eager model from a model file that defines
exactly one nn.Module class, so the residual blocks are ModuleDicts wired in ``forward``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
from torch import nn


class ResNet18(nn.Module):
    """ResNet-18's layout (7x7 stem, max-pool, basic blocks 2-2-2-2 of 64-512 channels) on 3x32x32 inputs.

    The small input keeps one forward near 40 MFLOPs (a few ms on one thread) and the JSON body near
    20 kB, so a benchmark on a small machine measures serving, not minutes of convolutions.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        blocks, channels = [], 64
        for width, stride in ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)):
            block = nn.ModuleDict(
                {
                    "conv1": nn.Conv2d(channels, width, 3, stride, 1, bias=False),
                    "bn1": nn.BatchNorm2d(width),
                    "conv2": nn.Conv2d(width, width, 3, 1, 1, bias=False),
                    "bn2": nn.BatchNorm2d(width),
                }
            )
            if stride != 1 or channels != width:
                block["down"] = nn.Sequential(
                    nn.Conv2d(channels, width, 1, stride, bias=False), nn.BatchNorm2d(width)
                )
            blocks.append(block)
            channels = width
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in cast(Iterable[nn.ModuleDict], self.blocks):  # the blocks built in __init__
            out = torch.relu(block["bn1"](block["conv1"](x)))
            out = block["bn2"](block["conv2"](out))
            x = torch.relu(out + (block["down"](x) if "down" in block else x))
        return self.head(x)
