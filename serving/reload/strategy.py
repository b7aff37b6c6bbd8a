"""The reload-strategy registry: how a new checkpoint replaces the served one (shadow, inplace).

Spec validation and the watcher look strategies up here. A new strategy is one file in
``serving/reload/strategies/`` plus its line below.
"""

from __future__ import annotations

from serving.reload.strategies.base import LoadFn, Replacement, Strategy
from serving.reload.strategies.inplace import InPlace
from serving.reload.strategies.shadow import Shadow

STRATEGIES: dict[str, Strategy] = {strategy.name: strategy for strategy in (Shadow(), InPlace())}

__all__ = ["STRATEGIES", "LoadFn", "Replacement", "Strategy"]
