"""Shared fixtures: a trained reference model and its eval-mode outputs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from tests.assets.archs import SmallNet


@dataclass
class Reference:
    model: SmallNet
    optimizer: torch.optim.Optimizer
    inputs: torch.Tensor
    outputs: torch.Tensor  # eval-mode outputs of ``model`` on ``inputs``


def train_reference(seed: int = 0, steps: int = 3, **kwargs: int) -> Reference:
    """A few Adam steps: BatchNorm statistics and optimizer state are real, not defaults."""
    torch.manual_seed(seed)
    model = SmallNet(**kwargs)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(16, 1, 8, 8)).logsumexp(1).mean().backward()
        optimizer.step()
    model.eval()
    inputs = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        outputs = model(inputs)
    return Reference(model, optimizer, inputs, outputs)


@pytest.fixture(scope="session")
def reference() -> Reference:
    return train_reference()
