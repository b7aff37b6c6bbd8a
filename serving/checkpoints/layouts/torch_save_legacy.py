"""torch.save(..., _use_new_zipfile_serialization=False): the pre-1.6 pickle stream, not mappable."""

from __future__ import annotations

from pathlib import Path

from serving.checkpoints.layouts.base import Probe
from serving.checkpoints.layouts.pickled import PickledLayout
from serving.checkpoints.pickle_size import legacy_pickle_size

# The first bytes of a pickle written by torch.save's legacy (pre-1.6, non-zip) format: protocol 2.
_LEGACY_PICKLE_MAGIC = b"\x80\x02"


class TorchSaveLegacy(PickledLayout):
    name = "torch_save_legacy"  # nothing in its structure says it is whole: the scanner waits for it

    def claims(self, head: bytes) -> bool:
        return head.startswith(_LEGACY_PICKLE_MAGIC)

    def detect(self, probe: Probe) -> bool:
        return self.claims(probe.head)

    def pickle_bytes(self, path: Path) -> int:
        return legacy_pickle_size(path)
