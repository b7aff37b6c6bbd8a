"""Policy "best": the best value of a metadata metric (``metric``, ``mode: min|max``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from serving.reload.candidates import Candidate
from serving.reload.policies.base import Policy, Ranking, written_key
from serving.spec import ReloadSpec


class Best(Policy):
    name = "best"

    def rank(self, candidates: Sequence[Candidate], spec: ReloadSpec) -> Ranking:
        sign = -1.0 if spec.mode == "max" else 1.0
        scored = {c.name: metric_value(c.metadata, spec.metric) for c in candidates}
        eligible = [c for c in candidates if scored[c.name] is not None]
        # Equal scores: the later checkpoint wins.
        eligible.sort(key=lambda c: (sign * scored[c.name], tuple(-x for x in written_key(c))))  # type: ignore[operator]
        skipped = {
            c.name: f"no {spec.metric!r} in its metadata" for c in candidates if scored[c.name] is None
        }
        return Ranking(eligible, skipped, explain=lambda c: f"{spec.metric}={scored[c.name]}")


def metric_value(metadata: dict[str, Any], dotted: str) -> float | None:
    """``loss`` or ``metrics.val_accuracy`` looked up in a checkpoint's metadata; None if absent."""
    value: Any = metadata
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool):
        return None  # a flag, not a score: True must not rank as 1.0
    if not isinstance(value, (int, float)):
        try:
            value = float(value)  # safetensors metadata holds strings
        except (TypeError, ValueError):
            return None
    return float(value) if math.isfinite(value) else None
