"""A TorchScript archive (torch.jit.save): code and weights in one file, no Python class needed."""

from __future__ import annotations

from pathlib import Path

import torch

from serving.checkpoints.layouts.base import CheckpointContents, Probe, ReadOptions, corrupt_error
from serving.checkpoints.layouts.zip_archive import TorchArchive


class TorchScript(TorchArchive):
    name = "torchscript"
    self_describing = True
    copyable = False  # its file brings the module: a reload swaps a whole one in
    places_module = True  # torch.jit.load maps it onto the device

    def detect(self, probe: Probe) -> bool:
        inner = probe.archive
        return inner is not None and (any(n.startswith("code/") for n in inner) or "constants.pkl" in inner)

    def read(self, path: Path, options: ReadOptions) -> CheckpointContents:
        try:
            module = torch.jit.load(str(path), map_location=options.map_location)  # type: ignore[no-untyped-call]
        except (RuntimeError, ValueError) as exc:
            raise corrupt_error(path, exc) from None
        return CheckpointContents(path, self, "torchscript", module=module)
