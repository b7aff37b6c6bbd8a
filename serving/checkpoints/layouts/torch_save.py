"""torch.save's zip format: a state dict, a training checkpoint, Lightning, or a trusted whole model."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from serving.checkpoints.layouts.base import Probe
from serving.checkpoints.layouts.pickled import PickledLayout
from serving.checkpoints.layouts.zip_archive import TorchArchive
from serving.checkpoints.pickle_size import zip_pickle_size
from serving.checkpoints.selection import jsonable_metadata


class TorchSave(TorchArchive, PickledLayout):
    name = "torch_save"
    maps_file = True  # tensors are memory-mapped: optimizer state is never read

    def detect(self, probe: Probe) -> bool:
        return probe.archive is not None and "data.pkl" in probe.archive

    def pickle_bytes(self, path: Path) -> int:
        return zip_pickle_size(path)

    def metadata(self, path: Path, *, safe_globals: Iterable[str] = ()) -> dict[str, Any]:
        # Cheap: the file is memory-mapped and no tensor is touched.
        obj = self.load(path, set(), trust_pickle=False, safe_globals=safe_globals)
        return jsonable_metadata(obj) if isinstance(obj, Mapping) else {}
