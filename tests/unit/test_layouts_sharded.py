"""Sharded safetensors: what the index may name, what the shards must hold, which metadata is kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from serving.checkpoints.layouts.base import ReadOptions
from serving.checkpoints.layouts.sharded_safetensors import ShardedSafetensors
from serving.errors import CorruptCheckpointError

INDEX = "model.safetensors.index.json"


def _write(d: Path, weight_map: Any, metadata: Any = None) -> Path:
    d.mkdir(exist_ok=True)
    save_file({"a": torch.ones(2)}, d / "one.safetensors")
    save_file({"b": torch.zeros(3)}, d / "two.safetensors")
    (d / INDEX).write_text(json.dumps({"metadata": metadata, "weight_map": weight_map}))
    return d


def test_every_shard_is_read_and_plain_metadata_kept(tmp_path: Path) -> None:
    meta = {"epoch": 3, "loss": 0.5, "note": "best", "done": True, "nested": {"x": 1}, "list": [1]}
    path = _write(tmp_path / "ck", {"a": "one.safetensors", "b": "two.safetensors"}, meta)
    contents = ShardedSafetensors().read(path, ReadOptions())
    assert contents.state_dict is not None
    assert sorted(contents.state_dict) == ["a", "b"]
    assert torch.equal(contents.state_dict["b"], torch.zeros(3))
    assert contents.metadata == {"epoch": 3, "loss": 0.5, "note": "best", "done": True}
    assert contents.kind == "state_dict"


def test_metadata_that_is_not_an_object_is_none(tmp_path: Path) -> None:
    path = _write(tmp_path / "ck", {"a": "one.safetensors"}, ["epoch", 3])
    assert ShardedSafetensors().read(path, ReadOptions()).metadata == {}


@pytest.mark.parametrize("weight_map", [None, {}, ["one.safetensors"], {"a": 1}, {"a": None}])
def test_an_index_without_a_weight_map_of_names_is_corrupt(tmp_path: Path, weight_map: Any) -> None:
    path = _write(tmp_path / "ck", weight_map)
    with pytest.raises(CorruptCheckpointError) as caught:
        ShardedSafetensors().read(path, ReadOptions())
    assert INDEX in caught.value.message and "'weight_map'" in caught.value.message


@pytest.mark.parametrize("shard", ["../outside.safetensors", "absent.safetensors"])
def test_a_shard_outside_the_directory_or_absent_is_never_read(tmp_path: Path, shard: str) -> None:
    save_file({"a": torch.full((2,), 7.0)}, tmp_path / "outside.safetensors")  # exists, but elsewhere
    path = _write(tmp_path / "ck", {"a": shard})
    with pytest.raises(CorruptCheckpointError) as caught:
        ShardedSafetensors().read(path, ReadOptions())
    assert f"names a shard that is not a file inside {str(path)!r}" in caught.value.message
    assert "Copy every shard" in (caught.value.hint or "")


def test_shards_lacking_an_indexed_tensor_are_corrupt(tmp_path: Path) -> None:
    names = {f"t{i}": "one.safetensors" for i in range(7)}
    path = _write(tmp_path / "ck", {"a": "one.safetensors", **names})
    with pytest.raises(CorruptCheckpointError) as caught:
        ShardedSafetensors().read(path, ReadOptions())
    assert f"The shards of {str(path)!r} lack 7 indexed tensors: " in caught.value.message
    assert "['t0', 't1', 't2', 't3', 't4']." in caught.value.message


def test_a_long_missing_tensor_name_is_cut_at_100_characters(tmp_path: Path) -> None:
    path = _write(tmp_path / "ck", {"a": "one.safetensors", "n" * 150: "one.safetensors"})
    with pytest.raises(CorruptCheckpointError) as caught:
        ShardedSafetensors().read(path, ReadOptions())
    assert f"lack 1 indexed tensors: [{'n' * 100!r}]." in caught.value.message
