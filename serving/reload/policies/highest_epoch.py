"""Policy "highest_epoch": the highest epoch (metadata, else the number in the name), then the latest."""

from __future__ import annotations

import math
from collections.abc import Sequence

from serving.reload.candidates import Candidate
from serving.reload.policies.base import Policy, Ranking, written
from serving.spec import ReloadSpec


class HighestEpoch(Policy):
    name = "highest_epoch"

    def rank(self, candidates: Sequence[Candidate], spec: ReloadSpec) -> Ranking:
        return Ranking(sorted(candidates, key=epoch_key, reverse=True), explain=written)


def epoch_key(candidate: Candidate) -> tuple[float, float]:
    """Highest epoch (metadata, else the number in the name) first, then the most recently written."""
    epoch = candidate.epoch if candidate.epoch is not None else -math.inf
    return (epoch, candidate.written_at)
