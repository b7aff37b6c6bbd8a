"""A torch.export archive (.pt2): a self-describing program whose loader unpickles parts of the file."""

from __future__ import annotations

from pathlib import Path

import torch

from serving.checkpoints.layouts.base import CheckpointContents, Probe, ReadOptions, corrupt_error
from serving.checkpoints.layouts.zip_archive import TorchArchive
from serving.errors import UnsafeCheckpointError


class ExportedProgram(TorchArchive):
    name = "exported_program"
    self_describing = True
    copyable = False  # its file brings the module: a reload swaps a whole one in
    places_module = True
    keeps_mode = True  # export fixed its mode; its module refuses .eval()

    def detect(self, probe: Probe) -> bool:
        inner = probe.archive
        return inner is not None and ("archive_format" in inner or "models/model.json" in inner)

    def read(self, path: Path, options: ReadOptions) -> CheckpointContents:
        if not options.trust_pickle:  # torch.export.load unpickles constants and weights with plain pickle
            raise UnsafeCheckpointError(
                f"{str(path)!r} is a torch.export archive; torch.export.load unpickles parts of it "
                "with plain pickle, which runs code from the file.",
                hint="If you trust the file, set trust_pickle: true (CLI: --trust-pickle); otherwise "
                "serve the architecture with a state dict, or a TorchScript file.",
            )
        try:
            program = torch.export.load(str(path))
        except Exception as exc:  # torch.export raises assorted types for damaged archives
            raise corrupt_error(path, exc) from None
        module = program.module()
        if torch.device(options.map_location).type != "cpu":
            module = module.to(options.map_location)
        return CheckpointContents(path, self, "exported_program", module=module)
