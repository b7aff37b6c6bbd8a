"""What a reload policy is: a named ranking of the complete checkpoints in the watch dir."""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from serving.errors import ConfigError
from serving.reload.candidates import Candidate
from serving.reload.pin import Pin
from serving.spec import ReloadSpec


@dataclass
class Ranking:
    """A policy's verdict on one scan: eligible candidates best first, and why the others are not."""

    ordered: list[Candidate]
    skipped: dict[str, str] = field(default_factory=dict)  # name -> reason it is not eligible
    explain: Callable[[Candidate], str] = lambda c: c.name  # what the policy ranked a candidate by
    pin: Pin | None = None  # for policy "pinned": the pin file as read (its problem, if any)
    unmatched_pins: list[str] = field(default_factory=list)  # pinned names no candidate has


class Policy(ABC):
    """Which checkpoint to serve. Register an instance in ``serving.reload.policy``."""

    name: ClassVar[str]  # the value of handler.policy
    requires: ClassVar[dict[str, str]] = {}  # ReloadSpec settings it cannot rank without -> what they are

    def check(self, spec: ReloadSpec, where: str) -> None:
        """Raise ``ConfigError`` naming the first required setting ``spec`` lacks (``where``: key prefix)."""
        for key, what in self.requires.items():
            if not getattr(spec, key):
                raise ConfigError(f"{where}policy is {self.name!r} but {key} ({what}) is not set.")

    @abstractmethod
    def rank(self, candidates: Sequence[Candidate], spec: ReloadSpec) -> Ranking:
        """``candidates`` best first, with the reason each ineligible one is left out."""


def written_key(candidate: Candidate) -> tuple[float, float]:
    """Most recently written first (saved_at, else mtime); equal times: the higher epoch."""
    epoch = candidate.epoch if candidate.epoch is not None else -math.inf
    return (candidate.written_at, epoch)


def written(candidate: Candidate) -> str:
    """When and at which epoch ``candidate`` was written, for "prefers A (...) to B (...)"."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(candidate.written_at))
    return f"written {stamp}, epoch {candidate.epoch if candidate.epoch is not None else 'none'}"
