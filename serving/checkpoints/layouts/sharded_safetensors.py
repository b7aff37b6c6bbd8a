"""A directory of safetensors shards with a ``*.index.json`` naming the shard of every tensor."""

from __future__ import annotations

from pathlib import Path

import torch

from serving.checkpoints.files import index_files, read_json
from serving.checkpoints.layouts.base import CheckpointContents, Layout, Probe, ReadOptions
from serving.checkpoints.layouts.safetensors import read_safetensors_file
from serving.errors import CorruptCheckpointError


class ShardedSafetensors(Layout):
    name = "sharded_safetensors"
    directory = True

    def detect(self, probe: Probe) -> bool:
        return probe.is_dir and bool(index_files(probe.path))

    def read(self, path: Path, options: ReadOptions) -> CheckpointContents:
        index_file = index_files(path)[0]
        index = read_json(index_file)
        weight_map = index.get("weight_map")
        shards = weight_map.values() if isinstance(weight_map, dict) else ()
        if not weight_map or not shards or not all(isinstance(v, str) for v in shards):
            raise CorruptCheckpointError(
                f"{str(index_file)!r} has no 'weight_map' of tensor name -> shard file name."
            )
        root = path.resolve()
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = path / shard
            # The index comes from the file: "../x" or "/abs/x" would read (and serve) a file elsewhere.
            if not shard_path.resolve().is_relative_to(root) or not shard_path.is_file():
                raise CorruptCheckpointError(
                    f"The index {index_file.name!r} names a shard that is not a file inside {str(path)!r}.",
                    hint="Copy every shard into the checkpoint directory, or wait for the writer to finish.",
                )
            shard_tensors, _ = read_safetensors_file(shard_path)
            tensors.update(shard_tensors)
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise CorruptCheckpointError(
                f"The shards of {str(path)!r} lack {len(missing)} indexed tensors: "
                f"{[str(m)[:100] for m in missing[:5]]}."
            )
        metadata = index.get("metadata")
        metadata = metadata if isinstance(metadata, dict) else {}
        meta = {k: v for k, v in metadata.items() if isinstance(v, (str, int, float, bool))}
        return CheckpointContents(path, self, "state_dict", state_dict=tensors, metadata=meta)
