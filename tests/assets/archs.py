"""Architectures the tests load checkpoints into (importable as 'tests.assets.archs:Name')."""

from __future__ import annotations

import torch
from torch import nn


class SmallNet(nn.Module):
    """Conv + BatchNorm + Dropout: wrong eval handling changes its outputs."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 8 * 8, hidden)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.head(self.drop(torch.relu(self.fc(x.flatten(1)))))


class TiedNet(nn.Module):
    """An embedding shared with the output layer (safetensors saves it once)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.mix = nn.Linear(8, 8)
        self.out = nn.Linear(8, 20, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.mix(self.embed(tokens))))


class BufferNet(nn.Module):
    """A non-persistent buffer computed in __init__: absent from the state dict."""

    scale: torch.Tensor  # registered as a buffer

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.linspace(0.5, 2.0, 6), persistent=False)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x * self.scale)
