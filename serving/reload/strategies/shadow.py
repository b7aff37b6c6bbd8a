"""Strategy "shadow": load a second model beside the live one, validate it, then swap it in."""

from __future__ import annotations

from serving.reload.strategies.base import Replacement, Strategy


class Shadow(Strategy):
    name = "shadow"

    def apply(self, replacement: Replacement) -> None:
        model = replacement.load(replacement.path, replacement.sha256)
        replacement.slot.validate(model)
        replacement.slot.swap(model)
