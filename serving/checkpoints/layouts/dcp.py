"""A torch.distributed.checkpoint directory (.metadata + *.distcp), read through the safe metadata reader."""

from __future__ import annotations

from pathlib import Path

from serving.checkpoints.dcp import read_dcp
from serving.checkpoints.layouts.base import CheckpointContents, Layout, Probe, ReadOptions


class Dcp(Layout):
    name = "dcp"
    directory = True

    def detect(self, probe: Probe) -> bool:
        return probe.is_dir and (probe.path / ".metadata").is_file()

    def read(self, path: Path, options: ReadOptions) -> CheckpointContents:
        state_dict, key, entries = read_dcp(
            path, expected=options.expected, state_dict_key=options.state_dict_key
        )
        meta = {"dcp_entries": entries}
        return CheckpointContents(path, self, "dcp", state_dict=state_dict, metadata=meta, source_key=key)
