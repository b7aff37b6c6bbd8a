"""The embedded demo model: a small CNN for scikit-learn's 8x8 handwritten digits (shipped, no download)."""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """Two conv blocks with BatchNorm, Dropout before each linear layer: eval mode matters."""

    def __init__(
        self, channels: int = 16, hidden: int = 64, num_classes: int = 10, dropout: float = 0.25
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(2 * channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(2 * channels * 4 * 4, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Inputs are raw scikit-learn pixel values, 0..16; scaling here keeps clients simple.
        logits: torch.Tensor = self.classifier(self.features(x / 16.0))
        return logits
