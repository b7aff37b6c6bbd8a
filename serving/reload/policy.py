"""Which checkpoint to serve: the last written, the highest epoch, the best by a metric, or a pinned one."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from serving.reload.candidates import Candidate
from serving.reload.pin import Pin, read_pin_file
from serving.spec import ReloadSpec


@dataclass
class Ranking:
    """A policy's verdict on one scan: eligible candidates best first, and why the others are not."""

    ordered: list[Candidate]
    skipped: dict[str, str] = field(default_factory=dict)  # name -> reason it is not eligible
    explain: Callable[[Candidate], str] = lambda c: c.name  # what the policy ranked a candidate by
    pin: Pin | None = None  # for policy "pinned": the pin file as read (its problem, if any)
    unmatched_pins: list[str] = field(default_factory=list)  # pinned names no candidate has


def written_key(candidate: Candidate) -> tuple[float, float]:
    """Most recently written first (saved_at, else mtime); equal times: the higher epoch."""
    epoch = candidate.epoch if candidate.epoch is not None else -math.inf
    return (candidate.written_at, epoch)


def epoch_key(candidate: Candidate) -> tuple[float, float]:
    """Highest epoch (metadata, else the number in the name) first, then the most recently written."""
    epoch = candidate.epoch if candidate.epoch is not None else -math.inf
    return (epoch, candidate.written_at)


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


def _written(candidate: Candidate) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(candidate.written_at))
    return f"written {stamp}, epoch {candidate.epoch if candidate.epoch is not None else 'none'}"


def _latest(candidates: Sequence[Candidate], spec: ReloadSpec) -> Ranking:
    return Ranking(sorted(candidates, key=written_key, reverse=True), explain=_written)


def _highest_epoch(candidates: Sequence[Candidate], spec: ReloadSpec) -> Ranking:
    return Ranking(sorted(candidates, key=epoch_key, reverse=True), explain=_written)


def _best(candidates: Sequence[Candidate], spec: ReloadSpec) -> Ranking:
    sign = -1.0 if spec.mode == "max" else 1.0
    scored = {c.name: metric_value(c.metadata, spec.metric) for c in candidates}
    eligible = [c for c in candidates if scored[c.name] is not None]
    # Equal scores: the later checkpoint wins.
    eligible.sort(key=lambda c: (sign * scored[c.name], tuple(-x for x in written_key(c))))  # type: ignore[operator]
    skipped = {c.name: f"no {spec.metric!r} in its metadata" for c in candidates if scored[c.name] is None}
    return Ranking(eligible, skipped, explain=lambda c: f"{spec.metric}={scored[c.name]}")


def _pinned(candidates: Sequence[Candidate], spec: ReloadSpec) -> Ranking:
    pin = read_pin_file(spec.watch_dir) if spec.watch_dir else Pin()
    # The pin file overrides the configured pin; a pin file that cannot be used overrides nothing.
    names = {c.name for c in candidates}
    unmatched = [n for n in (pin.name, spec.pinned) if n is not None and n not in names]
    name = pin.name if pin.name in names else spec.pinned
    source = ".pin" if name == pin.name else "pinned:"
    ordered = [c for c in candidates if c.name == name]
    skipped = {c.name: f"not pinned (the pin names {name!r})" for c in candidates if c.name != name}
    return Ranking(
        ordered, skipped, explain=lambda c: f"pinned by {source}", pin=pin, unmatched_pins=unmatched
    )


POLICIES: dict[str, Callable[[Sequence[Candidate], ReloadSpec], Ranking]] = {
    "latest": _latest,
    "highest_epoch": _highest_epoch,
    "best": _best,
    "pinned": _pinned,
}


def rank_with_reasons(candidates: Sequence[Candidate], spec: ReloadSpec) -> Ranking:
    """The policy's ranking of ``candidates``, with the reason each ineligible one is left out."""
    return POLICIES[spec.policy](candidates, spec)


def rank(candidates: Sequence[Candidate], spec: ReloadSpec) -> list[Candidate]:
    """Candidates in the order the policy prefers them (best first); ineligible ones left out."""
    return rank_with_reasons(candidates, spec).ordered
