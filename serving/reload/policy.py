"""The policy registry: which checkpoint to serve (latest, highest epoch, best by a metric, pinned).

Spec validation, describe and the watcher all look policies up here. A new policy is one file in
``serving/reload/policies/`` plus its line below.
"""

from __future__ import annotations

from collections.abc import Sequence

from serving.reload.candidates import Candidate
from serving.reload.policies.base import Policy, Ranking
from serving.reload.policies.best import Best
from serving.reload.policies.highest_epoch import HighestEpoch
from serving.reload.policies.latest import Latest
from serving.reload.policies.pinned import Pinned
from serving.spec import ReloadSpec

POLICIES: dict[str, Policy] = {policy.name: policy for policy in (Latest(), HighestEpoch(), Best(), Pinned())}


def rank_with_reasons(candidates: Sequence[Candidate], spec: ReloadSpec) -> Ranking:
    """The policy's ranking of ``candidates``, with the reason each ineligible one is left out."""
    return POLICIES[spec.policy].rank(candidates, spec)


def rank(candidates: Sequence[Candidate], spec: ReloadSpec) -> list[Candidate]:
    """Candidates in the order the policy prefers them (best first); ineligible ones left out."""
    return rank_with_reasons(candidates, spec).ordered


__all__ = ["POLICIES", "Policy", "Ranking", "rank", "rank_with_reasons"]
