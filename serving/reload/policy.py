"""Which checkpoint to serve: the latest, the best by a metric, or a pinned one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from serving.reload.candidates import Candidate, read_pin
from serving.spec import ReloadSpec


def latest_key(candidate: Candidate) -> tuple[float, int]:
    """Highest epoch (metadata, else the number in the name) first, then the newest file."""
    epoch = candidate.epoch if candidate.epoch is not None else -math.inf
    return (epoch, candidate.signature.mtime_ns)


def metric_value(metadata: dict[str, Any], dotted: str) -> float | None:
    """``loss`` or ``metrics.val_accuracy`` looked up in a checkpoint's metadata; None if absent."""
    value: Any = metadata
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)  # safetensors metadata holds strings
        except (TypeError, ValueError):
            return None
    return float(value) if math.isfinite(value) else None


def rank(candidates: Sequence[Candidate], spec: ReloadSpec) -> list[Candidate]:
    """Candidates in the order the policy prefers them (best first); ineligible ones left out."""
    if spec.policy == "pinned":
        pin = (read_pin(spec.watch_dir) if spec.watch_dir else None) or spec.pinned
        return [c for c in candidates if c.name == pin]
    if spec.policy == "best":
        scored = [(metric_value(c.metadata, spec.metric), c) for c in candidates]
        sign = -1.0 if spec.mode == "max" else 1.0
        eligible = [(sign * v, c) for v, c in scored if v is not None]
        # Equal scores: the later checkpoint wins.
        eligible.sort(key=lambda item: (item[0], tuple(-x for x in latest_key(item[1]))))
        return [c for _, c in eligible]
    return sorted(candidates, key=latest_key, reverse=True)
