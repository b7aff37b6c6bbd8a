"""Policy "pinned": the file named by the watch dir's .pin file, else by ``pinned:``."""

from __future__ import annotations

from collections.abc import Sequence

from serving.reload.candidates import Candidate
from serving.reload.pin import Pin, read_pin_file
from serving.reload.policies.base import Policy, Ranking
from serving.spec import ReloadSpec


class Pinned(Policy):
    name = "pinned"
    requires = {"pinned": "a file name in watch_dir"}

    def rank(self, candidates: Sequence[Candidate], spec: ReloadSpec) -> Ranking:
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
