"""Shared fixtures: a trained reference model and its eval-mode outputs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from hypothesis import settings

from tests.assets.archs import SmallNet

# Mutation runs (tests/mutation/runner.py) need the same examples for every mutant.
settings.register_profile("mutation", derandomize=True, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


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


@pytest.fixture(autouse=True)
def _torch_threads_restored() -> Iterator[None]:
    # A session applies its thread plan to the whole process; a later test comparing outputs bit for
    # bit with the reference (computed under the runner's count) would see another summation order.
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def reference() -> Reference:
    return train_reference()
