"""Policy "latest": the most recently written checkpoint."""

from __future__ import annotations

from collections.abc import Sequence

from serving.reload.candidates import Candidate
from serving.reload.policies.base import Policy, Ranking, written, written_key
from serving.spec import ReloadSpec


class Latest(Policy):
    name = "latest"

    def rank(self, candidates: Sequence[Candidate], spec: ReloadSpec) -> Ranking:
        return Ranking(sorted(candidates, key=written_key, reverse=True), explain=written)
