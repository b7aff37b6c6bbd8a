"""What a reload strategy is: how a validated checkpoint replaces the served model."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from torch import nn

from serving.reload.slot import ModelSlot
from serving.spec import ModelSpec

LoadFn = Callable[[Path, str], nn.Module]  # (checkpoint path, its sha256) -> validated-ready model


@dataclass(frozen=True)
class Replacement:
    """A candidate checkpoint about to replace what ``slot`` serves."""

    path: Path
    sha256: str
    slot: ModelSlot
    spec: ModelSpec
    load: LoadFn


class Strategy(ABC):
    """How a reload swaps a checkpoint in. Register an instance in ``serving.reload.strategy``."""

    name: ClassVar[str]  # the value of handler.reload_strategy

    @abstractmethod
    def apply(self, replacement: Replacement) -> None:
        """Validate the candidate and make it the served model; raise (a typed error) to reject it."""
