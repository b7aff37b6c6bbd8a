"""A tiny token classifier for tests: integer ids through an nn.Embedding, three logits out."""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 50


class TokenClassifier(nn.Module):
    def __init__(self, vocab: int = VOCAB, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(dim=1))
